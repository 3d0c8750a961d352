import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alsa_jax import models


def _normal(seed, shape):
    # NumPy draws: eager jax.random would compile once per shape.
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def _numpy_conv3x3(x, kernel, bias, stride, pads):
    """Direct loop definition: y[b,i,j,o] = sum x[b, s*i+di, s*j+dj, c] K[di,dj,c,o] + b[o]."""
    x = np.pad(x, ((0, 0), *pads, (0, 0)))
    out_h = (x.shape[1] - 3) // stride + 1
    out_w = (x.shape[2] - 3) // stride + 1
    y = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for i in range(out_h):
        for j in range(out_w):
            window = x[:, stride * i : stride * i + 3, stride * j : stride * j + 3, :]
            y[:, i, j, :] = np.einsum("bhwc,hwco->bo", window, kernel)
    return y + bias


CONV_CASES = [
    # (padding, stride, explicit pads used by the NumPy reference for a 7x9 input)
    ("VALID", 1, [(0, 0), (0, 0)]),
    ("SAME", 1, [(1, 1), (1, 1)]),
    (1, 2, [(1, 1), (1, 1)]),
    ("SAME", 2, [(1, 1), (1, 1)]),
    ([(0, 1), (2, 0)], 1, [(0, 1), (2, 0)]),
]


@pytest.mark.parametrize("padding,stride,pads", CONV_CASES)
def test_conv3x3_lowerings_agree_with_each_other_and_numpy(padding, stride, pads):
    x = _normal(0, (2, 7, 9, 3))
    convs = {
        impl: models.Conv3x3(5, strides=stride, padding=padding, impl=impl)
        for impl in models.CONV_IMPLS
    }
    shapes = jax.eval_shape(convs["xla"].init, jax.random.PRNGKey(1), x)
    # Random bias too, so the bias path is compared.
    params = jax.tree_util.tree_map(lambda p: _normal(2, p.shape), shapes)
    outputs = {impl: jax.jit(conv.apply)(params, x) for impl, conv in convs.items()}
    p = params["params"]
    reference = _numpy_conv3x3(
        np.asarray(x), np.asarray(p["kernel"]), np.asarray(p["bias"]), stride, pads
    )
    for out in outputs.values():
        np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-4)

    cotangent = _normal(3, outputs["xla"].shape)

    def grads(conv):
        loss = lambda prm, inp: jnp.sum(conv.apply(prm, inp) * cotangent)  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)

    g_xla, g_shift = grads(convs["xla"]), grads(convs["shifted_matmul"])
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g_xla, g_shift
    )


def test_conv_and_cnn_parameters_are_interchangeable_between_lowerings():
    x = _normal(0, (3, 8, 8, 1))
    cnn_xla = models.CNN(4, conv_impl="xla")
    cnn_shift = models.CNN(4, conv_impl="shifted_matmul")
    v_xla = jax.jit(lambda k: cnn_xla.init(k, x, train=False))(jax.random.PRNGKey(1))
    v_shift = jax.eval_shape(lambda k: cnn_shift.init(k, x, train=False), jax.random.PRNGKey(1))
    shapes = lambda v: jax.tree_util.tree_map(jnp.shape, v)  # noqa: E731
    assert shapes(v_xla) == shapes(v_shift)
    assert set(v_xla["params"]) == {"conv1", "conv2", "dense", "head"}
    assert v_xla["params"]["conv1"]["kernel"].shape == (3, 3, 1, 32)
    apply = lambda model: jax.jit(lambda v: model.apply(v, x, train=False))(v_xla)  # noqa: E731
    np.testing.assert_allclose(apply(cnn_shift), apply(cnn_xla), rtol=1e-4, atol=1e-5)


def test_max_pool_lowerings_agree():
    # Odd sizes: the trailing row/column that does not fill a window is dropped by both.
    x = _normal(0, (2, 7, 9, 3))
    pooled = {
        impl: jax.jit(models.max_pool, static_argnames=("window", "impl"))(x, 2, impl=impl)
        for impl in models.CONV_IMPLS
    }
    assert pooled["xla"].shape == (2, 3, 4, 3)
    np.testing.assert_array_equal(pooled["xla"], pooled["shifted_matmul"])
    expected = np.asarray(x)[:, :6, :8].reshape(2, 3, 2, 4, 2, 3).max(axis=(2, 4))
    np.testing.assert_array_equal(pooled["xla"], expected)
    cot = _normal(1, pooled["xla"].shape)
    grads = [
        jax.jit(jax.grad(lambda v, impl=impl: jnp.sum(models.max_pool(v, 2, impl=impl) * cot)))(x)
        for impl in models.CONV_IMPLS
    ]
    np.testing.assert_array_equal(grads[0], grads[1])


def test_unknown_impl_and_model_raise():
    with pytest.raises(ValueError, match="impl"):
        models.Conv3x3(4, impl="fft")
    with pytest.raises(ValueError, match="conv_impl"):
        models.CNN(10, conv_impl="fft")
    with pytest.raises(ValueError, match="impl"):
        models.max_pool(jnp.zeros((1, 4, 4, 1)), impl="fft")
    with pytest.raises(ValueError, match="'mlp'.*'cnn'"):
        models.create_model("vgg", 10)
    with pytest.raises(ValueError, match="no field"):
        models.create_model("mlp", 10, width=3)
    with pytest.raises(ValueError, match="num_classes"):
        models.create_model("mlp", 0)


@pytest.mark.parametrize("size,flat", [(8, 2 * 2 * 64), (28, 12 * 12 * 64)])
def test_cnn_shapes(size, flat):
    model = models.create_model("cnn", 10)
    x = jax.ShapeDtypeStruct((5, size, size, 1), jnp.float32)
    variables = jax.eval_shape(lambda v: model.init(jax.random.PRNGKey(0), v, train=False), x)
    assert variables["params"]["dense"]["kernel"].shape == (flat, 128)
    out = jax.eval_shape(lambda v, inp: model.apply(v, inp, train=False), variables, x)
    assert out.shape == (5, 10)


def test_mlp_and_registry():
    assert {"mlp", "cnn"} <= set(models.MODELS)
    model = models.create_model("mlp", 3, hidden=7, dropout_rate=0.1)
    assert (model.hidden, model.dropout_rate) == (7, 0.1)
    x = jnp.ones((4, 8, 8, 1))
    variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.PRNGKey(0))
    assert variables["params"]["hidden"]["kernel"].shape == (64, 7)
    assert model.apply(variables, x, train=False).shape == (4, 3)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_mc_dropout_passes_differ_but_inference_is_deterministic(name):
    model = models.create_model(name, 5)
    x = _normal(0, (6, 8, 8, 1))
    variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.PRNGKey(1))
    apply = jax.jit(model.apply, static_argnames=("train", "mc_dropout"))
    first = apply(variables, x, train=False)
    np.testing.assert_array_equal(first, apply(variables, x, train=False))
    passes = [
        apply(variables, x, train=False, mc_dropout=True, rngs={"dropout": jax.random.PRNGKey(s)})
        for s in (2, 3)
    ]
    assert not np.allclose(passes[0], passes[1])
    assert not np.allclose(passes[0], first)
    again = apply(
        variables, x, train=False, mc_dropout=True, rngs={"dropout": jax.random.PRNGKey(2)}
    )
    np.testing.assert_array_equal(passes[0], again)
