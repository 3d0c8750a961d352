from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from alsa_jax import selection

KEY = jax.random.PRNGKey(0)
FAST = settings(max_examples=25, deadline=None)


def _indices(mask) -> list[int]:
    return np.flatnonzero(np.asarray(mask)).tolist()


# --- top_k ---------------------------------------------------------------------------


def test_top_k_ties_go_to_the_lower_index_and_skip_unavailable_rows():
    scores = jnp.array([1.0, 3.0, 3.0, 0.0, 3.0, 2.0])
    available = jnp.array([True, True, False, True, True, True])
    # Available scores: 0:1, 1:3, 3:0, 4:3, 5:2; row 2 (3.0) is already labeled.
    assert _indices(selection.top_k(scores, available, 2)) == [1, 4]
    assert _indices(selection.top_k(scores, available, 3)) == [1, 4, 5]
    assert _indices(selection.top_k(jnp.zeros(6), available, 3)) == [0, 1, 3]
    assert _indices(selection.top_k(scores, available, 0)) == []


def test_top_k_minus_inf_and_nan_scores_still_beat_unavailable_rows():
    scores = jnp.array([5.0, -jnp.inf, jnp.nan, 1.0])
    available = jnp.array([False, True, True, True])
    assert _indices(selection.top_k(scores, available, 3)) == [1, 2, 3]
    assert _indices(selection.top_k(scores, available, 2)) == [1, 3]


def _top_k_reference(scores, available, budget):
    order = sorted(np.flatnonzero(available), key=lambda i: (-scores[i], i))
    return sorted(order[:budget])


@FAST
@given(
    scores=st.lists(st.integers(0, 3), min_size=10, max_size=10),
    available=st.lists(st.booleans(), min_size=10, max_size=10),
    budget=st.integers(0, 10),
)
def test_top_k_property(scores, available, budget):
    scores, available = np.array(scores, np.float32), np.array(available)
    budget = min(budget, int(available.sum()))
    chosen = np.asarray(selection.top_k(jnp.asarray(scores), jnp.asarray(available), budget))
    assert chosen.sum() == budget
    assert not np.any(chosen & ~available)
    assert _indices(chosen) == _top_k_reference(scores, available, budget)


# --- class_allocation ----------------------------------------------------------------

_MODE = {0.0: "guess", 0.5: "subguess", 1.0: "overguess"}  # the original's shares w ** lambda


def _alloc(candidates, weights, budget, lam):
    candidates = jnp.array(candidates)
    shares = selection.class_shares(candidates, jnp.array(weights), diversify=_MODE[float(lam)])
    return np.asarray(selection.class_allocation(candidates, shares, budget)).tolist()


def test_class_allocation_hand_cases():
    alloc = _alloc
    # 10 / 4 = 2.5 each: floors 2, 2 units left, equal remainders -> classes 0 and 1.
    assert alloc([100] * 4, [1.0] * 4, 10, 0.0) == [3, 3, 2, 2]
    assert alloc([100] * 4, [1.0] * 4, 10, 1.0) == [3, 3, 2, 2]
    # 10 * (4, 1, 1) / 6 = (6.67, 1.67, 1.67): floors (6, 1, 1), 2 left, remainders all 2/3,
    # ties to the lower index -> (7, 2, 1).
    assert alloc([100] * 3, [4.0, 1.0, 1.0], 10, 1.0) == [7, 2, 1]
    # lambda 0.5: sqrt(9, 1, 0) = (3, 1, 0): 8 * (3/4, 1/4) = (6, 2), class 2 has w = 0.
    assert alloc([100] * 3, [9.0, 1.0, 0.0], 8, 0.5) == [6, 2, 0]
    # Water-filling: 9 / 3 = 3 > 1 candidate of class 0 -> it takes 1, 8 re-shared -> (4, 4).
    assert alloc([1, 100, 100], [1.0] * 3, 9, 0.0) == [1, 4, 4]
    # Zero weight: classes 0 and 1 are exhausted (2 + 2), the 2 left go to class 2.
    assert alloc([2, 2, 10], [1.0, 1.0, 0.0], 6, 0.5) == [2, 2, 2]
    # lambda 0 ignores the weights (w ** 0 = 1): class balance even where w = 0.
    assert alloc([10, 10, 10], [1.0, 1.0, 0.0], 6, 0.0) == [2, 2, 2]
    # ... and equally over several zero-weight classes: 3 left -> 1.5 each -> (2, 1).
    assert alloc([1, 5, 5], [1.0, 0.0, 0.0], 4, 1.0) == [1, 2, 1]
    # All weights zero: equal shares.
    assert alloc([5, 5], [0.0, 0.0], 3, 0.5) == [2, 1]
    # Budget above the candidates: everything.
    assert alloc([1, 2, 0], [1.0, 1.0, 1.0], 10, 0.5) == [1, 2, 0]
    assert alloc([3, 3], [1.0, 2.0], 0, 1.0) == [0, 0]


