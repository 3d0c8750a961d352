import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tfds_raw

from alsa_jax import data


def test_digits_split_is_stratified_and_fixed():
    ds = data.load_dataset("digits")
    assert ds.input_shape == (8, 8, 1)
    assert ds.num_classes == 10
    assert len(ds.train_y) + len(ds.test_y) == 1797
    assert 0.0 <= ds.train_x.min() and ds.train_x.max() <= 1.0
    # Each class keeps about a third of its rows in the test part.
    for c in range(10):
        n_test, n_train = (ds.test_y == c).sum(), (ds.train_y == c).sum()
        assert abs(n_test / (n_test + n_train) - 1 / 3) < 0.01
    again = data.load_dataset("digits")
    np.testing.assert_array_equal(ds.test_y, again.test_y)
    np.testing.assert_array_equal(ds.train_x, again.train_x)


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "arrays.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (20, 4, 4), dtype=np.uint8),
        y_train=rng.integers(0, 3, 20),
        x_test=rng.integers(0, 256, (6, 4, 4), dtype=np.uint8),
        y_test=np.array([0, 1, 2, 0, 1, 2]),
    )
    ds = data.load_dataset("npz", path=str(path))
    assert ds.train_x.shape == (20, 4, 4, 1) and ds.train_x.dtype == np.float32
    assert ds.train_x.max() <= 1.0
    assert ds.num_classes == 3


def test_bad_input_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="dataset.name"):
        data.load_dataset("imagenet21k")
    with pytest.raises(ValueError, match="dataset.path"):
        data.load_dataset("npz", path=str(tmp_path / "missing.npz"))
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=np.zeros((2, 3)), y_train=np.zeros(2))
    with pytest.raises(ValueError, match="x_test"):
        data.load_dataset("npz", path=str(path))


# ---------------------------------------------------------------------------------------
# Normalisation and the npz checks.


def test_digits_stay_float_and_normalize_leaves_them_unchanged():
    ds = data.load_dataset("digits")
    assert ds.train_x.dtype == np.float32
    assert ds.mean == (0.0,) and ds.std == (1.0,)
    out = data.normalize(ds.train_x[:7], np.asarray(ds.mean), np.asarray(ds.std))
    np.testing.assert_array_equal(out, ds.train_x[:7])


def test_normalize_uint8_known_values():
    x = np.array([0, 51, 255, 102], np.uint8).reshape(1, 1, 2, 2)
    mean, std = np.array([0.2, 0.4]), np.array([0.5, 0.25])
    out = np.asarray(data.normalize(x, mean, std))
    assert out.dtype == np.float32
    # Channel 0: (0, 1) -> (0 - .2) / .5, (1 - .2) / .5; channel 1: (.2, .4) -> -.8, 0.
    np.testing.assert_allclose(out.reshape(2, 2), [[-0.4, -0.8], [1.6, 0.0]], atol=1e-6)
    with pytest.raises(ValueError, match="mean must have shape"):
        data.normalize(x, np.zeros(3), std)


def test_dataset_checks_its_statistics():
    x = np.zeros((2, 4, 4, 3), np.uint8)
    y = np.zeros(2, np.int32)
    with pytest.raises(ValueError, match="one value per channel"):
        data.Dataset("toy", x, y, x, y, 1, mean=(0.5,), std=(0.2,))


def _save(path, **arrays):
    base = dict(
        x_train=np.zeros((4, 2, 2), np.float32),
        y_train=np.array([0, 1, 0, 1]),
        x_test=np.zeros((2, 2, 2), np.float32),
        y_test=np.array([0, 1]),
    )
    base.update(arrays)
    np.savez(path, **base)
    return str(path)


def test_npz_names_the_array_and_row_holding_nan_or_inf(tmp_path):
    x = np.zeros((4, 2, 2), np.float32)
    x[2, 1, 0] = np.nan
    with pytest.raises(ValueError, match="x_train has NaN or inf in row 2"):
        data.load_dataset("npz", path=_save(tmp_path / "a.npz", x_train=x))
    x_test = np.zeros((2, 2, 2), np.float32)
    x_test[1, 0, 0] = -np.inf
    with pytest.raises(ValueError, match="x_test has NaN or inf in row 1"):
        data.load_dataset("npz", path=_save(tmp_path / "b.npz", x_test=x_test))
    with pytest.raises(ValueError, match="y_train has NaN or inf in row 3"):
        data.load_dataset("npz", path=_save(tmp_path / "c.npz", y_train=[0, 1, 0, np.nan]))
    with pytest.raises(ValueError, match="y_test row 0 holds 0.5"):
        data.load_dataset("npz", path=_save(tmp_path / "d.npz", y_test=[0.5, 1.0]))
    # Whole-number float labels are fine.
    ds = data.load_dataset("npz", path=_save(tmp_path / "e.npz", y_test=[0.0, 1.0]))
    np.testing.assert_array_equal(ds.test_y, [0, 1])


