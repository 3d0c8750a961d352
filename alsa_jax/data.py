"""Datasets as fixed host arrays, and their per-batch normalisation on the device.

A loader returns a :class:`Dataset` with a train and a test part; the shift simulation
(:mod:`alsa_jax.shift`) then resamples index sets from them. Loaders are registered in
:data:`DATASETS` by the name used in ``config.dataset.name``:

- ``digits``: scikit-learn's bundled 8x8 digits (float32 in [0, 1]);
- ``npz``: a user's own arrays (float32 in [0, 1]);
- ``mnist``, ``cifar10``, ``cifar100``: TensorFlow Datasets' own builders;
- ``nabirds``: :mod:`alsa_jax.datasets.nabirds` (manual download of nabirds.tar.gz).

Image datasets stay uint8 on the host (``[N, H, W, C]``); :func:`normalize` turns one
batch into float32 ``(x / 255 - mean) / std`` on the device, so no float copy of a whole
image dataset is ever made.

TFDS datasets are read from ``dataset.data_dir`` (TFDS's data_dir; empty = ``$TFDS_DATA_DIR``
or ``~/tensorflow_datasets``) with ``tfds`` data sources over ``array_record`` files, which
needs no TensorFlow. A dataset that is not prepared there is prepared from the downloads in
the manual dir (``dataset.manual_dir``, empty = ``<data_dir>/downloads/manual``); if those are
absent too, the loader stops at once with a one-line error saying how to prepare the data on
a machine with internet (``python -m alsa_jax.datasets NAME --data_dir DIR``) and copy it in,
instead of letting TFDS retry downloads for minutes. ``dataset.download=True`` lets TFDS
download (on a machine with internet).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import importlib.util
import os
import zipfile
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from alsa_jax import validation


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test arrays of one dataset.

    ``train_x`` [N, H, W, C] (uint8 for image datasets, float32 for digits and npz),
    ``train_y`` [N] int32, likewise ``test_*``; ``num_classes`` k; ``class_names`` k names
    (or empty); ``mean`` and ``std`` [C]: the per-channel statistics that
    :func:`normalize` removes (of pixel values in [0, 1]; 0 and 1 for float datasets, which
    are used as they are).
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        channels = self.train_x.shape[-1]
        if not self.mean:
            object.__setattr__(self, "mean", (0.0,) * channels)
        if not self.std:
            object.__setattr__(self, "std", (1.0,) * channels)
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"dataset {self.name}: mean and std need one value per channel ({channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one stored example, e.g. (8, 8, 1)."""
        return tuple(self.train_x.shape[1:])


