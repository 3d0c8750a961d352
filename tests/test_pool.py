import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alsa_jax import pool, shift


def _split(indices, valid):
    return shift.Split(indices=jnp.asarray(indices, jnp.int32), valid=jnp.asarray(valid, bool))


def _hand_splits():
    """warm 2 valid + 1 padding, holdout 1, pool 4 valid + 1 padding (slot 1 labeled up front)."""
    test = _split([0, 1], [True, True])
    k = 3
    return shift.Splits(
        warm=_split([3, 4, 0], [True, True, False]),
        holdout=_split([7], [True]),
        pool=_split([10, 11, 12, 13, 0], [True, True, True, True, False]),
        target=test,
        test=test,
        warm_dist=jnp.full(k, 1 / k),
        pool_dist=jnp.full(k, 1 / k),
        test_dist=jnp.full(k, 1 / k),
        initially_labeled=jnp.asarray([False, True, False, False, False]),
    )


def _state():
    return pool.from_splits(_hand_splits())[2]


def test_from_splits_layout():
    indices, valid, state = pool.from_splits(_hand_splits())
    np.testing.assert_array_equal(indices, [3, 4, 0, 7, 10, 11, 12, 13, 0])
    np.testing.assert_array_equal(valid, [1, 1, 0, 1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(state.warm, [1, 1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(state.holdout, [0, 0, 0, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(state.pool, [0, 0, 0, 0, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(state.labeled, [1, 1, 0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(state.labeled_round, [0, 0, -1, -1, -1, 0, -1, -1, -1])
    np.testing.assert_array_equal(state.query_weight, np.ones(9))
    assert state.labeled_round.dtype == jnp.int32 and state.query_weight.dtype == jnp.float32
    assert int(pool.num_labeled(state)) == 3 and int(pool.num_bought(state)) == 0
    np.testing.assert_array_equal(pool.unlabeled_pool(state), [0, 0, 0, 0, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(pool.training_mask(state), [1, 1, 0, 0, 0, 1, 0, 0, 0])


def test_from_make_splits():
    # The shapes of tests/test_shift.py (20 classes, 6000 / 3000 rows, cap 1200), so the
    # compiled resampling is shared when both files run.
    labels = np.arange(6000, dtype=np.int32) % 20
    splits = shift.make_splits(
        jax.random.PRNGKey(0),
        labels,
        labels[:3000],
        num_classes=20,
        strategy="none",
        dataset_cap=1200,
        holdout_fraction=0.2,
        initial_prop=0.5,
    )
    indices, valid, state = pool.from_splits(splits)
    n = splits.warm.capacity + splits.holdout.capacity + splits.pool.capacity
    assert indices.shape == valid.shape == state.labeled.shape == (n,)
    masks = np.stack([state.warm, state.holdout, state.pool]).astype(int)
    np.testing.assert_array_equal(masks.sum(0), valid)  # disjoint, padding in none
    assert int(state.pool.sum()) == int(splits.pool.size)
    expected = int(splits.warm.size) + int(splits.initially_labeled.sum())
    assert int(pool.num_labeled(state)) == expected


def test_reveal_sets_masks_rounds_and_weights():
    state = _state()
    chosen = jnp.zeros(9, bool).at[jnp.array([4, 7])].set(True)
    weight = jnp.arange(9, dtype=jnp.float32) + 0.5
    after = pool.reveal(state, chosen, 2, weight)
    np.testing.assert_array_equal(after.labeled, [1, 1, 0, 0, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(after.labeled_round, [0, 0, -1, -1, 2, 0, -1, 2, -1])
    np.testing.assert_allclose(after.query_weight, [1, 1, 1, 1, 4.5, 1, 1, 7.5, 1])
    assert int(pool.num_labeled(after)) == 5 and int(pool.num_bought(after)) == 2
    np.testing.assert_array_equal(pool.unlabeled_pool(after), [0, 0, 0, 0, 0, 0, 1, 0, 0])
    # Default weight 1, scalar weights broadcast.
    again = pool.reveal(after, jnp.zeros(9, bool).at[6].set(True), 3)
    assert float(again.query_weight[6]) == 1.0 and int(again.labeled_round[6]) == 3
    scalar = pool.reveal(after, jnp.zeros(9, bool).at[6].set(True), 3, 2.0)
    assert float(scalar.query_weight[6]) == 2.0


@pytest.mark.parametrize(
    ("row", "why"),
    [
        (0, "not in the pool"),
        (3, "not in the pool"),
        (8, "not in the pool"),
        (5, "already labeled"),
    ],
)
def test_reveal_rejects_ineligible_rows(row, why):
    with pytest.raises(ValueError, match=why):
        pool.reveal(_state(), jnp.zeros(9, bool).at[row].set(True), 1)


def test_reveal_rejects_bad_arguments():
    state = _state()
    chosen = jnp.zeros(9, bool).at[4].set(True)
    with pytest.raises(ValueError, match="chosen"):
        pool.reveal(state, jnp.zeros(8, bool), 1)
    with pytest.raises(ValueError, match="query_weight"):
        pool.reveal(state, chosen, 1, jnp.zeros(9))
    with pytest.raises(ValueError, match="round_index"):
        pool.reveal(state, chosen, -1)


def test_reveal_under_jit_matches_and_ignores_ineligible():
    state = _state()
    chosen = jnp.zeros(9, bool).at[jnp.array([4, 6])].set(True)
    weight = jnp.full(9, 3.0)
    eager = pool.reveal(state, chosen, 4, weight)
    jitted = jax.jit(pool.reveal)(state, chosen, jnp.int32(4), weight)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_array_equal(a, b)
    # Under jit, rows that cannot be bought (warm, holdout, labeled, padding) are ignored.
    everything = jax.jit(pool.reveal)(state, jnp.ones(9, bool), jnp.int32(1), weight)
    np.testing.assert_array_equal(everything.labeled, state.labeled | state.pool)
    np.testing.assert_array_equal(everything.labeled_round, [0, 0, -1, -1, 1, 0, 1, 1, -1])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=9, max_size=9), min_size=1, max_size=4))
def test_reveal_invariants(rounds):
    state = _state()
    for r, picks in enumerate(rounds, start=1):
        chosen = np.asarray(picks) & np.asarray(pool.unlabeled_pool(state))
        before = int(pool.num_labeled(state))
        state = pool.reveal(state, jnp.asarray(chosen), r, jnp.full(9, 2.0))
        assert int(pool.num_labeled(state)) == before + chosen.sum()
        masks = np.stack([state.warm, state.holdout, state.pool]).astype(int)
        assert masks.sum(0).max() <= 1
        labeled = np.asarray(state.labeled)
        assert not (labeled & np.asarray(state.holdout)).any()
        assert not (labeled & ~np.asarray(state.warm | state.pool)).any()
        np.testing.assert_array_equal(np.asarray(state.labeled_round) >= 0, labeled)
        np.testing.assert_array_equal(np.asarray(state.labeled_round)[chosen], r)
    bought = int(pool.num_bought(state))
    assert bought == int(pool.num_labeled(state)) - 3


def test_label_distribution():
    labels = jnp.array([0, 1, 1, 2, 2, 2])
    mask = jnp.array([True, True, True, False, True, True])
    np.testing.assert_allclose(pool.label_distribution(labels, mask, 4), [0.2, 0.4, 0.4, 0.0])
    np.testing.assert_array_equal(pool.label_distribution(labels, jnp.zeros(6, bool), 4), 0.0)
    jitted = jax.jit(pool.label_distribution, static_argnums=2)(labels, mask, 4)
    np.testing.assert_allclose(jitted, [0.2, 0.4, 0.4, 0.0])
    with pytest.raises(ValueError, match="labels"):
        pool.label_distribution(labels, mask, 2)
    with pytest.raises(ValueError, match="mask"):
        pool.label_distribution(labels, mask[:3], 4)
