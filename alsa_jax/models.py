"""Flax (Linen) classifiers of the paper's experiments and their swappable conv lowering.

Every model is called as
``model.apply(variables, x, train=..., mc_dropout=False, return_features=False)`` with ``x``
NHWC float32 ``[B, H, W, C]`` and returns logits ``[B, k]``; with ``return_features=True`` it
returns ``(logits [B, k], features [B, d])``, the features being the penultimate
representation: the input of the final dense head as the head sees it in inference mode
(before the head's dropout). Dropout is active when ``train or mc_dropout`` (PRNG stream
``"dropout"``); batch norm, where a model has it, uses batch statistics only when
``train``, so Monte-Carlo dropout passes keep it in inference mode (the original ran them
with batch norm in training mode).

Models are Linen modules: stateless descriptions whose parameters (``params``) and batch
statistics (``batch_stats``) are plain pytrees that jitted functions take and return, so the
module object never enters the training state.

Conv lowering. On CPU, XLA's native convolution has a slow backward pass, while writing a
3x3 convolution as nine shifted slices concatenated along channels followed by one matmul
(and 2x2 max-pooling as reshape + max) trains about three times faster; for inference the
native convolution is faster. :class:`Conv3x3` and :func:`max_pool` take ``impl`` in
:data:`CONV_IMPLS`; both lowerings compute the same function with the same parameter names
and shapes, so parameters trained with one load into the other.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from alsa_jax import validation

CONV_IMPLS = ("xla", "shifted_matmul")

Padding = str | int | Sequence[tuple[int, int]]


def _explicit_padding(
    padding: Padding, spatial: Sequence[int], kernel: int, stride: int
) -> list[tuple[int, int]]:
    """(low, high) padding per spatial dimension, the same numbers for both lowerings."""
    if isinstance(padding, str):
        validation.check_choice("padding", padding, ("VALID", "SAME"))
        return list(
            jax.lax.padtype_to_pads(tuple(spatial), (kernel, kernel), (stride, stride), padding)
        )
    if isinstance(padding, int):
        return [(padding, padding)] * len(spatial)
    pads = [tuple(p) for p in padding]
    if len(pads) != len(spatial):
        raise ValueError(f"padding needs one (low, high) pair per spatial dimension, got {padding}")
    return pads


class Conv3x3(nn.Module):
    """3x3 convolution.

    ``y[b, i, j, o] = sum_{di, dj, c} x[b, s*i + di, s*j + dj, c] K[di, dj, c, o] + bias[o]``
    (after padding ``x``).

    Input ``[B, H, W, C]`` NHWC; output ``[B, H', W', features]``. Parameters ``kernel``
    ``[3, 3, C, features]`` (HWIO, as ``nn.Conv``) and ``bias`` ``[features]``.

    Attributes:
      features: output channels.
      strides: spatial stride s (both dimensions).
      padding: ``"VALID"``, ``"SAME"`` (XLA's convention), an int p (p on every side, as
        PyTorch's ``padding=p``) or explicit ``((low, high), (low, high))``.
      use_bias: add the bias.
      impl: ``"xla"`` (``lax.conv_general_dilated``) or ``"shifted_matmul"`` (the nine
        shifted, strided slices concatenated along channels times the reshaped kernel
        ``[9C, features]``: one matmul whose backward pass is two matmuls).
    """

    features: int
    strides: int = 1
    padding: Padding = "VALID"
    use_bias: bool = True
    impl: str = "shifted_matmul"
    kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
    bias_init: Callable[..., Any] = nn.initializers.zeros

    def __post_init__(self) -> None:
        validation.check_choice("impl", self.impl, CONV_IMPLS)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        validation.check_rank("x", x, 4)
        in_features = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (3, 3, in_features, self.features))
        pads = _explicit_padding(self.padding, x.shape[1:3], 3, self.strides)
        if self.impl == "xla":
            y = jax.lax.conv_general_dilated(
                x,
                kernel.astype(x.dtype),
                window_strides=(self.strides, self.strides),
                padding=pads,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        else:
            y = _shifted_matmul_conv3x3(x, kernel.astype(x.dtype), pads, self.strides)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,))
            y = y + bias.astype(y.dtype)
        return y


def _shifted_matmul_conv3x3(
    x: jax.Array, kernel: jax.Array, pads: Sequence[tuple[int, int]], stride: int
) -> jax.Array:
    """The 3x3 convolution as im2col by slicing: [B, H', W', 9C] @ [9C, O]."""
    if any(p != (0, 0) for p in pads):
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    _, height, width, channels = x.shape
    out_h = (height - 3) // stride + 1
    out_w = (width - 3) // stride + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"a 3x3 convolution needs inputs of at least 3x3, got {height}x{width}")
    # Slice order (di, dj) with channels innermost matches kernel.reshape(9C, O) (row-major HWIO).
    patches = jnp.concatenate(
        [
            jax.lax.slice(
                x,
                (0, di, dj, 0),
                (
                    x.shape[0],
                    di + stride * (out_h - 1) + 1,
                    dj + stride * (out_w - 1) + 1,
                    channels,
                ),
                (1, stride, stride, 1),
            )
            for di in range(3)
            for dj in range(3)
        ],
        axis=-1,
    )
    return patches @ kernel.reshape(9 * channels, kernel.shape[-1])


def max_pool(x: jax.Array, window: int = 2, *, impl: str = "shifted_matmul") -> jax.Array:
    """Non-overlapping max-pooling ``y[b, i, j, c] = max_{u, v < window} x[b, w*i+u, w*j+v, c]``.

    ``x``: ``[B, H, W, C]``; returns ``[B, H // window, W // window, C]`` (trailing rows and
    columns that do not fill a window are dropped, as with VALID padding). ``impl="xla"`` uses
    ``lax.reduce_window``; ``"shifted_matmul"`` reshapes and takes elementwise maxima of the
    window's slices, first along the width, then along the height, whose backward pass avoids
    XLA's select-and-scatter. The two agree exactly in value, and in gradient wherever a
    window's maximum is unique.
    """
    validation.check_choice("impl", impl, CONV_IMPLS)
    validation.check_rank("x", x, 4)
    if impl == "xla":
        return nn.max_pool(x, (window, window), strides=(window, window), padding="VALID")
    batch, height, width, channels = x.shape
    out_h, out_w = height // window, width // window
    x = x[:, : out_h * window, : out_w * window, :]
    # One axis at a time, as a chain of elementwise maxima over the window's slices: on CPU
    # its backward pass is cheaper than a reduction's over a 6-d reshape.
    x = x.reshape(batch, out_h * window, out_w, window, channels)
    x = functools.reduce(jnp.maximum, [x[:, :, :, v] for v in range(window)])
    x = x.reshape(batch, out_h, window, out_w, channels)
    return functools.reduce(jnp.maximum, [x[:, :, u] for u in range(window)])


def _outputs(
    logits: jax.Array, features: jax.Array, return_features: bool
) -> jax.Array | tuple[jax.Array, jax.Array]:
    return (logits, features) if return_features else logits


class MLP(nn.Module):
    """flatten -> dense(hidden) -> relu -> dropout -> dense(num_classes): the small MNIST MLP.

    Features: the ``[B, hidden]`` relu output.
    """

    num_classes: int
    hidden: int = 64
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool,
        mc_dropout: bool = False,
        return_features: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        stochastic = train or mc_dropout
        x = x.reshape(x.shape[0], -1)
        features = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not stochastic)(features)
        return _outputs(nn.Dense(self.num_classes, name="head")(x), features, return_features)


class CNN(nn.Module):
    """The MNIST CNN: conv3x3(32) relu -> conv3x3(64) relu -> maxpool 2 -> dropout .25 ->
    flatten -> dense 128 relu -> dropout .5 -> dense(num_classes).

    Convolutions are VALID, so a 28x28 input gives 26 -> 24 -> 12 and an 8x8 one
    8 -> 6 -> 4 -> 2. ``conv_impl`` picks the lowering (:data:`CONV_IMPLS`); parameters are
    the same for both. Features: the ``[B, 128]`` relu output of the dense layer.

    ``train_chunk``: in training, the convolutions, their relus and the pooling run over
    chunks of this many images in turn (``lax.map``), recomputed per chunk in the backward
    pass (``jax.checkpoint``); the same function (dropout masks are drawn over the whole
    batch as before) with small intermediates. 0: whole batches. -1 (default): on CPU with
    the ``"shifted_matmul"`` lowering, chunks whose im2col patches take about 10 MiB (16
    images at 28x28; 8x8 batches of up to a thousand images train whole), whole batches
    otherwise (XLA's CPU convolution is several times slower in chunks). Measured on 2 CPU
    cores (28x28, batch 128): a jitted step called from Python takes 0.7x the time in
    chunks of 16 (``benchmarks/bench_models.py``), and the fine-tuning of a whole run on
    28x28 digits about 0.9x (alternating runs with ``model.train_chunk`` 0 and 16); 8x8
    images train twice as fast whole.
    """

    num_classes: int
    conv_impl: str = "shifted_matmul"
    conv_dropout_rate: float = 0.25
    dense_dropout_rate: float = 0.5
    train_chunk: int = -1

    def __post_init__(self) -> None:
        validation.check_choice("conv_impl", self.conv_impl, CONV_IMPLS)
        if not isinstance(self.train_chunk, int) or self.train_chunk < -1:
            raise ValueError(
                f"train_chunk must be -1 (automatic), 0 (whole batches) or a positive number "
                f"of images, got {self.train_chunk!r}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool,
        mc_dropout: bool = False,
        return_features: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        deterministic = not (train or mc_dropout)
        conv1 = Conv3x3(32, impl=self.conv_impl, name="conv1")
        conv2 = Conv3x3(64, impl=self.conv_impl, name="conv2")
        chunk = _cnn_train_chunk(self.train_chunk, self.conv_impl, x) if train else 0
        if chunk and x.shape[0] >= 2 * chunk and not self.is_initializing():
            params = self.variables["params"]
            x = _map_in_chunks(
                functools.partial(_cnn_convs, params["conv1"], params["conv2"], self.conv_impl),
                x,
                chunk,
            )
        else:
            x = max_pool(nn.relu(conv2(nn.relu(conv1(x)))), 2, impl=self.conv_impl)
        x = nn.Dropout(self.conv_dropout_rate, deterministic=deterministic)(x)
        x = x.reshape(x.shape[0], -1)
        features = nn.relu(nn.Dense(128, name="dense")(x))
        x = nn.Dropout(self.dense_dropout_rate, deterministic=deterministic)(features)
        return _outputs(nn.Dense(self.num_classes, name="head")(x), features, return_features)


# Automatic chunks hold about this many bytes of the second convolution's im2col patches
# (16 images at 28x28); a batch whose patches fit in two chunks trains whole.
_TRAIN_CHUNK_BYTES = 10 * 2**20


def automatic_train_chunk(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """The chunk (images) that ``train_chunk=-1`` picks for ``model`` on inputs of
    ``input_shape`` (one image) on this backend (batches of fewer than two chunks train
    whole); 0 where it trains whole batches, or for a model without chunks."""
    if getattr(model, "train_chunk", None) is None:
        return 0
    example = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    return _cnn_train_chunk(-1, model.conv_impl, example)


def _cnn_train_chunk(train_chunk: int, impl: str, x: jax.Array) -> int:
    if train_chunk >= 0:
        return train_chunk
    # XLA's own CPU convolution gets slower in chunks; other platforms have no such cache.
    if jax.default_backend() != "cpu" or impl != "shifted_matmul":
        return 0
    patch_bytes = max(1, (x.shape[1] - 4) * (x.shape[2] - 4)) * 9 * 32 * 4
    return max(1, round(_TRAIN_CHUNK_BYTES / patch_bytes))


def _cnn_convs(conv1_params: Any, conv2_params: Any, impl: str, x: jax.Array) -> jax.Array:
    """The CNN's conv1 relu conv2 relu maxpool as a pure function of its parameters."""
    conv1 = Conv3x3(32, impl=impl, parent=None)
    conv2 = Conv3x3(64, impl=impl, parent=None)
    x = nn.relu(conv1.apply({"params": conv1_params}, x))
    x = nn.relu(conv2.apply({"params": conv2_params}, x))
    return max_pool(x, 2, impl=impl)


def _map_in_chunks(fn: Callable[[jax.Array], jax.Array], x: jax.Array, chunk: int) -> jax.Array:
    """``fn(x)`` for a per-image ``fn``, computed over chunks of ``chunk`` images in turn.

    Chunk i holds images ``i, n + i, 2n + i, ...`` (n = B // chunk), so that a batch split
    over devices in contiguous blocks leaves every chunk split over the same devices; the
    last ``B mod chunk`` images go through ``fn`` at once. The backward pass recomputes each
    chunk's forward pass instead of storing its intermediates.
    """
    batch = x.shape[0]
    steps = batch // chunk
    whole = steps * chunk
    chunks = jnp.swapaxes(x[:whole].reshape(chunk, steps, *x.shape[1:]), 0, 1)
    y = jax.lax.map(jax.checkpoint(fn), chunks)
    y = jnp.swapaxes(y, 0, 1).reshape(whole, *y.shape[2:])
    if whole < batch:
        y = jnp.concatenate([y, fn(x[whole:])])
    return y


# PyTorch's default initialisation, as the original's ResNets have it: weights uniform in
# +-1/sqrt(fan_in) (kaiming_uniform with a = sqrt(5)); dense biases likewise.
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch's default bias initialisation: uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv1x1(nn.Module):
    """1x1 convolution with stride s and no bias: ``y[b, i, j] = x[b, s*i, s*j] @ K``.

    ``x`` ``[B, H, W, C]`` -> ``[B, ceil(H/s), ceil(W/s), features]`` (PyTorch's 1x1 conv
    without padding); parameter ``kernel`` ``[1, 1, C, features]`` as ``nn.Conv``. It is a
    matmul in every lowering.
    """

    features: int
    strides: int = 1
    kernel_init: Callable[..., Any] = torch_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        validation.check_rank("x", x, 4)
        kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features))
        if self.strides > 1:
            x = x[:, :: self.strides, :: self.strides, :]
        return x @ kernel.reshape(x.shape[-1], self.features).astype(x.dtype)


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
    # PyTorch's BatchNorm2d: running averages updated with weight 0.1, eps 1e-5.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class BasicBlock(nn.Module):
    """The ResNet basic block: ``relu(bn(conv3x3(relu(bn(conv3x3_s(x))))) + shortcut(x))``.

    The first 3x3 convolution has stride s; both pad by 1 and have no bias. The shortcut is
    the identity, or ``bn(conv1x1_s(x))`` when s > 1 or the channel count changes.
    ``[B, H, W, C] -> [B, ceil(H/s), ceil(W/s), features]``.
    """

    features: int
    strides: int = 1
    conv_impl: str = "shifted_matmul"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = functools.partial(
            Conv3x3,
            self.features,
            padding=1,
            use_bias=False,
            impl=self.conv_impl,
            kernel_init=torch_kernel_init,
        )
        y = conv(strides=self.strides, name="conv1")(x)
        y = nn.relu(_batch_norm(train, "bn1")(y))
        y = conv(name="conv2")(y)
        y = _batch_norm(train, "bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = Conv1x1(self.features, self.strides, name="shortcut_conv")(x)
            x = _batch_norm(train, "shortcut_bn")(x)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """The original's ResNet with the CIFAR stem and a two-layer dense head.

    ``conv3x3(64) -> bn -> relu`` (stride 1, no max-pool), four stages of basic blocks with
    64, 128, 256, 512 channels (``stage_sizes`` blocks each; the first block of stages 2-4
    has stride 2), global average pooling, then ``fc1 = dense(max(num_classes, 128))`` with
    no activation, dropout ``dropout_rate`` and ``fc2 = dense(num_classes)``. A 32x32 input
    leaves stage 4 at 4x4, a 150x150 input at 19x19. Features: fc1's output ``[B, max(k, 128)]``.

    Batch norm follows PyTorch (momentum 0.1, eps 1e-5) and keeps its running statistics in
    the ``batch_stats`` collection; weights are initialised as PyTorch's defaults.
    ``conv_impl`` picks the 3x3 lowering (:data:`CONV_IMPLS`), parameters are the same for both.
    """

    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    conv_impl: str = "shifted_matmul"
    dropout_rate: float = 0.25

    def __post_init__(self) -> None:
        validation.check_choice("conv_impl", self.conv_impl, CONV_IMPLS)
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool,
        mc_dropout: bool = False,
        return_features: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        validation.check_rank("x", x, 4)
        x = Conv3x3(
            64,
            padding=1,
            use_bias=False,
            impl=self.conv_impl,
            kernel_init=torch_kernel_init,
            name="stem_conv",
        )(x)
        x = nn.relu(_batch_norm(train, "stem_bn")(x))
        for stage, blocks in enumerate(self.stage_sizes):
            for block in range(blocks):
                x = BasicBlock(
                    64 * 2**stage,
                    strides=2 if stage > 0 and block == 0 else 1,
                    conv_impl=self.conv_impl,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        latent = max(self.num_classes, 128)
        features = nn.Dense(
            latent,
            kernel_init=torch_kernel_init,
            bias_init=torch_bias_init(x.shape[-1]),
            name="fc1",
        )(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not (train or mc_dropout))(features)
        logits = nn.Dense(
            self.num_classes,
            kernel_init=torch_kernel_init,
            bias_init=torch_bias_init(latent),
            name="fc2",
        )(x)
        return _outputs(logits, features, return_features)


class ResNet18(ResNet):
    """ResNet-18 (two basic blocks per stage): the original's CIFAR-10/100 network."""

    stage_sizes: Sequence[int] = (2, 2, 2, 2)


class ResNet34(ResNet):
    """ResNet-34 (3, 4, 6, 3 basic blocks): the original's NABirds network."""

    stage_sizes: Sequence[int] = (3, 4, 6, 3)


# Name -> Linen module class; constructor keywords are the class's fields.
MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "resnet18": ResNet18,
    "resnet34": ResNet34,
}


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """The registered model ``name`` (a key of :data:`MODELS`) with ``num_classes`` outputs.

    ``kwargs`` are the model's fields, e.g. ``conv_impl="xla"`` for the CNN or
    ``hidden=128`` for the MLP.
    """
    validation.check_choice("model", name, MODELS)
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    cls = MODELS[name]
    fields = [f for f in cls.__dataclass_fields__ if f not in ("num_classes", "parent", "name")]
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise ValueError(
            f"model {name!r} has no field {', '.join(unknown)}; it has {', '.join(fields)}"
        )
    return cls(num_classes=int(num_classes), **kwargs)
