import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alsa_jax import malls, pool


def _rows(counts):
    """Labels with counts[c] rows of class c, and perfect one-hot predictions for them."""
    labels = np.repeat(np.arange(len(counts)), counts)
    return jnp.asarray(labels), jnp.asarray(np.eye(len(counts), dtype=np.float32)[labels])


def test_rebase_weights_by_hand():
    w = jnp.array([2.0, 0.5, 1.0, 3.0])
    p_from = jnp.array([0.25, 0.5, 0.25, 0.0])
    p_to = jnp.array([0.5, 0.25, 0.25, 0.0])
    # Q = w * P_from = (0.5, 0.25, 0.25, ?): against P_to that is (1, 1, 1); class 3 kept.
    np.testing.assert_allclose(malls.rebase_weights(w, p_from, p_to), [1.0, 1.0, 1.0, 3.0])


def _estimate(method, lam=1.0):
    # Rows 0..7 confusion sample: P_conf = (0.5, 0.25, 0.25); rows 8..15 training rows:
    # P_train = (0.25, 0.25, 0.5). Target: Q = (0.2, 0.3, 0.5) over 10 rows.
    conf_y, conf_p = _rows([4, 2, 2])
    train_y, train_p = _rows([2, 2, 4])
    target_y, target_p = _rows([2, 3, 5])
    source_y = jnp.concatenate([conf_y, train_y])
    source_p = jnp.concatenate([conf_p, train_p])
    conf_mask = jnp.arange(16) < 8
    return malls.estimate_weights(
        source_p,
        source_y,
        conf_mask,
        ~conf_mask,
        target_p,
        jnp.ones(10, bool),
        target_y,
        method=method,
        reg=0.0,
        lam=lam,
        soft=False,
        num_classes=3,
    )


@pytest.mark.parametrize("method", ["bbse", "rlls", "oracle"])
def test_estimates_are_relative_to_the_training_rows(method):
    # A perfect classifier: C = diag(P_conf), so BBSE/RLLS give Q/P_conf, rebased to Q/P_train.
    np.testing.assert_allclose(_estimate(method), [0.8, 1.2, 1.0], rtol=1e-5)


def test_mixing_comes_after_rebasing():
    np.testing.assert_allclose(_estimate("bbse", lam=0.5), [0.9, 1.1, 1.0], rtol=1e-5)
    np.testing.assert_allclose(_estimate("none"), [1.0, 1.0, 1.0])


def test_class_missing_from_the_confusion_sample_keeps_its_weight():
    # Class 2 never appears in the confusion rows but is half of the target and training.
    conf_y, conf_p = _rows([4, 4, 0])
    train_y, train_p = _rows([2, 2, 4])
    target_y, target_p = _rows([2, 3, 5])
    w = malls.estimate_weights(
        jnp.concatenate([conf_p, train_p]),
        jnp.concatenate([conf_y, train_y]),
        jnp.arange(16) < 8,
        jnp.arange(16) >= 8,
        target_p,
        jnp.ones(10, bool),
        target_y,
        method="bbse",
        reg=0.0,
        lam=1.0,
        soft=False,
        num_classes=3,
    )
    # Not identified without a column in C: neutral 1, not wiped out to 0.
    assert float(w[2]) == pytest.approx(1.0)


def _pool_state():
    warm = jnp.array([True, True, False, False, False])
    state = pool.PoolState(
        warm=warm,
        holdout=jnp.zeros(5, bool),
        pool=~warm,
        labeled=warm,
        labeled_round=jnp.where(warm, 0, -1).astype(jnp.int32),
        query_weight=jnp.ones(5),
    )
    return pool.reveal(state, jnp.array([False, False, True, False, False]), 1, 4.0)


def test_training_weights_by_hand():
    state = _pool_state()
    labels = jnp.array([0, 1, 1, 0, 1])
    w = jnp.array([2.0, 0.5])
    all_rows = malls.training_weights(state, labels, w, importance_weighting=True, all_labeled=True)
    np.testing.assert_allclose(all_rows, [2.0, 0.5, 0.5 * 4.0, 0.0, 0.0])  # IWAL 1/p = 4
    warm_only = malls.training_weights(
        state, labels, w, importance_weighting=True, all_labeled=False
    )
    np.testing.assert_allclose(warm_only, [2.0, 0.5, 4.0, 0.0, 0.0])
    unweighted = malls.training_weights(
        state, labels, w, importance_weighting=False, all_labeled=True
    )
    np.testing.assert_allclose(unweighted, [1.0, 1.0, 4.0, 0.0, 0.0])
    jitted = jax.jit(
        malls.training_weights, static_argnames=("importance_weighting", "all_labeled")
    )
    np.testing.assert_allclose(
        jitted(state, labels, w, importance_weighting=True, all_labeled=True), all_rows
    )
