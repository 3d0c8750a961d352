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


@pytest.mark.parametrize("impl", models.CONV_IMPLS)
def test_cnn_training_in_chunks_is_the_same_function(impl):
    # 37 images in chunks of 8: four chunks of eight through lax.map plus a tail of five.
    x = _normal(0, (37, 12, 12, 1))
    labels = jnp.asarray(np.arange(37) % 10)
    whole = models.CNN(10, conv_impl=impl, train_chunk=0)
    chunked = models.CNN(10, conv_impl=impl, train_chunk=8)
    params = whole.init(jax.random.PRNGKey(0), x, train=False)["params"]

    def loss(model, p):
        logits = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    (l0, g0), (l1, g1) = (
        jax.jit(jax.value_and_grad(lambda p, m=m: loss(m, p)))(params) for m in (whole, chunked)
    )
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g1, g0
    )

    # The chunked model really maps over chunks (a scan in the program); the whole-batch one
    # and inference never do.
    def has_scan(model, train):
        jaxpr = jax.make_jaxpr(
            lambda p: model.apply(
                {"params": p}, x, train=train, rngs={"dropout": jax.random.PRNGKey(3)}
            )
        )(params)
        return "scan" in str(jaxpr)

    assert has_scan(chunked, True)
    assert not has_scan(whole, True)
    assert not has_scan(chunked, False)
    if jax.default_backend() == "cpu":
        # By default (-1) the shifted-matmul lowering trains 28x28 batches in chunks (of 16),
        # and XLA's lowering and small images whole.
        default = models.CNN(10, conv_impl=impl)
        for size, chunked in ((28, impl == "shifted_matmul"), (12, False)):
            batch = jnp.zeros((37, size, size, 1))
            p = default.init(jax.random.PRNGKey(0), batch, train=False)["params"]
            jaxpr = jax.make_jaxpr(
                lambda p, b=batch: default.apply(
                    {"params": p}, b, train=True, rngs={"dropout": jax.random.PRNGKey(3)}
                )
            )(p)
            assert ("scan" in str(jaxpr)) == chunked, size
    with pytest.raises(ValueError, match="train_chunk"):
        models.CNN(10, train_chunk=-2)


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


# ---------------------------------------------------------------------------------------
# ResNets and features.


def _resnet_counts(stage_sizes, num_classes):
    """(parameters, batch-norm statistics) from the layer shapes: 3x3 convs without bias,
    BN scale + offset (and running mean + variance), a 1x1 conv + BN on the shortcut where
    the shape changes, fc1 512 -> max(k, 128), fc2 -> k."""
    params, stats = 3 * 3 * 3 * 64 + 2 * 64, 2 * 64  # stem conv + BN
    channels = 64
    for stage, blocks in enumerate(stage_sizes):
        width = 64 * 2**stage
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            params += 9 * channels * width + 9 * width * width + 2 * (2 * width)
            stats += 2 * (2 * width)
            if stride != 1 or channels != width:
                params += channels * width + 2 * width
                stats += 2 * width
            channels = width
    latent = max(num_classes, 128)
    return params + 512 * latent + latent + latent * num_classes + num_classes, stats


# The PyTorch original's counts: sum of numel over alsa.nets.resnet.resnet18/34(k).parameters()
# (printed by tests/resnet_reference.py).
TORCH_PARAMETER_COUNTS = {
    ("resnet18", 10): 11_235_786,
    ("resnet18", 100): 11_247_396,
    ("resnet34", 22): 21_345_494,
    ("resnet34", 228): 21_446_168,
}
STAGES = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def _shapes(model, size, batch=2):
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda v: model.init(jax.random.PRNGKey(0), v, train=False), x)


def _count(tree):
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name,k", sorted(TORCH_PARAMETER_COUNTS))
def test_resnet_parameter_counts_match_the_original(name, k):
    variables = _shapes(models.create_model(name, k), 32)
    params, stats = _resnet_counts(STAGES[name], k)
    assert _count(variables["params"]) == params == TORCH_PARAMETER_COUNTS[(name, k)]
    assert _count(variables["batch_stats"]) == stats
    assert variables["params"]["fc1"]["kernel"].shape == (512, max(k, 128))


@pytest.mark.parametrize("size,stage4", [(32, 4), (150, 19), (21, 3)])
def test_resnet_stage_shapes_follow_pytorch_padding(size, stage4):
    # PyTorch's stride-2 3x3 conv with padding 1 gives ceil(H / 2): 150 -> 75 -> 38 -> 19.
    model = models.create_model("resnet34", 228)
    variables = _shapes(model, size)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)

    def run(v, inp):
        return model.apply(
            v,
            inp,
            train=False,
            return_features=True,
            capture_intermediates=lambda module, _: module.name == "stage4_block3",
        )

    (logits, features), state = jax.eval_shape(run, variables, x)
    captured = state["intermediates"]["stage4_block3"]["__call__"][0]
    assert captured.shape == (2, stage4, stage4, 512)
    assert logits.shape == (2, 228) and features.shape == (2, 228)


# Logits of the original PyTorch resnet18(10) in eval mode, every tensor set by
# resnet_reference.fill, on resnet_reference.reference_input(2, size).
TORCH_LOGITS = {
    32: [
        [-0.04759634, 0.01108505, 0.04527063, 0.00308943, 0.0304343,
         -0.01291702, -0.05430405, -0.05095302, 0.05391011, 0.00583409],
        [-0.04656624, 0.01044133, 0.04634522, 0.00219256, 0.02680789,
         -0.01674909, -0.05688182, -0.05011708, 0.05152817, 0.00468901],
    ],
    21: [
        [-0.04471425, 0.01753018, 0.04499812, 0.00796307, 0.02856777,
         -0.01865183, -0.04983722, -0.04990195, 0.05522355, 0.00324225],
        [-0.04657286, 0.01308887, 0.04218351, 0.00387666, 0.03036132,
         -0.01718579, -0.05468282, -0.05451131, 0.05658048, 0.00138816],
    ],
}  # fmt: skip