def test_npz_refuses_files_that_are_not_npz(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("x_train,y_train\n1,2\n")
    with pytest.raises(ValueError, match="is not an .npz file"):
        data.load_dataset("npz", path=str(text))
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ValueError, match="is not an .npz file"):
        data.load_dataset("npz", path=str(npy))


# ---------------------------------------------------------------------------------------
# TFDS datasets, prepared by TFDS's own builders from tiny raw files.


def _rows(images):
    """Each image as bytes, to compare datasets whose row order TFDS shuffles."""
    return [img.tobytes() for img in np.asarray(images)]


def _assert_same_examples(got_x, got_y, want_x, want_y):
    """The same (image, label) pairs in any order."""
    assert len(got_x) == len(want_x)
    got = sorted(zip(_rows(got_x), np.asarray(got_y).tolist(), strict=True))
    want = sorted(zip(_rows(want_x), np.asarray(want_y).tolist(), strict=True))
    assert got == want


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch):
    from tensorflow_datasets.image_classification import mnist

    rng = np.random.default_rng(0)
    arrays = (
        rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        np.arange(12) % 10,
        rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        np.array([3, 1, 4, 1, 5]),
    )
    manual = tmp_path / "downloads" / "manual"
    tfds_raw.write_mnist(manual, *arrays)
    tfds_raw.register_checksums(monkeypatch, "mnist", manual)
    # TFDS's MNIST builder expects exactly 60,000 and 10,000 rows; these files hold fewer.
    monkeypatch.setattr(mnist, "_TRAIN_EXAMPLES", 12)
    monkeypatch.setattr(mnist, "_TEST_EXAMPLES", 5)
    return str(tmp_path), str(manual), arrays


def test_mnist_prepared_from_idx_files_and_read_back(tiny_mnist):
    data_dir, manual, (train_x, train_y, test_x, test_y) = tiny_mnist
    ds = data.load_dataset("mnist", data_dir=data_dir)
    assert ds.train_x.shape == (12, 28, 28, 1) and ds.train_x.dtype == np.uint8
    assert ds.train_y.dtype == np.int32 and ds.num_classes == 10
    assert ds.class_names == tuple(str(i) for i in range(10))
    assert ds.mean == (0.1307,) and ds.std == (0.3081,)
    _assert_same_examples(ds.train_x[..., 0], ds.train_y, train_x, train_y)
    _assert_same_examples(ds.test_x[..., 0], ds.test_y, test_x, test_y)
    assert os.path.isdir(os.path.join(data_dir, "mnist", "3.0.1"))
    # Prepared: the raw files are no longer needed.
    for name in os.listdir(manual):
        os.remove(os.path.join(manual, name))
    again = data.load_dataset("mnist", data_dir=data_dir)
    np.testing.assert_array_equal(again.train_x, ds.train_x)
    np.testing.assert_array_equal(again.test_y, ds.test_y)


def test_prepared_tfds_data_is_read_without_tensorflow(tiny_mnist):
    data_dir, _, (train_x, train_y, _, _) = tiny_mnist
    data.prepare("mnist", data_dir=data_dir)
    # A fresh interpreter reads the prepared files and never imports TensorFlow.
    script = (
        "import sys\n"
        "import numpy as np\n"
        "from alsa_jax import data\n"
        f"ds = data.load_dataset('mnist', data_dir={data_dir!r})\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
        "np.save(sys.argv[1], ds.train_x[..., 0]); np.save(sys.argv[2], ds.train_y)\n"
    )
    out_x, out_y = os.path.join(data_dir, "x.npy"), os.path.join(data_dir, "y.npy")
    subprocess.run([sys.executable, "-c", script, out_x, out_y], check=True, cwd=os.getcwd())
    _assert_same_examples(np.load(out_x), np.load(out_y), train_x, train_y)


