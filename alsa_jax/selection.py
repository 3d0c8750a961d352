"""Batch selection under a budget: which ``budget`` unlabeled rows to label this round.

Every function returns a boolean mask ``chosen: [n]`` over the fixed pool arrays with
exactly ``budget`` entries set, all inside ``available: bool [n]`` (the unlabeled
pool; an already-labeled row is never chosen). ``budget`` is a static Python int.
With concrete arrays a budget above the number of available rows raises
``ValueError``; under ``jit`` (where that count is not known) the functions choose
every available row instead and never an unavailable one.

- :func:`top_k`: the ``budget`` highest scores (ties to the lower index).
- :func:`class_shares` / :func:`class_allocation` / :func:`diversified_top_k`: the budget
  is first shared over *predicted* classes, by default as the medial distribution
  N ~ P_pool w^lambda (lambda = 0 buys like the source pool, 1 like the target, 0.5 the
  medial sqrt(P Q)), or with the original's shares (class-balanced "guess", sqrt(w)
  "subguess", w "overguess"), with water-filling when a class has too few candidates, then
  top-k within each class.
- :func:`iwal_select`: the IWAL stream, offering each row once and labeling it with its
  query probability, returning the 1/p importance weights.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from alsa_jax import validation

_SHARE_MODES = ("medial", "guess", "subguess", "overguess")

DIVERSIFY: tuple[str, ...] = ("none", *_SHARE_MODES)
"""How a round's budget is spread over predicted classes (:func:`class_shares`):
``none`` plain :func:`top_k`; ``medial`` N ~ P_pool w^lambda (the paper's medial
distribution); ``guess`` / ``subguess`` / ``overguess`` the original's shares 1, sqrt(w), w."""

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


# --- class allocation: the medial distribution and the original's modes -------------


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


def class_shares(
    candidates_per_class: jax.Array,
    weights: jax.Array,
    *,
    diversify: str = "medial",
    medial_lambda: float | jax.Array = 0.5,
) -> jax.Array:
    """Each predicted class's share s_c of a round's budget (unnormalised), float32 [k].

    candidates_per_class: int [k], the available rows predicted as class c; weights: w [k],
    the importance weights Q(y)/P(y) of the pool (w >= 0). ``diversify``:

    * ``"medial"``: s_c = cand_c * w_c ** lambda, i.e. the bought labels follow the medial
      distribution N(y) proportional to P_pool(y) w(y)^lambda, P_pool the pool's
      predicted-class mass cand_c / sum(cand). lambda = 0 buys like the source pool,
      lambda = 1 like the target Q = P w, lambda = 0.5 the medial sqrt(P Q) of MALLS.
    * ``"guess"``: s_c = 1 (the original's class balance: equal shares);
    * ``"subguess"``: s_c = sqrt(w_c) (the original's shares: sqrt(w), without P_pool);
    * ``"overguess"``: s_c = w_c (the original's shares: w, without P_pool).

    0 ** 0 = 1, so at lambda = 0 a zero weight still gets its pool share. Jittable
    (``medial_lambda`` may be traced; ``diversify`` is static).
    """
    validation.check_choice("diversify", diversify, _SHARE_MODES)
    if diversify == "medial":
        _check_medial_lambda(medial_lambda)
    return _class_shares(candidates_per_class, weights, diversify, medial_lambda)


@functools.partial(jax.jit, static_argnames="diversify")
def _class_shares(
    candidates_per_class: jax.Array, weights: jax.Array, diversify: str, medial_lambda: jax.Array
) -> jax.Array:
    weights = jnp.maximum(jnp.asarray(weights, jnp.float32), 0.0)
    if diversify == "guess":
        return jnp.ones_like(weights)
    if diversify == "subguess":
        return jnp.sqrt(weights)
    if diversify == "overguess":
        return weights
    power = jnp.asarray(medial_lambda, jnp.float32)
    # A lambda below float32's smallest normal number is 0 (the CPU flushes denormals).
    power = jnp.where(power < jnp.finfo(jnp.float32).tiny, 0.0, power)
    # w ** 0 = 1 for every class (w = 0 included); for lambda > 0, w = 0 has no share.
    tilted = jnp.where(
        (weights > 0) | (power == 0), jnp.where(weights > 0, weights, 1.0) ** power, 0.0
    )
    return jnp.maximum(jnp.asarray(candidates_per_class, jnp.float32), 0.0) * tilted