def _allocation_reference(candidates, weights, budget, lam):
    """Exact (Fraction) water-filling + largest remainder, for lambda in {0, 1}."""
    k = len(candidates)

    def fill(shares, total):
        alloc = [0] * k
        active = [c for c in range(k) if shares[c] > 0 and candidates[c] > 0]
        saturated: set[int] = set()
        while True:
            remaining = total - sum(candidates[c] for c in saturated)
            live = [c for c in active if c not in saturated]
            denom = sum(shares[c] for c in live)
            x = {c: Fraction(remaining) * shares[c] / denom for c in live} if denom else {}
            new = {c for c in live if x[c] >= candidates[c]}
            if not new:
                break
            saturated |= new
        for c in saturated:
            alloc[c] = candidates[c]
        if live:
            floors = {c: int(x[c]) for c in live}
            left = remaining - sum(floors.values())
            order = sorted(live, key=lambda c: (-(x[c] - floors[c]), c))
            for c in live:
                alloc[c] = floors[c] + (1 if c in order[:left] else 0)
        return alloc

    total = min(budget, sum(candidates))
    positive = [w > 0 or lam == 0 for w in weights]  # lambda 0: w ** 0 = 1 for every class
    shares = [
        Fraction(w) ** lam if p else Fraction(0) for w, p in zip(weights, positive, strict=True)
    ]
    first = fill(shares, total)
    second = fill([Fraction(0) if p else Fraction(1) for p in positive], total - sum(first))
    return [a + b for a, b in zip(first, second, strict=True)]


@FAST
@given(
    candidates=st.lists(st.integers(0, 8), min_size=4, max_size=4),
    weights=st.lists(st.sampled_from([0, 1, 2, 3, 5]), min_size=4, max_size=4),
    budget=st.integers(0, 30),
    lam=st.sampled_from([0, 1]),
)
def test_class_allocation_matches_exact_reference(candidates, weights, budget, lam):
    out = _alloc(candidates, np.asarray(weights, np.float32), budget, lam)
    assert out == _allocation_reference(candidates, weights, budget, lam)


@FAST
@example(candidates=[0, 0, 0, 1, 1], weights=[0, 0, 0, 0, 1], budget=1, lam=1.4e-45)
@given(
    candidates=st.lists(st.integers(0, 8), min_size=5, max_size=5),
    weights=st.lists(st.floats(0.0, 4.0), min_size=5, max_size=5),
    budget=st.integers(0, 45),
    lam=st.floats(0.0, 1.0),
)
def test_class_allocation_property(candidates, weights, budget, lam):
    candidates, weights = np.array(candidates), np.array(weights, np.float32)
    shares = selection.class_shares(candidates, weights, diversify="medial", medial_lambda=lam)
    out = np.asarray(selection.class_allocation(candidates, shares, budget))
    assert out.sum() == min(budget, candidates.sum())
    assert np.all(out >= 0) and np.all(out <= candidates)
    # lambda is used in float32, below its smallest normal number as 0.
    positive = (weights > 0) | (np.float32(lam) < np.finfo(np.float32).tiny)
    if np.any(out[~positive] > 0):  # zero-weight classes only once the others are exhausted
        np.testing.assert_array_equal(out[positive], candidates[positive])


