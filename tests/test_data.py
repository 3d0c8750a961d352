import numpy as np
import pytest

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
