import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from alsa_jax import compilation, models, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TinyBatchNormNet(nn.Module):
    """dense -> batch norm -> relu -> dropout -> dense: the smallest model with batch stats."""

    num_classes: int = 3
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x, *, train: bool, mc_dropout: bool = False):
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(16)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
        x = nn.relu(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not (train or mc_dropout))(x)
        return nn.Dense(self.num_classes)(x)


def _separable(n=96, k=3, seed=0):
    """Three well separated classes: a per-class offset on a 4x4x1 image plus small noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n).astype(np.int32)
    centers = rng.normal(size=(k, 4, 4, 1)).astype(np.float32) * 3
    x = centers[labels] + 0.3 * rng.normal(size=(n, 4, 4, 1)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(labels)


def _batch(n=8, seed=0):
    x, y = _separable(n, seed=seed)
    return x, y, jnp.ones(n, jnp.float32), jnp.ones(n, bool)


def _tree_allclose(a, b, **kw):
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, **kw), a, b)


def _tree_delta(new, old):
    return jax.tree_util.tree_map(lambda u, v: np.asarray(u) - np.asarray(v), new, old)


# ---------------------------------------------------------------------------------------
# Schedules and optimizers.


def test_learning_rate_exponential_by_hand():
    lr = lambda t: train.learning_rate_at(t, base_lr=0.2, schedule="exponential", gamma=0.5)  # noqa: E731
    assert lr(0.0) == pytest.approx(0.2)
    assert lr(0.99) == pytest.approx(0.2)
    assert lr(1.0) == pytest.approx(0.1)
    assert lr(3.5) == pytest.approx(0.025)


def test_learning_rate_step_with_milestones_by_hand():
    def lr(t):
        return train.learning_rate_at(
            t, base_lr=1.0, schedule="step", gamma=0.1, milestones=(3, 6, 10)
        )

    assert [lr(t) for t in (0.0, 2.99, 3.0, 5.5, 6.0, 9.9, 10.0, 50.0)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )


def test_learning_rate_warm_up_by_hand():
    def lr(t):
        return train.learning_rate_at(
            t,
            base_lr=1.0,
            schedule="step",
            gamma=0.1,
            milestones=(3,),
            warm_epochs=2,
            steps_per_epoch=4,
        )

    # factor min(1, (t + 1/4) / 2): the first step already gets one step's worth (1/8).
    assert lr(0.0) == pytest.approx(0.125)
    assert lr(0.25) == pytest.approx(0.25)
    assert lr(1.0) == pytest.approx(0.625)
    assert lr(1.75) == pytest.approx(1.0)
    assert lr(2.5) == pytest.approx(1.0)
    assert lr(3.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        train.learning_rate_at(0.0, base_lr=1.0, schedule="step", gamma=0.1, warm_epochs=1)
    with pytest.raises(ValueError, match="schedule"):
        train.learning_rate_at(0.0, base_lr=1.0, schedule="cosine", gamma=0.1)


def test_sgd_is_pytorch_sgd_with_weight_decay_and_momentum():
    tx = train.make_optimizer("sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.01)
    p = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([0.5, 0.5])}
    state = tx.init(p)
    # PyTorch: d = g + wd * p; buf = d (first step); p -= lr * buf.
    d1 = np.array([0.5 + 0.01, 0.5 - 0.02])
    upd, state = tx.update(g, state, p)
    p1 = np.array([1.0, -2.0]) - 0.1 * d1
    np.testing.assert_allclose(p["w"] + upd["w"], p1, rtol=1e-6)
    # Second step: buf = 0.9 * buf + (g + wd * p1).
    buf2 = 0.9 * d1 + (0.5 + 0.01 * p1)
    upd, state = tx.update(g, state, {"w": jnp.asarray(p1)})
    np.testing.assert_allclose(p1 + upd["w"], p1 - 0.1 * buf2, rtol=1e-6)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.1)
    adam = train.make_optimizer("adam", learning_rate=3e-3)
    assert float(adam.init(p).hyperparams["learning_rate"]) == pytest.approx(3e-3)
    with pytest.raises(ValueError, match="optimizer"):
        train.make_optimizer("rmsprop", learning_rate=0.1)


# ---------------------------------------------------------------------------------------
# The step.


@pytest.fixture(scope="module")
def mlp_sgd():
    """A dropout-free MLP with plain SGD (update = -lr * grad) and its jitted step."""
    model = models.MLP(3, hidden=8, dropout_rate=0.0)
    tx = train.make_optimizer("sgd", learning_rate=0.1, momentum=0.0, weight_decay=0.0)
    state = train.create_train_state(jax.random.PRNGKey(0), model, tx, (4, 4, 1))
    return model, tx, state, train.make_train_step(model, tx)


def test_train_state_holds_arrays_only(mlp_sgd):
    _, _, state, _ = mlp_sgd
    assert state.step.dtype == jnp.int32 and int(state.step) == 0
    assert state.batch_stats == {}
    for leaf in jax.tree_util.tree_leaves(state):
        assert isinstance(leaf, jax.Array)


def test_learning_rate_changes_without_recompiling(mlp_sgd):
    _, _, state, step = mlp_sgd
    x, y, w, mask = _batch()
    key = jax.random.PRNGKey(1)
    before = step._cache_size()
    deltas = {}
    for lr in (0.1, 0.2, np.float32(0.05)):
        new, _ = step(state, x, y, w, mask, np.float32(lr), key)
        assert float(new.opt_state.hyperparams["learning_rate"]) == pytest.approx(float(lr))
        deltas[float(lr)] = _tree_delta(new.params, state.params)
    assert step._cache_size() - before <= 1  # at most the first call compiles
    _tree_allclose(
        deltas[0.2], jax.tree_util.tree_map(lambda d: 2 * d, deltas[0.1]), rtol=1e-5, atol=1e-7
    )
    assert int(new.step) == 1


def test_weights_two_give_twice_the_loss_and_update(mlp_sgd):
    _, _, state, step = mlp_sgd
    x, y, w, mask = _batch()
    key = jax.random.PRNGKey(1)
    one, m1 = step(state, x, y, w, mask, 0.1, key)
    two, m2 = step(state, x, y, 2 * w, mask, 0.1, key)
    assert float(m2["loss"]) == pytest.approx(2 * float(m1["loss"]), rel=1e-6)
    assert float(m1["accuracy"]) == float(m2["accuracy"])
    _tree_allclose(
        _tree_delta(two.params, state.params),
        jax.tree_util.tree_map(lambda d: 2 * d, _tree_delta(one.params, state.params)),
        rtol=1e-5,
        atol=1e-7,
    )


def test_padded_rows_do_not_change_the_update(mlp_sgd):
    _, _, state, step = mlp_sgd
    x, y, w, _ = _batch(8)
    mask = jnp.array([1, 1, 1, 1, 1, 0, 0, 0], bool)
    key = jax.random.PRNGKey(1)
    junk_x = x.at[5:].set(1e3)
    junk_y = y.at[5:].set(2)
    junk_w = w.at[5:].set(50.0)
    a, ma = step(state, x, y, w, mask, 0.1, key)
    b, mb = step(state, junk_x, junk_y, junk_w, mask, 0.1, key)
    _tree_allclose(a.params, b.params, rtol=0, atol=0)
    assert float(ma["loss"]) == float(mb["loss"]) and float(ma["count"]) == 5
    # ... and equal the unpadded five-row batch (the loss divides by the real rows).
    c, mc = step(state, x[:5], y[:5], w[:5], jnp.ones(5, bool), 0.1, key)
    _tree_allclose(a.params, c.params, rtol=1e-5, atol=1e-7)
    assert float(mc["loss"]) == pytest.approx(float(ma["loss"]), rel=1e-6)


# ---------------------------------------------------------------------------------------
# Batch norm.


@pytest.fixture(scope="module")
def batch_norm_net():
    model = TinyBatchNormNet(dropout_rate=0.0)
    tx = train.make_optimizer("adam", learning_rate=1e-2)
    state = train.create_train_state(jax.random.PRNGKey(0), model, tx, (4, 4, 1))
    return model, tx, state


def test_batch_norm_statistics_are_updated_by_training(batch_norm_net):
    model, tx, state = batch_norm_net
    assert set(state.batch_stats["BatchNorm_0"]) == {"mean", "var"}
    step = train.make_train_step(model, tx)
    x, y, w, mask = _batch(16)
    new, metrics = step(state, x, y, w, mask, 1e-2, jax.random.PRNGKey(1))
    assert np.isfinite(float(metrics["loss"]))
    hidden = x.reshape(16, -1) @ state.params["Dense_0"]["kernel"] + state.params["Dense_0"]["bias"]
    # momentum 0.5: running mean = 0.5 * 0 + 0.5 * batch mean.
    np.testing.assert_allclose(
        new.batch_stats["BatchNorm_0"]["mean"], 0.5 * hidden.mean(0), rtol=1e-4, atol=1e-5
    )


def test_mc_dropout_keeps_batch_norm_in_inference_mode(batch_norm_net):
    model, tx, state = batch_norm_net
    # Give the running statistics values a training-mode pass would not reproduce.
    stats = {"BatchNorm_0": {"mean": jnp.full(16, 0.3), "var": jnp.full(16, 2.0)}}
    state = state.replace(batch_stats=stats)
    x, _ = _separable(10)
    variables = {"params": state.params, "batch_stats": stats}
    running = jax.nn.softmax(model.apply(variables, x, train=False))
    batch_mode, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    mc = train.mc_dropout_probs(model, state, x, jax.random.PRNGKey(3), num_samples=2, batch_size=4)
    assert mc.shape == (2, 10, 3)
    # Dropout rate 0: every pass is the running-average (inference) output.
    np.testing.assert_allclose(mc[0], running, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mc[1], running, rtol=1e-5, atol=1e-6)
    assert not np.allclose(mc[0], jax.nn.softmax(batch_mode), atol=1e-3)
    np.testing.assert_array_equal(state.batch_stats["BatchNorm_0"]["mean"], np.float32(0.3))
    np.testing.assert_allclose(
        train.predict_probs(model, state, x, batch_size=4), running, rtol=1e-5, atol=1e-6
    )


def test_mc_dropout_passes_differ_and_repeat_with_the_key():
    model = TinyBatchNormNet(dropout_rate=0.5)
    tx = train.make_optimizer("adam", learning_rate=1e-2)
    state = train.create_train_state(jax.random.PRNGKey(0), model, tx, (4, 4, 1))
    x, _ = _separable(10)
    key = jax.random.PRNGKey(5)
    mc = train.mc_dropout_probs(model, state, x, key, num_samples=3, batch_size=4)
    assert mc.shape == (3, 10, 3)
    np.testing.assert_allclose(mc.sum(-1), 1.0, rtol=1e-5)
    assert not np.allclose(mc[0], mc[1])
    np.testing.assert_array_equal(
        mc, train.mc_dropout_probs(model, state, x, key, num_samples=3, batch_size=4)
    )


# ---------------------------------------------------------------------------------------
# fit and prediction.


@pytest.fixture(scope="module")
def mlp_adam():
    model = models.MLP(3, hidden=16, dropout_rate=0.1)
    tx = train.make_optimizer("adam", learning_rate=1e-2)
    state = train.create_train_state(jax.random.PRNGKey(0), model, tx, (4, 4, 1))
    return model, tx, state, train.make_train_step(model, tx)


def test_fit_separates_a_separable_problem_deterministically(mlp_adam):
    model, _, state, step = mlp_adam
    x, y = _separable(96)
    rows = jnp.arange(96) < 70  # 70 rows: 4 full batches of 16 and one padded batch of 6
    weights = jnp.ones(96)

    def run(data_x, rows, key):
        return train.fit(
            state,
            step,
            data_x,
            y,
            weights,
            rows,
            key=key,
            epochs=15,
            batch_size=16,
            lr_fn=lambda t: train.learning_rate_at(
                t, base_lr=1e-2, schedule="exponential", gamma=0.95
            ),
        )

    trained, history = run(x, rows, jax.random.PRNGKey(7))
    assert len(history["loss"]) == 15 and history["loss"][-1] < history["loss"][0]
    assert history["accuracy"][-1] >= 0.98
    assert int(trained.step) == 15 * 5
    probs = train.predict_probs(model, trained, x[:70], batch_size=32)
    assert np.mean(np.argmax(probs, -1) == np.asarray(y[:70])) >= 0.98

    # Same key: identical; rows outside the selection never matter.
    cache = step._cache_size()
    again, history_again = run(x.at[70:].set(-1e3), rows, jax.random.PRNGKey(7))
    _tree_allclose(trained.params, again.params, rtol=0, atol=0)
    assert history_again == history
    # Another number of rows reuses the compiled step.
    fewer, _ = run(x, jnp.arange(96) < 23, jax.random.PRNGKey(8))
    assert step._cache_size() == cache
    assert int(fewer.step) == 15 * 2


def test_fit_rejects_bad_arguments(mlp_adam):
    _, _, state, step = mlp_adam
    x, y = _separable(8)
    ones = jnp.ones(8)
    with pytest.raises(ValueError, match="no example"):
        train.fit(
            state,
            step,
            x,
            y,
            ones,
            jnp.zeros(8, bool),
            key=jax.random.PRNGKey(0),
            epochs=1,
            batch_size=4,
            lr_fn=lambda t: 0.1,
        )
    with pytest.raises(ValueError, match="same length"):
        train.fit(
            state,
            step,
            x,
            y[:5],
            ones,
            jnp.ones(8, bool),
            key=jax.random.PRNGKey(0),
            epochs=1,
            batch_size=4,
            lr_fn=lambda t: 0.1,
        )


def test_predict_probs_matches_a_direct_apply(mlp_adam):
    model, _, state, _ = mlp_adam
    x, _ = _separable(37)  # not a multiple of the batch size: the last batch is padded
    probs = train.predict_probs(model, state, x, batch_size=16)
    assert probs.shape == (37, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    direct = jax.nn.softmax(model.apply({"params": state.params}, x, train=False))
    np.testing.assert_allclose(probs, direct, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Data parallelism: 8 fake CPU devices against 1.


def _parallel_case():
    """Train step, one epoch of fit, predict_probs and MC dropout on a CNN (whole batches
    and in chunks of 4 images, which 8 devices do not divide) and a BN net; a committee of
    two chunked CNNs trained by fit and predicted together."""
    out = {"devices": jax.device_count()}
    x, y = _separable(64)
    w = jnp.linspace(0.5, 2.0, 64)
    for name, model in (
        ("cnn", models.CNN(3, train_chunk=0)),
        ("cnn_chunked", models.CNN(3, train_chunk=4)),
        ("bn", TinyBatchNormNet()),
    ):
        tx = train.make_optimizer("sgd", learning_rate=0.1)
        shape = (4, 4, 1) if name == "bn" else (8, 8, 1)
        data = x if name == "bn" else jnp.tile(x, (1, 2, 2, 1))
        state = train.create_train_state(jax.random.PRNGKey(0), model, tx, shape)
        step = train.make_train_step(model, tx)
        mask = jnp.arange(16) < 13
        new, metrics = step(state, data[:16], y[:16], w[:16], mask, 0.1, jax.random.PRNGKey(1))
        # A state committed to one device (as a restore might leave it) is fine for fit.
        new = jax.device_put(new, jax.devices()[0])
        new, _ = train.fit(
            new,
            step,
            data,
            y,
            w,
            jnp.arange(64) < 50,
            key=jax.random.PRNGKey(2),
            epochs=1,
            batch_size=16,
            lr_fn=lambda t: 0.05,
        )
        data = jax.device_put(data, jax.devices()[-1])
        leaves = lambda tree: [
            np.asarray(v).ravel().tolist() for v in jax.tree_util.tree_leaves(tree)
        ]  # noqa: E731
        out[name] = {
            "loss": float(metrics["loss"]),
            "params": leaves(new.params),
            "stats": leaves(new.batch_stats),
            "probs": np.asarray(train.predict_probs(model, new, data[:37], batch_size=16)).tolist(),
            "mc": np.asarray(
                train.mc_dropout_probs(
                    model, new, data[:21], jax.random.PRNGKey(3), num_samples=2, batch_size=8
                )
            ).tolist(),
        }
    committee_model = models.CNN(3, train_chunk=4)
    tx = train.make_optimizer("sgd", learning_rate=0.1)
    committee = train.create_ensemble_state(
        jax.random.PRNGKey(4), committee_model, tx, (8, 8, 1), 2
    )
    committee, _ = train.fit(
        committee,
        train.make_ensemble_train_step(committee_model, tx, 2),
        jnp.tile(x, (1, 2, 2, 1)),
        y,
        w,
        jnp.arange(64) < 50,
        key=jax.random.PRNGKey(5),
        epochs=1,
        batch_size=16,
        lr_fn=lambda t: 0.05,
    )
    out["committee"] = {
        "params": leaves(committee.params),
        "probs": np.asarray(
            train.ensemble_probs(
                committee_model, committee, jnp.tile(x[:37], (1, 2, 2, 1)), batch_size=16
            )
        ).tolist(),
    }
    try:
        train.predict_probs(model, new, data, batch_size=12)
        out["indivisible_rejected"] = False
    except ValueError:
        out["indivisible_rejected"] = True
    return out


_PARALLEL_SCRIPT = (
    "import json, sys; sys.path.insert(0, 'tests'); import test_train; "
    "print(json.dumps(test_train._parallel_case()))"
)


def _start_with_devices(count):
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={count}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT,
    )
    return subprocess.Popen(
        [sys.executable, "-c", _PARALLEL_SCRIPT],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_eight_devices_match_one():
    if jax.device_count() != 1:
        pytest.skip("compares against this process, which must see exactly one device")
    process = _start_with_devices(8)  # runs while this process computes the 1-device side
    try:
        # The round trip through JSON keeps the comparison identical for both sides.
        one = json.loads(json.dumps(_parallel_case()))
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    eight = json.loads(stdout.strip().splitlines()[-1])
    assert (one["devices"], eight["devices"]) == (1, 8)
    assert eight["indivisible_rejected"] and not one["indivisible_rejected"]
    for name in ("cnn", "cnn_chunked", "bn", "committee"):
        a, b = one[name], eight[name]
        if "loss" in a:
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        for key in set(a) - {"loss"}:
            np.testing.assert_allclose(
                np.concatenate([np.ravel(v) for v in a[key]]) if a[key] else [],
                np.concatenate([np.ravel(v) for v in b[key]]) if b[key] else [],
                rtol=1e-4,
                atol=1e-5,
                err_msg=f"{name} {key}",
            )


def test_ensemble_step_equals_each_member_stepped_alone():
    model = models.create_model("mlp", 3, hidden=8)
    tx = train.make_optimizer("adam", learning_rate=1e-2)
    ensemble = train.create_ensemble_state(jax.random.PRNGKey(0), model, tx, (4,), 2)
    first, second = train.member(ensemble, 0), train.member(ensemble, 1)
    assert not np.allclose(first.params["head"]["kernel"], second.params["head"]["kernel"])
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 4))
    y = jnp.array([0, 1, 2, 0, 1, 2, 0, 1])
    w, mask, key = jnp.ones(8), jnp.ones(8, bool), jax.random.PRNGKey(2)
    stepped, metrics = train.make_ensemble_train_step(model, tx, 2)(
        ensemble, x, y, w, mask, 1e-2, key
    )
    single = train.make_train_step(model, tx)
    losses = []
    for i, member_key in enumerate(jax.random.split(key, 2)):
        alone, m = single(train.member(ensemble, i), x, y, w, mask, 1e-2, member_key)
        losses.append(float(m["loss"]))
        np.testing.assert_allclose(
            train.member(stepped, i).params["head"]["kernel"],
            alone.params["head"]["kernel"],
            rtol=1e-5,
            atol=1e-6,
        )
    assert float(metrics["loss"]) == pytest.approx(np.mean(losses), rel=1e-5)


# ---------------------------------------------------------------------------------------
# The jitted epoch loop against the step it runs.


def _step_by_step(state, step, x, y, weights, rows, *, key, epochs, batch_size, lr_fn):
    """fit's documented computation, one jitted step call at a time from Python."""
    rows = np.asarray(rows, bool)
    count = int(rows.sum())
    steps = -(-count // batch_size)
    for epoch in range(epochs):
        order_key, dropout_key = jax.random.split(jax.random.fold_in(key, epoch))
        order = np.asarray(train._epoch_order(order_key, jnp.asarray(rows)))
        for s in range(steps):
            position = s * batch_size + np.arange(batch_size)
            picked = order[position % count]
            state, _ = step(
                state,
                x[picked],
                y[picked],
                weights[picked],
                jnp.asarray(position < count),
                float(lr_fn(epoch + s / steps)),
                jax.random.fold_in(dropout_key, s),
            )
    return state


@pytest.mark.parametrize("net", ["dropout_mlp", "batch_norm"])
def test_fit_equals_the_step_called_step_by_step(net):
    if net == "batch_norm":
        model = TinyBatchNormNet()
    else:
        model = models.MLP(3, hidden=8, dropout_rate=0.3)
    tx = train.make_optimizer("adam", learning_rate=1e-2)
    state = train.create_train_state(jax.random.PRNGKey(0), model, tx, (4, 4, 1))
    step = train.make_train_step(model, tx)
    x, y = _separable(40)
    weights = jnp.linspace(0.5, 2.0, 40)
    rows = (jnp.arange(40) % 3) != 1  # 26 rows: batches of 8, 8, 8 and 2 (padded)
    kwargs = dict(
        key=jax.random.PRNGKey(3),
        epochs=3,
        batch_size=8,
        lr_fn=lambda t: train.learning_rate_at(t, base_lr=1e-2, schedule="exponential", gamma=0.5),
    )
    fitted, _ = train.fit(state, step, x, y, weights, rows, **kwargs)
    expected = _step_by_step(state, step, x, y, weights, rows, **kwargs)
    assert int(fitted.step) == int(expected.step) == 3 * 4
    _tree_allclose(fitted.params, expected.params, rtol=1e-5, atol=1e-6)
    _tree_allclose(fitted.batch_stats, expected.batch_stats, rtol=1e-5, atol=1e-6)


def test_fit_compiles_nothing_for_another_row_count_or_epoch_count(mlp_adam):
    _, _, state, step = mlp_adam
    x, y = _separable(64)
    weights = jnp.ones(64)

    def run(count, epochs):
        return train.fit(
            state,
            step,
            x,
            y,
            weights,
            jnp.arange(64) < count,
            key=jax.random.PRNGKey(count),
            epochs=epochs,
            batch_size=16,
            lr_fn=lambda t: 1e-2 * 0.9**t,
        )

    run(40, 2)
    with compilation.CompileCounter() as counter:
        trained, history = run(9, 1)
        run(64, 3)
    assert counter.backend_compiles == 0, counter.names
    assert int(trained.step) == 1 and len(history["loss"]) == 1


def test_fit_stacked_equals_a_fit_per_run():
    model = models.MLP(3, hidden=8, dropout_rate=0.3)
    tx = train.make_optimizer("adam", learning_rate=1e-2)
    step = train.make_train_step(model, tx)
    x, y = _separable(48)
    runs = 3
    keys = jax.random.split(jax.random.PRNGKey(5), runs)
    states = [
        train.create_train_state(jax.random.PRNGKey(r), model, tx, (4, 4, 1)) for r in range(runs)
    ]
    index = np.stack([np.roll(np.arange(48), 7 * r) for r in range(runs)]).astype(np.int32)
    labels = np.asarray(y)[index]
    weights = np.stack([np.linspace(0.5, 1.5, 48) * (r + 1) for r in range(runs)]).astype(
        np.float32
    )
    rows = np.stack([np.arange(48) < c for c in (48, 20, 33)])  # 3, 2 and 3 steps per epoch
    lr_fns = [lambda t, r=r: 1e-2 / (1 + r + t) for r in range(runs)]
    stacked, history = train.fit_stacked(
        jax.tree.map(lambda *leaves: jnp.stack(leaves), *states),
        step,
        x,
        labels,
        weights,
        rows,
        index=index,
        keys=keys,
        epochs=2,
        batch_size=16,
        lr_fns=lr_fns,
    )
    assert len(history["loss"]) == 2 and np.shape(history["loss"][0]) == (runs,)
    for r in range(runs):
        alone, alone_history = train.fit(
            states[r],
            step,
            x,
            labels[r],
            weights[r],
            rows[r],
            index=index[r],
            key=keys[r],
            epochs=2,
            batch_size=16,
            lr_fn=lr_fns[r],
        )
        got = train.member(stacked, r)
        assert int(got.step) == int(alone.step)
        _tree_allclose(got.params, alone.params, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            [h[r] for h in history["loss"]], alone_history["loss"], rtol=1e-5
        )