def class_allocation(candidates_per_class: jax.Array, shares: jax.Array, budget: int) -> jax.Array:
    """How many of the ``budget`` queries go to each predicted class. Returns int32 [k].

    candidates_per_class: int [k], the available rows predicted as class c (the caps);
    shares: float [k] >= 0, the classes' relative shares (:func:`class_shares`); budget:
    static int. The split is

        N_c  proportional to  s_c,   N_c <= cand_c,   sum_c N_c = min(budget, sum_c cand_c).

    Water-filling: a class with fewer candidates than its share gets all of them and the
    rest is re-shared over the other classes, until stable (at most k passes). Integer
    counts by the largest-remainder method, ties to the lower class index (remainders
    compared on a 1/1024 grid, so float noise does not break exact ties). Classes with
    s_c = 0 get nothing while the positive-share classes can absorb the budget; only when
    all of those are exhausted is the rest shared equally (water-filled the same way) over
    the zero-share classes, so the result always sums to min(budget, total candidates).
    Jittable (the budget may be traced inside the jitted core).
    """
    validation.check_rank("candidates_per_class", candidates_per_class, 1)
    validation.check_shape("shares", shares, (np.shape(candidates_per_class)[0],))
    validation.check_positive("candidates_per_class", candidates_per_class, strict=False)
    validation.check_positive("shares", shares, strict=False)
    if validation.is_concrete(shares) and not np.all(np.isfinite(np.asarray(shares))):
        raise ValueError("shares must be finite, got non-finite entries")
    _check_static_budget(budget)
    return _class_allocation(candidates_per_class, shares, budget)


# The jitted cores take the budget as a traced int32, so a new budget does not recompile.
@jax.jit
def _class_allocation(
    candidates_per_class: jax.Array, shares: jax.Array, budget: jax.Array
) -> jax.Array:
    caps = jnp.maximum(jnp.asarray(candidates_per_class).astype(jnp.int32), 0)
    shares = jnp.maximum(jnp.asarray(shares, dtype=jnp.float32), 0.0)
    total = jnp.minimum(jnp.asarray(budget, jnp.int32), jnp.sum(caps))
    positive = shares > 0
    first = _water_fill(shares, caps, total)
    rest = total - jnp.sum(first)
    second = _water_fill(jnp.where(positive, 0.0, 1.0), caps, rest)
    return first + second


def candidates_per_class(
    available: jax.Array, predicted_labels: jax.Array, num_classes: int
) -> jax.Array:
    """cand_c = number of available rows predicted as class c. int32 [num_classes]."""
    return (
        jnp.zeros(num_classes, dtype=jnp.int32)
        .at[jnp.asarray(predicted_labels, jnp.int32)]
        .add(jnp.asarray(available).astype(jnp.int32))
    )


def diversified_top_k(
    scores: jax.Array,
    available: jax.Array,
    predicted_labels: jax.Array,
    weights: jax.Array,
    budget: int,
    *,
    diversify: str = "medial",
    medial_lambda: float | jax.Array = 0.5,
) -> jax.Array:
    """Top-scoring rows within each predicted class, ``budget`` in all, spread over classes.

    scores: [n]; available: bool [n]; predicted_labels: int [n] in [0, k) (argmax of the
    posterior); weights: w [k] (Q/P of the pool for ``"medial"``); budget: static int.
    With cand_c the available rows predicted as c, the class quotas are
    N = class_allocation(cand, class_shares(cand, w, diversify=..., medial_lambda=...),
    budget): by default the medial distribution N ~ P_pool w^lambda. Rows are ranked
    within their class by (-score, index) and a row is chosen when its rank r < N_c.
    Returns bool [n] with exactly ``budget`` entries (fewer only under jit when fewer rows
    are available).
    """
    available = _check_mask(scores, available, budget)
    validation.check_rank("predicted_labels", predicted_labels, 1)
    validation.check_same_leading(("scores", "predicted_labels"), scores, predicted_labels)
    validation.check_rank("weights", weights, 1)
    k = weights.shape[0]
    validation.check_labels("predicted_labels", predicted_labels, k)  # k = len(weights)
    validation.check_positive("weights", weights, strict=False)
    validation.check_choice("diversify", diversify, _SHARE_MODES)
    if diversify == "medial":
        _check_medial_lambda(medial_lambda)
    return _diversified_top_k(
        scores, available, predicted_labels, weights, budget, medial_lambda, diversify=diversify
    )


