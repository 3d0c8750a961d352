"""The pool state that the active-learning loop carries from round to round.

The loop builds one fixed "source" array of rows: the warm-start, holdout and pool split
rows of :class:`alsa_jax.shift.Splits`, concatenated in that order (padding slots
included). :class:`PoolState` holds boolean masks over those n rows, so every round works
on arrays of the same shape and compiles once. Buying labels is :func:`reveal`, a pure
function from one state to the next.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from alsa_jax import label_shift, validation
from alsa_jax.shift import Splits


@struct.dataclass
class PoolState:
    """Split membership and labels bought, as masks over the n source rows.

    ``warm``, ``holdout``, ``pool`` bool [n]: disjoint split membership (padding rows are
    in none). ``labeled`` bool [n]: warm-start rows, initially labeled pool rows and every
    bought row (the holdout is labeled data kept apart, so it is not marked here).
    ``labeled_round`` int32 [n]: -1 never labeled, 0 warm start and initially labeled,
    r for rows bought in round r >= 1. ``query_weight`` float32 [n]: the importance weight
    attached when the row was bought (IWAL's 1/p), 1 otherwise.
    """

    warm: jax.Array
    holdout: jax.Array
    pool: jax.Array
    labeled: jax.Array
    labeled_round: jax.Array
    query_weight: jax.Array


def from_splits(splits: Splits) -> tuple[jax.Array, jax.Array, PoolState]:
    """Lay out the source rows and the initial pool state.

    With capacities n_w, n_h, n_p of the warm, holdout and pool splits, n = n_w + n_h + n_p.
    Returns ``source_indices`` int32 [n] (rows of the TRAIN arrays, padding slots
    included), ``source_valid`` bool [n], and the :class:`PoolState` in which the warm
    start and the pool's ``initially_labeled`` slots are labeled at round 0.
    """
    parts = (splits.warm, splits.holdout, splits.pool)
    validation.check_shape(
        "splits.initially_labeled", splits.initially_labeled, (splits.pool.capacity,)
    )
    source_indices = jnp.concatenate([jnp.asarray(s.indices, jnp.int32) for s in parts])
    source_valid = jnp.concatenate([jnp.asarray(s.valid, bool) for s in parts])

    def placed(which: int, mask: jax.Array) -> jax.Array:
        blocks = [jnp.zeros(s.capacity, bool) for s in parts]
        blocks[which] = jnp.asarray(mask, bool)
        return jnp.concatenate(blocks)

    warm = placed(0, splits.warm.valid)
    holdout = placed(1, splits.holdout.valid)
    pool = placed(2, splits.pool.valid)
    initial = placed(2, jnp.asarray(splits.initially_labeled, bool) & splits.pool.valid)
    labeled = warm | initial
    state = PoolState(
        warm=warm,
        holdout=holdout,
        pool=pool,
        labeled=labeled,
        labeled_round=jnp.where(labeled, 0, -1).astype(jnp.int32),
        query_weight=jnp.ones(labeled.shape, jnp.float32),
    )
    return source_indices, source_valid, state


@jax.jit
def _reveal(
    state: PoolState, chosen: jax.Array, round_index: jax.Array, query_weight: jax.Array
) -> PoolState:
    take = chosen & state.pool & ~state.labeled
    return state.replace(
        labeled=state.labeled | take,
        labeled_round=jnp.where(take, round_index, state.labeled_round).astype(jnp.int32),
        query_weight=jnp.where(take, query_weight, state.query_weight).astype(jnp.float32),
    )


def reveal(
    state: PoolState,
    chosen: jax.Array,
    round_index: int | jax.Array,
    query_weight: jax.Array | float | None = None,
) -> PoolState:
    """Buy the labels of the ``chosen`` rows in round ``round_index``.

    ``chosen`` bool [n] must mark only unlabeled pool rows (``unlabeled_pool(state)``):
    with concrete inputs anything else raises ``ValueError``; under ``jax.jit`` rows not
    eligible are ignored. For the taken rows T: labeled[T] = True,
    labeled_round[T] = round_index, query_weight[T] = ``query_weight`` (float [n] or a
    scalar, > 0 on T; default 1). Jittable; ``round_index`` may be traced.
    """
    n = state.labeled.shape[0]
    validation.check_shape("chosen", chosen, (n,))
    if query_weight is None:
        query_weight = 1.0
    if np.ndim(query_weight) != 0:
        validation.check_shape("query_weight", query_weight, (n,))
    if validation.is_concrete(round_index):
        round_value = int(np.asarray(round_index))
        if round_value < 0:
            raise ValueError(f"round_index must be >= 0 (1 for the first round), got {round_value}")
    if all(validation.is_concrete(x) for x in (chosen, state.pool, state.labeled)):
        chosen_np = np.asarray(chosen, dtype=bool)
        eligible = np.asarray(state.pool) & ~np.asarray(state.labeled)
        bad = np.flatnonzero(chosen_np & ~eligible)
        if bad.size:
            reason = (
                "is already labeled" if np.asarray(state.pool)[bad[0]] else "is not in the pool"
            )
            raise ValueError(
                f"chosen marks {bad.size} row(s) that cannot be bought (row {bad[0]} {reason}); "
                "choose only from unlabeled_pool(state)"
            )
        if validation.is_concrete(query_weight):
            weight = np.broadcast_to(np.asarray(query_weight, np.float64), (n,))[chosen_np]
            if weight.size and not np.all(np.isfinite(weight) & (weight > 0)):
                raise ValueError("query_weight must be finite and > 0 on the chosen rows")
    return _reveal(
        state,
        jnp.asarray(chosen, bool),
        jnp.asarray(round_index, jnp.int32),
        jnp.broadcast_to(jnp.asarray(query_weight, jnp.float32), (n,)),
    )


def unlabeled_pool(state: PoolState) -> jax.Array:
    """Pool rows whose labels have not been bought: pool & ~labeled, bool [n]."""
    return state.pool & ~state.labeled


def num_labeled(state: PoolState) -> jax.Array:
    """Number of labeled rows (warm start, initially labeled and bought): int32 scalar."""
    return jnp.sum(state.labeled, dtype=jnp.int32)


def num_bought(state: PoolState) -> jax.Array:
    """Number of pool rows bought in rounds >= 1 (initial labels excluded): int32 scalar."""
    return jnp.sum(state.labeled & state.pool & (state.labeled_round >= 1), dtype=jnp.int32)


def training_mask(state: PoolState) -> jax.Array:
    """Rows the network is trained on: labeled & ~holdout, bool [n]."""
    return state.labeled & ~state.holdout


def label_distribution(labels: jax.Array, mask: jax.Array, num_classes: int) -> jax.Array:
    """Empirical class proportions of the masked rows: float32 [k].

    P_hat(y = c) = sum_i mask_i [labels_i = c] / sum_i mask_i over ``labels`` int [n],
    ``mask`` bool [n]; all zeros when the mask is empty. The same as
    :func:`alsa_jax.label_shift.label_distribution` with the mask in the pool's order.
    """
    validation.check_shape("mask", mask, (np.shape(labels)[0],))
    return label_shift.label_distribution(labels, num_classes, mask)
