"""The pool state that the active-learning loop carries from round to round.

The loop builds one fixed "source" array of rows: the warm-start, holdout and pool split
rows of :class:`alsa_jax.shift.Splits`, concatenated in that order (padding slots
included). :class:`PoolState` holds boolean masks over those n rows, so every round works
on arrays of the same shape and compiles once. Buying labels is :func:`reveal`, a pure
function from one state to the next.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from alsa_jax import validation
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

    Resampling with replacement puts one example into several slots, so the rows also
    carry ``example`` int32 [n]: the example each row holds (ids 0..m-1 over the distinct
    examples, -1 for padding), and ``representative`` bool [n]: the first row of each
    example, the only one a query can choose (buying it reveals every row of the example).
    ``offered`` bool [n]: pool rows that a streaming query (IWAL) has already offered and
    passed over; a stream never offers a row twice.
    """

    warm: jax.Array
    holdout: jax.Array
    pool: jax.Array
    labeled: jax.Array
    labeled_round: jax.Array
    query_weight: jax.Array
    example: jax.Array
    representative: jax.Array
    offered: jax.Array


def from_splits(splits: Splits) -> tuple[jax.Array, jax.Array, PoolState]:
    """Lay out the source rows and the initial pool state.

    With capacities n_w, n_h, n_p of the warm, holdout and pool splits, n = n_w + n_h + n_p.
    Returns ``source_indices`` int32 [n] (rows of the TRAIN arrays, padding slots
    included), ``source_valid`` bool [n], and the :class:`PoolState` in which the warm
    start and the pool's ``initially_labeled`` slots (with every other slot of the same
    examples) are labeled at round 0. Rows holding the same train row share an
    ``example`` id.
    """
    parts = (splits.warm, splits.holdout, splits.pool)
    validation.check_shape(
        "splits.initially_labeled", splits.initially_labeled, (splits.pool.capacity,)
    )
    # Laid out on the host and sent over once: a handful of eager device operations would
    # compile a program each.
    indices_np = np.concatenate([np.asarray(s.indices, np.int32) for s in parts])
    valid_np = np.concatenate([np.asarray(s.valid, bool) for s in parts])

    def placed(which: int, mask: Any) -> np.ndarray:
        blocks = [np.zeros(s.capacity, bool) for s in parts]
        blocks[which] = np.asarray(mask, bool)
        return np.concatenate(blocks)

    example = np.full(indices_np.shape, -1, np.int32)
    representative = np.zeros(indices_np.shape, bool)
    if valid_np.any():
        _, first, inverse = np.unique(indices_np[valid_np], return_index=True, return_inverse=True)
        example[valid_np] = inverse.reshape(-1)
        representative[np.flatnonzero(valid_np)[first]] = True

    warm = placed(0, splits.warm.valid)
    pool = placed(2, splits.pool.valid)
    initial = placed(2, np.asarray(splits.initially_labeled, bool) & np.asarray(splits.pool.valid))
    held = initial & (example >= 0)
    labeled = warm | (pool & (example >= 0) & np.isin(example, example[held]))
    state = jax.device_put(
        PoolState(
            warm=warm,
            holdout=placed(1, splits.holdout.valid),
            pool=pool,
            labeled=labeled,
            labeled_round=np.where(labeled, 0, -1).astype(np.int32),
            query_weight=np.ones(labeled.shape, np.float32),
            example=example,
            representative=representative,
            offered=np.zeros(labeled.shape, bool),
        )
    )
    source_indices, source_valid = jax.device_put((indices_np, valid_np))
    return source_indices, source_valid, state


def _same_example(example: jax.Array, rows: jax.Array) -> jax.Array:
    """Rows holding an example that some row of ``rows`` holds: bool [n]."""
    n = example.shape[0]
    hit = jnp.zeros(n + 1, bool).at[jnp.where(rows & (example >= 0), example, n)].set(True)
    return hit[jnp.where(example >= 0, example, n)] & (example >= 0)


def _per_example_max(example: jax.Array, values: jax.Array) -> jax.Array:
    """For each row, the largest ``values`` entry over the rows of its example: [n]."""
    n = example.shape[0]
    index = jnp.where(example >= 0, example, n)
    best = jnp.zeros(n + 1, values.dtype).at[index].max(values)
    return best[index]


@jax.jit
def _reveal(
    state: PoolState,
    chosen: jax.Array,
    round_index: jax.Array,
    query_weight: jax.Array,
    offered: jax.Array,
) -> PoolState:
    take = chosen & state.pool & ~state.labeled
    # Buying one slot's label reveals it for every slot of the same example.
    revealed = state.pool & ~state.labeled & _same_example(state.example, take)
    weight = _per_example_max(state.example, jnp.where(take, query_weight, 0.0))
    return state.replace(
        labeled=state.labeled | revealed,
        labeled_round=jnp.where(revealed, round_index, state.labeled_round).astype(jnp.int32),
        query_weight=jnp.where(revealed, weight, state.query_weight).astype(jnp.float32),
        offered=state.offered | (offered & state.pool),
    )