def test_medial_shares_are_pool_mass_times_w_to_the_lambda():
    candidates = jnp.array([70, 20, 10, 0])
    w = jnp.array([1 / 7, 1.0, 7.0, 2.0])
    for lam in (0.0, 0.25, 0.5, 1.0):
        shares = selection.class_shares(candidates, w, diversify="medial", medial_lambda=lam)
        np.testing.assert_allclose(
            shares, np.array([70, 20, 10, 0]) * np.asarray(w) ** lam, rtol=1e-5
        )
    # 0 ** 0 = 1: a zero weight keeps its pool share at lambda 0 and loses it above.
    zero = jnp.array([0.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(
        selection.class_shares(candidates, zero, diversify="medial", medial_lambda=0.0),
        [70, 20, 10, 0],
    )
    np.testing.assert_allclose(
        selection.class_shares(candidates, zero, diversify="medial", medial_lambda=0.5),
        [0, 20, 10, 0],
    )


# --- diversified_top_k ---------------------------------------------------------------

# k = 3 predicted classes over 12 rows; row 0 is already labeled, so class 0 has a single
# candidate (row 1) and classes 1 and 2 have 5 each.
DIV_SCORES = jnp.array([9.0, 0.1, 0.5, 0.9, 0.3, 0.7, 0.9, 0.2, 0.8, 0.4, 0.6, 0.8])
DIV_LABELS = jnp.array([0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2])
DIV_AVAILABLE = jnp.arange(12) > 0
DIV_WEIGHTS = jnp.array([4.0, 1.0, 0.25])
# Within class 1 by (-score, index): 3, 6, 5, 2, 4; within class 2: 8, 11, 10, 9, 7.


@pytest.mark.parametrize(
    "diversify, allocation, expected",
    [
        # 7 / 3 = 2.33 each; class 0 has 1 -> 6 re-shared equally -> (1, 3, 3).
        ("guess", [1, 3, 3], [1, 3, 5, 6, 8, 10, 11]),
        # sqrt(w) = (2, 1, 0.5): class 0 wants 4 > 1 -> 6 * (1, 0.5) / 1.5 = (4, 2).
        ("subguess", [1, 4, 2], [1, 2, 3, 5, 6, 8, 11]),
        # w = (4, 1, 0.25): class 0 full -> 6 * (1, 0.25) / 1.25 = (4.8, 1.2): floors (4, 1),
        # the unit left to the larger remainder (class 1) -> (5, 1).
        ("overguess", [1, 5, 1], [1, 2, 3, 4, 5, 6, 8]),
    ],
)
def test_diversified_top_k_hand_example(diversify, allocation, expected):
    candidates = jnp.array([1, 5, 5])
    shares = selection.class_shares(candidates, DIV_WEIGHTS, diversify=diversify)
    np.testing.assert_array_equal(selection.class_allocation(candidates, shares, 7), allocation)
    chosen = selection.diversified_top_k(
        DIV_SCORES, DIV_AVAILABLE, DIV_LABELS, DIV_WEIGHTS, 7, diversify=diversify
    )
    assert _indices(chosen) == expected


@pytest.mark.parametrize(
    "lam, allocation",
    [
        # Pool mass (1, 5, 5) / 11: 7 * (.64, 3.18, 3.18): floors (0, 3, 3), the unit to class 0.
        (0.0, [1, 3, 3]),
        # (1, 5, 5) * sqrt(4, 1, .25) = (2, 5, 2.5): class 0 wants 1.47 > 1 -> 6 * (5, 2.5) / 7.5.
        (0.5, [1, 4, 2]),
        # (1, 5, 5) * (4, 1, .25) = (4, 5, 1.25): class 0 full -> 6 * (5, 1.25) / 6.25 = (4.8, 1.2).
        (1.0, [1, 5, 1]),
    ],
)
def test_diversified_top_k_medial_hand_example(lam, allocation):
    chosen = selection.diversified_top_k(
        DIV_SCORES, DIV_AVAILABLE, DIV_LABELS, DIV_WEIGHTS, 7, medial_lambda=lam
    )
    np.testing.assert_array_equal(np.bincount(DIV_LABELS[chosen], minlength=3), allocation)
    assert selection.DIVERSIFY == ("none", "medial", "guess", "subguess", "overguess")


def test_diversified_top_k_takes_its_modes_by_keyword_only():
    # The medial lambda changed meaning (N ~ P w^lambda, not w^lambda): a positional lambda
    # from older code must fail loudly rather than run with the new meaning.
    with pytest.raises(TypeError):
        selection.diversified_top_k(DIV_SCORES, DIV_AVAILABLE, DIV_LABELS, DIV_WEIGHTS, 7, 0.5)
    with pytest.raises(TypeError):
        selection.class_allocation(jnp.array([1, 5, 5]), DIV_WEIGHTS, 7, 0.5)


@FAST
@given(
    scores=st.lists(st.integers(0, 4), min_size=12, max_size=12),
    labels=st.lists(st.integers(0, 2), min_size=12, max_size=12),
    available=st.lists(st.booleans(), min_size=12, max_size=12),
    weights=st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=3, max_size=3),
    budget=st.integers(0, 12),
    mode=st.sampled_from([("guess", 0.5), ("subguess", 0.5), ("medial", 0.0), ("medial", 0.7)]),
)
def test_diversified_top_k_property(scores, labels, available, weights, budget, mode):
    diversify, lam = mode
    scores, labels = np.array(scores, np.float32), np.array(labels)
    available, weights = np.array(available), np.array(weights, np.float32)
    budget = min(budget, int(available.sum()))
    chosen = np.asarray(
        selection.diversified_top_k(
            scores, available, labels, weights, budget, diversify=diversify, medial_lambda=lam
        )
    )
    assert chosen.sum() == budget
    assert not np.any(chosen & ~available)
    candidates = np.bincount(labels[available], minlength=3)
    shares = selection.class_shares(candidates, weights, diversify=diversify, medial_lambda=lam)
    allocation = np.asarray(selection.class_allocation(candidates, shares, budget))
    np.testing.assert_array_equal(np.bincount(labels[chosen], minlength=3), allocation)
    for c in range(3):  # within a class, the chosen rows are its top rows
        rows = available & (labels == c)
        assert _indices(chosen & rows) == _top_k_reference(scores, rows, allocation[c])


# --- iwal_select ---------------------------------------------------------------------


def test_iwal_with_probability_one_takes_the_first_available_rows():
    available = jnp.array([False, True, True, False, True, True, True])
    chosen, importance, offered = selection.iwal_select(KEY, jnp.ones(7), available, 3)
    assert _indices(chosen) == [1, 2, 4]
    assert _indices(offered) == [1, 2, 4]  # the stream stops at the third acceptance
    np.testing.assert_array_equal(importance, np.where(np.asarray(chosen), 1.0, 0.0))


def test_iwal_exact_budget_weights_and_determinism():
    p = jnp.linspace(0.05, 1.0, 40)
    available = jnp.arange(40) % 3 != 0
    chosen, importance, offered = selection.iwal_select(KEY, p, available, 10)
    chosen_np = np.asarray(chosen)
    assert chosen_np.sum() == 10 and not np.any(chosen_np & ~np.asarray(available))
    np.testing.assert_allclose(importance, np.where(chosen_np, 1 / np.asarray(p), 0), rtol=1e-6)
    # Offered: every available row up to the last chosen one, none after it.
    last = _indices(chosen)[-1]
    np.testing.assert_array_equal(offered, np.asarray(available) & (np.arange(40) <= last))
    again = selection.iwal_select(KEY, p, available, 10)
    jax.tree.map(np.testing.assert_array_equal, (chosen, importance, offered), again)
    other, _, _ = selection.iwal_select(jax.random.PRNGKey(7), p, available, 10)
    assert not np.array_equal(chosen, other)


def test_iwal_stream_that_runs_out_buys_fewer_and_offers_everything():
    p = jnp.full(30, 1e-3)
    available = jnp.arange(30) != 4
    chosen, _, offered = selection.iwal_select(KEY, p, available, 12)
    assert int(np.sum(chosen)) < 12
    np.testing.assert_array_equal(offered, available)
    # Budget 0 offers nothing.
    chosen, _, offered = selection.iwal_select(KEY, jnp.ones(30), available, 0)
    assert not np.any(chosen) and not np.any(offered)


def test_iwal_weights_stay_unbiased_over_rounds():
    # 2,000 rows, half with p = 0.02 and half with p = 0.5 (interleaved at random), budget 40
    # a round, 10 rounds, each row offered once across rounds: the summed 1/p weights of the
    # two halves estimate the same count (the rows offered in each half), so their ratio stays
    # near 1. Re-offering rows skipped earlier (the stream restarting every round) drove it to
    # 2.7. 200 repetitions keep the ratio's standard error near 2%.
    n, reps, rounds = 2000, 200, 10
    low = np.random.default_rng(0).permutation(np.arange(n) % 2 == 0)
    p = jnp.asarray(np.where(low, 0.02, 0.5), jnp.float32)
    select = jax.jit(jax.vmap(lambda k, a: selection.iwal_select(k, p, a, 40)))
    available = jnp.ones((reps, n), bool)
    weight = jnp.zeros((reps, n))
    ratios = []
    for r in range(rounds):
        keys = jax.random.split(jax.random.fold_in(KEY, r), reps)
        chosen, importance, offered = select(keys, available)
        available = available & ~offered & ~chosen
        weight = weight + importance
        total = np.asarray(weight).sum(0)
        ratios.append(total[low].sum() / total[~low].sum())
        offered_rows = ~np.asarray(available)
        # Each half's summed weight estimates the number of rows offered in that half.
        for half in (low, ~low):
            assert abs(total[half].sum() / offered_rows[:, half].sum() - 1) < 0.1
    # After one round the halves' offered counts differ (68 and 77 rows here); after ten
    # rounds nearly every offered prefix holds as many of each.
    assert abs(ratios[-1] - 1) < 0.1


@FAST
@given(
    p=st.lists(st.sampled_from([0.01, 0.2, 0.5, 1.0]), min_size=16, max_size=16),
    available=st.lists(st.booleans(), min_size=16, max_size=16),
    budget=st.integers(0, 16),
    seed=st.integers(0, 2**16),
)
def test_iwal_property(p, available, budget, seed):
    p, available = np.array(p, np.float32), np.array(available)
    chosen, importance, offered = selection.iwal_select(
        jax.random.PRNGKey(seed), p, available, budget
    )
    chosen, offered = np.asarray(chosen), np.asarray(offered)
    assert chosen.sum() <= budget and not np.any(chosen & ~offered)
    assert not np.any(offered & ~available)
    # Offered rows are a prefix of the available rows in index order.
    rows = np.flatnonzero(available)
    assert np.array_equal(offered[rows], np.sort(offered[rows])[::-1])
    if chosen.sum() < budget:  # the stream ran out: it offered every available row
        np.testing.assert_array_equal(offered, available)
    np.testing.assert_allclose(importance, np.where(chosen, 1 / p, 0), rtol=1e-6)


# --- jit agreement and argument checks -----------------------------------------------


def test_jit_and_eager_agree():
    scores = jax.random.uniform(KEY, (24,))
    available = jax.random.bernoulli(jax.random.PRNGKey(1), 0.7, (24,))
    labels = jax.random.randint(jax.random.PRNGKey(2), (24,), 0, 4)
    weights = jnp.array([0.5, 2.0, 0.0, 1.0])
    p = jnp.clip(scores, 0.05, 1.0)
    cases = [
        (lambda s, a: selection.top_k(s, a, 6), (scores, available)),
        (
            lambda s, a, y, w, lam: selection.diversified_top_k(s, a, y, w, 6, medial_lambda=lam),
            (scores, available, labels, weights, jnp.float32(0.5)),
        ),
        (
            lambda c, s: selection.class_allocation(c, s, 9),
            (jnp.array([1, 7, 0, 3]), weights),
        ),
        (lambda k, p, a: selection.iwal_select(k, p, a, 6), (KEY, p, available)),
    ]
    for fn, args in cases:
        eager, jitted = fn(*args), jax.jit(fn)(*args)
        jax.tree.map(np.testing.assert_array_equal, eager, jitted)


def test_bad_input_raises_one_line_value_errors():
    scores, available = jnp.arange(4.0), jnp.array([True, True, False, True])
    with pytest.raises(ValueError, match="budget=4 is larger than the 3 available"):
        selection.top_k(scores, available, 4)
    with pytest.raises(ValueError, match="budget must be a non-negative"):
        selection.top_k(scores, available, -1)
    with pytest.raises(ValueError, match="scores, available must have the same length"):
        selection.top_k(scores, available[:3], 1)
    with pytest.raises(ValueError, match="medial_lambda must lie in"):
        selection.class_shares(jnp.array([1, 2]), jnp.ones(2), medial_lambda=1.5)
    with pytest.raises(ValueError, match="shares must have shape"):
        selection.class_allocation(jnp.array([1, 2]), jnp.ones(3), 2)
    with pytest.raises(ValueError, match="shares must be >= 0"):
        selection.class_allocation(jnp.array([1, 2]), jnp.array([1.0, -1.0]), 2)
    with pytest.raises(ValueError, match="candidates_per_class must be >= 0"):
        selection.class_allocation(jnp.array([1, -2]), jnp.ones(2), 2)
    with pytest.raises(ValueError, match="predicted_labels must lie in"):
        selection.diversified_top_k(scores, available, jnp.array([0, 1, 2, 5]), jnp.ones(3), 2)
    with pytest.raises(ValueError, match="diversify='balanced'.*'guess'"):
        selection.diversified_top_k(
            scores, available, jnp.array([0, 1, 2, 0]), jnp.ones(3), 2, diversify="balanced"
        )
    with pytest.raises(ValueError, match="weights must be >= 0"):
        selection.diversified_top_k(
            scores, available, jnp.array([0, 1, 2, 0]), jnp.array([1.0, -1.0, 1.0]), 2
        )
    with pytest.raises(ValueError, match="query_prob must lie in"):
        selection.iwal_select(KEY, jnp.array([0.5, 0.0, 1.0, 0.2]), available, 1)
