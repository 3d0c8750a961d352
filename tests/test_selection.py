from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
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


def test_class_allocation_hand_cases():
    def alloc(candidates, weights, budget, lam):
        out = selection.class_allocation(jnp.array(candidates), jnp.array(weights), budget, lam)
        return np.asarray(out).tolist()

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
    out = selection.class_allocation(
        jnp.array(candidates), jnp.array(weights, jnp.float32), budget, float(lam)
    )
    assert np.asarray(out).tolist() == _allocation_reference(candidates, weights, budget, lam)


@FAST
@given(
    candidates=st.lists(st.integers(0, 8), min_size=5, max_size=5),
    weights=st.lists(st.floats(0.0, 4.0), min_size=5, max_size=5),
    budget=st.integers(0, 45),
    lam=st.floats(0.0, 1.0),
)
def test_class_allocation_property(candidates, weights, budget, lam):
    candidates, weights = np.array(candidates), np.array(weights, np.float32)
    out = np.asarray(selection.class_allocation(jnp.array(candidates), weights, budget, lam))
    assert out.sum() == min(budget, candidates.sum())
    assert np.all(out >= 0) and np.all(out <= candidates)
    positive = (weights > 0) | (np.float32(lam) == 0)  # lambda is used in float32
    if np.any(out[~positive] > 0):  # zero-weight classes only once the others are exhausted
        np.testing.assert_array_equal(out[positive], candidates[positive])


# --- diversified_top_k and select ----------------------------------------------------

# k = 3 predicted classes over 12 rows; row 0 is already labeled, so class 0 has a single
# candidate (row 1) and classes 1 and 2 have 5 each.
DIV_SCORES = jnp.array([9.0, 0.1, 0.5, 0.9, 0.3, 0.7, 0.9, 0.2, 0.8, 0.4, 0.6, 0.8])
DIV_LABELS = jnp.array([0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2])
DIV_AVAILABLE = jnp.arange(12) > 0
DIV_WEIGHTS = jnp.array([4.0, 1.0, 0.25])
# Within class 1 by (-score, index): 3, 6, 5, 2, 4; within class 2: 8, 11, 10, 9, 7.


@pytest.mark.parametrize(
    "lam, allocation, expected",
    [
        # 7 / 3 = 2.33 each; class 0 has 1 -> 6 re-shared equally -> (1, 3, 3).
        (0.0, [1, 3, 3], [1, 3, 5, 6, 8, 10, 11]),
        # sqrt(w) = (2, 1, 0.5): class 0 wants 4 > 1 -> 6 * (1, 0.5) / 1.5 = (4, 2).
        (0.5, [1, 4, 2], [1, 2, 3, 5, 6, 8, 11]),
        # w = (4, 1, 0.25): class 0 full -> 6 * (1, 0.25) / 1.25 = (4.8, 1.2): floors (4, 1),
        # the unit left to the larger remainder (class 1) -> (5, 1).
        (1.0, [1, 5, 1], [1, 2, 3, 4, 5, 6, 8]),
    ],
)
def test_diversified_top_k_hand_example(lam, allocation, expected):
    candidates = jnp.array([1, 5, 5])
    np.testing.assert_array_equal(
        selection.class_allocation(candidates, DIV_WEIGHTS, 7, lam), allocation
    )
    chosen = selection.diversified_top_k(DIV_SCORES, DIV_AVAILABLE, DIV_LABELS, DIV_WEIGHTS, 7, lam)
    assert _indices(chosen) == expected


def test_select_named_modes_and_override():
    kwargs = dict(predicted_labels=DIV_LABELS, weights=DIV_WEIGHTS)
    for name, lam in [("guess", 0.0), ("subguess", 0.5), ("overguess", 1.0)]:
        np.testing.assert_array_equal(
            selection.select(DIV_SCORES, DIV_AVAILABLE, 7, diversify=name, **kwargs),
            selection.diversified_top_k(DIV_SCORES, DIV_AVAILABLE, DIV_LABELS, DIV_WEIGHTS, 7, lam),
        )
    np.testing.assert_array_equal(
        selection.select(DIV_SCORES, DIV_AVAILABLE, 7),
        selection.top_k(DIV_SCORES, DIV_AVAILABLE, 7),
    )
    overridden = selection.select(
        DIV_SCORES, DIV_AVAILABLE, 7, diversify="guess", medial_lambda=1.0, **kwargs
    )
    assert _indices(overridden) == [1, 2, 3, 4, 5, 6, 8]
    assert selection.DIVERSIFY == {"none": None, "guess": 0.0, "subguess": 0.5, "overguess": 1.0}