@functools.partial(jax.jit, static_argnames="diversify")
def _diversified_top_k(
    scores: jax.Array,
    available: jax.Array,
    predicted_labels: jax.Array,
    weights: jax.Array,
    budget: jax.Array,
    medial_lambda: jax.Array,
    *,
    diversify: str,
) -> jax.Array:
    k = weights.shape[0]
    labels = jnp.asarray(predicted_labels).astype(jnp.int32)
    candidates = candidates_per_class(available, labels, k)
    shares = _class_shares(candidates, weights, diversify, medial_lambda)
    allocation = _class_allocation(candidates, shares, budget)
    # Unavailable rows go to a sentinel class k, sorted after every real class.
    row_class = jnp.where(available, labels, k)
    position = _ranks(row_class, -_float_scores(scores))
    class_start = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(candidates)])
    rank_in_class = position - class_start[row_class]
    quota = jnp.concatenate([allocation, jnp.zeros(1, allocation.dtype)])[row_class]
    return available & (rank_in_class < quota)


# --- IWAL stream ---------------------------------------------------------------------


def iwal_select(
    key: jax.Array, query_prob: jax.Array, available: jax.Array, budget: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """IWAL: stream forward over the pool, labeling row i with probability p_i, until the budget.

    query_prob: [n] with p_i in (0, 1] (:func:`alsa_jax.acquisition.iwal_query_probability`);
    available: bool [n], the rows not yet offered (unlabeled pool rows that no earlier
    round's stream has passed over); budget: static int.

    One draw u_i ~ U[0, 1) per row (from ``key``); walking the available rows in index
    order, row i is accepted when u_i < p_i, and the stream stops at the ``budget``-th
    acceptance. Every available row up to that point has been *offered* exactly once; the
    rows after it are not offered this round. A row is offered once in the whole run (the
    caller removes offered rows from ``available``, as the original's stream pointer does),
    so its probability of being labeled is exactly the p_i it was offered with and the
    IWAL weight 1 / p_i is unbiased. When the stream reaches the end of the available rows
    first, fewer than ``budget`` rows are labeled: the label complexity is IWAL's own.

    Returns (chosen bool [n], importance float32 [n] = 1 / p_i on chosen rows and 0
    elsewhere, offered bool [n]). With p = 1 everywhere this takes the first ``budget``
    available rows.
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
    _check_static_budget(budget)
    available = jnp.asarray(available).astype(bool)
    return _iwal_select(key, query_prob, available, budget)


@jax.jit
def _iwal_select(
    key: jax.Array, query_prob: jax.Array, available: jax.Array, budget: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    query_prob = jnp.asarray(query_prob, dtype=jnp.float32)
    n = query_prob.shape[0]
    u = jax.random.uniform(key, (n,), dtype=jnp.float32)
    accept = available & (u < query_prob)
    accepted_so_far = jnp.cumsum(accept.astype(jnp.int32))
    budget = jnp.asarray(budget, jnp.int32)
    chosen = accept & (accepted_so_far <= budget)
    # The stream stops at the budget-th acceptance: rows after it are not offered.
    reached = accept & (accepted_so_far == budget) & (budget > 0)
    stop = jnp.where(jnp.any(reached), jnp.argmax(reached), n - 1)
    stop = jnp.where(budget > 0, stop, -1)
    offered = available & (jnp.arange(n) <= stop)
    importance = jnp.where(chosen, 1.0 / query_prob, 0.0).astype(jnp.float32)
    return chosen, importance, offered
