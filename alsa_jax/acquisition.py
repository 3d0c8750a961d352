"""Query scores for active learning: which unlabeled pool rows to label first.

Convention: **higher score = query first**. Every score is a pure, jittable function
of class probabilities ``probs: [n, k]`` (one softmax row per pool point) or of
``mc_probs: [s, n, k]``, ``s`` stochastic predictions per point (MC-dropout passes
with batch norm in inference mode, or the members of a committee). Entropies are in
nats, with 0 log 0 = 0.

The registry :data:`ACQUISITIONS` maps the config names (``query.strategy``) to
functions with one signature ``score_fn(key, probs, mc_probs) -> scores [n]``, so the
round loop calls every strategy the same way; :data:`NEEDS_MC` names those that read
``mc_probs``.

About the original's "bald": it ranks by how many of 20 MC-dropout argmax votes agree
with the modal vote, not by mutual information. Here ``"bald"`` is the mutual
information of Houlsby et al. (2011) and ``"bald_vote"`` the original's vote count.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from alsa_jax import validation

ScoreFn = Callable[[jax.Array, jax.Array, "jax.Array | None"], jax.Array]


def _check_probs(probs: jax.Array) -> None:
    validation.check_rank("probs", probs, 2)
    validation.check_distribution("probs", probs)


def _check_mc_probs(mc_probs: jax.Array) -> None:
    validation.check_rank("mc_probs", mc_probs, 3)
    if mc_probs.shape[0] < 1:
        raise ValueError("mc_probs must hold at least one pass (shape [s, n, k] with s >= 1)")
    validation.check_distribution("mc_probs", mc_probs)


def _predictive_entropy(probs: jax.Array) -> jax.Array:
    """H(p) = -sum_c p_c log p_c over the last axis, 0 log 0 = 0."""
    return jnp.sum(jax.scipy.special.entr(probs), axis=-1)


def random_scores(key: jax.Array, n: int) -> jax.Array:
    """Uniform scores u_i ~ U[0, 1), i = 1..n: a random query order. Returns float32 [n].

    ``n`` is a static Python int; the order depends only on ``key``.
    """
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative Python int (static), got {n!r}")
    return jax.random.uniform(key, (int(n),), dtype=jnp.float32)


def entropy(probs: jax.Array) -> jax.Array:
    """Predictive entropy ("maxent"): H_i = -sum_c p_ic log p_ic, with 0 log 0 = 0.

    probs: [n, k] class probabilities. Returns [n], in [0, log k].
    """
    _check_probs(probs)
    return _predictive_entropy(probs)


def margin(probs: jax.Array) -> jax.Array:
    """Margin uncertainty: 1 - (p_i(1) - p_i(2)), p_i(1) >= p_i(2) the two largest entries.

    probs: [n, k] with k >= 2. Returns [n] in [0, 1]; 1 when the top two tie, 0 when
    one class has all the mass (the original ranks by the smallest top-1 minus top-2).
    """
    _check_probs(probs)
    if probs.shape[-1] < 2:
        raise ValueError(f"probs needs at least 2 classes for the margin, got shape {probs.shape}")
    top_two, _ = jax.lax.top_k(probs, 2)
    return 1.0 - (top_two[:, 0] - top_two[:, 1])


def least_confidence(probs: jax.Array) -> jax.Array:
    """Least confidence: 1 - max_c p_ic. probs: [n, k]. Returns [n] in [0, 1 - 1/k]."""
    _check_probs(probs)
    return 1.0 - jnp.max(probs, axis=-1)


def bald(mc_probs: jax.Array) -> jax.Array:
    """BALD mutual information between the label and the model parameters.

    With s stochastic passes p^(1..s) (mc_probs: [s, n, k]) and their mean
    pbar_i = (1/s) sum_t p^(t)_i:

        I_i = H(pbar_i) - (1/s) sum_t H(p^(t)_i)   (nats, >= 0).

    0 when every pass gives the same distribution; log 2 for two confident passes
    on opposite classes. Returns [n]; float error below zero is clipped to 0.
    """
    _check_mc_probs(mc_probs)
    mean_entropy = jnp.mean(_predictive_entropy(mc_probs), axis=0)
    entropy_of_mean = _predictive_entropy(jnp.mean(mc_probs, axis=0))
    return jnp.maximum(entropy_of_mean - mean_entropy, 0.0)


def vote_disagreement(mc_probs: jax.Array) -> jax.Array:
    """The original's "bald"/"qbc" ranking: the share of votes against the mode.

    Each pass t votes y^(t)_i = argmax_c p^(t)_ic (mc_probs: [s, n, k]); with m_i the
    count of the most frequent vote,

        D_i = 1 - m_i / s   (0 when all s votes agree; votes [0, 0, 0, 1] give 1/4).

    Ties between modal classes do not matter: only the count m_i is used. Returns [n].
    """
    _check_mc_probs(mc_probs)
    s, _, k = mc_probs.shape
    votes = jnp.argmax(mc_probs, axis=-1)  # [s, n]
    counts = jnp.sum(jax.nn.one_hot(votes, k, dtype=jnp.float32), axis=0)  # [n, k]
    return 1.0 - jnp.max(counts, axis=-1) / s


def iwal_query_probability(mc_probs: jax.Array, p_min: float = 1e-3) -> jax.Array:
    """IWAL query probability from the spread of the stochastic predictions.

        p_i = p_min + (1 - p_min) * max_c (max_t p^(t)_ic - min_t p^(t)_ic)  in [p_min, 1].

    mc_probs: [s, n, k]; ``p_min`` in (0, 1] (the original's ``iwal_normalizer``) keeps
    every point reachable, so the 1/p_i importance weight stays finite. Returns [n].
    """
    _check_mc_probs(mc_probs)
    if validation.is_concrete(p_min) and not 0.0 < float(np.asarray(p_min)) <= 1.0:
        raise ValueError(f"p_min must lie in (0, 1], got {float(np.asarray(p_min))}")
    spread = jnp.max(mc_probs, axis=0) - jnp.min(mc_probs, axis=0)  # [n, k]
    return p_min + (1.0 - p_min) * jnp.max(spread, axis=-1)


# --- registry: one signature for every strategy --------------------------------------


def _needs_mc(name: str, probs: jax.Array, mc_probs: jax.Array | None) -> jax.Array:
    if mc_probs is None:
        raise ValueError(
            f"strategy {name!r} needs mc_probs [s, n, k] (MC-dropout passes or committee "
            "members); pass mc_probs"
        )
    _check_probs(probs)
    validation.check_rank("mc_probs", mc_probs, 3)
    validation.check_shape("mc_probs", mc_probs, (None, *probs.shape))
    return mc_probs


def _random(key: jax.Array, probs: jax.Array, mc_probs: jax.Array | None) -> jax.Array:
    validation.check_rank("probs", probs, 2)
    return random_scores(key, probs.shape[0])


def _maxent(key: jax.Array, probs: jax.Array, mc_probs: jax.Array | None) -> jax.Array:
    return entropy(probs)


def _margin(key: jax.Array, probs: jax.Array, mc_probs: jax.Array | None) -> jax.Array:
    return margin(probs)


def _least_confidence(key: jax.Array, probs: jax.Array, mc_probs: jax.Array | None) -> jax.Array:
    return least_confidence(probs)


def _bald(key: jax.Array, probs: jax.Array, mc_probs: jax.Array | None) -> jax.Array:
    return bald(_needs_mc("bald", probs, mc_probs))


def _bald_vote(key: jax.Array, probs: jax.Array, mc_probs: jax.Array | None) -> jax.Array:
    return vote_disagreement(_needs_mc("bald_vote", probs, mc_probs))


def _qbc(key: jax.Array, probs: jax.Array, mc_probs: jax.Array | None) -> jax.Array:
    # mc_probs here holds the committee members' probabilities, one network per slice.
    return vote_disagreement(_needs_mc("qbc", probs, mc_probs))


def _iwal(key: jax.Array, probs: jax.Array, mc_probs: jax.Array | None) -> jax.Array:
    return iwal_query_probability(_needs_mc("iwal", probs, mc_probs))


ACQUISITIONS: dict[str, ScoreFn] = {
    "random": _random,
    "maxent": _maxent,
    "margin": _margin,
    "least_confidence": _least_confidence,
    "bald": _bald,
    "bald_vote": _bald_vote,
    "qbc": _qbc,
    "iwal": _iwal,
}
"""Config name -> ``score_fn(key, probs [n, k], mc_probs [s, n, k] | None) -> scores [n]``.

``key`` is used only by "random"; ``mc_probs`` only by the names in :data:`NEEDS_MC`
("qbc" reads a committee's probabilities through the same argument). "iwal" returns
the query probability with the default ``p_min``; the IWAL stream itself is
:func:`alsa_jax.selection.iwal_select`.
"""

NEEDS_MC: frozenset[str] = frozenset({"bald", "bald_vote", "qbc", "iwal"})
"""Strategies whose score reads ``mc_probs``; calling them without it raises ValueError."""


def score(
    name: str, key: jax.Array, probs: jax.Array, mc_probs: jax.Array | None = None
) -> jax.Array:
    """Scores [n] of strategy ``name`` (a key of :data:`ACQUISITIONS`); higher = query first."""
    validation.check_choice("name", name, ACQUISITIONS)
    return ACQUISITIONS[name](key, probs, mc_probs)
