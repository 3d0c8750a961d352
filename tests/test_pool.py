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
    # Paid: 2 warm-start + 1 holdout + 1 initially labeled example; nothing bought yet.
    assert int(pool.num_paid(state)) == 4 and int(pool.num_bought(state)) == 0
    assert int(pool.num_holdout(state)) == 1 and int(pool.num_training_rows(state)) == 3
    np.testing.assert_array_equal(state.example, [0, 1, -1, 2, 3, 4, 5, 6, -1])
    np.testing.assert_array_equal(state.representative, valid)
    np.testing.assert_array_equal(state.offered, np.zeros(9))
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
    # Resampled with replacement: rows of one example share its id, and the paid labels
    # count distinct examples (warm start, holdout, initially labeled pool examples).
    source = np.asarray(indices)[np.asarray(valid)]
    np.testing.assert_array_equal(
        np.asarray(state.example)[np.asarray(valid)], np.unique(source, return_inverse=True)[1]
    )
    assert len(np.unique(source)) < len(source)  # the draw does hold duplicates
    labeled_rows = np.asarray(state.labeled | state.holdout)
    assert int(pool.num_paid(state)) == len(np.unique(np.asarray(indices)[labeled_rows]))
    # Every row of an initially labeled example is labeled.
    pool_rows = np.asarray(state.pool)
    for ex in np.unique(np.asarray(state.example)[pool_rows & np.asarray(state.labeled)]):
        assert np.all(np.asarray(state.labeled)[np.asarray(state.example) == ex])


