import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alsa_jax import label_shift, malls, pool, selection, shift


def _rows(counts):
    """Labels with counts[c] rows of class c, and perfect one-hot predictions for them."""
    labels = np.repeat(np.arange(len(counts)), counts)
    return jnp.asarray(labels), jnp.asarray(np.eye(len(counts), dtype=np.float32)[labels])


def _estimate(method):
    # Rows 0..7 confusion sample: P_conf = (0.5, 0.25, 0.25); rows 8..15 training rows:
    # P_train = (0.25, 0.25, 0.5). Target: Q = (0.2, 0.3, 0.5) over 10 rows.
    conf_y, conf_p = _rows([4, 2, 2])
    train_y, train_p = _rows([2, 2, 4])
    target_y, target_p = _rows([2, 3, 5])
    source_y = jnp.concatenate([conf_y, train_y])
    source_p = jnp.concatenate([conf_p, train_p])
    conf_mask = jnp.arange(16) < 8
    train_dist = jnp.array([0.25, 0.25, 0.5])
    estimate = malls.estimate_weights(
        source_p,
        source_y,
        conf_mask,
        train_dist,
        target_p,
        jnp.ones(10, bool),
        target_y,
        method=method,
        num_classes=3,
        options=(("reg", 0.0),) if method == "rlls" else (),
    )
    return estimate, train_dist


@pytest.mark.parametrize("method", ["bbse", "rlls", "oracle"])
def test_estimates_are_relative_to_their_sample_and_rebase_to_the_training_rows(method):
    # A perfect classifier: C = diag(P_conf), so BBSE/RLLS give Q/P_conf; the oracle Q/P_train.
    estimate, train_dist = _estimate(method)
    if method == "oracle":
        np.testing.assert_allclose(estimate.sample_dist, train_dist)
    else:
        np.testing.assert_allclose(estimate.weights, [0.4, 1.2, 2.0], rtol=1e-5)
        np.testing.assert_allclose(estimate.sample_dist, [0.5, 0.25, 0.25])
    np.testing.assert_allclose(
        malls.class_weights(estimate, train_dist, lam=1.0), [0.8, 1.2, 1.0], rtol=1e-5
    )


@pytest.mark.parametrize("lam", [0.3, 1.0])
def test_one_order_for_rebasing_and_mixing_after_a_reveal(lam):
    # After an estimate on the confusion sample, the labeled set grows from P_train to
    # P_new. The weights the loop trains with are the raw estimate rebased onto P_new and
    # only then mixed, whichever set the weights were last expressed against.
    estimate, train_dist = _estimate("rlls")
    p_new = jnp.array([0.4, 0.2, 0.4])
    q = np.array([0.2, 0.3, 0.5])
    after_reveal = malls.class_weights(estimate, p_new, lam=lam)
    np.testing.assert_allclose(after_reveal, (1 - lam) + lam * q / np.asarray(p_new), rtol=1e-5)
    # Rebasing the already mixed weights (the old loop's order) differs unless lam = 1.
    mixed = np.asarray(malls.class_weights(estimate, train_dist, lam=lam))
    old_order = mixed * np.asarray(train_dist) / np.asarray(p_new)
    assert np.allclose(old_order, after_reveal, rtol=1e-5) == (lam == 1.0)


def test_none_estimator_gives_ones():
    estimate, train_dist = _estimate("none")
    np.testing.assert_allclose(malls.class_weights(estimate, train_dist, lam=0.5), 1.0)


def test_class_missing_from_the_confusion_sample_keeps_its_weight():
    # Class 2 never appears in the confusion rows but is half of the target and training.
    conf_y, conf_p = _rows([4, 4, 0])
    train_y, train_p = _rows([2, 2, 4])
    target_y, target_p = _rows([2, 3, 5])
    estimate = malls.estimate_weights(
        jnp.concatenate([conf_p, train_p]),
        jnp.concatenate([conf_y, train_y]),
        jnp.arange(16) < 8,
        jnp.array([0.25, 0.25, 0.5]),
        target_p,
        jnp.ones(10, bool),
        target_y,
        method="bbse",
        num_classes=3,
    )
    w = malls.class_weights(estimate, jnp.array([0.25, 0.25, 0.5]), lam=1.0)
    # Not identified without a column in C: neutral 1, not wiped out to 0.
    assert float(w[2]) == pytest.approx(1.0)


def _split(indices):
    indices = jnp.asarray(indices, jnp.int32)
    return shift.Split(indices=indices, valid=jnp.ones(indices.shape, bool))


def _pool_state(warm, pool_rows):
    empty = _split([])
    return pool.from_splits(
        shift.Splits(
            warm=_split(warm),
            holdout=empty,
            pool=_split(pool_rows),
            target=empty,
            test=empty,
            warm_dist=jnp.ones(2) / 2,
            pool_dist=jnp.ones(2) / 2,
            test_dist=jnp.ones(2) / 2,
            initially_labeled=jnp.zeros(len(pool_rows), bool),
        )
    )[2]


def test_training_weights_by_hand():
    state = _pool_state([0, 1], [2, 3, 4])
    state = pool.reveal(state, jnp.array([False, False, True, False, False]), 1, 4.0)
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


