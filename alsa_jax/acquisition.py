"""Acquisition: which unlabeled pool rows to label this round, as plug-in strategies.

**Scores.** Convention: higher score = query first. The scores are pure, jittable
functions of class probabilities ``probs: [n, k]`` (one softmax row per pool point) or of
``mc_probs: [s, n, k]``, s stochastic predictions per point (MC-dropout passes with batch
norm in inference mode, or the members of a committee). Entropies are in nats, with
0 log 0 = 0. About the original's "bald": it ranks by how many of 20 MC-dropout argmax
votes agree with the modal vote, not by mutual information. Here ``"bald"`` is the mutual
information of Houlsby et al. (2011) and ``"bald_vote"`` the original's vote count.

**Strategies as plug-ins.** A round's choice reads one :class:`QueryContext` (key,
probabilities, available rows, current weights, predicted labels, and, when a strategy
needs them, MC passes, committee probabilities or penultimate features). An
:class:`Acquisition` declares what its strategy needs and either *scores* rows (the budget
is then spread over predicted classes by the medial allocation
:func:`alsa_jax.selection.diversified_top_k`, or taken by plain top-k) or *selects* the
batch itself (IWAL's stream with 1/p query weights; BADGE's k-means++ seeding).
:data:`ACQUISITIONS` maps the config names (``query.strategy``) to them, and
:func:`choose` runs a round's choice for a name, an :class:`Acquisition`, or a plain
function ``ctx -> scores [n]`` passed directly (no global registration).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from alsa_jax import selection, validation

# --- the context a strategy reads --------------------------------------------------------


@struct.dataclass
class QueryContext:
    """Everything a strategy may read to choose a round's batch.

    key: PRNG key of the round's choice. probs: [n, k] class probabilities of the pool
    rows (already posterior-corrected if that is on). available: bool [n] rows that may be
    chosen (the unlabeled pool). weights: [k] the current importance-weight estimate w.
    predicted_labels: int [n] the classes the medial allocation spreads the budget over
    (None: argmax of ``probs``). mc_probs: [s, n, k] MC-dropout passes, committee_probs:
    [S, n, k] the committee members' probabilities, features: [n, d] penultimate
    features (``model.apply(..., return_features=True)``), each None unless a strategy
    needs it. offered: bool [n] rows that a streaming strategy (IWAL) offered in an
    earlier round and passed over: a stream offers every row at most once (None: none).
    """

    key: jax.Array
    probs: jax.Array
    available: jax.Array
    weights: jax.Array
    predicted_labels: jax.Array | None = None
    mc_probs: jax.Array | None = None
    committee_probs: jax.Array | None = None
    features: jax.Array | None = None
    offered: jax.Array | None = None

    def predicted(self) -> jax.Array:
        """The predicted labels: ``predicted_labels``, or argmax of ``probs``. int [n]."""
        if self.predicted_labels is not None:
            return self.predicted_labels
        return jnp.argmax(self.probs, axis=-1)


# --- scores ------------------------------------------------------------------------------


def _predictive_entropy(probs: jax.Array) -> jax.Array:
    """H(p) = -sum_c p_c log p_c over the last axis, 0 log 0 = 0."""
    return jnp.sum(jax.scipy.special.entr(probs), axis=-1)


def _check_probs(probs: Any) -> None:
    validation.check_rank("probs", probs, 2)
    if np.size(probs) == 0:
        raise ValueError("probs is empty")


def _check_mc_probs(mc_probs: Any, name: str = "mc_probs") -> None:
    validation.check_rank(name, mc_probs, 3)
    if np.shape(mc_probs)[0] < 1:
        raise ValueError(f"{name} must hold at least one pass (shape [s, n, k] with s >= 1)")
    if np.size(mc_probs) == 0:
        raise ValueError(f"{name} is empty")


def _scored(fn: Callable, name: str = "probs") -> Callable:
    """A jitted core ``x -> (fn(x), report)`` checking that ``x`` holds probabilities."""

    @jax.jit
    def core(x):
        return fn(x), validation.value_report(validation.distribution_stats(name, x))

    return core


def _entropy_scores(probs: jax.Array) -> jax.Array:
    return _predictive_entropy(probs)


def _margin_scores(probs: jax.Array) -> jax.Array:
    # Two max reductions: lax.top_k sorts each row on CPU (25x slower at k = 228). A tie
    # for the top gives a second largest equal to the largest (margin score 1).
    first = jnp.argmax(probs, axis=-1)
    top = jnp.take_along_axis(probs, first[:, None], axis=-1)[:, 0]
    rest = jnp.where(jnp.arange(probs.shape[-1]) == first[:, None], -jnp.inf, probs)
    return 1.0 - (top - jnp.max(rest, axis=-1))


def _least_confidence_scores(probs: jax.Array) -> jax.Array:
    return 1.0 - jnp.max(probs, axis=-1)


def _bald_scores(mc_probs: jax.Array) -> jax.Array:
    mean_entropy = jnp.mean(_predictive_entropy(mc_probs), axis=0)
    entropy_of_mean = _predictive_entropy(jnp.mean(mc_probs, axis=0))
    return jnp.maximum(entropy_of_mean - mean_entropy, 0.0)


def _vote_disagreement_scores(mc_probs: jax.Array) -> jax.Array:
    s, _, k = mc_probs.shape
    votes = jnp.argmax(mc_probs, axis=-1)  # [s, n]
    counts = jnp.sum(jax.nn.one_hot(votes, k, dtype=jnp.float32), axis=0)  # [n, k]
    return 1.0 - jnp.max(counts, axis=-1) / s


def _iwal_scores(mc_probs: jax.Array, p_min: jax.Array) -> jax.Array:
    spread = jnp.max(mc_probs, axis=0) - jnp.min(mc_probs, axis=0)  # [n, k]
    return p_min + (1.0 - p_min) * jnp.max(spread, axis=-1)


_entropy = _scored(_entropy_scores)
_margin = _scored(_margin_scores)
_least_confidence = _scored(_least_confidence_scores)
_bald = _scored(_bald_scores, "mc_probs")
_vote_disagreement = _scored(_vote_disagreement_scores, "mc_probs")


def random_scores(key: jax.Array, n: int) -> jax.Array:
    """Uniform scores u_i ~ U[0, 1), i = 1..n: a random query order. Returns float32 [n].

    ``n`` is a static Python int; the order depends only on ``key``.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative Python int (static), got {n!r}")
    return _random_scores(key, int(n))


