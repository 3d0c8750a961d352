"""One round of MALLS as pure functions over the round state.

MALLS (Mediated Active Learning under Label Shift) labels pool points drawn from a
medial label distribution N between the source P and the target Q, by spreading each
round's budget over *predicted* classes in proportion to w(y)**lambda, and trains with
importance weights w(y) = Q(y)/P(y) estimated by BBSE or RLLS from a confusion matrix.

The round state (:class:`RoundState`) is an immutable pytree: the training state, the
pool state (masks over fixed arrays), the current weight estimate and the PRNG key.
The functions here do the arithmetic of a round; the loop that runs rounds, trains,
checkpoints and logs lives in ``launch/replicate.py``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import struct

from alsa_jax import acquisition, label_shift, metrics, pool
from alsa_jax.pool import PoolState
from alsa_jax.train import TrainState


@struct.dataclass
class RoundState:
    """Everything a round needs to continue: checkpointed after every round.

    ``round`` int32 scalar (0 = after the initial network h0); ``key`` the loop's raw
    PRNG key (uint32 [2]); ``train``; ``pool``; ``weights`` w [k] (the current estimate);
    ``committee`` the query-by-committee networks stacked on a leading axis [S, ...]
    (None unless the strategy is ``qbc``).
    """

    round: jax.Array
    key: jax.Array
    train: TrainState
    pool: PoolState
    weights: jax.Array
    committee: TrainState | None = None


def confusion_rows(state: PoolState, *, use_holdout: bool, all_labeled: bool) -> jax.Array:
    """Rows whose labels estimate the confusion matrix: bool [n].

    The held-out labeled source sample when there is one; otherwise (the original's
    behaviour) the warm start, or every labeled training row when ``all_labeled``.
    """
    if use_holdout:
        return state.holdout
    return pool.training_mask(state) if all_labeled else state.warm


def source_rows(state: PoolState, *, all_labeled: bool) -> jax.Array:
    """The labeled rows that the weights w = Q/P are taken relative to: bool [n]."""
    return pool.training_mask(state) if all_labeled else state.warm


@partial(jax.jit, static_argnames=("method", "soft", "num_classes"))
def estimate_weights(
    source_probs: jax.Array,
    source_labels: jax.Array,
    confusion_mask: jax.Array,
    label_mask: jax.Array,
    target_probs: jax.Array,
    target_mask: jax.Array,
    target_labels: jax.Array,
    *,
    method: str,
    reg: float,
    lam: float,
    soft: bool,
    num_classes: int,
) -> jax.Array:
    """Importance weights w [k] from predictions on labeled source and unlabeled target rows.

    C[i, j] = P_conf(pred = i, y = j) over ``confusion_mask`` rows, mu_s its row sums,
    mu_t the predicted-class distribution over ``target_mask`` rows; BBSE solves C w = mu_t,
    RLLS the regularised problem of :func:`alsa_jax.label_shift.rlls`. Both estimate
    Q(y)/P_conf(y); since the labels of the confusion rows and of the training rows
    (``label_mask``) are known, the estimate is rebased exactly onto the training rows
    (:func:`rebase_weights`) and only then mixed with ``lam``:

        w(y) = (1 - lam) + lam * w_conf(y) * P_conf(y) / P_train(y),

    and a class absent from the confusion sample (P_conf(y) = 0, not identified) gets 1.

    a factor of 1 when the confusion matrix comes from the training rows themselves (the
    original's behaviour), and the right weights for a held-out confusion sample whose
    class mix differs from the labeled set's. ``oracle`` uses the hidden labels
    (``source_labels`` over ``label_mask``, ``target_labels`` over ``target_mask``);
    ``none`` returns ones.
    """
    train_dist = label_shift.label_distribution(source_labels, num_classes, label_mask)
    if method == "none":
        return label_shift.uniform_weights(num_classes)
    if method == "oracle":
        target_dist = label_shift.label_distribution(target_labels, num_classes, target_mask)
        return label_shift.oracle_weights(train_dist, target_dist, lam=lam)
    sample = label_shift.ShiftSample(
        source_probs=source_probs,
        source_labels=source_labels,
        target_probs=target_probs,
        source_mask=confusion_mask,
        target_mask=target_mask,
    )
    options = {"bbse": {"hard": not soft}, "rlls": {"hard": not soft, "reg": reg}}
    weights = label_shift.estimate(method, sample, **options.get(method, {}))
    # Rebase the raw estimate, then shrink towards 1.
    conf_dist = label_shift.label_distribution(source_labels, num_classes, confusion_mask)
    weights = rebase_weights(weights, conf_dist, train_dist)
    # A class absent from the confusion sample has no column in C: its weight is not
    # identified, so it gets the neutral 1 rather than whatever the solver left there.
    weights = label_shift.mix_weights(jnp.where(conf_dist > 0, weights, 1.0), lam)
    return weights


def rebase_weights(weights: jax.Array, from_dist: jax.Array, to_dist: jax.Array) -> jax.Array:
    """Weights Q/P_from re-expressed against another labeled set: Q/P_to, [k].

    w_to(y) = w(y) * P_from(y) / P_to(y), exact because both label distributions are
    known. Where either P_from(y) or P_to(y) is 0 the ratio says nothing about Q(y), and
    w(y) is kept as it is.
    """
    both = (from_dist > 0) & (to_dist > 0)
    return jnp.where(both, weights * from_dist / jnp.where(both, to_dist, 1.0), weights)


@partial(
    jax.jit, static_argnames=("strategy", "budget", "medial_lambda", "p_min", "use_query_weights")
)
def query(
    key: jax.Array,
    probs: jax.Array,
    mc_probs: jax.Array | None,
    available: jax.Array,
    weights: jax.Array,
    *,
    strategy: str,
    budget: int,
    medial_lambda: float | None,
    p_min: float = 1e-3,
    use_query_weights: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Choose ``budget`` pool rows to label: returns (chosen bool [n], query_weight [n]).

    ``probs`` [n, k] (already posterior-corrected if that is on), ``mc_probs`` [s, n, k]
    for the MC strategies, ``available`` the unlabeled pool rows. Scores from
    :data:`alsa_jax.acquisition.ACQUISITIONS`; with ``medial_lambda`` set, the budget is
    shared over predicted classes in proportion to w**medial_lambda, else plain top-k.
    ``iwal`` streams over the pool with probability p_min + (1 - p_min) * spread and
    returns the 1/p weights of the chosen rows (ones when ``use_query_weights`` is off).
    """
    acq = acquisition.ACQUISITIONS[strategy]
    ctx = acquisition.QueryContext(
        key=key,
        probs=probs,
        available=available,
        weights=weights,
        mc_probs=None if acq.needs_committee else mc_probs,
        committee_probs=mc_probs if acq.needs_committee else None,
    )
    options = {"p_min": p_min, "importance_weights": use_query_weights}
    if strategy != "iwal":
        options = {}
    return acquisition.choose(acq, ctx, budget, medial_lambda=medial_lambda, **options)


def training_weights(
    state: PoolState,
    labels: jax.Array,
    weights: jax.Array,
    *,
    importance_weighting: bool,
    all_labeled: bool,
) -> jax.Array:
    """Per-row loss weights [n]: w(y_i) times the row's query weight, 0 off the training rows.

    With ``importance_weighting`` off every labeled row weighs 1 (times its query
    weight); with it on, warm-start rows weigh w(y_i), and so do bought rows when
    ``all_labeled`` (the original's ``reweight``).
    """
    train_rows = pool.training_mask(state)
    class_weight = weights[labels]
    if not importance_weighting:
        class_weight = jnp.ones_like(class_weight)
    elif not all_labeled:
        class_weight = jnp.where(state.warm, class_weight, 1.0)
    return jnp.where(train_rows, class_weight * state.query_weight, 0.0)


def round_metrics(
    test_probs: jax.Array,
    test_labels: jax.Array,
    test_mask: jax.Array,
    state: PoolState,
    source_labels: jax.Array,
    weights: jax.Array,
    true_weights: jax.Array,
    *,
    num_classes: int,
) -> dict[str, jax.Array]:
    """The evaluation record of a round (scalars and [k] vectors as JAX arrays).

    Accuracy family on the test rows; ``source_shift`` = ||Q/P_labeled - 1||_2 of the
    training rows against the test label distribution and against uniform; weight
    errors of the estimate w against ``true_weights``.
    """
    out = dict(metrics.classification_metrics(test_probs, test_labels, test_mask))
    labeled = pool.label_distribution(source_labels, pool.training_mask(state), num_classes)
    target = pool.label_distribution(test_labels, test_mask, num_classes)
    out["source_shift"] = metrics.source_shift(labeled, target)
    out["uniform_source_shift"] = metrics.uniform_source_shift(labeled)
    errors = label_shift.weight_errors(weights, true_weights)
    out["weight_l2_error"] = errors["l2"]
    out["weight_mse"] = errors["mse"]
    out["weight_max_abs_error"] = errors["max_abs"]
    out["labels_total"] = jnp.sum(pool.training_mask(state))
    out["labels_holdout"] = jnp.sum(state.holdout)  # bought too, for the confusion matrix
    out["labels_bought"] = pool.num_bought(state)
    return out
