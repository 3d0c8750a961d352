"""The paper's datasets end to end: raw files -> TFDS's builders -> a 2-round replicate run.

Each dataset is written in the raw format its TFDS builder reads (tests/tfds_raw.py),
prepared by the real builder and loaded through exactly the path that real data takes
(uint8 images stored once, normalised and augmented per batch on the device), then run
through the launcher for two rounds with its own config's ``small`` variant, shrunk further
and with the MNIST CNN as the network so that the run takes seconds (the ResNets have their
own tests in tests/test_models.py, and one ResNet run is marked slow below).
"""

import importlib
import json

import numpy as np
import pytest
import tfds_raw

from alsa_jax import data, experiment
from launch import replicate

TINY = {
    "shift.dataset_cap": 120,
    "shift.test_size": 60,
    "query.num_batches": 2,
    "query.sample_prop": 0.2,
    "train.initial_epochs": 1,
    "train.partial_epochs": 1,
    "train.batch_size": 16,
    "train.eval_batch_size": 64,
    "train.warm_epochs": 0,
}


def _config(name, data_dir, **overrides):
    config = importlib.import_module(f"configs.{name}").get_config("small")
    for dotted, value in {**TINY, "dataset.data_dir": data_dir, **overrides}.items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def _images(seed, n, shape):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _run(config, workdir):
    history = replicate.run(config, str(workdir), verbose=False)
    assert [r["round"] for r in history] == [0, 1, 2]
    assert history[-1]["labels_bought"] > 0
    with open(workdir / "results.json") as f:
        stored = json.load(f)
    assert len(stored["rounds"]) == 3
    return history


def test_mnist_two_rounds(tmp_path, monkeypatch):
    from tensorflow_datasets.image_classification import mnist

    train_y, test_y = np.arange(300) % 10, np.arange(150) % 10
    manual = tmp_path / "downloads" / "manual"
    tfds_raw.write_mnist(
        manual, _images(0, 300, (28, 28)), train_y, _images(1, 150, (28, 28)), test_y
    )
    tfds_raw.register_checksums(monkeypatch, "mnist", manual)
    monkeypatch.setattr(mnist, "_TRAIN_EXAMPLES", 300)
    monkeypatch.setattr(mnist, "_TEST_EXAMPLES", 150)
    config = _config("mnist", str(tmp_path))
    exp = experiment.setup(replicate.options_of(config))
    # Stored once as uint8, normalised on the device with MNIST's statistics.
    assert exp.train_images.dtype == np.uint8 and exp.train_images.shape == (300, 28, 28, 1)
    assert exp.transform is not None and exp.transform.mean == (0.1307,)
    _run(config, tmp_path / "run")


def test_cifar10_two_rounds_with_augmentation(tmp_path, monkeypatch):
    names = [f"class{i}" for i in range(10)]
    train_y, test_y = np.arange(300) % 10, np.arange(150) % 10
    manual = tmp_path / "downloads" / "manual"
    tfds_raw.write_cifar10(
        manual, _images(2, 300, (32, 32, 3)), train_y, _images(3, 150, (32, 32, 3)), test_y, names
    )
    tfds_raw.register_checksums(monkeypatch, "cifar10", manual)
    config = _config("cifar10", str(tmp_path), **{"model.name": "cnn"})
    exp = experiment.setup(replicate.options_of(config))
    assert exp.transform.augment == "cifar" and exp.input_shape == (32, 32, 3)
    assert exp.class_names == tuple(names)
    _run(config, tmp_path / "run")


def test_cifar100_two_rounds(tmp_path, monkeypatch):
    fine = [f"fine{i}" for i in range(100)]
    coarse = [f"coarse{i}" for i in range(20)]
    train_y, test_y = np.arange(2500) % 100, np.arange(1200) % 100
    manual = tmp_path / "downloads" / "manual"
    tfds_raw.write_cifar100(
        manual,
        _images(4, 2500, (32, 32, 3)),
        train_y,
        _images(5, 1200, (32, 32, 3)),
        test_y,
        fine,
        coarse,
        np.arange(100) // 5,
    )
    tfds_raw.register_checksums(monkeypatch, "cifar100", manual)
    config = _config(
        "cifar100",
        str(tmp_path),
        **{"model.name": "mlp", "shift.dataset_cap": 600, "shift.test_size": 300},
    )
    history = _run(config, tmp_path / "run")
    assert len(history[0]["per_class_accuracy"]) == 100


def _birds(per_leaf_train, per_leaf_test):
    """Photos of three groups under the root (two leaves each), their boxes coloured."""
    parents = {1: 0, 2: 0, 3: 0, 11: 1, 12: 1, 21: 2, 22: 2, 31: 3, 32: 3}
    names = {0: "Birds", 1: "Perching", 2: "Waterbirds", 3: "Owls"}
    names |= {11: "Finch", 12: "Wren", 21: "Duck", 22: "Loon", 31: "Barn Owl", 32: "Snowy Owl"}
    rng = np.random.default_rng(0)
    photos = []
    for leaf in (11, 12, 21, 22, 31, 32):
        for i in range(per_leaf_train + per_leaf_test):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            photos.append(
                tfds_raw.BirdPhoto(
                    f"{leaf}-{i:04d}", leaf, i < per_leaf_train, (2, 1, 18, 16), pixels
                )
            )
    return photos, names, parents


def test_nabirds_two_rounds_with_crops_and_group_names(tmp_path):
    photos, names, parents = _birds(per_leaf_train=40, per_leaf_test=20)
    tfds_raw.write_nabirds(tmp_path / "downloads" / "manual", photos, names, parents)
    config = _config(
        "nabirds_child",
        str(tmp_path),
        **{
            "model.name": "cnn",
            "dataset.image_size": 16,
            "augment.crop_size": 12,
            "shift.dataset_cap": 120,
        },
    )
    exp = experiment.setup(replicate.options_of(config))
    assert exp.class_names == ("Perching", "Waterbirds", "Owls")
    # Stored at 16x16, trained and predicted on 12x12 crops (random, then centre).
    assert exp.train_images.shape[1:] == (16, 16, 3) and exp.input_shape == (12, 12, 3)
    dataset = data.load_dataset("nabirds", **exp.options.dataset.loader_options())
    assert dataset.num_classes == 3
    _run(config, tmp_path / "run")


@pytest.mark.slow
def test_cifar10_two_rounds_with_the_resnet(tmp_path, monkeypatch):
    names = [f"class{i}" for i in range(10)]
    train_y, test_y = np.arange(300) % 10, np.arange(150) % 10
    manual = tmp_path / "downloads" / "manual"
    tfds_raw.write_cifar10(
        manual, _images(2, 300, (32, 32, 3)), train_y, _images(3, 150, (32, 32, 3)), test_y, names
    )
    tfds_raw.register_checksums(monkeypatch, "cifar10", manual)
    _run(_config("cifar10", str(tmp_path)), tmp_path / "run")
