"""Evaluation figures of one round: accuracy family, F1 scores and source shift.

All functions are pure and jittable; ``num_classes`` is static. ``probs`` are class
probabilities ``[n, k]``, ``labels`` integer classes ``[n]`` and ``mask`` an optional
boolean ``[n]`` selecting the rows that count (padding rows are masked out).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alsa_jax import validation


def _row_mask(labels: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return jnp.ones(labels.shape[0], dtype=jnp.float32)
    validation.check_same_leading(("labels", "mask"), labels, mask)
    return mask.astype(jnp.float32)


def _check(probs: jax.Array, labels: jax.Array) -> None:
    validation.check_rank("probs", probs, 2)
    validation.check_rank("labels", labels, 1)
    validation.check_same_leading(("probs", "labels"), probs, labels)
    validation.check_distribution("probs", probs)
    validation.check_labels("labels", labels, probs.shape[-1])  # one class per column


def count_confusion(
    probs: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Counts ``M[i, j]`` = number of masked rows with true class i predicted as j. [k, k]."""
    _check(probs, labels)
    k = probs.shape[-1]
    m = _row_mask(labels, mask)
    pred = jnp.argmax(probs, axis=-1)
    truth = jax.nn.one_hot(labels, k, dtype=jnp.float32) * m[:, None]
    return truth.T @ jax.nn.one_hot(pred, k, dtype=jnp.float32)


def top_k_accuracy(
    probs: jax.Array, labels: jax.Array, mask: jax.Array | None = None, *, top_k: int = 5
) -> jax.Array:
    """Fraction of masked rows whose true class is among the ``top_k`` most probable."""
    _check(probs, labels)
    m = _row_mask(labels, mask)
    true_prob = jnp.take_along_axis(probs, labels[:, None], axis=-1)
    # Rank of the true class: classes strictly more probable (ties count in its favour).
    rank = jnp.sum(probs > true_prob, axis=-1)
    hit = (rank < top_k).astype(jnp.float32)
    return jnp.sum(hit * m) / jnp.maximum(jnp.sum(m), 1.0)


def classification_metrics(
    probs: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Accuracy, top-5 accuracy, per-class accuracy and the F1 family.

    With counts M[i, j] (true i, predicted j), support s_i = sum_j M[i, j] and
    predicted totals t_j = sum_i M[i, j]:

    - ``accuracy`` = trace(M) / sum(M); ``top5_accuracy`` (top-min(5, k));
    - ``per_class_accuracy[i]`` = M[i, i] / s_i (recall; 0 for a class absent from the rows);
    - ``average_class_accuracy`` = mean of per-class accuracy over classes present (s_i > 0);
    - ``f1_macro`` = mean of 2 M[i,i] / (s_i + t_i) over the classes that occur in the
      labels or the predictions (as scikit-learn's macro average); ``f1_weighted`` weights
      F1 by s_i; ``f1_micro`` equals accuracy for single-label data.

    Returns a dict of scalars, plus ``per_class_accuracy`` [k].
    """
    counts = count_confusion(probs, labels, mask)
    k = counts.shape[0]
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    correct = jnp.diag(counts)
    total = jnp.maximum(counts.sum(), 1.0)
    present = support > 0
    n_present = jnp.maximum(present.sum(), 1)
    per_class = jnp.where(present, correct / jnp.maximum(support, 1.0), 0.0)
    denom = support + predicted
    f1 = jnp.where(denom > 0, 2.0 * correct / jnp.maximum(denom, 1.0), 0.0)
    accuracy = correct.sum() / total
    return {
        "accuracy": accuracy,
        "top5_accuracy": top_k_accuracy(probs, labels, mask, top_k=min(5, k)),
        "average_class_accuracy": jnp.sum(per_class) / n_present,
        "f1_macro": jnp.sum(jnp.where(denom > 0, f1, 0.0)) / jnp.maximum(jnp.sum(denom > 0), 1),
        "f1_micro": accuracy,
        "f1_weighted": jnp.sum(f1 * support) / total,
        "per_class_accuracy": per_class,
    }


def source_shift(labeled_dist: jax.Array, target_dist: jax.Array) -> jax.Array:
    """|| Q(y) / P_labeled(y) - 1 ||_2: how far the labeled set is from the target.

    ``labeled_dist`` P and ``target_dist`` Q are [k] class proportions. A class with
    P = 0 < Q makes the shift infinite (no reweighting can recover it); classes with
    P = Q = 0 contribute nothing.
    """
    validation.check_shape("target_dist", target_dist, labeled_dist.shape)
    ratio = jnp.where(
        labeled_dist > 0,
        target_dist / jnp.where(labeled_dist > 0, labeled_dist, 1.0),
        jnp.where(target_dist > 0, jnp.inf, 1.0),
    )
    return jnp.sqrt(jnp.sum((ratio - 1.0) ** 2))


def uniform_source_shift(labeled_dist: jax.Array) -> jax.Array:
    """``source_shift`` against the uniform target distribution 1/k."""
    k = labeled_dist.shape[0]
    return source_shift(labeled_dist, jnp.full((k,), 1.0 / k, dtype=labeled_dist.dtype))
