"""Data augmentation as pure, jitted functions over a whole batch.

Every function takes a batch ``x`` ``[B, H, W, C]`` (uint8 pixels or floats; the dtype is
kept) and, where random, a PRNG key from which each example draws its own transform, so a
batch is augmented in one XLA computation with no per-example Python, and the same key
gives the same batch. Output shapes are static (they depend on shapes and sizes only).

Augment the stored uint8 pixels, then :func:`alsa_jax.data.normalize` them: padding and
rotation fill with 0 (black), as torchvision does on PIL images before ``ToTensor``.

The paper's pipelines are named in :data:`PIPELINES`; ``make_pipeline(name, **options)``
returns a :class:`Pipeline` with ``train_fn(key, x) -> x`` and ``eval_fn(x) -> x``:

- ``none``: the identity;
- ``cifar``: random crop back to the input size from the image padded by 4 on every side,
  horizontal flip with probability 1/2, rotation by an angle uniform in [-15, 15] degrees
  (torchvision's ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``,
  ``RandomRotation(15)``, in that order); evaluation unchanged;
- ``nabirds``: a random ``crop_size`` square (150 of the stored 200) for training and the
  centre square for evaluation (``RandomCrop(150)`` / ``CenterCrop(150)``; the resize to
  200 happens when the dataset is prepared).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from alsa_jax import validation


def _crop_size(x: jax.Array, size: int | tuple[int, int], padding: int = 0) -> tuple[int, int]:
    """``(height, width)`` of a crop of ``size`` (an int is a square), checked against ``x``."""
    validation.check_rank("x", x, 4)
    crop = (size, size) if isinstance(size, int) else tuple(size)
    if len(crop) != 2 or not all(isinstance(s, int) and s >= 1 for s in crop):
        raise ValueError(f"crop size must be a positive int or (height, width), got {size!r}")
    height, width = x.shape[1] + 2 * padding, x.shape[2] + 2 * padding
    if crop[0] > height or crop[1] > width:
        raise ValueError(
            f"crop size {size} is larger than the (padded) images, {height}x{width}; "
            "lower the crop size"
        )
    return crop


@functools.partial(jax.jit, static_argnames=("size",))
def center_crop(x: jax.Array, size: int | tuple[int, int]) -> jax.Array:
    """The centre ``h x w`` window of every image (``size`` = h = w, or ``(h, w)``):
    ``[B, H, W, C] -> [B, h, w, C]``.

    Offsets ``round((H - h) / 2)`` and ``round((W - w) / 2)`` (Python's rounding, as
    torchvision's ``CenterCrop``).
    """
    crop_h, crop_w = _crop_size(x, size)
    top = int(round((x.shape[1] - crop_h) / 2.0))
    left = int(round((x.shape[2] - crop_w) / 2.0))
    return x[:, top : top + crop_h, left : left + crop_w, :]


@functools.partial(jax.jit, static_argnames=("size", "padding"))
def random_crop(
    key: jax.Array, x: jax.Array, size: int | tuple[int, int], padding: int = 0
) -> jax.Array:
    """A random ``h x w`` window of every image (``size`` = h = w, or ``(h, w)``), after
    zero-padding it by ``padding`` on every side.

    Example b is ``pad(x)[b, i_b : i_b + h, j_b : j_b + w]`` with ``i_b`` uniform in
    ``[0, H + 2 padding - h]`` and ``j_b`` uniform in ``[0, W + 2 padding - w]``.
    ``x``: ``[B, H, W, C]``; returns ``[B, h, w, C]``.
    """
    crop_h, crop_w = _crop_size(x, size, padding)
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    batch, height, width, channels = x.shape
    key_rows, key_cols = jax.random.split(key)
    rows = jax.random.randint(key_rows, (batch,), 0, height - crop_h + 1)
    cols = jax.random.randint(key_cols, (batch,), 0, width - crop_w + 1)
    crop = lambda image, i, j: jax.lax.dynamic_slice(  # noqa: E731
        image, (i, j, 0), (crop_h, crop_w, channels)
    )
    return jax.vmap(crop)(x, rows, cols)


@jax.jit
def random_flip(key: jax.Array, x: jax.Array) -> jax.Array:
    """Mirror each image left-right with probability 1/2: ``x[b, :, ::-1]`` where chosen."""
    validation.check_rank("x", x, 4)
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
    return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


@jax.jit
def rotate(x: jax.Array, degrees: jax.Array) -> jax.Array:
    """Rotate image b counter-clockwise by ``degrees[b]`` about its centre, nearest pixel,
    zero fill (PIL's ``Image.rotate(angle)`` as torchvision's ``RandomRotation`` uses it).

    Output pixel (r, c) takes the input pixel nearest to
    ``(cy + (c - cx) sin t + (r - cy) cos t, cx + (c - cx) cos t - (r - cy) sin t)``
    with centre ``(cy, cx) = ((H - 1) / 2, (W - 1) / 2)``; by 90 degrees this is
    ``np.rot90``. ``x``: ``[B, H, W, C]``; ``degrees``: ``[B]``.
    """
    validation.check_rank("x", x, 4)
    validation.check_shape("degrees", degrees, (x.shape[0],))
    _, height, width, _ = x.shape
    theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))[:, None, None]
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    r = jnp.arange(height, dtype=jnp.float32)[None, :, None] - cy
    c = jnp.arange(width, dtype=jnp.float32)[None, None, :] - cx
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    src_r = jnp.floor(cy + c * sin + r * cos + 0.5).astype(jnp.int32)
    src_c = jnp.floor(cx + c * cos - r * sin + 0.5).astype(jnp.int32)
    inside = (src_r >= 0) & (src_r < height) & (src_c >= 0) & (src_c < width)
    gather = lambda image, i, j: image[i, j]  # noqa: E731
    out = jax.vmap(gather)(x, jnp.clip(src_r, 0, height - 1), jnp.clip(src_c, 0, width - 1))
    return jnp.where(inside[..., None], out, jnp.zeros((), x.dtype))


@functools.partial(jax.jit, static_argnames=("max_degrees",))
def random_rotation(key: jax.Array, x: jax.Array, max_degrees: float) -> jax.Array:
    """:func:`rotate` each image by its own angle, uniform in ``[-max_degrees, max_degrees]``."""
    degrees = jax.random.uniform(
        key, (x.shape[0],), minval=-max_degrees, maxval=max_degrees, dtype=jnp.float32
    )
    return rotate(x, degrees)


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """A named augmentation: ``train_fn(key, x) -> x`` for training batches and
    ``eval_fn(x) -> x`` for evaluation and prediction batches, both jitted, both with static
    output shapes (see :meth:`output_shape`)."""

    name: str
    train_fn: Callable[[jax.Array, jax.Array], jax.Array]
    eval_fn: Callable[[jax.Array], jax.Array]

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one example after the pipeline (the network's input shape), e.g.
        ``(200, 200, 3) -> (150, 150, 3)`` for ``nabirds``; train and eval agree."""
        spec = jax.ShapeDtypeStruct((1, *input_shape), jnp.uint8)
        key = jax.ShapeDtypeStruct((2,), jnp.uint32)  # a raw PRNGKey's shape
        train = jax.eval_shape(self.train_fn, key, spec).shape[1:]
        evaluation = jax.eval_shape(self.eval_fn, spec).shape[1:]
        if train != evaluation:
            raise ValueError(
                f"augmentation {self.name!r} gives training shape {train} but evaluation "
                f"shape {evaluation}"
            )
        return tuple(evaluation)


def no_augmentation() -> Pipeline:
    """The identity for training and evaluation."""
    identity = jax.jit(lambda x: x)
    return Pipeline("none", jax.jit(lambda key, x: x), identity)


def cifar_pipeline(
    padding: int = 4, rotation_degrees: float = 15.0, horizontal_flip: bool = True
) -> Pipeline:
    """CIFAR training augmentation: pad by ``padding`` and random-crop back to the input
    size, flip left-right with probability 1/2 (if ``horizontal_flip``), rotate by an angle
    uniform in ``[-rotation_degrees, rotation_degrees]``; evaluation is the identity."""
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"augment.padding must be an int >= 0, got {padding!r}")
    if not 0 <= rotation_degrees <= 180 or math.isnan(rotation_degrees):
        raise ValueError(f"augment.rotation_degrees must lie in [0, 180], got {rotation_degrees}")
    rotation_degrees = float(rotation_degrees)

    @jax.jit
    def train_fn(key: jax.Array, x: jax.Array) -> jax.Array:
        key_crop, key_flip, key_rotate = jax.random.split(key, 3)
        x = random_crop(key_crop, x, (x.shape[1], x.shape[2]), padding)
        if horizontal_flip:
            x = random_flip(key_flip, x)
        if rotation_degrees:
            x = random_rotation(key_rotate, x, rotation_degrees)
        return x

    return Pipeline("cifar", train_fn, jax.jit(lambda x: x))


