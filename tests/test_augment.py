import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from alsa_jax import augment


def _images(seed, shape):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_center_crop_is_the_middle_slice_with_torchvision_rounding():
    x = _images(0, (2, 9, 7, 3))
    out = np.asarray(augment.center_crop(x, 4))
    # (9 - 4) / 2 = 2.5 rounds to 2, (7 - 4) / 2 = 1.5 rounds to 2 (round half to even).
    np.testing.assert_array_equal(out, x[:, 2:6, 2:6])
    np.testing.assert_array_equal(augment.center_crop(x, (5, 3)), x[:, 2:7, 2:5])
    big = _images(1, (1, 200, 200, 3))
    np.testing.assert_array_equal(augment.center_crop(big, 150), big[:, 25:175, 25:175])


def test_random_crop_takes_a_slice_of_the_padded_image_at_a_uniform_offset():
    x = _images(0, (400, 6, 6, 1))
    out = np.asarray(augment.random_crop(jax.random.PRNGKey(0), x, 6, padding=2))
    assert out.shape == x.shape and out.dtype == np.uint8
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    offsets = []
    for b in range(len(x)):
        matches = [
            (i, j)
            for i in range(5)
            for j in range(5)
            if np.array_equal(out[b], padded[b, i : i + 6, j : j + 6])
        ]
        assert matches, f"example {b} is no slice of its padded image"
        offsets.append(matches[0])
    # 25 offsets, each about 400 / 25 = 16 times.
    counts = np.bincount([5 * i + j for i, j in offsets], minlength=25)
    assert counts.min() > 3 and counts.max() < 35


def test_random_crop_is_deterministic_in_its_key():
    x = _images(0, (8, 32, 32, 3))
    first = augment.random_crop(jax.random.PRNGKey(3), x, 24)
    np.testing.assert_array_equal(first, augment.random_crop(jax.random.PRNGKey(3), x, 24))
    assert not np.array_equal(first, augment.random_crop(jax.random.PRNGKey(4), x, 24))


def test_random_flip_mirrors_about_half_the_images():
    x = _images(0, (200, 5, 4, 2))
    out = np.asarray(augment.random_flip(jax.random.PRNGKey(0), x))
    same = np.all(out == x, axis=(1, 2, 3))
    mirrored = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored)
    assert 70 < mirrored.sum() < 130
    np.testing.assert_array_equal(out, augment.random_flip(jax.random.PRNGKey(0), x))


def test_rotate_known_angles():
    x = _images(0, (3, 6, 6, 2))
    np.testing.assert_array_equal(augment.rotate(x, jnp.zeros(3)), x)
    np.testing.assert_array_equal(augment.rotate(x, jnp.full(3, 90.0)), np.rot90(x, axes=(1, 2)))
    np.testing.assert_array_equal(augment.rotate(x, jnp.full(3, 180.0)), x[:, ::-1, ::-1])
    # Each example its own angle.
    mixed = np.asarray(augment.rotate(x, jnp.array([0.0, 90.0, -90.0])))
    np.testing.assert_array_equal(mixed[0], x[0])
    np.testing.assert_array_equal(mixed[1], np.rot90(x[1]))
    np.testing.assert_array_equal(mixed[2], np.rot90(x[2], k=-1))


@pytest.mark.parametrize("degrees", [15.0, -10.0, 7.3])
@pytest.mark.parametrize("shape", [(32, 32, 3), (31, 17, 3)])
def test_rotate_equals_pil_nearest_rotation(degrees, shape):
    # torchvision's RandomRotation on a PIL image is Image.rotate(angle, NEAREST, fill 0).
    x = _images(1, (1, *shape))
    ours = np.asarray(augment.rotate(x, jnp.array([degrees])))[0]
    pil = np.asarray(Image.fromarray(x[0]).rotate(degrees, resample=Image.NEAREST))
    np.testing.assert_array_equal(ours, pil)