@jax.jit
def normalize(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """One batch as the network sees it: ``(x / 255 - mean) / std`` for uint8 pixels,
    ``(x - mean) / std`` for float inputs.

    ``x``: ``[B, H, W, C]`` (any leading shape), uint8 or float; ``mean``, ``std``: ``[C]``.
    Returns float32 of ``x``'s shape. With mean 0 and std 1 a float batch comes back
    unchanged.
    """
    x = jnp.asarray(x)
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    validation.check_shape("mean", mean, (x.shape[-1],))
    validation.check_shape("std", std, (x.shape[-1],))
    if x.dtype == jnp.uint8:
        x = x.astype(jnp.float32) / 255.0
    else:
        x = x.astype(jnp.float32)
    return (x - mean) / std


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

    Pixel values 0..16 are scaled to [0, 1]; images are [8, 8, 1] float32. The fixed,
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


def _check_finite(path: str, name: str, values: np.ndarray) -> None:
    """Raise naming the array and its first row holding NaN or inf."""
    if not np.issubdtype(values.dtype, np.floating):
        return
    finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise ValueError(
            f"dataset.path={path!r}: {name} has NaN or inf in row {row}; clean or drop that row"
        )


def _labels(path: str, name: str, values: np.ndarray) -> np.ndarray:
    """``values`` as int32 class labels; non-finite or fractional labels name their row."""
    values = np.asarray(values).reshape(-1)
    _check_finite(path, name, values)
    if np.issubdtype(values.dtype, np.floating):
        fractional = values != np.round(values)
        if fractional.any():
            row = int(np.argmax(fractional))
            raise ValueError(
                f"dataset.path={path!r}: {name} row {row} holds {values[row]}, "
                "not an integer class label"
            )
    elif not np.issubdtype(values.dtype, np.integer) and values.dtype != bool:
        raise ValueError(f"dataset.path={path!r}: {name} must hold integer class labels")
    return values.astype(np.int32)


def load_npz(*, path: str = "", num_classes: int = 0, **_: object) -> Dataset:
    """A user's own arrays from one ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``.

    Images may be [N, H, W, C], [N, H, W] or flat features [N, D]; uint8 pixels are
    scaled to [0, 1] float32. Labels must be integers 0..k-1; ``num_classes`` defaults to
    max(label) + 1. NaN or inf in any array is refused with the array's name and first bad
    row.
    """
    if not path:
        raise ValueError("dataset.path is empty; set --config.dataset.path=/path/to/arrays.npz")
    if not os.path.exists(path):
        raise ValueError(f"dataset.path={path!r} does not exist; point it at a .npz file")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"dataset.path={path!r} is not an .npz file; save the arrays with numpy.savez"
        )
    with np.load(path, allow_pickle=False) as arrays:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
        if missing:
            raise ValueError(
                f"dataset.path={path!r} lacks arrays {missing}; "
                "save x_train, y_train, x_test, y_test"
            )
        raw = {k: arrays[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    for name in ("x_train", "x_test"):
        if raw[name].ndim == 0 or not len(raw[name]):
            raise ValueError(f"dataset.path={path!r}: {name} is empty")
        _check_finite(path, name, raw[name])
    train_x = _as_images("x_train", raw["x_train"])
    test_x = _as_images("x_test", raw["x_test"])
    train_y = _labels(path, "y_train", raw["y_train"])
    test_y = _labels(path, "y_test", raw["y_test"])
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(f"dataset.path={path!r}: x and y arrays differ in length")
    k = int(num_classes) or int(max(train_y.max(), test_y.max())) + 1
    if min(train_y.min(), test_y.min()) < 0 or max(train_y.max(), test_y.max()) >= k:
        raise ValueError(
            f"dataset.num_classes={k} does not cover the labels; labels must be 0..k-1"
        )
    return Dataset("npz", train_x, train_y, test_x, test_y, k)


# ---------------------------------------------------------------------------------------
# TensorFlow Datasets.


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    """How a TFDS dataset is loaded: its builder's name, the per-channel mean and std of its
    pixels in [0, 1] (None: the builder's module holds them), and whether preparing it from
    the raw downloads runs TensorFlow (TFDS's own MNIST and CIFAR builders read their files
    with ``tf.io.gfile`` and encode images with ``tf.image``; reading never needs it)."""

    builder: str
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    prepare_needs_tensorflow: bool


TFDS_DATASETS: dict[str, TfdsSpec] = {
    # The original's normalisation constants (MNIST, CIFAR-100, NABirds). It left CIFAR-10
    # unnormalised; here it gets its training set's per-channel statistics.
    "mnist": TfdsSpec("mnist", (0.1307,), (0.3081,), True),
    "cifar10": TfdsSpec(
        "cifar10",
        (0.49139968, 0.48215841, 0.44653091),
        (0.24703223, 0.24348513, 0.26158784),
        True,
    ),
    "cifar100": TfdsSpec(
        "cifar100",
        (0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
        (0.2673342858792401, 0.2564384629170883, 0.27615047132568404),
        True,
    ),
    # alsa_jax.datasets.nabirds.MEAN / STD, imported with the builder (and TFDS) when needed.
    "nabirds": TfdsSpec("nabirds", None, None, False),
}


def resolve_data_dir(data_dir: str = "") -> str:
    """TFDS's data_dir: ``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    chosen = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.abspath(os.path.expanduser(chosen))


def resolve_manual_dir(data_dir: str, manual_dir: str = "") -> str:
    """Where manual downloads are read from: ``manual_dir`` or ``<data_dir>/downloads/manual``."""
    if manual_dir:
        return os.path.abspath(os.path.expanduser(manual_dir))
    return os.path.join(data_dir, "downloads", "manual")


def _has_tensorflow() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _builder(name: str, data_dir: str, image_size: int, **kwargs: object):
    """The TFDS builder of dataset ``name`` (a key of :data:`TFDS_DATASETS`) in ``data_dir``."""
    import tensorflow_datasets as tfds

    if name == "nabirds":
        from alsa_jax.datasets import nabirds

        return nabirds.Nabirds(
            config=nabirds.builder_config(image_size), data_dir=data_dir, **kwargs
        )
    return tfds.builder(TFDS_DATASETS[name].builder, data_dir=data_dir, **kwargs)


def _missing_downloads(name: str, builder, manual_dir: str) -> list[str]:
    """File names of the raw downloads that neither the manual dir nor TFDS's cache holds."""
    if name == "nabirds":
        from alsa_jax.datasets import nabirds

        return [] if nabirds.find_source(manual_dir) else [nabirds.ARCHIVE]
    from tensorflow_datasets.core.download import resource

    downloads = os.path.join(builder.data_dir_root, "downloads")
    missing = []
    for url, info in sorted((builder.url_infos or {}).items()):
        cached = resource.get_dl_fname(url, info.checksum)
        places = (
            os.path.join(manual_dir, info.filename or ""),
            os.path.join(downloads, builder.name, cached),
            os.path.join(downloads, cached),
        )
        if not any(os.path.isfile(p) for p in places):
            missing.append(info.filename or url)
    return missing


def _absent_message(name: str, data_dir: str, manual_dir: str, missing: list[str]) -> str:
    where = f"dataset.name={name!r} is not prepared in dataset.data_dir={data_dir!r}"
    prepare = (
        f"on a machine with internet run `python -m alsa_jax.datasets {name} --data_dir DIR` "
        f"and copy DIR/{name} into {data_dir}"
    )
    if name == "nabirds":
        return (
            f"{where} and {manual_dir} holds no nabirds.tar.gz; download it from "
            f"https://dl.allaboutbirds.org/nabirds into {manual_dir}, or {prepare} "
            "(with --manual_dir pointing at the archive)"
        )
    return (
        f"{where} and its downloads ({', '.join(missing)}) are not in {manual_dir}; {prepare}, "
        f"or copy those files into {manual_dir}"
    )


def prepare(
    name: str,
    *,
    data_dir: str = "",
    manual_dir: str = "",
    image_size: int = 200,
    download: bool = False,
):
    """Make sure dataset ``name`` is prepared in ``data_dir``; return its TFDS builder.

    A prepared dataset is used as it is. Otherwise it is prepared (``array_record`` files)
    from the raw downloads in the manual dir, or, with ``download=True``, from the internet.
    Without ``download`` and without the raw files it raises at once a one-line
    ``ValueError`` naming the dataset, the data_dir and how to prepare the data elsewhere
    and copy it in; nothing is fetched. ``image_size``: NABirds' stored side.
    """
    validation.check_choice("dataset.name", name, TFDS_DATASETS)
    data_dir = resolve_data_dir(data_dir)
    manual_dir = resolve_manual_dir(data_dir, manual_dir)
    builder = _builder(name, data_dir, image_size)
    # TFDS's is_prepared() logs a warning for a missing folder; look for its info file first.
    if os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json")):
        if builder.is_prepared():
            return builder
    import tensorflow_datasets as tfds

    if not download:
        missing = _missing_downloads(name, builder, manual_dir)
        if missing:
            raise ValueError(_absent_message(name, data_dir, manual_dir, missing))
    if TFDS_DATASETS[name].prepare_needs_tensorflow and not _has_tensorflow():
        raise ValueError(
            f"dataset.name={name!r} is not prepared in {data_dir}, and preparing it runs "
            "TFDS's own builder, which needs TensorFlow: pip install tensorflow-cpu (or "
            "alsa_jax[prepare]), or prepare it elsewhere with `python -m alsa_jax.datasets "
            f"{name} --data_dir DIR` and copy DIR/{name} into {data_dir}"
        )
    builder = _builder(name, data_dir, image_size, file_format="array_record")
    config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    try:
        builder.download_and_prepare(download_config=config)
    except tfds.core.download.download_manager.NonMatchingChecksumError as error:
        first = str(error).splitlines()[0]
        raise ValueError(
            f"dataset.name={name!r}: a download is not the official file ({first}); "
            f"replace it in {manual_dir}"
        ) from None
    return builder


def _read_split(builder, split: str, label_key: str, chunk: int = 256):
    """``(images [N, H, W, C] uint8, labels [N] int32)`` of one prepared split.

    The image array is allocated once and filled ``chunk`` records at a time by one thread
    per CPU core (decoding releases the GIL), so the peak host memory is the array plus a
    few chunks of decoded records.
    """
    info = builder.info
    n = info.splits[split].num_examples
    shape = tuple(info.features["image"].shape)
    if None in shape:
        raise ValueError(f"{builder.name}: images of varying size {shape} cannot be stacked")
    images = np.empty((n, *shape), np.uint8)
    labels = np.empty((n,), np.int32)
    file_format = info.file_format.value if info.file_format else "tfrecord"
    if file_format == "array_record":
        source = builder.as_data_source(split=split)

        def fill(start: int) -> None:
            rows = range(start, min(n, start + chunk))
            for row, record in zip(rows, source.__getitems__(list(rows)), strict=True):
                images[row] = record["image"]
                labels[row] = record[label_key]

        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(fill, range(0, n, chunk)))
        return images, labels
    if not _has_tensorflow():
        raise ValueError(
            f"{builder.name} in {builder.data_dir} is stored as {file_format}, which only "
            "TensorFlow reads; pip install tensorflow-cpu, or prepare it again as array_record "
            f"with `python -m alsa_jax.datasets {builder.name} --data_dir DIR`"
        )
    import tensorflow_datasets as tfds

    dataset = builder.as_dataset(split=split, batch_size=chunk, shuffle_files=False)
    start = 0
    for batch in tfds.as_numpy(dataset):
        stop = start + len(batch[label_key])
        images[start:stop] = batch["image"]
        labels[start:stop] = batch[label_key]
        start = stop
    return images, labels


def load_tfds(
    name: str,
    *,
    data_dir: str = "",
    manual_dir: str = "",
    label_granularity: str = "grand",
    image_size: int = 200,
    download: bool = False,
    **_: object,
) -> Dataset:
    """Dataset ``name`` of :data:`TFDS_DATASETS` through TFDS, prepared if need be
    (:func:`prepare`).

    Images come back uint8 ``[N, H, W, C]`` as stored (MNIST 28x28x1, CIFAR 32x32x3,
    NABirds ``image_size`` squared x 3), labels int32, class names from the dataset's
    ``ClassLabel``. NABirds labels are the ``label_granularity`` groups (``child``,
    ``grand`` or ``leaf``) numbered 0..K-1.
    """
    spec = TFDS_DATASETS[name]
    mean, std, label_key = spec.mean, spec.std, "label"
    if name == "nabirds":
        from alsa_jax.datasets import nabirds

        validation.check_choice(
            "dataset.label_granularity", label_granularity, nabirds.GRANULARITIES
        )
        if not isinstance(image_size, (int, np.integer)) or image_size < 8:
            raise ValueError(f"dataset.image_size must be an int >= 8, got {image_size!r}")
        mean, std = nabirds.MEAN, nabirds.STD
        label_key = "label" if label_granularity == "leaf" else label_granularity
    builder = prepare(
        name,
        data_dir=data_dir,
        manual_dir=manual_dir,
        image_size=int(image_size),
        download=download,
    )
    train_x, train_y = _read_split(builder, "train", label_key)
    test_x, test_y = _read_split(builder, "test", label_key)
    class_names = tuple(builder.info.features[label_key].names)
    return Dataset(name, train_x, train_y, test_x, test_y, len(class_names), class_names, mean, std)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "npz": load_npz,
    **{name: functools.partial(load_tfds, name) for name in TFDS_DATASETS},
}


def load_dataset(name: str, **options: object) -> Dataset:
    """Load the dataset registered as ``name`` with its ``options`` (config fields)."""
    validation.check_choice("dataset.name", name, DATASETS)
    return DATASETS[name](**options)