@FAST
@given(
    scores=st.lists(st.integers(0, 4), min_size=12, max_size=12),
    labels=st.lists(st.integers(0, 2), min_size=12, max_size=12),
    available=st.lists(st.booleans(), min_size=12, max_size=12),
    weights=st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=3, max_size=3),
    budget=st.integers(0, 12),
    lam=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_diversified_top_k_property(scores, labels, available, weights, budget, lam):
    scores, labels = np.array(scores, np.float32), np.array(labels)
    available, weights = np.array(available), np.array(weights, np.float32)
    budget = min(budget, int(available.sum()))
    chosen = np.asarray(
        selection.diversified_top_k(scores, available, labels, weights, budget, lam)
    )
    assert chosen.sum() == budget
    assert not np.any(chosen & ~available)
    candidates = np.bincount(labels[available], minlength=3)
    allocation = np.asarray(selection.class_allocation(candidates, weights, budget, lam))
    np.testing.assert_array_equal(np.bincount(labels[chosen], minlength=3), allocation)
    for c in range(3):  # within a class, the chosen rows are its top rows
        rows = available & (labels == c)
        assert _indices(chosen & rows) == _top_k_reference(scores, rows, allocation[c])


# --- iwal_select ---------------------------------------------------------------------


def test_iwal_with_probability_one_takes_the_first_available_rows():
    available = jnp.array([False, True, True, False, True, True, True])
    chosen, importance = selection.iwal_select(KEY, jnp.ones(7), available, 3)
    assert _indices(chosen) == [1, 2, 4]
    np.testing.assert_array_equal(importance, np.where(np.asarray(chosen), 1.0, 0.0))


def test_iwal_exact_budget_weights_and_determinism():
    p = jnp.linspace(0.05, 1.0, 40)
    available = jnp.arange(40) % 3 != 0
    chosen, importance = selection.iwal_select(KEY, p, available, 10)
    chosen_np = np.asarray(chosen)
    assert chosen_np.sum() == 10 and not np.any(chosen_np & ~np.asarray(available))
    np.testing.assert_allclose(importance, np.where(chosen_np, 1 / np.asarray(p), 0), rtol=1e-6)
    again, _ = selection.iwal_select(KEY, p, available, 10)
    np.testing.assert_array_equal(chosen, again)
    other, _ = selection.iwal_select(jax.random.PRNGKey(7), p, available, 10)
    assert not np.array_equal(chosen, other)


def test_iwal_fill_after_the_passes_takes_the_most_probable_rows():
    # No pass at all: the fill takes the highest p (ties to the lower index).
    p = jnp.array([0.2, 0.9, 0.5, 0.9, 0.7])
    chosen, importance = selection.iwal_select(KEY, p, jnp.ones(5, bool), 3, max_passes=0)
    assert _indices(chosen) == [1, 3, 4]
    # Tiny probabilities: the passes take few rows, the fill still meets the budget.
    chosen, _ = selection.iwal_select(KEY, jnp.full(30, 1e-3), jnp.ones(30, bool), 12)
    assert int(np.sum(chosen)) == 12


@FAST
@given(
    p=st.lists(st.sampled_from([0.01, 0.2, 0.5, 1.0]), min_size=16, max_size=16),
    available=st.lists(st.booleans(), min_size=16, max_size=16),
    budget=st.integers(0, 16),
    seed=st.integers(0, 2**16),
)
def test_iwal_property(p, available, budget, seed):
    p, available = np.array(p, np.float32), np.array(available)
    budget = min(budget, int(available.sum()))
    chosen, importance = selection.iwal_select(jax.random.PRNGKey(seed), p, available, budget)
    chosen = np.asarray(chosen)
    assert chosen.sum() == budget and not np.any(chosen & ~available)
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
            lambda s, a, y, w, lam: selection.diversified_top_k(s, a, y, w, 6, lam),
            (scores, available, labels, weights, jnp.float32(0.5)),
        ),
        (
            lambda c, w, lam: selection.class_allocation(c, w, 9, lam),
            (jnp.array([1, 7, 0, 3]), weights, jnp.float32(0.5)),
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
        selection.class_allocation(jnp.array([1, 2]), jnp.ones(2), 2, 1.5)
    with pytest.raises(ValueError, match="weights must have shape"):
        selection.class_allocation(jnp.array([1, 2]), jnp.ones(3), 2, 0.5)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        selection.class_allocation(jnp.array([1, 2]), jnp.array([1.0, -1.0]), 2, 0.5)
    with pytest.raises(ValueError, match="candidates_per_class must be >= 0"):
        selection.class_allocation(jnp.array([1, -2]), jnp.ones(2), 2, 0.5)
    with pytest.raises(ValueError, match="predicted_labels must lie in"):
        selection.diversified_top_k(scores, available, jnp.array([0, 1, 2, 5]), jnp.ones(3), 2, 0.0)
    with pytest.raises(ValueError, match="diversify='balanced'.*'guess'"):
        selection.select(scores, available, 2, diversify="balanced")
    with pytest.raises(ValueError, match="predicted_labels is required"):
        selection.select(scores, available, 2, diversify="guess", weights=jnp.ones(3))
    with pytest.raises(ValueError, match="query_prob must lie in"):
        selection.iwal_select(KEY, jnp.array([0.5, 0.0, 1.0, 0.2]), available, 1)
    with pytest.raises(ValueError, match="max_passes"):
        selection.iwal_select(KEY, jnp.full(4, 0.5), available, 1, max_passes=-1)
    with pytest.raises(ValueError, match="budget=4 is larger"):
        selection.iwal_select(KEY, jnp.full(4, 0.5), available, 4)