def reveal(
    state: PoolState,
    chosen: jax.Array,
    round_index: int | jax.Array,
    query_weight: jax.Array | float | None = None,
    *,
    offered: jax.Array | None = None,
) -> PoolState:
    """Buy the labels of the ``chosen`` rows in round ``round_index`` >= 1.

    ``chosen`` bool [n] must mark only unlabeled pool rows (``unlabeled_pool(state)``):
    with concrete inputs anything else raises ``ValueError``; under ``jax.jit`` rows not
    eligible are ignored. Buying a row reveals the label of its example, so every pool
    row holding the same example is labeled with it. For the revealed rows R:
    labeled[R] = True, labeled_round[R] = round_index, query_weight[R] = the
    ``query_weight`` of the bought row (float [n] or a scalar, > 0 on the chosen rows;
    default 1). ``offered`` bool [n] (optional) marks rows a stream passed over this round;
    they join ``state.offered``. Round 0 is the warm start, so ``round_index`` must be >= 1
    (checked when concrete). Jittable; ``round_index`` may be traced.
    """
    n = state.labeled.shape[0]
    validation.check_shape("chosen", chosen, (n,))
    if query_weight is None:
        query_weight = 1.0
    if np.ndim(query_weight) != 0:
        validation.check_shape("query_weight", query_weight, (n,))
    if offered is None:
        offered = jnp.zeros((n,), bool)
    validation.check_shape("offered", offered, (n,))
    if validation.is_concrete(round_index):
        round_value = int(np.asarray(round_index))
        if round_value < 1:
            raise ValueError(
                f"round_index must be >= 1 (round 0 is the warm start, whose labels are not "
                f"bought), got {round_value}"
            )
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
        jnp.asarray(offered, bool),
    )


@jax.jit
def unlabeled_pool(state: PoolState) -> jax.Array:
    """Rows a query may choose: one row per unlabeled pool example, bool [n].

    pool & ~labeled & representative: the first row of each example whose label has not
    been revealed (the other rows of the example come with it).
    """
    return state.pool & ~state.labeled & state.representative


@jax.jit
def training_mask(state: PoolState) -> jax.Array:
    """Rows the network is trained on: labeled & ~holdout, bool [n]."""
    return state.labeled & ~state.holdout


def _distinct(state: PoolState, rows: jax.Array) -> jax.Array:
    return jnp.sum(rows & state.representative, dtype=jnp.int32)


@jax.jit
def num_paid(state: PoolState) -> jax.Array:
    """Labels paid for: distinct examples whose label was revealed. int32 scalar.

    Warm start, held-out confusion sample, initially labeled and bought examples, each
    example counted once however many rows hold it. This is the label axis of every
    comparison. (Warm start, holdout and pool are cut from disjoint examples.)
    """
    return _distinct(state, state.labeled | state.holdout)


@jax.jit
def num_bought(state: PoolState) -> jax.Array:
    """Distinct examples bought in rounds >= 1 (initial labels excluded): int32 scalar."""
    return _distinct(state, state.labeled & state.pool & (state.labeled_round >= 1))


@jax.jit
def num_holdout(state: PoolState) -> jax.Array:
    """Distinct examples in the held-out labeled confusion sample: int32 scalar."""
    return _distinct(state, state.holdout)


@jax.jit
def num_training_rows(state: PoolState) -> jax.Array:
    """Rows the network trains on, duplicates included: int32 scalar."""
    return jnp.sum(training_mask(state), dtype=jnp.int32)


def training_distribution(state: PoolState, labels: jax.Array, num_classes: int) -> jax.Array:
    """The training rows' label distribution, weighted by their query weights: float32 [k].

    P_train(c) = sum_i t_i q_i [y_i = c] / sum_i t_i q_i over the training rows t
    (:func:`training_mask`) with query weights q (IWAL's 1/p; 1 otherwise). Importance
    weights w = Q / P_train then make the loss's class prior exactly Q, since each row's
    loss weight is w(y_i) q_i. All zeros when there is no training row.
    """
    validation.check_shape("labels", labels, state.labeled.shape)
    validation.check_labels("labels", labels, num_classes)
    return _training_distribution(state, labels, num_classes)


@functools.partial(jax.jit, static_argnums=2)
def _training_distribution(state: PoolState, labels: jax.Array, num_classes: int) -> jax.Array:
    rows = jnp.where(training_mask(state), state.query_weight, 0.0)
    counts = rows @ jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return counts / jnp.maximum(jnp.sum(rows), 1e-30)