def test_reveal_sets_masks_rounds_and_weights():
    state = _state()
    chosen = jnp.zeros(9, bool).at[jnp.array([4, 7])].set(True)
    weight = jnp.arange(9, dtype=jnp.float32) + 0.5
    after = pool.reveal(state, chosen, 2, weight)
    np.testing.assert_array_equal(after.labeled, [1, 1, 0, 0, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(after.labeled_round, [0, 0, -1, -1, 2, 0, -1, 2, -1])
    np.testing.assert_allclose(after.query_weight, [1, 1, 1, 1, 4.5, 1, 1, 7.5, 1])
    assert int(pool.num_paid(after)) == 6 and int(pool.num_bought(after)) == 2
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
    # Round 0 is the warm start: bought rows recorded there would not count as bought.
    with pytest.raises(ValueError, match="round_index must be >= 1"):
        pool.reveal(state, chosen, 0)
    with pytest.raises(ValueError, match="offered"):
        pool.reveal(state, chosen, 1, offered=jnp.zeros(3, bool))


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
        before = int(pool.num_paid(state))
        state = pool.reveal(state, jnp.asarray(chosen), r, jnp.full(9, 2.0))
        assert int(pool.num_paid(state)) == before + chosen.sum()
        masks = np.stack([state.warm, state.holdout, state.pool]).astype(int)
        assert masks.sum(0).max() <= 1
        labeled = np.asarray(state.labeled)
        assert not (labeled & np.asarray(state.holdout)).any()
        assert not (labeled & ~np.asarray(state.warm | state.pool)).any()
        np.testing.assert_array_equal(np.asarray(state.labeled_round) >= 0, labeled)
        np.testing.assert_array_equal(np.asarray(state.labeled_round)[chosen], r)
    bought = int(pool.num_bought(state))
    assert bought == int(pool.num_paid(state)) - 4


def _duplicate_splits():
    """warm rows 3, 3, 4; pool rows 10, 11, 10, 12, 11, 10 (examples held several times)."""
    test = _split([0, 1], [True, True])
    k = 3
    return shift.Splits(
        warm=_split([3, 3, 4], [True, True, True]),
        holdout=_split([7, 7], [True, True]),
        pool=_split([10, 11, 10, 12, 11, 10], [True] * 6),
        target=test,
        test=test,
        warm_dist=jnp.full(k, 1 / k),
        pool_dist=jnp.full(k, 1 / k),
        test_dist=jnp.full(k, 1 / k),
        initially_labeled=jnp.zeros(6, bool),
    )


def test_buying_an_example_reveals_every_row_of_it():
    indices, _, state = pool.from_splits(_duplicate_splits())
    np.testing.assert_array_equal(indices, [3, 3, 4, 7, 7, 10, 11, 10, 12, 11, 10])
    np.testing.assert_array_equal(state.example, [0, 0, 1, 2, 2, 3, 4, 3, 5, 4, 3])
    np.testing.assert_array_equal(state.representative, [1, 0, 1, 1, 0, 1, 1, 0, 1, 0, 0])
    # Paid: warm examples 3 and 4, holdout example 7: three labels for five rows.
    assert int(pool.num_paid(state)) == 3 and int(pool.num_holdout(state)) == 1
    # A query sees one row per unlabeled example.
    np.testing.assert_array_equal(pool.unlabeled_pool(state), [0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0])
    chosen = jnp.zeros(11, bool).at[5].set(True)  # example 10, held by rows 5, 7 and 10
    after = pool.reveal(state, chosen, 1, 5.0)
    np.testing.assert_array_equal(after.labeled, [1, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(after.labeled_round[jnp.array([5, 7, 10])], [1, 1, 1])
    np.testing.assert_allclose(after.query_weight, [1, 1, 1, 1, 1, 5, 1, 5, 1, 1, 5])
    assert int(pool.num_paid(after)) == 4 and int(pool.num_bought(after)) == 1
    assert int(pool.num_training_rows(after)) == 6  # every row trains, duplicates included
    np.testing.assert_array_equal(pool.unlabeled_pool(after), [0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0])
    jitted = jax.jit(pool.reveal)(state, chosen, jnp.int32(1), jnp.full(11, 5.0))
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_array_equal(a, b)


def test_offered_rows_accumulate():
    state = _state()
    offered = jnp.zeros(9, bool).at[jnp.array([0, 4, 6])].set(True)
    after = pool.reveal(state, jnp.zeros(9, bool).at[4].set(True), 1, offered=offered)
    # Only pool rows can be offered (row 0 is the warm start).
    np.testing.assert_array_equal(after.offered, [0, 0, 0, 0, 1, 0, 1, 0, 0])
    later = pool.reveal(after, jnp.zeros(9, bool), 2, offered=jnp.zeros(9, bool).at[7].set(True))
    np.testing.assert_array_equal(later.offered, [0, 0, 0, 0, 1, 0, 1, 1, 0])


def test_training_distribution_is_weighted_by_query_weights():
    state = _state()  # training rows 0, 1 (warm) and 5 (initially labeled)
    labels = jnp.array([0, 1, 2, 2, 2, 1, 0, 1, 0])
    np.testing.assert_allclose(
        pool.training_distribution(state, labels, 3), [1 / 3, 2 / 3, 0.0], rtol=1e-6
    )
    # Row 7 (class 1) bought with query weight 4, row 4 (class 2) with 2: masses 1, 1 + 1 + 4, 2.
    after = pool.reveal(state, jnp.zeros(9, bool).at[7].set(True), 1, 4.0)
    after = pool.reveal(after, jnp.zeros(9, bool).at[4].set(True), 2, 2.0)
    np.testing.assert_allclose(
        pool.training_distribution(after, labels, 3), [1 / 9, 6 / 9, 2 / 9], rtol=1e-6
    )
    jitted = jax.jit(pool.training_distribution, static_argnums=2)(after, labels, 3)
    np.testing.assert_allclose(jitted, [1 / 9, 6 / 9, 2 / 9], rtol=1e-6)
    with pytest.raises(ValueError, match="labels"):
        pool.training_distribution(after, labels, 2)
    with pytest.raises(ValueError, match="labels"):
        pool.training_distribution(after, labels[:3], 3)
