"""Training losses: the importance-weighted cross-entropy of label-shift correction."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from alsa_jax import validation


def weighted_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    example_weight: jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Importance-weighted cross-entropy averaged over the real rows of a batch.

    ``L = sum_i m_i w_i CE_i / max(1, sum_i m_i)`` with
    ``CE_i = -log softmax(logits_i)[y_i]``, where ``w_i`` is the example's weight (under
    label shift ``w(y_i) = Q(y_i) / N(y_i)``, times any query weight) and ``m_i`` is 1 for
    real rows and 0 for padding. With all ``m_i = w_i = 1`` this is the mean cross-entropy.

    Args:
      logits: ``[B, k]`` unnormalised scores.
      labels: ``[B]`` integer classes in ``[0, k)``.
      example_weight: ``[B]`` non-negative weights ``w_i``.
      mask: optional ``[B]`` bool or 0/1 ``m_i``; ``None`` counts every row.

    Returns:
      The scalar loss (0 when no row is real).
    """
    validation.check_rank("logits", logits, 2)
    validation.check_rank("labels", labels, 1)
    validation.check_rank("example_weight", example_weight, 1)
    validation.check_same_leading(
        ("logits", "labels", "example_weight"), logits, labels, example_weight
    )
    if mask is None:
        mask = jnp.ones(labels.shape, jnp.float32)
    else:
        validation.check_same_leading(("labels", "mask"), labels, mask)
        mask = mask.astype(jnp.float32)
    per_example = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels.astype(jnp.int32)
    )
    # where(), not a product, so a padded row's NaN or inf (garbage input) cannot leak in.
    weighted = jnp.where(mask > 0, mask * example_weight * per_example, 0.0)
    return jnp.sum(weighted) / jnp.maximum(jnp.sum(mask), 1.0)