def nabirds_pipeline(crop_size: int = 150) -> Pipeline:
    """NABirds: a random ``crop_size`` square for training, the centre one for evaluation."""
    if not isinstance(crop_size, int) or crop_size < 1:
        raise ValueError(f"augment.crop_size must be a positive int, got {crop_size!r}")
    train_fn = jax.jit(lambda key, x: random_crop(key, x, crop_size))
    eval_fn = jax.jit(lambda x: center_crop(x, crop_size))
    return Pipeline("nabirds", train_fn, eval_fn)


# Name -> pipeline factory; its keyword arguments are the pipeline's options.
PIPELINES: dict[str, Callable[..., Pipeline]] = {
    "none": no_augmentation,
    "cifar": cifar_pipeline,
    "nabirds": nabirds_pipeline,
}


def pipeline_options(name: str) -> tuple[str, ...]:
    """The option names that pipeline ``name`` takes (e.g. ``("crop_size",)``)."""
    validation.check_choice("augment.name", name, PIPELINES)
    return tuple(inspect.signature(PIPELINES[name]).parameters)


def make_pipeline(name: str, **options: Any) -> Pipeline:
    """The pipeline ``name`` (a key of :data:`PIPELINES`) built with ``options``.

    Unknown options raise a one-line ``ValueError`` listing the pipeline's options.
    """
    allowed = pipeline_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"augmentation {name!r} has no option {', '.join(unknown)}; it has "
            f"{', '.join(allowed) or 'none'}"
        )
    return PIPELINES[name](**options)