@partial(jax.jit, static_argnames="n")
def _random_scores(key: jax.Array, n: int) -> jax.Array:
    return jax.random.uniform(key, (n,), dtype=jnp.float32)


def entropy(probs: jax.Array) -> jax.Array:
    """Predictive entropy ("maxent"): H_i = -sum_c p_ic log p_ic, with 0 log 0 = 0.

    probs: [n, k] class probabilities. Returns [n], in [0, log k].
    """
    _check_probs(probs)
    return validation.run_checked(_entropy, probs)


def margin(probs: jax.Array) -> jax.Array:
    """Margin uncertainty: 1 - (p_i(1) - p_i(2)), p_i(1) >= p_i(2) the two largest entries.

    probs: [n, k] with k >= 2. Returns [n] in [0, 1]; 1 when the top two tie, 0 when
    one class has all the mass (the original ranks by the smallest top-1 minus top-2).
    """
    _check_probs(probs)
    if np.shape(probs)[-1] < 2:
        raise ValueError(
            f"probs needs at least 2 classes for the margin, got shape {np.shape(probs)}"
        )
    return validation.run_checked(_margin, probs)


def least_confidence(probs: jax.Array) -> jax.Array:
    """Least confidence: 1 - max_c p_ic. probs: [n, k]. Returns [n] in [0, 1 - 1/k]."""
    _check_probs(probs)
    return validation.run_checked(_least_confidence, probs)


