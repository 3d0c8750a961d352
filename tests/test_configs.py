import importlib

import numpy as np
import pytest

from alsa_jax import augment, data, models
from configs import base, presets
from launch import replicate

PAPER_CONFIGS = ("mnist", "cifar10", "cifar100", "nabirds", "nabirds_child")


def _config(name, arg=None):
    module = importlib.import_module(f"configs.{name}")
    return module.get_config() if arg is None else module.get_config(arg)


@pytest.mark.parametrize("name", PAPER_CONFIGS)
@pytest.mark.parametrize("arg", [None, "small", "small,dirichlet_online_3.0"])
def test_configs_hold_only_known_fields_and_pass_the_checks(name, arg):
    config = _config(name, arg)
    replicate.options_of(config)  # every field known and valid
    assert config.dataset.name in data.DATASETS
    assert config.model.name in models.MODELS
    pipeline = augment.make_pipeline(
        config.augment.name,
        **{k: config.augment[k] for k in augment.pipeline_options(config.augment.name)},
    )
    stored = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3), "cifar100": (32, 32, 3)}.get(
        name, (config.dataset.image_size,) * 2 + (3,)
    )
    expected = {"nabirds": (config.augment.crop_size,) * 2 + (3,)}.get(name.split("_")[0], stored)
    assert pipeline.output_shape(stored) == expected


def test_cifar_configs_have_the_paper_settings():
    for name in ("cifar10", "cifar100"):
        config = _config(name)
        assert (config.dataset.name, config.model.name) == (name, "resnet18")
        small = _config(name, "small")
        for c in (config, small):  # XLA's conv is faster for the ResNets on CPU too
            assert (c.model.conv_impl, c.model.inference_conv_impl) == ("xla", "xla")
        assert config.augment.name == "cifar"
        t = config.train
        assert (t.optimizer, t.schedule, t.batch_size) == ("sgd", "step", 128)
        assert (t.learning_rate, t.finetune_learning_rate, t.gamma) == (0.1, 0.02, 0.25)
        assert (t.initial_epochs, t.partial_epochs, t.warm_epochs) == (80, 10, 1)
        assert (t.momentum, t.weight_decay) == (0.9, 5e-4)
        assert tuple(t.milestones) == (20, 40, 60)
        assert tuple(t.finetune_milestones) == (3, 6, 10)
        assert config.label_shift.rlls_reg == 2e-6
        assert (config.query.num_batches, config.query.sample_prop) == (30, 0.4)
        s = config.shift
        assert (s.dataset_cap, s.warmstart_ratio) == (40000, 0.5)
        assert (s.strategy, s.alpha) == ("dirichlet_mix", 0.7)


def test_nabirds_configs_have_the_paper_settings():
    grand, child = _config("nabirds"), _config("nabirds_child")
    for config in (grand, child):
        assert (config.model.name, config.augment.name) == ("resnet34", "nabirds")
        assert (config.dataset.image_size, config.augment.crop_size) == (200, 150)
        assert (config.shift.dataset_cap, config.shift.warmstart_ratio) == (30000, 1.0)
        assert (config.shift.test_size, config.query.num_batches) == (5000, 20)
        assert (config.train.learning_rate, config.query.sample_prop) == (0.1, 0.4)
    assert grand.dataset.label_granularity == "grand"
    assert (grand.shift.strategy, grand.shift.alpha) == ("trulyregion", 0.1)
    assert child.dataset.label_granularity == "child"
    assert child.shift.strategy == "trulynone"


def test_mnist_config_has_the_paper_settings():
    config = _config("mnist")
    assert (config.dataset.name, config.model.name, config.augment.name) == (
        "mnist",
        "cnn",
        "none",
    )
    assert (config.shift.strategy, config.shift.alpha) == ("dirichlet_target", 0.6)
    assert (config.shift.dataset_cap, config.query.num_batches) == (3000, 20)
    assert (config.train.optimizer, config.train.learning_rate) == ("adam", 1e-2)
    assert (config.train.gamma, config.train.initial_epochs) == (0.97, 60)


@pytest.mark.parametrize("preset", sorted(presets.SHIFT_PRESETS))
def test_each_shift_preset_is_one_value(preset):
    config = _config("cifar10", preset)
    assert (config.shift.strategy, config.shift.alpha) == presets.SHIFT_PRESETS[preset]
    small = _config("cifar100", f"small,{preset}")
    assert (small.shift.strategy, small.shift.alpha) == presets.SHIFT_PRESETS[preset]
    assert small.shift.dataset_cap < config.shift.dataset_cap


def test_the_paper_presets():
    assert presets.SHIFT_PRESETS == {
        "dirichlet_mix_0.7": ("dirichlet_mix", 0.7),
        "dirichlet_mix_5.0": ("dirichlet_mix", 5.0),
        "dirichlet_mix_1.0": ("dirichlet_mix", 1.0),
        "dirichlet_mix_0.1": ("dirichlet_mix", 0.1),
        "dirichlet_target_0.4": ("dirichlet_target", 0.4),
        "dirichlet_1.2": ("dirichlet", 1.2),
        "dirichlet_online_3.0": ("dirichlet_online", 3.0),
    }


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_small_variants_shrink_the_run_on_the_same_code_path(name):
    full, small = _config(name), _config(name, "small")
    assert small.dataset.name == full.dataset.name
    assert small.model.name == full.model.name
    assert small.augment.name == full.augment.name
    assert small.shift.strategy == full.shift.strategy
    assert small.shift.dataset_cap < full.shift.dataset_cap
    assert small.query.num_batches < full.query.num_batches
    assert small.train.initial_epochs < full.train.initial_epochs
    assert small.dataset.image_size <= full.dataset.image_size


def test_bad_config_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="'tiny' is not known; use 'small'"):
        _config("cifar10", "tiny")
    with pytest.raises(ValueError, match="two shift presets"):
        _config("cifar10", "dirichlet_1.2,dirichlet_mix_0.1")
    assert presets.parse_arg(" small , ") == presets.Arg(small=True, preset=None)


def test_new_fields_keep_digits_as_before():
    config = _config("digits")
    dataset_defaults = base.get_config().dataset
    assert config.augment.name == "none"
    options = {k: v for k, v in config.dataset.items() if k != "name"}
    assert options["data_dir"] == dataset_defaults.data_dir == ""
    ds = data.load_dataset("digits", **options)
    reference = data.load_digits()
    np.testing.assert_array_equal(ds.train_x, reference.train_x)
    assert ds.train_x.dtype == np.float32 and ds.mean == (0.0,) and ds.std == (1.0,)
