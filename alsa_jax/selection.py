"""Batch selection under a budget: which ``budget`` unlabeled rows to label this round.

Every function returns a boolean mask ``chosen: [n]`` over the fixed pool arrays with
exactly ``budget`` entries set, all inside ``available: bool [n]`` (the unlabeled
pool; an already-labeled row is never chosen). ``budget`` is a static Python int.
With concrete arrays a budget above the number of available rows raises
``ValueError``; under ``jit`` (where that count is not known) the functions choose
every available row instead and never an unavailable one.

- :func:`top_k`: the ``budget`` highest scores (ties to the lower index).
- :func:`class_allocation` / :func:`diversified_top_k`: the budget is first shared
  over *predicted* classes, N_c proportional to w_c ** medial_lambda (lambda = 0 the
  class-balanced "guess", 0.5 the medial "subguess", 1 the "overguess"), with
  water-filling when a class has too few candidates, then top-k within each class.
- :func:`iwal_select`: the IWAL stream, labeling each row with its query probability
  and returning the 1/p importance weights.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from alsa_jax import validation

DIVERSIFY: dict[str, float | None] = {
    "none": None,
    "guess": 0.0,
    "subguess": 0.5,
    "overguess": 1.0,
}
"""The original's ``diversify`` names -> ``medial_lambda`` (None: plain :func:`top_k`)."""

# Real-valued shares are rounded to this grid before the largest-remainder step, so
# that float32 noise cannot break exact ties (2/3 vs 2/3) or push a share over its cap.
_SHARE_GRID = 1024.0


# --- argument checks -----------------------------------------------------------------


def _check_static_budget(budget: int) -> None:
    if not isinstance(budget, (int, np.integer)) or isinstance(budget, bool) or budget < 0:
        raise ValueError(f"budget must be a non-negative Python int (static), got {budget!r}")


def _check_mask(scores: jax.Array, available: jax.Array, budget: int) -> jax.Array:
    """Checks ``scores [n]``/``available [n]``/``budget``; returns ``available`` as bool."""
    validation.check_rank("scores", scores, 1)
    validation.check_rank("available", available, 1)
    validation.check_same_leading(("scores", "available"), scores, available)
    _check_static_budget(budget)
    available = jnp.asarray(available).astype(bool)
    validation.check_budget("budget", budget, jnp.sum(available))
    return available


def _check_medial_lambda(medial_lambda: float) -> None:
    if medial_lambda is None:
        raise ValueError("medial_lambda must be a number in [0, 1], got None")
    validation.check_in_range("medial_lambda", medial_lambda, 0.0, 1.0)


def _float_scores(scores: jax.Array) -> jax.Array:
    """Scores as floats with NaN mapped to -inf (a NaN score ranks last)."""
    scores = jnp.asarray(scores)
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        scores = scores.astype(jnp.float32)
    return jnp.where(jnp.isnan(scores), -jnp.inf, scores)


def _ranks(primary: jax.Array, secondary: jax.Array) -> jax.Array:
    """Position of each row in the order (primary, secondary, index), ascending. int32 [n]."""
    n = primary.shape[0]
    index = jnp.arange(n, dtype=jnp.int32)
    *_, order = jax.lax.sort((primary, secondary, index), num_keys=3)
    return jnp.zeros(n, dtype=jnp.int32).at[order].set(index)


# --- top-k ---------------------------------------------------------------------------


def top_k(scores: jax.Array, available: jax.Array, budget: int) -> jax.Array:
    """The ``budget`` available rows with the highest scores. Returns bool [n].

    scores: [n] (higher = query first); available: bool [n]; budget: static int.
    Ties go to the lower index; NaN and -inf scores of available rows rank last
    among the available rows but still above every unavailable row.
    """
    available = _check_mask(scores, available, budget)
    return _top_k(scores, available, budget)


@functools.partial(jax.jit, static_argnames="budget")
def _top_k(scores: jax.Array, available: jax.Array, budget: int) -> jax.Array:
    n = scores.shape[0]
    if budget == 0:
        return jnp.zeros(n, dtype=bool)
    scores = _float_scores(scores)
    lowest = jnp.finfo(scores.dtype).min
    # Available rows are clipped to the lowest finite value, so -inf marks only the
    # unavailable ones; lax.top_k puts the lower index first among equal values.
    masked = jnp.where(available, jnp.maximum(scores, lowest), -jnp.inf)
    _, index = jax.lax.top_k(masked, budget)
    chosen = jnp.zeros(n, dtype=bool).at[index].set(True)
    return chosen & available