def bald(mc_probs: jax.Array) -> jax.Array:
    """BALD mutual information between the label and the model parameters.

    With s stochastic passes p^(1..s) (mc_probs: [s, n, k]) and their mean
    pbar_i = (1/s) sum_t p^(t)_i:

        I_i = H(pbar_i) - (1/s) sum_t H(p^(t)_i)   (nats, >= 0).

    0 when every pass gives the same distribution; log 2 for two confident passes
    on opposite classes. Returns [n]; float error below zero is clipped to 0.
    """
    _check_mc_probs(mc_probs)
    return validation.run_checked(_bald, mc_probs)


def vote_disagreement(mc_probs: jax.Array) -> jax.Array:
    """The original's "bald"/"qbc" ranking: the share of votes against the mode.

    Each pass t votes y^(t)_i = argmax_c p^(t)_ic (mc_probs: [s, n, k]); with m_i the
    count of the most frequent vote,

        D_i = 1 - m_i / s   (0 when all s votes agree; votes [0, 0, 0, 1] give 1/4).

    Ties between modal classes do not matter: only the count m_i is used. Returns [n].
    """
    _check_mc_probs(mc_probs)
    return validation.run_checked(_vote_disagreement, mc_probs)


@jax.jit
def _iwal_query_probability(mc_probs, p_min):
    report = validation.value_report(
        validation.distribution_stats("mc_probs", mc_probs),
        validation.range_stats("p_min", p_min, np.nextafter(0.0, 1.0), 1.0),
    )
    return _iwal_scores(mc_probs, p_min), report


def iwal_query_probability(mc_probs: jax.Array, p_min: float = 1e-3) -> jax.Array:
    """IWAL query probability from the spread of the stochastic predictions.

        p_i = p_min + (1 - p_min) * max_c (max_t p^(t)_ic - min_t p^(t)_ic)  in [p_min, 1].

    mc_probs: [s, n, k]; ``p_min`` in (0, 1] (the original's ``iwal_normalizer``) keeps
    every point reachable, so the 1/p_i importance weight stays finite. Returns [n].
    """
    _check_mc_probs(mc_probs)
    validation.check_rank("p_min", p_min, 0)
    return validation.run_checked(_iwal_query_probability, mc_probs, p_min)


# --- BADGE -------------------------------------------------------------------------------


def _kmeans_pp(key, left, right, available, budget):
    """k-means++ seeding over rank-one embeddings g_i = left_i (x) right_i (see
    :func:`kmeans_pp_seeding`); ``budget`` may be traced."""
    n = left.shape[0]
    sq_norm = jnp.sum(left**2, axis=-1) * jnp.sum(right**2, axis=-1)

    def sq_distance(i):
        # ||g_j - g_i||^2 = |l_j|^2 |r_j|^2 + |l_i|^2 |r_i|^2 - 2 (l_j . l_i)(r_j . r_i)
        cross = (left @ left[i]) * (right @ right[i])
        return jnp.maximum(sq_norm + sq_norm[i] - 2.0 * cross, 0.0)

    # BADGE's first centre: the available row of largest gradient norm (lowest index on ties).
    first = jnp.argmax(jnp.where(available, sq_norm, -jnp.inf))
    take_first = (budget > 0) & available[first]
    chosen = jnp.zeros((n,), bool).at[first].set(take_first)
    d2 = jnp.where(take_first, sq_distance(first), jnp.inf)

    def step(t, carry):
        chosen, d2 = carry
        candidates = available & ~chosen
        mass = jnp.where(candidates, d2, 0.0)
        # D^2 sampling; where every candidate sits on a chosen point (mass 0), uniform.
        positive = jnp.sum(mass) > 0
        logits = jnp.where(
            candidates,
            jnp.where(positive, jnp.log(jnp.where(mass > 0, mass, 1.0)), 0.0),
            -jnp.inf,
        )
        logits = jnp.where(positive & candidates & (mass <= 0), -jnp.inf, logits)
        pick = jax.random.categorical(jax.random.fold_in(key, t), logits)
        take = (t < budget) & jnp.any(candidates)
        chosen = chosen.at[pick].set(chosen[pick] | take)
        d2 = jnp.where(take, jnp.minimum(d2, sq_distance(pick)), d2)
        return chosen, d2

    upper = jnp.minimum(budget, n)
    chosen, _ = jax.lax.fori_loop(1, upper, step, (chosen, d2))
    return chosen