def test_mnist_stored_as_tfrecord_is_read_with_tensorflow(tiny_mnist, monkeypatch):
    import tensorflow_datasets as tfds

    data_dir, manual, (train_x, train_y, _, _) = tiny_mnist
    builder = tfds.builder("mnist", data_dir=data_dir, file_format="tfrecord")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    ds = data.load_dataset("mnist", data_dir=data_dir)
    _assert_same_examples(ds.train_x[..., 0], ds.train_y, train_x, train_y)
    monkeypatch.setattr(data, "_has_tensorflow", lambda: False)
    with pytest.raises(ValueError, match="stored as tfrecord, which only TensorFlow reads"):
        data.load_dataset("mnist", data_dir=data_dir)


def test_preparing_mnist_without_tensorflow_says_what_to_install(tiny_mnist, monkeypatch):
    data_dir, _, _ = tiny_mnist
    monkeypatch.setattr(data, "_has_tensorflow", lambda: False)
    with pytest.raises(ValueError, match="needs TensorFlow: pip install tensorflow-cpu"):
        data.load_dataset("mnist", data_dir=data_dir)
    assert not os.path.exists(os.path.join(data_dir, "mnist"))


def test_raw_files_with_wrong_checksums_are_refused(tmp_path):
    # No registered checksums of the tiny files: TFDS compares them with the real ones.
    manual = tmp_path / "downloads" / "manual"
    x = np.zeros((2, 28, 28), np.uint8)
    tfds_raw.write_mnist(manual, x, [0, 1], x, [0, 1])
    with pytest.raises(ValueError, match="not the official file"):
        data.load_dataset("mnist", data_dir=str(tmp_path))


def _cifar_images(seed, n):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_cifar10_prepared_from_the_binary_tarball(tmp_path, monkeypatch):
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    train_x, test_x = _cifar_images(0, 11), _cifar_images(1, 4)
    train_y, test_y = np.arange(11) % 10, np.array([9, 0, 0, 7])
    manual = tmp_path / "downloads" / "manual"
    tfds_raw.write_cifar10(manual, train_x, train_y, test_x, test_y, names)
    tfds_raw.register_checksums(monkeypatch, "cifar10", manual)
    ds = data.load_dataset("cifar10", data_dir=str(tmp_path))
    assert ds.input_shape == (32, 32, 3) and ds.train_x.dtype == np.uint8
    assert ds.class_names == tuple(names) and ds.num_classes == 10
    assert len(ds.mean) == 3 and len(ds.std) == 3
    # Planar R, G, B records come back as the same HWC images.
    _assert_same_examples(ds.train_x, ds.train_y, train_x, train_y)
    _assert_same_examples(ds.test_x, ds.test_y, test_x, test_y)


def test_cifar100_uses_fine_labels(tmp_path, monkeypatch):
    fine = [f"fine{i}" for i in range(100)]
    coarse = [f"coarse{i}" for i in range(20)]
    coarse_of = np.arange(100) // 5
    train_x, test_x = _cifar_images(2, 6), _cifar_images(3, 3)
    train_y, test_y = np.array([0, 99, 50, 7, 7, 13]), np.array([98, 1, 2])
    manual = tmp_path / "downloads" / "manual"
    tfds_raw.write_cifar100(manual, train_x, train_y, test_x, test_y, fine, coarse, coarse_of)
    tfds_raw.register_checksums(monkeypatch, "cifar100", manual)
    ds = data.load_dataset("cifar100", data_dir=str(tmp_path))
    assert ds.num_classes == 100 and ds.class_names == tuple(fine)
    _assert_same_examples(ds.train_x, ds.train_y, train_x, train_y)
    _assert_same_examples(ds.test_x, ds.test_y, test_x, test_y)


@pytest.mark.parametrize("name", sorted(data.TFDS_DATASETS))
def test_absent_data_fails_fast_with_one_line_saying_how_to_prepare(name, tmp_path):
    import tensorflow_datasets  # noqa: F401  (imported once per process, not timed)

    data_dir = tmp_path / "tfds"
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        data.load_dataset(name, data_dir=str(data_dir))
    seconds = time.perf_counter() - start
    message = str(error.value)
    assert seconds < 5, f"took {seconds:.1f}s"
    assert "\n" not in message
    assert f"dataset.name={name!r}" in message and str(data_dir) in message
    assert f"python -m alsa_jax.datasets {name} --data_dir DIR" in message
    assert str(data_dir / "downloads" / "manual") in message
    assert not data_dir.exists()  # nothing written