def _torch_filled_variables(model, size, batch=2):
    """The model's variables holding the values resnet_reference.fill gives the original."""
    import resnet_reference

    def value(path, leaf):
        keys = tuple(getattr(p, "key", p) for p in path)
        name, dense = resnet_reference.torch_name(keys)
        if leaf.ndim == 4:  # PyTorch OIHW -> Flax HWIO
            o_i_h_w = (leaf.shape[3], leaf.shape[2], leaf.shape[0], leaf.shape[1])
            return jnp.asarray(resnet_reference.fill(name, o_i_h_w).transpose(2, 3, 1, 0))
        if dense:  # PyTorch [out, in] -> Flax [in, out]
            return jnp.asarray(resnet_reference.fill(name, leaf.shape[::-1]).T)
        return jnp.asarray(resnet_reference.fill(name, leaf.shape))

    return jax.tree_util.tree_map_with_path(value, _shapes(model, size, batch))


# One input size per lowering (one compilation each); the lowerings agree on every padding
# and stride in test_conv3x3_lowerings_agree_with_each_other_and_numpy.
@pytest.mark.parametrize("impl,size", [("xla", 32), ("shifted_matmul", 21)])
def test_resnet18_equals_the_pytorch_original_in_eval_mode(impl, size):
    import resnet_reference

    model = models.create_model("resnet18", 10, conv_impl=impl)
    variables = _torch_filled_variables(model, size)
    x = jnp.asarray(resnet_reference.reference_input(2, size))
    logits = jax.jit(lambda v, inp: model.apply(v, inp, train=False))(variables, x)
    np.testing.assert_allclose(logits, TORCH_LOGITS[size], rtol=1e-4, atol=2e-6)


def test_resnet_train_mode_updates_batch_stats_and_mc_dropout_keeps_them():
    model = models.ResNet(3, stage_sizes=(1, 1, 1, 1))  # ResNet-18's code, fewer blocks
    x = _normal(0, (4, 8, 8, 3))
    variables = _torch_filled_variables(model, 8, batch=4)  # faster than a jitted init
    rngs = {"dropout": jax.random.PRNGKey(1)}
    capture = {"stem_conv", "Dropout_0"}

    _, updates = jax.jit(
        lambda v: model.apply(
            v,
            x,
            train=True,
            rngs=rngs,
            mutable=["batch_stats", "intermediates"],
            capture_intermediates=lambda m, _: m.name in capture,
        )
    )(variables)
    # PyTorch's running mean: 0.9 * old + 0.1 * batch mean.
    stem = np.asarray(updates["intermediates"]["stem_conv"]["__call__"][0])
    old = np.asarray(variables["batch_stats"]["stem_bn"]["mean"])
    np.testing.assert_allclose(
        updates["batch_stats"]["stem_bn"]["mean"],
        0.9 * old + 0.1 * stem.mean(axis=(0, 1, 2)),
        rtol=1e-5,
        atol=1e-6,
    )

    # MC dropout: batch norm stays in inference mode (running statistics, nothing collected),
    # so the features equal inference's and only fc1's dropout differs: each feature is
    # zeroed or scaled by 1 / (1 - 0.25) before fc2.
    def passes(v):
        plain = model.apply(v, x, train=False, return_features=True)
        mc = model.apply(
            v,
            x,
            train=False,
            mc_dropout=True,
            return_features=True,
            rngs=rngs,
            capture_intermediates=lambda m, _: m.name in capture,
        )
        return plain, mc

    (plain_logits, plain_features), ((mc_logits, mc_features), state) = jax.jit(passes)(variables)
    assert set(state) == {"intermediates"}  # no batch_stats collected
    np.testing.assert_allclose(mc_features, plain_features, rtol=1e-6)
    assert not np.allclose(mc_logits, plain_logits)
    dropped = np.asarray(state["intermediates"]["Dropout_0"]["__call__"][0])
    scaled = np.asarray(plain_features) / 0.75
    assert np.all(np.isclose(dropped, 0) | np.isclose(dropped, scaled, rtol=1e-5))
    assert 0.1 < np.mean(dropped == 0) < 0.4
    fc2 = variables["params"]["fc2"]
    np.testing.assert_allclose(
        mc_logits, dropped @ np.asarray(fc2["kernel"]) + np.asarray(fc2["bias"]), atol=1e-5
    )


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_features_are_what_the_head_sees(name):
    model = models.create_model(name, 4)
    x = _normal(0, (5, 8, 8, 1))
    variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.PRNGKey(1))
    apply = jax.jit(model.apply, static_argnames=("train", "return_features"))
    logits, features = apply(variables, x, train=False, return_features=True)
    head = variables["params"]["head"]
    np.testing.assert_allclose(
        logits, features @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5
    )
    assert features.shape == (5, {"mlp": 64, "cnn": 128}[name])
    assert np.all(np.asarray(features) >= 0)  # relu outputs
    np.testing.assert_array_equal(logits, apply(variables, x, train=False))


def test_resnets_are_registered():
    assert {"resnet18", "resnet34"} <= set(models.MODELS)
    assert models.create_model("resnet34", 5).stage_sizes == (3, 4, 6, 3)
    with pytest.raises(ValueError, match="conv_impl"):
        models.create_model("resnet18", 10, conv_impl="fft")