@jax.jit
def _kmeans_pp_checked(key, left, right, available, budget):
    available = available.astype(bool)
    report = validation.value_report(
        validation.finite_stats("left", left),
        validation.finite_stats("right", right),
        validation.budget_stats("budget", budget, available),
    )
    return _kmeans_pp(key, left, right, available, budget), report


def kmeans_pp_seeding(
    key: jax.Array, left: jax.Array, right: jax.Array, available: jax.Array, budget: int
) -> jax.Array:
    """k-means++ seeding (Arthur and Vassilvitskii, 2007) of ``budget`` available rows.

    The rows are rank-one embeddings g_i = left_i (x) right_i (left: [n, a], right: [n, b];
    pass left = ones [n, 1] for plain vectors g_i = right_i), never materialised:

        ||g_i - g_j||^2 = |l_i|^2 |r_i|^2 + |l_j|^2 |r_j|^2 - 2 (l_i . l_j)(r_i . r_j),

    so a step costs O(n (a + b)). The first centre is the available row of largest
    ||g_i|| (as in BADGE); each next centre is drawn among the available rows not yet
    chosen with probability proportional to D(i)^2, the squared distance to the nearest
    chosen centre (uniformly when every such row lies on a chosen centre). Returns bool
    [n] with min(budget, available) distinct available rows. Jittable; the draws come
    from ``key`` folded with the step.
    """
    validation.check_rank("left", left, 2)
    validation.check_rank("right", right, 2)
    validation.check_rank("available", available, 1)
    validation.check_same_leading(("left", "right", "available"), left, right, available)
    budget = _check_budget(budget)
    return validation.run_checked(_kmeans_pp_checked, key, left, right, available, budget)


