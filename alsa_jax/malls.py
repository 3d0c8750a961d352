"""One round of MALLS as pure functions over the round state.

MALLS (Mediated Active Learning under Label Shift) labels pool points drawn from a
medial label distribution N between the source P and the target Q, N ~ P w^lambda, by
spreading each round's budget over *predicted* classes, and trains with importance
weights Q(y)/P_train(y) of the labeled set, w(y) = Q(y)/P(y) estimated by BBSE or RLLS
from a confusion matrix.

The round state (:class:`RoundState`) is an immutable pytree: the training state, the
pool state (masks over fixed arrays), the current weight estimate and the PRNG key.
The functions here do the arithmetic of a round; the loop that runs rounds, trains,
checkpoints and logs lives in ``launch/replicate.py``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from alsa_jax import acquisition, label_shift, metrics, pool, selection
from alsa_jax.pool import PoolState
from alsa_jax.train import TrainState


@struct.dataclass
class WeightEstimate:
    """A raw importance-weight estimate and the labeled sample it is relative to.

    ``weights`` [k]: w_s(y) = Q(y)/P_s(y) as the estimator returned it (BBSE and RLLS
    relative to the confusion sample, the oracle to the training rows); ``sample_dist``
    [k]: P_s, that sample's label distribution. The weights of any labeled set follow
    exactly by :func:`alsa_jax.label_shift.rebase_weights`. All-zero ``sample_dist`` means
    no estimate (the "none" estimator): every weight is 1.
    """

    weights: jax.Array
    sample_dist: jax.Array


def no_estimate(num_classes: int) -> WeightEstimate:
    """The estimate of the "none" estimator: weights 1 against any labeled set."""
    return jax.device_put(
        WeightEstimate(
            weights=np.ones((num_classes,), np.float32),
            sample_dist=np.zeros((num_classes,), np.float32),
        )
    )


@struct.dataclass
class RoundState:
    """Everything a round needs to continue: checkpointed after every round.

    ``round`` int32 scalar (0 = after the initial network h0); ``key`` the loop's raw
    PRNG key (uint32 [2]); ``train``; ``pool``; ``estimate`` the current raw weight
    estimate (:class:`WeightEstimate`); ``committee`` the query-by-committee networks
    stacked on a leading axis [S, ...] (None unless the strategy is ``qbc``).
    """

    round: jax.Array
    key: jax.Array
    train: TrainState
    pool: PoolState
    estimate: WeightEstimate
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


def source_distribution(
    state: PoolState, labels: jax.Array, *, all_labeled: bool, num_classes: int
) -> jax.Array:
    """P_train [k]: the label distribution the training weights are relative to.

    Every training row weighted by its query weight (:func:`alsa_jax.pool.training_distribution`)
    when ``all_labeled``; else the warm start's (only warm-start rows carry w(y) then).
    """
    if all_labeled:
        return pool.training_distribution(state, labels, num_classes)
    return label_shift.label_distribution(labels, num_classes, state.warm)


def class_weights(
    estimate: WeightEstimate, train_dist: jax.Array, *, lam: float | jax.Array
) -> jax.Array:
    """The training weights w(y) = (1 - lam) + lam * Q(y)/P_train(y), [k], from the raw estimate.

    One function for both paths: after an estimate and after the labeled set changed
    (:func:`alsa_jax.label_shift.rebase_weights` rebases, then mixes).
    """
    return label_shift.rebase_weights(
        estimate.weights, from_dist=estimate.sample_dist, to_dist=train_dist, lam=lam
    )


@partial(jax.jit, static_argnames=("method", "num_classes", "options"))
def estimate_weights(
    source_probs: jax.Array,
    source_labels: jax.Array,
    confusion_mask: jax.Array,
    train_dist: jax.Array,
    target_probs: jax.Array,
    target_mask: jax.Array,
    target_labels: jax.Array,
    *,
    method: str | label_shift.Estimator,
    num_classes: int,
    options: tuple[tuple[str, Any], ...] = (),
) -> WeightEstimate:
    """A raw weight estimate from predictions on labeled source and unlabeled target rows.

    The estimator ``method`` (a name of :data:`alsa_jax.label_shift.ESTIMATORS` or an
    estimator function, with keyword ``options``) sees the ``confusion_mask`` source rows
    (their probabilities and labels) and the ``target_mask`` target rows (probabilities
    only) and estimates Q(y)/P_conf(y) relative to the confusion rows' label distribution
    P_conf, returned with it: BBSE solves C w = mu_t, RLLS the regularised problem of
    :func:`alsa_jax.label_shift.rlls`, MLLS maximises the target likelihood by EM after
    calibrating on the confusion rows. ``oracle`` uses the hidden labels: Q from
    ``target_labels`` over ``target_mask``, relative to ``train_dist`` (P_train). ``none``
    returns :func:`no_estimate`. Turn the result into training weights with
    :func:`class_weights`.
    """
    if method == "none":
        return no_estimate(num_classes)
    if method == "oracle":
        target_dist = label_shift.label_distribution(target_labels, num_classes, target_mask)
        return WeightEstimate(
            weights=label_shift.oracle_weights(train_dist, target_dist), sample_dist=train_dist
        )
    sample = label_shift.ShiftSample(
        source_probs=source_probs,
        source_labels=source_labels,
        target_probs=target_probs,
        source_mask=confusion_mask,
        target_mask=target_mask,
    )
    weights = label_shift.estimate(method, sample, **dict(options))
    conf_dist = label_shift.label_distribution(source_labels, num_classes, confusion_mask)
    return WeightEstimate(weights=weights, sample_dist=conf_dist)


@partial(
    jax.jit,
    static_argnames=("strategy", "budget", "diversify", "strategy_options"),
)
def query(
    key: jax.Array,
    probs: jax.Array,
    mc_probs: jax.Array | None,
    state: PoolState,
    estimate: WeightEstimate,
    train_weights: jax.Array,
    *,
    strategy: str | acquisition.Acquisition,
    budget: int,
    diversify: str,
    medial_lambda: float,
    lam: float,
    strategy_options: tuple[tuple[str, Any], ...] = (),
    committee_probs: jax.Array | None = None,
    features: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Choose ``budget`` pool rows to label: returns (chosen, query_weight, offered), each [n].

    ``probs`` [n, k] (already posterior-corrected if that is on); ``mc_probs`` [s, n, k],
    ``committee_probs`` [S, n, k] and ``features`` [n, d] for the strategies that read them.
    The candidates are :func:`alsa_jax.pool.unlabeled_pool`; the choice is
    :func:`alsa_jax.acquisition.choose` of ``strategy`` (a name, an Acquisition or a score
    function, with ``strategy_options``): for a scoring strategy the budget is spread over
    predicted classes (:func:`alsa_jax.selection.diversified_top_k`) unless ``diversify``
    is ``"none"`` (plain top-k). ``"medial"`` buys N ~ P_pool w_pool^lambda with w_pool
    the estimate rebased onto the candidates' predicted-class mass P_pool (mixed with
    ``lam``), so that lambda = 1 buys like the estimated target Q; the original's modes use
    the training weights ``train_weights``. ``iwal`` streams forward over the rows no
    earlier round offered and returns the 1/p weights of the chosen rows and the rows it
    offered.
    """
    available = pool.unlabeled_pool(state)
    predicted = jnp.argmax(probs, axis=-1)
    if diversify == "medial":
        candidates = selection.candidates_per_class(available, predicted, probs.shape[-1])
        pool_dist = candidates / jnp.maximum(jnp.sum(candidates), 1)
        weights = label_shift.rebase_weights(
            estimate.weights, from_dist=estimate.sample_dist, to_dist=pool_dist, lam=lam
        )
    else:
        weights = train_weights
    acq = acquisition.resolve(strategy)
    ctx = acquisition.QueryContext(
        key=key,
        probs=probs,
        available=available,
        weights=weights,
        predicted_labels=predicted,
        mc_probs=mc_probs if acq.needs_mc else None,
        committee_probs=committee_probs if acq.needs_committee else None,
        features=features if acq.needs_features else None,
        offered=state.offered,
    )
    return acquisition.choose(
        acq,
        ctx,
        budget,
        diversify=diversify,
        medial_lambda=medial_lambda,
        **dict(strategy_options),
    )


@partial(jax.jit, static_argnames=("importance_weighting", "all_labeled"))
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
    labeled = label_shift.label_distribution(source_labels, num_classes, pool.training_mask(state))
    target = label_shift.label_distribution(test_labels, num_classes, test_mask)
    out["source_shift"] = metrics.source_shift(labeled, target)
    out["uniform_source_shift"] = metrics.uniform_source_shift(labeled)
    errors = label_shift.weight_errors(weights, true_weights)
    out["weight_l2_error"] = errors["l2"]
    out["weight_mse"] = errors["mse"]
    out["weight_max_abs_error"] = errors["max_abs"]
    out.update(_label_counts(state))
    return out


@jax.jit
def _label_counts(state: PoolState) -> dict[str, jax.Array]:
    """The round record's label counts, as one program."""
    return {
        "labels_paid": pool.num_paid(state),
        "labels_bought": pool.num_bought(state),
        "labels_holdout": pool.num_holdout(state),  # paid for too, for the confusion matrix
        "training_rows": pool.num_training_rows(state),
    }