# --- medial class allocation ---------------------------------------------------------


@jax.jit
def _water_fill(shares: jax.Array, caps: jax.Array, total: jax.Array) -> jax.Array:
    """Integer split of ``total`` units over classes with ``shares > 0``, each <= its cap.

    shares: float [k] >= 0; caps: int [k] >= 0; total: int scalar. Real shares
    x_c = R * s_c / sum_{active} s are recomputed over the unsaturated ("active")
    classes, R the units not held by saturated classes; a class whose x_c reaches its
    cap takes the cap and leaves the active set. After at most k passes the active x_c
    are rounded by the largest-remainder method (floors, then one more unit to the
    largest remainders, ties to the lower class index). Sums to min(total, sum of the
    caps of the classes with a positive share); zero-share classes get 0.
    """
    k = shares.shape[0]
    caps_f = caps.astype(jnp.float32)
    eligible = (shares > 0) & (caps > 0)

    def real_shares(saturated: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        active = eligible & ~saturated
        remaining = total - jnp.sum(jnp.where(saturated, caps, 0))
        denom = jnp.sum(jnp.where(active, shares, 0.0))
        x = remaining.astype(jnp.float32) * shares / jnp.where(denom > 0, denom, 1.0)
        x = jnp.where(active, jnp.round(x * _SHARE_GRID) / _SHARE_GRID, 0.0)
        return active, remaining, x

    def one_pass(_: int, saturated: jax.Array) -> jax.Array:
        active, _, x = real_shares(saturated)
        return saturated | (active & (x >= caps_f))

    saturated = jax.lax.fori_loop(0, k, one_pass, jnp.zeros(k, dtype=bool))
    active, remaining, x = real_shares(saturated)
    floors = jnp.floor(x)
    # With an active class left every remaining unit goes to the active classes;
    # with none, the remainder is left to the caller.
    leftover = jnp.where(jnp.any(active), remaining - jnp.sum(floors).astype(remaining.dtype), 0)
    leftover = jnp.clip(leftover, 0, jnp.sum(active))
    rank = _ranks(jnp.where(active, 0, 1), -(x - floors))
    extra = active & (rank < leftover)
    counts = jnp.where(saturated, caps, floors.astype(caps.dtype) + extra.astype(caps.dtype))
    return jnp.where(eligible, counts, 0)


def class_allocation(
    candidates_per_class: jax.Array,
    weights: jax.Array,
    budget: int,
    medial_lambda: float,
) -> jax.Array:
    """How many of the ``budget`` queries go to each predicted class. Returns int32 [k].

    candidates_per_class: int [k], the available rows predicted as class c (the caps);
    weights: [k], the current importance-weight estimate w >= 0; budget: static int;
    medial_lambda in [0, 1]. The target split is

        N_c  proportional to  w_c ** medial_lambda,   sum_c N_c = min(budget, sum_c cand_c),

    so lambda = 0 gives equal shares (class-balanced "guess"), 0.5 shares proportional
    to sqrt(w) (the medial "subguess"), 1 shares proportional to w ("overguess").
    Water-filling: a class with fewer candidates than its share gets all of them and the
    rest is re-shared over the other classes, until stable (at most k passes). Integer
    counts by the largest-remainder method, ties to the lower class index (remainders
    compared on a 1/1024 grid, so float noise does not break exact ties).

    Zero weights: at lambda = 0 the weights are ignored (w ** 0 = 1, pure class
    balance, as the original "guess"). For lambda > 0 a class with w_c = 0 gets no share
    while the positive-weight classes can absorb the budget; only when all of those are
    exhausted is the rest shared equally (water-filled the same way) over the
    zero-weight classes.
    So the result always sums to min(budget, total candidates) and never exceeds
    ``candidates_per_class``. Jittable (``medial_lambda`` may be traced).
    """
    validation.check_rank("candidates_per_class", candidates_per_class, 1)
    validation.check_shape("weights", weights, (np.shape(candidates_per_class)[0],))
    validation.check_positive("candidates_per_class", candidates_per_class, strict=False)
    validation.check_positive("weights", weights, strict=False)
    if validation.is_concrete(weights) and not np.all(np.isfinite(np.asarray(weights))):
        raise ValueError("weights must be finite, got non-finite entries")
    _check_static_budget(budget)
    _check_medial_lambda(medial_lambda)
    return _class_allocation(candidates_per_class, weights, budget, medial_lambda)


# The jitted cores take the budget as a traced int32, so a new budget does not recompile.
@jax.jit
def _class_allocation(
    candidates_per_class: jax.Array, weights: jax.Array, budget: jax.Array, medial_lambda: float
) -> jax.Array:
    caps = jnp.maximum(jnp.asarray(candidates_per_class).astype(jnp.int32), 0)
    weights = jnp.asarray(weights, dtype=jnp.float32)
    total = jnp.minimum(jnp.asarray(budget, jnp.int32), jnp.sum(caps))
    power = jnp.asarray(medial_lambda, jnp.float32)
    # w ** 0 = 1 for every class at lambda = 0 (w = 0 included); otherwise w = 0 has no share.
    positive = (weights > 0) | (power == 0)
    shares = jnp.where(positive, jnp.where(positive, weights, 1.0) ** power, 0.0)
    first = _water_fill(shares, caps, total)
    rest = total - jnp.sum(first)
    second = _water_fill(jnp.where(positive, 0.0, 1.0), caps, rest)
    return first + second


def diversified_top_k(
    scores: jax.Array,
    available: jax.Array,
    predicted_labels: jax.Array,
    weights: jax.Array,
    budget: int,
    medial_lambda: float,
) -> jax.Array:
    """Top-scoring rows within each predicted class, per :func:`class_allocation`.

    scores: [n]; available: bool [n]; predicted_labels: int [n] in [0, k) (argmax of the
    corrected posterior); weights: [k]; budget: static int; medial_lambda in [0, 1].
    With cand_c the available rows predicted as c and N = class_allocation(cand, w,
    budget, medial_lambda), rows are ranked within their class by (-score, index) and
    a row is chosen when its rank r < N_c. Returns bool [n] with exactly ``budget``
    entries (fewer only under jit when fewer rows are available).
    """
    available = _check_mask(scores, available, budget)
    validation.check_rank("predicted_labels", predicted_labels, 1)
    validation.check_same_leading(("scores", "predicted_labels"), scores, predicted_labels)
    validation.check_rank("weights", weights, 1)
    k = weights.shape[0]
    validation.check_labels("predicted_labels", predicted_labels, k)  # k = len(weights)
    _check_medial_lambda(medial_lambda)
    return _diversified_top_k(scores, available, predicted_labels, weights, budget, medial_lambda)


@jax.jit
def _diversified_top_k(
    scores: jax.Array,
    available: jax.Array,
    predicted_labels: jax.Array,
    weights: jax.Array,
    budget: jax.Array,
    medial_lambda: float,
) -> jax.Array:
    k = weights.shape[0]
    labels = jnp.asarray(predicted_labels).astype(jnp.int32)
    candidates = jnp.zeros(k, dtype=jnp.int32).at[labels].add(available.astype(jnp.int32))
    allocation = _class_allocation(candidates, weights, budget, medial_lambda)
    # Unavailable rows go to a sentinel class k, sorted after every real class.
    row_class = jnp.where(available, labels, k)
    position = _ranks(row_class, -_float_scores(scores))
    class_start = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(candidates)])
    rank_in_class = position - class_start[row_class]
    quota = jnp.concatenate([allocation, jnp.zeros(1, allocation.dtype)])[row_class]
    return available & (rank_in_class < quota)