def gradient_embedding_factors(
    probs: jax.Array,
    features: jax.Array,
    predicted_labels: jax.Array | None = None,
    class_scale: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """BADGE's gradient embeddings as factors: g_i = s(yhat_i) (p_i - e_yhat_i) (x) h_i.

    g_i is the gradient of the cross-entropy at the hypothesised label yhat_i (argmax of
    p_i unless given) with respect to the final dense layer's weights, whose input is
    the penultimate representation h_i (Ash et al., 2020). Returns (left [n, k], right
    [n, d]) = (s(yhat_i) (p_i - e_yhat_i), h_i) for :func:`kmeans_pp_seeding`;
    ``class_scale`` s [k] (None: ones) scales each row by its predicted class's factor.
    """
    labels = jnp.argmax(probs, axis=-1) if predicted_labels is None else predicted_labels
    left = probs - jax.nn.one_hot(labels, probs.shape[-1], dtype=probs.dtype)
    if class_scale is not None:
        left = left * class_scale[labels][:, None]
    return left, jnp.asarray(features, probs.dtype)


def badge_select(ctx: QueryContext, budget: int, *, medial_lambda: float | None = None):
    """BADGE (Ash et al., 2020): k-means++ seeding over gradient embeddings.

    g_i = w(yhat_i)^lambda (p_i - e_yhat_i) (x) h_i with h = ``ctx.features`` [n, d], p =
    ``ctx.probs``, yhat = ``ctx.predicted()``, then :func:`kmeans_pp_seeding` of
    ``budget`` available rows with ``ctx.key``. Returns (chosen bool [n], query_weight
    ones [n], offered all False [n]).

    Plain BADGE for ``medial_lambda`` None (or 0). The label-shift-aware variant,
    ``medial_lambda`` = lambda in (0, 1], scales each embedding by the estimated weight
    of its predicted class to the power lambda: MALLS trains on the importance-weighted
    loss w(y) CE, whose gradient at the hypothesised label is exactly w(yhat) g_i, so at
    lambda = 1 BADGE seeks rows whose gradients are large and diverse *for the loss being
    minimised*. The embeddings of classes the target needs more (w > 1) spread out and
    win D^2 sampling; those of down-weighted classes (w < 1) shrink towards the origin
    and towards each other, so fewer of their rows are needed to cover them (with w = 0
    they coincide, and at most one is bought while other rows remain). lambda < 1 trusts
    the noisy weight estimate less, as in the medial allocation.
    """
    scale = None
    if medial_lambda is not None:
        power = jnp.asarray(medial_lambda, jnp.float32)
        # w ** 0 = 1 for every class (w = 0 included), as in the medial allocation.
        present = (ctx.weights > 0) | (power == 0)
        safe = jnp.where(present, ctx.weights, 1.0).astype(jnp.float32)
        scale = jnp.where(present, safe**power, 0.0)
    left, right = gradient_embedding_factors(ctx.probs, ctx.features, ctx.predicted(), scale)
    chosen = _kmeans_pp(ctx.key, left, right, ctx.available, budget)
    return chosen, jnp.ones(chosen.shape, jnp.float32), jnp.zeros(chosen.shape, bool)


# --- strategies --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Acquisition:
    """One query strategy: what it reads from the :class:`QueryContext` and how it chooses.

    Exactly one of ``score`` (``score(ctx, **options) -> scores [n]``, higher = query
    first; :func:`choose` then spreads the budget over predicted classes or takes the
    top-k) and ``select`` (``select(ctx, budget, **options) -> (chosen bool [n],
    query_weight [n], offered bool [n])``, the strategy chooses the batch itself;
    ``offered`` marks the rows a stream passed over, all False otherwise). ``needs_mc``,
    ``needs_committee``, ``needs_features``: which optional context fields it reads (the
    caller computes them only then). ``medial``: a ``select`` strategy that takes
    ``medial_lambda`` itself with ``diversify="medial"`` (otherwise a selecting strategy
    refuses a class spread). ``options``: keyword options bound by :meth:`with_options`
    (hashable; static under jit).
    """

    name: str
    score: Callable[..., jax.Array] | None = None
    select: Callable[..., tuple[jax.Array, jax.Array]] | None = None
    needs_mc: bool = False
    needs_committee: bool = False
    needs_features: bool = False
    medial: bool = False
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if (self.score is None) == (self.select is None):
            raise ValueError(
                f"Acquisition {self.name!r} needs exactly one of score (ctx -> scores) and "
                "select (ctx, budget -> chosen, query_weight)"
            )

    def with_options(self, **options: Any) -> Acquisition:
        """This strategy with keyword ``options`` bound (checked against its function)."""
        fn = self.score if self.score is not None else self.select
        accepted = _option_names(fn)
        reserved = {"medial_lambda"}
        for option in options:
            if (accepted is not None and option not in accepted) or option in reserved:
                takes = ", ".join(sorted((accepted or set()) - reserved)) or "no options"
                raise ValueError(
                    f"strategy {self.name!r} takes no option {option!r}; it takes: {takes}"
                )
            try:
                hash(options[option])
            except TypeError:
                raise ValueError(
                    f"option {option}= of strategy {self.name!r} must be hashable (it is "
                    "static under jit): pass a Python number, bool or string"
                ) from None
        merged = {**dict(self.options), **options}
        return dataclasses.replace(self, options=tuple(sorted(merged.items())))

    @property
    def needs(self) -> tuple[str, ...]:
        """The optional :class:`QueryContext` fields this strategy reads."""
        fields = (
            ("mc_probs", self.needs_mc),
            ("committee_probs", self.needs_committee),
            ("features", self.needs_features),
        )
        return tuple(name for name, needed in fields if needed)


@functools.lru_cache(maxsize=256)
def _option_names(fn: Callable) -> frozenset[str] | None:
    """Keyword options of a strategy function (None: it takes ``**kwargs``)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters if p.kind is p.KEYWORD_ONLY)


def _iwal_select(ctx: QueryContext, budget: int, *, p_min: float = 1e-3, importance_weights=True):
    """IWAL: stream forward over the rows not offered before (``ctx.offered``) with
    p_i = p_min + (1 - p_min) * spread of the MC passes (:func:`iwal_query_probability`),
    by :func:`alsa_jax.selection.iwal_select`; the query weight of a chosen row is its 1/p_i
    (1 with ``importance_weights`` off, the original's behaviour). Returns the rows the
    stream offered too, for the caller to keep out of later rounds' streams."""
    query_prob = _iwal_scores(ctx.mc_probs, jnp.asarray(p_min, jnp.float32))
    available = ctx.available if ctx.offered is None else ctx.available & ~ctx.offered
    chosen, importance, offered = selection.iwal_select(ctx.key, query_prob, available, budget)
    weight = importance if importance_weights else 1.0
    return chosen, jnp.where(chosen, weight, 1.0).astype(jnp.float32), offered


ACQUISITIONS: dict[str, Acquisition] = {
    acq.name: acq
    for acq in (
        Acquisition("random", score=lambda ctx: _random_scores(ctx.key, ctx.probs.shape[0])),
        Acquisition("maxent", score=lambda ctx: _entropy_scores(ctx.probs)),
        Acquisition("margin", score=lambda ctx: _margin_scores(ctx.probs)),
        Acquisition("least_confidence", score=lambda ctx: _least_confidence_scores(ctx.probs)),
        Acquisition("bald", score=lambda ctx: _bald_scores(ctx.mc_probs), needs_mc=True),
        Acquisition(
            "bald_vote", score=lambda ctx: _vote_disagreement_scores(ctx.mc_probs), needs_mc=True
        ),
        Acquisition(
            "qbc",
            score=lambda ctx: _vote_disagreement_scores(ctx.committee_probs),
            needs_committee=True,
        ),
        Acquisition("iwal", select=_iwal_select, needs_mc=True),
        Acquisition("badge", select=badge_select, needs_features=True, medial=True),
    )
}
"""Config name (``query.strategy``) -> :class:`Acquisition`.

random (uniform scores from ``ctx.key``), maxent (:func:`entropy`), margin
(:func:`margin`), least_confidence, bald (:func:`bald` of ``ctx.mc_probs``), bald_vote
(:func:`vote_disagreement` of ``ctx.mc_probs``), qbc (:func:`vote_disagreement` of
``ctx.committee_probs``), iwal (selects: options ``p_min``, ``importance_weights``),
badge (selects: :func:`badge_select`, reads ``ctx.features``; with a ``medial_lambda``
the label-shift-aware variant). A new strategy needs no entry here: pass an
:class:`Acquisition` or a function ``ctx -> scores [n]`` to :func:`choose`.
"""


def resolve(strategy: str | Acquisition | Callable[[QueryContext], jax.Array]) -> Acquisition:
    """The :class:`Acquisition` for a registered name, an Acquisition, or a score function."""
    if isinstance(strategy, Acquisition):
        return strategy
    if isinstance(strategy, str):
        validation.check_choice("strategy", strategy, ACQUISITIONS)
        return ACQUISITIONS[strategy]
    if callable(strategy):
        return Acquisition(getattr(strategy, "__name__", repr(strategy)), score=strategy)
    raise ValueError(
        "strategy must be a name of ACQUISITIONS, an Acquisition or a function ctx -> scores "
        f"[n], got {type(strategy).__name__}"
    )


# --- one round's choice ------------------------------------------------------------------

_HELP = {
    "mc_probs": "MC-dropout passes [s, n, k]",
    "committee_probs": "the committee members' probabilities [S, n, k]",
    "features": "penultimate features [n, d] (model.apply(..., return_features=True))",
}


def _check_budget(budget: Any) -> int:
    if not isinstance(budget, (int, np.integer)) or isinstance(budget, bool) or budget < 0:
        raise ValueError(f"budget must be a non-negative Python int (static), got {budget!r}")
    return int(budget)


def check_context(ctx: QueryContext, acq: Acquisition | None = None) -> tuple[int, int]:
    """Check a context's shapes and dtypes (and that it holds what ``acq`` needs): (n, k)."""
    if not isinstance(ctx, QueryContext):
        raise ValueError(f"ctx must be an acquisition.QueryContext, got {type(ctx).__name__}")
    _check_probs(ctx.probs)
    n, k = np.shape(ctx.probs)
    validation.check_shape("available", ctx.available, (n,))
    dtype = getattr(ctx.available, "dtype", None) or np.asarray(ctx.available).dtype
    if dtype != np.bool_:
        raise ValueError(f"available must be a bool mask, got dtype {dtype}")
    validation.check_shape("weights", ctx.weights, (k,))
    if ctx.predicted_labels is not None:
        validation.check_shape("predicted_labels", ctx.predicted_labels, (n,))
        validation.check_integer_dtype("predicted_labels", ctx.predicted_labels)
    for name in ("mc_probs", "committee_probs"):
        value = getattr(ctx, name)
        if value is not None:
            _check_mc_probs(value, name)
            validation.check_shape(name, value, (None, n, k))
    if ctx.features is not None:
        validation.check_rank("features", ctx.features, 2)
        validation.check_shape("features", ctx.features, (n, None))
    if ctx.offered is not None:
        validation.check_shape("offered", ctx.offered, (n,))
    if acq is not None:
        for name in acq.needs:
            if getattr(ctx, name) is None:
                raise ValueError(
                    f"strategy {acq.name!r} needs ctx.{name}, {_HELP[name]}; pass it in the "
                    "QueryContext"
                )
    return int(n), int(k)


def _context_stats(ctx: QueryContext, budget: int) -> list:
    k = ctx.probs.shape[-1]
    entries = [
        validation.distribution_stats("probs", ctx.probs),
        validation.nonnegative_stats("weights", ctx.weights),
        validation.budget_stats("budget", budget, ctx.available),
    ]
    if ctx.predicted_labels is not None:
        entries.append(validation.labels_stats("predicted_labels", ctx.predicted_labels, k))
    for name in ("mc_probs", "committee_probs"):
        if getattr(ctx, name) is not None:
            entries.append(validation.distribution_stats(name, getattr(ctx, name)))
    if ctx.features is not None:
        entries.append(validation.finite_stats("features", ctx.features))
    return entries


def _scores(acq: Acquisition, ctx: QueryContext) -> jax.Array:
    scores = acq.score(ctx, **dict(acq.options))
    n = ctx.probs.shape[0]
    if tuple(np.shape(scores)) != (n,):  # raised while tracing: before anything runs
        raise ValueError(
            f"strategy {acq.name!r} must return scores of shape ({n},), got "
            f"{tuple(np.shape(scores))}"
        )
    return scores


def _run(acq: Acquisition, ctx: QueryContext, budget: int, diversify: str, medial_lambda):
    n = ctx.probs.shape[0]
    if acq.select is not None:
        options = dict(acq.options)
        if acq.medial:
            options["medial_lambda"] = medial_lambda if diversify == "medial" else None
        chosen, query_weight, offered = acq.select(ctx, budget, **options)
        return chosen & ctx.available, jnp.asarray(query_weight, jnp.float32), offered
    scores = _scores(acq, ctx)
    if diversify == "none":
        chosen = selection.top_k(scores, ctx.available, budget)
    else:
        chosen = selection.diversified_top_k(
            scores,
            ctx.available,
            ctx.predicted(),
            ctx.weights,
            budget,
            diversify=diversify,
            medial_lambda=medial_lambda,
        )
    return chosen, jnp.ones((n,), jnp.float32), jnp.zeros((n,), bool)


@partial(jax.jit, static_argnames=("acq", "budget", "diversify"))
def _choose(ctx, medial_lambda, *, acq, budget, diversify):
    # The class spread is static; the medial lambda's value is traced (no recompilation).
    report = validation.value_report(*_context_stats(ctx, budget))
    return _run(acq, ctx, budget, diversify, medial_lambda), report


@partial(jax.jit, static_argnames=("acq",))
def _score(ctx, *, acq):
    report = validation.value_report(*_context_stats(ctx, 0))
    return _scores(acq, ctx), report


def choose(
    strategy: str | Acquisition | Callable[[QueryContext], jax.Array],
    ctx: QueryContext,
    budget: int,
    *,
    diversify: str = "none",
    medial_lambda: float | jax.Array = 0.5,
    **options: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One round's choice: (chosen bool [n], query_weight float32 [n], offered bool [n]).

    ``strategy`` is a name of :data:`ACQUISITIONS`, an :class:`Acquisition`, or a plain
    function ``ctx -> scores [n]`` (higher = query first); ``options`` are bound to it as
    keywords (e.g. ``p_min=1e-2`` for "iwal"). For a scoring strategy the ``budget``
    (static int) rows are the plain top-k scores for ``diversify="none"``, else the top
    scores within each predicted class under the class spread ``diversify`` of
    :func:`alsa_jax.selection.class_shares` with ``ctx.weights`` (``"medial"``: N ~ P_pool
    w^medial_lambda, for which ``ctx.weights`` are the pool's w = Q/P_pool); query weights
    are ones and nothing is offered. A selecting strategy chooses the batch itself (IWAL
    returns its 1/p query weights and the rows its stream offered, and takes no class
    spread; BADGE takes ``diversify="medial"`` as its label-shift scaling w^medial_lambda).
    Only available rows are chosen, exactly ``budget`` of them when that many are
    available (checked on concrete inputs; an IWAL stream may run out first). Jittable,
    with ``strategy``, ``budget`` and ``diversify`` static (``medial_lambda`` may be traced).
    """
    acq = resolve(strategy)
    if options:
        acq = acq.with_options(**options)
    check_context(ctx, acq)
    budget = _check_budget(budget)
    validation.check_choice("diversify", diversify, selection.DIVERSIFY)
    if diversify == "medial":
        validation.check_rank("medial_lambda", medial_lambda, 0)
        validation.check_in_range("medial_lambda", medial_lambda, 0.0, 1.0)
    if acq.select is not None and diversify not in (
        ("none", "medial") if acq.medial else ("none",)
    ):
        allowed = "'none' or 'medial'" if acq.medial else "'none'"
        raise ValueError(
            f"strategy {acq.name!r} selects its batch itself and takes no class spread "
            f"diversify={diversify!r}; use diversify={allowed}"
        )
    return validation.run_checked(
        _choose,
        ctx,
        jnp.asarray(medial_lambda, jnp.float32),
        acq=acq,
        budget=budget,
        diversify=diversify,
    )


def score(
    strategy: str | Acquisition | Callable[[QueryContext], jax.Array],
    ctx: QueryContext,
    **options: Any,
) -> jax.Array:
    """The scores [n] of a scoring strategy on ``ctx`` (higher = query first)."""
    acq = resolve(strategy)
    if options:
        acq = acq.with_options(**options)
    if acq.score is None:
        raise ValueError(f"strategy {acq.name!r} selects its batch itself and has no scores")
    check_context(ctx, acq)
    return validation.run_checked(_score, ctx, acq=acq)
