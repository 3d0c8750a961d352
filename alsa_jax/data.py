"""Datasets as fixed NumPy arrays: images NHWC float32 in [0, 1], labels int32.

A loader returns a :class:`Dataset` with a train and a test part; the shift simulation
(:mod:`alsa_jax.shift`) then resamples index sets from them. Loaders are registered
in :data:`DATASETS` by the name used in ``config.dataset.name``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np

from alsa_jax import validation


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test arrays of one dataset.

    ``train_x`` [N, H, W, C] float32, ``train_y`` [N] int32, likewise ``test_*``;
    ``num_classes`` k; ``class_names`` optional list of k names.
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. (8, 8, 1)."""
        return tuple(self.train_x.shape[1:])


def _stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test) holding ``test_fraction`` of every class in the test part."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(rows)))
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(*, test_fraction: float = 1 / 3, split_seed: int = 0, **_: object) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).

    Pixel values 0..16 are scaled to [0, 1]; images are [8, 8, 1]. The fixed,
    class-stratified train/test split is drawn with ``split_seed`` (independent of the
    experiment seed, so every run sees the same split).
    """
    from sklearn.datasets import load_digits as sk_load_digits

    validation.check_in_range("dataset.test_fraction", test_fraction, 0.05, 0.95)
    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    y = bunch.target.astype(np.int32)
    train, test = _stratified_split(y, test_fraction, split_seed)
    return Dataset(
        "digits", x[train], y[train], x[test], y[test], 10, tuple(str(i) for i in range(10))
    )


def _as_images(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 2:  # flat features: one row image of width d
        x = x[:, None, :, None]
    elif x.ndim == 3:  # [N, H, W] grey images
        x = x[..., None]
    elif x.ndim != 4:
        raise ValueError(f"{name} must be [N, H, W, C], [N, H, W] or [N, D], got {x.shape}")
    x = x.astype(np.float32)
    if x.size and x.max() > 1.5:  # 0..255 pixels
        x = x / 255.0
    return x


def load_npz(*, path: str = "", num_classes: int = 0, **_: object) -> Dataset:
    """A user's own arrays from one ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``.

    Images may be [N, H, W, C], [N, H, W] or flat features [N, D]; uint8 pixels are
    scaled to [0, 1]. Labels must be integers 0..k-1; ``num_classes`` defaults to
    max(label) + 1.
    """
    if not path:
        raise ValueError("dataset.path is empty; set --config.dataset.path=/path/to/arrays.npz")
    if not os.path.exists(path):
        raise ValueError(f"dataset.path={path!r} does not exist; point it at a .npz file")
    with np.load(path) as arrays:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
        if missing:
            raise ValueError(
                f"dataset.path={path!r} lacks arrays {missing}; "
                "save x_train, y_train, x_test, y_test"
            )
        train_x = _as_images("x_train", arrays["x_train"])
        test_x = _as_images("x_test", arrays["x_test"])
        train_y = np.asarray(arrays["y_train"]).astype(np.int32).reshape(-1)
        test_y = np.asarray(arrays["y_test"]).astype(np.int32).reshape(-1)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(f"dataset.path={path!r}: x and y arrays differ in length")
    k = int(num_classes) or int(max(train_y.max(), test_y.max())) + 1
    if train_y.min() < 0 or max(train_y.max(), test_y.max()) >= k:
        raise ValueError(
            f"dataset.num_classes={k} does not cover the labels; labels must be 0..k-1"
        )
    return Dataset("npz", train_x, train_y, test_x, test_y, k)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "npz": load_npz,
}


def load_dataset(name: str, **options: object) -> Dataset:
    """Load the dataset registered as ``name`` with its ``options`` (config fields)."""
    validation.check_choice("dataset.name", name, DATASETS)
    return DATASETS[name](**options)
