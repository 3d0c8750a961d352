"""The paper's settings shared by its dataset configs, and the ``arg`` of their ``get_config``.

A dataset config is chosen as ``--config configs/<name>.py[:<arg>]``; ``arg`` is a
comma-separated list of

- ``small``: the same code path on fewer, smaller examples, fewer rounds and epochs, to
  finish in minutes on a few CPU cores;
- one shift preset of :data:`SHIFT_PRESETS` (e.g. ``dirichlet_mix_0.1``), the paper's shift
  settings by one value.

For example ``--config configs/cifar10.py:small,dirichlet_target_0.4``.
"""

from __future__ import annotations

import dataclasses

import ml_collections

# Preset -> (shift.strategy, shift.alpha): the shifts of the paper's CIFAR experiments.
SHIFT_PRESETS: dict[str, tuple[str, float]] = {
    "dirichlet_mix_0.7": ("dirichlet_mix", 0.7),  # the main "warm start" setting
    "dirichlet_mix_5.0": ("dirichlet_mix", 5.0),  # alpha ablation
    "dirichlet_mix_1.0": ("dirichlet_mix", 1.0),
    "dirichlet_mix_0.1": ("dirichlet_mix", 0.1),
    "dirichlet_target_0.4": ("dirichlet_target", 0.4),
    "dirichlet_1.2": ("dirichlet", 1.2),
    "dirichlet_online_3.0": ("dirichlet_online", 3.0),  # the "online" setting
}


@dataclasses.dataclass(frozen=True)
class Arg:
    """What a config's ``arg`` asks for."""

    small: bool = False
    preset: str | None = None


def parse_arg(arg: str | None) -> Arg:
    """``"small,dirichlet_mix_0.1"`` -> ``Arg(small=True, preset="dirichlet_mix_0.1")``.

    An unknown token or two presets raise a one-line ``ValueError`` listing what is allowed.
    """
    small, presets = False, []
    for token in (t.strip() for t in (arg or "").split(",")):
        if not token:
            continue
        if token == "small":
            small = True
        elif token in SHIFT_PRESETS:
            presets.append(token)
        else:
            raise ValueError(
                f"config argument {token!r} is not known; use 'small' and/or one of "
                f"{', '.join(SHIFT_PRESETS)}"
            )
    if len(presets) > 1:
        raise ValueError(f"config argument names two shift presets {presets}; pick one")
    return Arg(small, presets[0] if presets else None)


def apply_shift_preset(config: ml_collections.ConfigDict, preset: str | None) -> None:
    """Set ``shift.strategy`` and ``shift.alpha`` to the preset's (nothing if None)."""
    if preset is not None:
        config.shift.strategy, config.shift.alpha = SHIFT_PRESETS[preset]


def resnet_lowerings(config: ml_collections.ConfigDict) -> None:
    """XLA's convolution for training and prediction. For the ResNets it is also the faster
    lowering on CPU (benchmarks/bench_resnet.py, 2 shared cores: shifted_matmul trains at
    0.81x and predicts at 0.62x of XLA's speed for ResNet-18 on 32x32, 0.94x and 0.69x for
    ResNet-34 on 24x24), unlike for the small MNIST CNN."""
    config.model.conv_impl = "xla"
    config.model.inference_conv_impl = "xla"


def paper_training(config: ml_collections.ConfigDict) -> None:
    """The paper's CIFAR / NABirds training and query settings (REFERENCE "Paper settings"):
    SGD with momentum 0.9 and weight decay 5e-4, learning rate 0.1 (fine-tuning 0.02)
    divided by 4 at epochs 20, 40, 60 (fine-tuning 3, 6, 10) after one warm-up epoch,
    batch 128, 80 initial and 10 fine-tuning epochs, RLLS regulariser 2e-6, 40% of the pool
    bought."""
    t = config.train
    t.optimizer, t.schedule = "sgd", "step"
    t.learning_rate, t.finetune_learning_rate, t.gamma = 0.1, 0.02, 0.25
    t.milestones, t.finetune_milestones = (20, 40, 60), (3, 6, 10)
    t.warm_epochs = 1
    t.momentum, t.weight_decay = 0.9, 5e-4
    t.batch_size, t.eval_batch_size = 128, 512
    t.initial_epochs, t.partial_epochs = 80, 10
    config.label_shift.rlls_reg = 2e-6
    config.query.sample_prop = 0.4


def small_cifar(config: ml_collections.ConfigDict) -> None:
    """The ``small`` variant of the CIFAR configs: 400 examples, 2 rounds, 2 initial and
    1 fine-tuning epoch."""
    config.shift.dataset_cap = 400
    config.query.num_batches = 2
    config.train.initial_epochs = 2
    config.train.partial_epochs = 1


def small_nabirds(config: ml_collections.ConfigDict) -> None:
    """The ``small`` variant of the NABirds configs: 32x32 stored images cropped to 24,
    300 examples (150 to test), 2 rounds, 1 initial and 1 fine-tuning epoch: a check of
    the code path, too small to learn 228 groups."""
    config.dataset.image_size = 32
    config.augment.crop_size = 24
    config.shift.dataset_cap = 300
    config.shift.test_size = 150
    config.query.num_batches = 2
    config.train.initial_epochs = 1
    config.train.partial_epochs = 1