def test_query_weights_enter_the_training_prior():
    # 10 warm rows per class; 20 bought rows: 10 of class 0 with 1/p = 1, 10 of class 1 with
    # 1/p = 10; Q = (0.5, 0.5). The loss's class prior sum_i w(y_i) q_i [y_i = c] must be Q.
    labels = jnp.asarray(np.r_[np.zeros(10), np.ones(10), np.zeros(10), np.ones(10)], jnp.int32)
    state = _pool_state(list(range(20)), list(range(20, 40)))
    bought = jnp.arange(40) >= 20
    query_weight = jnp.where(labels == 1, 10.0, 1.0)
    state = pool.reveal(state, bought, 1, query_weight)
    train_dist = malls.source_distribution(state, labels, all_labeled=True, num_classes=2)
    q = jnp.array([0.5, 0.5])
    estimate = malls.WeightEstimate(
        weights=label_shift.oracle_weights(train_dist, q), sample_dist=train_dist
    )
    w = malls.class_weights(estimate, train_dist, lam=1.0)
    loss_weight = malls.training_weights(
        state, labels, w, importance_weighting=True, all_labeled=True
    )
    prior = np.bincount(np.asarray(labels), weights=np.asarray(loss_weight), minlength=2)
    np.testing.assert_allclose(prior / prior.sum(), [0.5, 0.5], rtol=1e-5)
    # Unweighted P_train = (0.5, 0.5) would have given w = (1, 1) and a prior of (.154, .846).
    np.testing.assert_allclose(train_dist, [20 / 130, 110 / 130], rtol=1e-6)


# --- the medial distribution through the query ---------------------------------------

_P = np.array([0.7, 0.2, 0.1])
_Q = np.array([0.1, 0.2, 0.7])


def _perfect_pool(n=10000):
    labels = np.repeat(np.arange(3), (_P * n).astype(int))
    rows = np.arange(labels.shape[0])
    state = _pool_state([], list(rows))
    probs = jnp.asarray(np.eye(3, dtype=np.float32)[labels] * 0.9 + 0.1 / 3)
    return state, labels, probs


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 1.0])
def test_medial_query_buys_p_times_w_to_the_lambda(lam):
    # A pool with class mass P, perfect predictions, an estimate of Q relative to some other
    # labeled sample (uniform here): the medial query buys N ~ P w^lambda, w = Q/P, within 0.02.
    state, labels, probs = _perfect_pool()
    uniform = jnp.full(3, 1 / 3)
    estimate = malls.WeightEstimate(weights=jnp.asarray(_Q * 3, jnp.float32), sample_dist=uniform)
    scores_key = jax.random.PRNGKey(0)
    chosen, query_weight, offered = malls.query(
        scores_key,
        probs,
        None,
        state,
        estimate,
        jnp.ones(3),
        strategy="random",
        budget=1000,
        diversify="medial",
        medial_lambda=lam,
        lam=1.0,
    )
    bought = np.bincount(labels[np.asarray(chosen)], minlength=3) / 1000
    target = _P * (_Q / _P) ** lam
    target /= target.sum()
    assert 0.5 * np.abs(bought - target).sum() < 0.02
    assert int(np.sum(chosen)) == 1000 and not np.any(offered)
    np.testing.assert_array_equal(query_weight, 1.0)


@pytest.mark.parametrize(
    "diversify, shares", [("guess", [1, 1, 1]), ("subguess", None), ("overguess", None)]
)
def test_original_modes_keep_the_original_shares(diversify, shares):
    # The original spreads the budget as 1, sqrt(w), w with w its current weights, without
    # the pool's class mass.
    state, labels, probs = _perfect_pool()
    w = _Q / _P
    expected = {"guess": np.ones(3), "subguess": np.sqrt(w), "overguess": w}[diversify]
    chosen, _, _ = malls.query(
        jax.random.PRNGKey(0),
        probs,
        None,
        state,
        malls.no_estimate(3),
        jnp.asarray(w, jnp.float32),
        strategy="maxent",
        budget=1000,
        diversify=diversify,
        medial_lambda=0.5,
        lam=1.0,
    )
    bought = np.bincount(labels[np.asarray(chosen)], minlength=3) / 1000
    np.testing.assert_allclose(bought, expected / expected.sum(), atol=1e-3)
    candidates = jnp.asarray(np.bincount(labels, minlength=3))
    np.testing.assert_allclose(
        selection.class_shares(candidates, jnp.asarray(w), diversify=diversify), expected, rtol=1e-6
    )


def test_iwal_query_offers_each_row_once():
    state, labels, probs = _perfect_pool(300)
    mc = jnp.stack([probs, jnp.roll(probs, 1, axis=-1)])  # spread 0.9: p = p_min + .999 * .9
    offered_total = np.zeros(labels.shape[0], bool)
    for r in range(1, 4):
        chosen, query_weight, offered = malls.query(
            jax.random.PRNGKey(r),
            probs,
            mc,
            state,
            malls.no_estimate(3),
            jnp.ones(3),
            strategy="iwal",
            budget=20,
            diversify="none",
            medial_lambda=0.5,
            lam=1.0,
        )
        offered = np.asarray(offered)
        assert not np.any(offered & offered_total)  # never offered twice
        assert np.all(offered[np.asarray(chosen)])
        p = 1e-3 + (1 - 1e-3) * 0.9
        np.testing.assert_allclose(np.asarray(query_weight)[np.asarray(chosen)], 1 / p, rtol=1e-5)
        offered_total |= offered
        state = pool.reveal(state, chosen, r, query_weight, offered=jnp.asarray(offered))
    assert int(pool.num_bought(state)) == 60