def test_random_rotation_stays_within_its_range():
    x = _images(0, (64, 32, 32, 1))
    np.testing.assert_array_equal(augment.random_rotation(jax.random.PRNGKey(0), x, 0.0), x)
    out = np.asarray(augment.random_rotation(jax.random.PRNGKey(0), x, 15.0))
    # Every output is the rotation of its input by some angle in [-15, 15].
    grid = np.linspace(-15, 15, 3001)
    for b in range(0, 64, 16):
        candidates = np.asarray(augment.rotate(np.repeat(x[b : b + 1], len(grid), 0), grid))
        assert np.any(np.all(candidates == out[b], axis=(1, 2, 3)))
    # Only angles below about 1 degree leave a 32x32 image unchanged.
    assert np.mean(np.all(out == x, axis=(1, 2, 3))) < 0.2


def test_cifar_pipeline_shapes_determinism_and_single_compilation():
    pipeline = augment.make_pipeline("cifar")
    x = _images(0, (16, 32, 32, 3))
    first = pipeline.train_fn(jax.random.PRNGKey(0), x)
    assert first.shape == x.shape and first.dtype == jnp.uint8
    np.testing.assert_array_equal(first, pipeline.train_fn(jax.random.PRNGKey(0), x))
    second = pipeline.train_fn(jax.random.PRNGKey(1), x)
    assert not np.array_equal(first, second)
    assert pipeline.train_fn._cache_size() == 1  # one compilation for every key
    np.testing.assert_array_equal(pipeline.eval_fn(x), x)
    assert pipeline.output_shape((32, 32, 3)) == (32, 32, 3)


def test_cifar_pipeline_without_randomness_is_the_identity():
    pipeline = augment.make_pipeline(
        "cifar", padding=0, rotation_degrees=0.0, horizontal_flip=False
    )
    x = _images(0, (4, 32, 32, 3))
    np.testing.assert_array_equal(pipeline.train_fn(jax.random.PRNGKey(0), x), x)


def test_cifar_pipeline_with_only_flips_mirrors_or_keeps():
    pipeline = augment.make_pipeline("cifar", padding=0, rotation_degrees=0.0)
    x = _images(0, (50, 8, 8, 3))
    out = np.asarray(pipeline.train_fn(jax.random.PRNGKey(2), x))
    mirrored = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(np.all(out == x, axis=(1, 2, 3)) | mirrored) and 0 < mirrored.sum() < 50


def test_nabirds_pipeline_crops_150_of_200():
    pipeline = augment.make_pipeline("nabirds")
    x = _images(0, (3, 200, 200, 3))
    train = np.asarray(pipeline.train_fn(jax.random.PRNGKey(0), x))
    assert train.shape == (3, 150, 150, 3)
    for b in range(3):
        assert any(
            np.array_equal(train[b], x[b, i : i + 150, j : j + 150])
            for i in range(51)
            for j in range(51)
        )
    np.testing.assert_array_equal(pipeline.eval_fn(x), x[:, 25:175, 25:175])
    assert pipeline.output_shape((200, 200, 3)) == (150, 150, 3)
    small = augment.make_pipeline("nabirds", crop_size=48)
    assert small.output_shape((64, 64, 3)) == (48, 48, 3)


def test_none_pipeline_and_registry():
    assert set(augment.PIPELINES) == {"none", "cifar", "nabirds"}
    x = _images(0, (2, 4, 4, 1))
    pipeline = augment.make_pipeline("none")
    np.testing.assert_array_equal(pipeline.train_fn(jax.random.PRNGKey(0), x), x)
    np.testing.assert_array_equal(pipeline.eval_fn(x), x)
    assert augment.pipeline_options("nabirds") == ("crop_size",)


def test_bad_options_raise_one_line_errors():
    with pytest.raises(ValueError, match="augment.name"):
        augment.make_pipeline("autoaugment")
    with pytest.raises(ValueError, match="no option padding; it has crop_size"):
        augment.make_pipeline("nabirds", padding=4)
    with pytest.raises(ValueError, match="crop size 150 is larger"):
        augment.make_pipeline("nabirds").eval_fn(_images(0, (1, 64, 64, 3)))
    with pytest.raises(ValueError, match="rotation_degrees"):
        augment.make_pipeline("cifar", rotation_degrees=400.0)