def select(
    scores: jax.Array,
    available: jax.Array,
    budget: int,
    *,
    predicted_labels: jax.Array | None = None,
    weights: jax.Array | None = None,
    diversify: str = "none",
    medial_lambda: float | None = None,
) -> jax.Array:
    """Choose ``budget`` rows: :func:`top_k`, or :func:`diversified_top_k` over classes.

    ``diversify`` is one of :data:`DIVERSIFY` ("none", "guess", "subguess",
    "overguess"); an explicit ``medial_lambda`` overrides the named mode. With a
    lambda, ``predicted_labels`` [n] and ``weights`` [k] are required. Returns bool [n].
    """
    validation.check_choice("diversify", diversify, DIVERSIFY)
    lam = DIVERSIFY[diversify] if medial_lambda is None else medial_lambda
    if lam is None:
        return top_k(scores, available, budget)
    if predicted_labels is None or weights is None:
        missing = "predicted_labels" if predicted_labels is None else "weights"
        raise ValueError(
            f"{missing} is required for class-diversified selection (diversify={diversify!r}, "
            f"medial_lambda={lam}); pass it or use diversify='none'"
        )
    return diversified_top_k(scores, available, predicted_labels, weights, budget, lam)


# --- IWAL stream ---------------------------------------------------------------------


