"""Evaluation figures of one round: accuracy family, F1 scores and source shift.

All functions are pure and jittable; ``num_classes`` is static. ``probs`` are class
probabilities ``[n, k]``, ``labels`` integer classes ``[n]`` and ``mask`` an optional
boolean ``[n]`` selecting the rows that count (padding rows are masked out).

Confusion matrices across the package are oriented [predicted, true], as the paper's
joint confusion C[i, j] = P(h(x) = i, y = j) (:func:`alsa_jax.label_shift.confusion_matrix`);
:func:`confusion_counts` holds the same counts unnormalised.

As every public function of the package, these check shapes on the host and values on
the device inside their jitted core (one small transfer when the inputs are concrete;
nothing under ``jit``/``vmap``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from alsa_jax import validation


def _check(probs: jax.Array, labels: jax.Array, mask: jax.Array | None) -> None:
    validation.check_rank("probs", probs, 2)
    validation.check_rank("labels", labels, 1)
    validation.check_same_leading(("probs", "labels"), probs, labels)
    validation.check_integer_dtype("labels", labels)
    if np.size(probs) == 0:
        raise ValueError("probs is empty")
    if mask is not None:
        validation.check_shape("mask", mask, np.shape(labels))


def _stats(probs: jax.Array, labels: jax.Array) -> list:
    return [
        validation.distribution_stats("probs", probs),
        validation.labels_stats("labels", labels, probs.shape[-1]),  # one class per column
    ]


def _row_mask(labels: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return jnp.ones(labels.shape[0], dtype=jnp.float32)
    return mask.astype(jnp.float32)


def _confusion_counts(probs, labels, mask):
    k = probs.shape[-1]
    m = _row_mask(labels, mask)
    pred = jax.nn.one_hot(jnp.argmax(probs, axis=-1), k, dtype=jnp.float32) * m[:, None]
    return pred.T @ jax.nn.one_hot(labels, k, dtype=jnp.float32)


@jax.jit
def _confusion_counts_checked(probs, labels, mask):
    report = validation.value_report(*_stats(probs, labels))
    return _confusion_counts(probs, labels, mask), report


def confusion_counts(
    probs: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Counts ``M[i, j]`` = number of masked rows predicted as class i whose true class is j.

    [k, k], oriented [predicted, true] like the joint confusion
    :func:`alsa_jax.label_shift.confusion_matrix` (which is M / sum(M)). Row sums are the
    predicted totals, column sums the class supports.
    """
    _check(probs, labels, mask)
    return validation.run_checked(_confusion_counts_checked, probs, labels, mask)


def _top_k_accuracy(probs, labels, mask, top_k):
    m = _row_mask(labels, mask)
    true_prob = jnp.take_along_axis(probs, labels[:, None], axis=-1)
    # Rank of the true class: classes strictly more probable (ties count in its favour).
    rank = jnp.sum(probs > true_prob, axis=-1)
    hit = (rank < top_k).astype(jnp.float32)
    return jnp.sum(hit * m) / jnp.maximum(jnp.sum(m), 1.0)


@partial(jax.jit, static_argnames="top_k")
def _top_k_accuracy_checked(probs, labels, mask, *, top_k):
    report = validation.value_report(*_stats(probs, labels))
    return _top_k_accuracy(probs, labels, mask, top_k), report


def top_k_accuracy(
    probs: jax.Array, labels: jax.Array, mask: jax.Array | None = None, *, top_k: int = 5
) -> jax.Array:
    """Fraction of masked rows whose true class is among the ``top_k`` most probable."""
    _check(probs, labels, mask)
    return validation.run_checked(_top_k_accuracy_checked, probs, labels, mask, top_k=top_k)


@jax.jit
def _classification_metrics(probs, labels, mask):
    report = validation.value_report(*_stats(probs, labels))
    counts = _confusion_counts(probs, labels, mask)  # [predicted, true]
    k = counts.shape[0]
    support = counts.sum(axis=0)
    predicted = counts.sum(axis=1)
    correct = jnp.diag(counts)
    total = jnp.maximum(counts.sum(), 1.0)
    present = support > 0
    n_present = jnp.maximum(present.sum(), 1)
    per_class = jnp.where(present, correct / jnp.maximum(support, 1.0), 0.0)
    denom = support + predicted
    f1 = jnp.where(denom > 0, 2.0 * correct / jnp.maximum(denom, 1.0), 0.0)
    accuracy = correct.sum() / total
    out = {
        "accuracy": accuracy,
        "top5_accuracy": _top_k_accuracy(probs, labels, mask, min(5, k)),
        "average_class_accuracy": jnp.sum(per_class) / n_present,
        "f1_macro": jnp.sum(jnp.where(denom > 0, f1, 0.0)) / jnp.maximum(jnp.sum(denom > 0), 1),
        "f1_micro": accuracy,
        "f1_weighted": jnp.sum(f1 * support) / total,
        "per_class_accuracy": per_class,
    }
    return out, report


def classification_metrics(
    probs: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Accuracy, top-5 accuracy, per-class accuracy and the F1 family.

    With counts M[i, j] (predicted i, true j; :func:`confusion_counts`), support
    s_j = sum_i M[i, j] and predicted totals t_j = sum_i' M[j, i']:

    - ``accuracy`` = trace(M) / sum(M); ``top5_accuracy`` (top-min(5, k));
    - ``per_class_accuracy[j]`` = M[j, j] / s_j (recall; 0 for a class absent from the rows);
    - ``average_class_accuracy`` = mean of per-class accuracy over classes present (s_j > 0);
    - ``f1_macro`` = mean of 2 M[j,j] / (s_j + t_j) over the classes that occur in the
      labels or the predictions (as scikit-learn's macro average); ``f1_weighted`` weights
      F1 by s_j; ``f1_micro`` equals accuracy for single-label data.

    Returns a dict of scalars, plus ``per_class_accuracy`` [k].
    """
    _check(probs, labels, mask)
    return validation.run_checked(_classification_metrics, probs, labels, mask)


@jax.jit
def _source_shift(labeled_dist, target_dist):
    ratio = jnp.where(
        labeled_dist > 0,
        target_dist / jnp.where(labeled_dist > 0, labeled_dist, 1.0),
        jnp.where(target_dist > 0, jnp.inf, 1.0),
    )
    return jnp.sqrt(jnp.sum((ratio - 1.0) ** 2))


def source_shift(labeled_dist: jax.Array, target_dist: jax.Array) -> jax.Array:
    """|| Q(y) / P_labeled(y) - 1 ||_2: how far the labeled set is from the target.

    ``labeled_dist`` P and ``target_dist`` Q are [k] class proportions. A class with
    P = 0 < Q makes the shift infinite (no reweighting can recover it); classes with
    P = Q = 0 contribute nothing.
    """
    validation.check_rank("labeled_dist", labeled_dist, 1)
    validation.check_shape("target_dist", target_dist, np.shape(labeled_dist))
    return _source_shift(labeled_dist, target_dist)


def uniform_source_shift(labeled_dist: jax.Array) -> jax.Array:
    """``source_shift`` against the uniform target distribution 1/k."""
    validation.check_rank("labeled_dist", labeled_dist, 1)
    k = np.shape(labeled_dist)[0]
    return _source_shift(labeled_dist, np.full((k,), 1.0 / k, dtype=np.float32))
