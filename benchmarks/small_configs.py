"""Wall time of each paper config's ``:small`` variant, end to end, on generated raw data.

    python benchmarks/small_configs.py [--configs mnist cifar10 cifar100 nabirds nabirds_child]

The real datasets cannot be downloaded on every machine, so each dataset is written in the
raw format its TFDS builder reads (tests/tfds_raw.py: MNIST idx.gz, the CIFAR binary
tarballs, nabirds.tar.gz with all six text files and a hierarchy of 22 children and 228
grand groups), prepared by the builder and run with ``--config configs/<name>.py:small`` as
a user would (the same code path as the full run: uint8 stores, augmentation, the ResNets).
The pixels are noise, so accuracy means nothing here; the figures are the time to prepare
the data and the time of the run, the run's phases and its compilation.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import tfds_raw  # noqa: E402

from alsa_jax import data  # noqa: E402
from launch import replicate  # noqa: E402


class _Patch:
    """Attribute patches undone at exit (the checksums of generated files, MNIST's sizes)."""

    def __init__(self):
        self.undo = []

    def setattr(self, target, name, value):
        # An attribute the target only inherits (or computes) is deleted again, not set to
        # its current value: a subclass (CIFAR-100's builder derives from CIFAR-10's) must
        # not inherit the patched value afterwards.
        own = isinstance(target, type) and name in vars(target)
        saved = vars(target)[name] if own else getattr(target, name, None)
        self.undo.append((target, name, saved, own or not isinstance(target, type)))
        setattr(target, name, value)

    def close(self):
        for target, name, value, restore in reversed(self.undo):
            if restore:
                setattr(target, name, value)
            else:
                delattr(target, name)


def _noise(rng, n, shape):
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


def write(name: str, data_dir: str, patch: _Patch, rng: np.random.Generator) -> None:
    """Raw files of dataset ``name`` in ``data_dir``'s TFDS manual dir."""
    manual = os.path.join(data_dir, "downloads", "manual")
    if name == "mnist":
        from tensorflow_datasets.image_classification import mnist

        train, test = 6000, 1000
        tfds_raw.write_mnist(
            manual,
            _noise(rng, train, (28, 28)),
            np.arange(train) % 10,
            _noise(rng, test, (28, 28)),
            np.arange(test) % 10,
        )
        patch.setattr(mnist, "_TRAIN_EXAMPLES", train)
        patch.setattr(mnist, "_TEST_EXAMPLES", test)
    elif name == "cifar10":
        tfds_raw.write_cifar10(
            manual,
            _noise(rng, 5000, (32, 32, 3)),
            np.arange(5000) % 10,
            _noise(rng, 1000, (32, 32, 3)),
            np.arange(1000) % 10,
            [f"class{i}" for i in range(10)],
        )
    elif name == "cifar100":
        tfds_raw.write_cifar100(
            manual,
            _noise(rng, 5000, (32, 32, 3)),
            np.arange(5000) % 100,
            _noise(rng, 2000, (32, 32, 3)),
            np.arange(2000) % 100,
            [f"fine{i}" for i in range(100)],
            [f"coarse{i}" for i in range(20)],
            np.arange(100) // 5,
        )
    else:  # nabirds: 22 children of the root, 228 grand groups, two leaves under each
        parents, names, photos = {}, {0: "Birds"}, []
        for g in range(228):
            child, grand = 1 + g % 22, 100 + g
            parents[child], parents[grand] = 0, child
            names[child], names[grand] = f"child{child}", f"grand{grand}"
            for leaf in (10_000 + 2 * g, 10_001 + 2 * g):
                parents[leaf], names[leaf] = grand, f"leaf{leaf}"
                for i in range(21):  # 15 train and 6 test photos a leaf
                    pixels = _noise(rng, 1, (40, 40, 3))[0]
                    photos.append(
                        tfds_raw.BirdPhoto(f"{leaf}-{i}", leaf, i < 15, (2, 2, 36, 36), pixels)
                    )
        tfds_raw.write_nabirds(manual, photos, names, parents)
        return
    tfds_raw.register_checksums(patch, name, manual)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", nargs="*", default=["mnist", "cifar10", "cifar100", "nabirds", "nabirds_child"]
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for name in args.configs:
        config = importlib.import_module(f"configs.{name}").get_config("small")
        dataset = config.dataset.name
        with tempfile.TemporaryDirectory() as tmp:
            patch = _Patch()
            try:
                write(dataset, tmp, patch, rng)
                start = time.perf_counter()
                data.load_dataset(
                    dataset,
                    data_dir=tmp,
                    label_granularity=config.dataset.label_granularity,
                    image_size=config.dataset.image_size,
                )
                prepared = time.perf_counter() - start
                config.dataset.data_dir = tmp
                start = time.perf_counter()
                history = replicate.run(config, os.path.join(tmp, "run"), verbose=False)
                ran = time.perf_counter() - start
            finally:
                patch.close()
        seconds = {
            key: sum(r.get(key, 0.0) for r in history)
            for key in ("seconds_h0", "seconds_finetune", "seconds_prediction")
        }
        rows.append((name, prepared, ran, seconds, sum(r["compilations"] for r in history)))
        print(f"{name}: prepared in {prepared:.1f}s, ran in {ran:.1f}s", flush=True)
    print(
        f"\n{'config':<16}{'prepare s':>10}{'run s':>8}{'h0 s':>8}{'fit s':>8}"
        f"{'predict s':>10}{'compiles':>9}"
    )
    for name, prepared, ran, seconds, compiles in rows:
        print(
            f"{name + ':small':<16}{prepared:>10.1f}{ran:>8.1f}{seconds['seconds_h0']:>8.1f}"
            f"{seconds['seconds_finetune']:>8.1f}{seconds['seconds_prediction']:>10.1f}"
            f"{compiles:>9d}"
        )


if __name__ == "__main__":
    main()