def iwal_select(
    key: jax.Array,
    query_prob: jax.Array,
    available: jax.Array,
    budget: int,
    max_passes: int = 8,
) -> tuple[jax.Array, jax.Array]:
    """IWAL: stream over the pool, labeling row i with probability p_i, until the budget.

    query_prob: [n] with p_i in (0, 1] (:func:`alsa_jax.acquisition.iwal_query_probability`);
    available: bool [n]; budget: static int; max_passes: static int >= 0.

    Pass t (key folded with t) draws u_i ~ U[0, 1) for every row and accepts the rows
    not yet taken with u_i < p_i; walking the rows in index order, acceptances are
    kept while their running count c_i (cumulative sum) is <= the budget still open,
    so the stream stops exactly at the budget. If a pass ends short, the next pass
    continues over the rows not yet taken with fresh draws. If after ``max_passes``
    passes the budget is still not spent, the rest is filled with the remaining rows of
    highest p_i (ties to the lower index); those rows were not drawn, so their 1/p_i
    weight is an approximation (rare unless most p_i are near p_min).

    Returns (chosen bool [n], importance float32 [n]) with importance_i = 1 / p_i on
    chosen rows (the IWAL weight the original never applied) and 0 elsewhere.
    With p = 1 everywhere this takes the first ``budget`` available rows.
    """
    validation.check_rank("query_prob", query_prob, 1)
    validation.check_rank("available", available, 1)
    validation.check_same_leading(("query_prob", "available"), query_prob, available)
    if validation.is_concrete(query_prob):
        p = np.asarray(query_prob, dtype=np.float64)
        if p.size and not (np.all(np.isfinite(p)) and np.all(p > 0) and np.all(p <= 1)):
            raise ValueError(
                f"query_prob must lie in (0, 1], got values in [{np.nanmin(p)}, {np.nanmax(p)}]"
            )
    if not isinstance(max_passes, (int, np.integer)) or max_passes < 0:
        raise ValueError(f"max_passes must be a non-negative Python int, got {max_passes!r}")
    _check_static_budget(budget)
    available = jnp.asarray(available).astype(bool)
    validation.check_budget("budget", budget, jnp.sum(available))
    return _iwal_select(key, query_prob, available, budget, int(max_passes))


@functools.partial(jax.jit, static_argnames="max_passes")
def _iwal_select(
    key: jax.Array, query_prob: jax.Array, available: jax.Array, budget: jax.Array, max_passes: int
) -> tuple[jax.Array, jax.Array]:
    query_prob = jnp.asarray(query_prob, dtype=jnp.float32)
    n = query_prob.shape[0]

    def one_pass(t: int, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        taken, remaining = carry
        u = jax.random.uniform(jax.random.fold_in(key, t), (n,), dtype=jnp.float32)
        accept = available & ~taken & (u < query_prob)
        keep = accept & (jnp.cumsum(accept.astype(jnp.int32)) <= remaining)
        return taken | keep, remaining - jnp.sum(keep, dtype=jnp.int32)

    taken, remaining = jax.lax.fori_loop(
        0, max_passes, one_pass, (jnp.zeros(n, dtype=bool), jnp.asarray(budget, jnp.int32))
    )
    rest = available & ~taken
    fill_rank = _ranks(jnp.where(rest, 0, 1), -query_prob)
    chosen = taken | (rest & (fill_rank < remaining))
    importance = jnp.where(chosen, 1.0 / query_prob, 0.0).astype(jnp.float32)
    return chosen, importance
