"""Calibration of a classifier's probabilities on labeled source rows: BCTS and friends.

Maximum-likelihood label-shift estimation (:func:`alsa_jax.label_shift.mlls`) trusts the
classifier's posteriors p(y|x); a network trained with cross-entropy is usually
over-confident, and EM on such posteriors drifts far from the true class proportions.
Bias-corrected temperature scaling (BCTS; Alexandari, Kundaje and Shrikumar, ICML 2020)
refits the posteriors on a held-out labeled source sample first:

    p_cal(y|x) = softmax(a z(x) + b)_y,     z(x) = log p(y|x)  (log-probabilities as logits),

with the inverse temperature a = 1/T (a scalar) and a bias vector b [k] chosen to minimise
the negative log-likelihood over the labeled rows i with row weights r_i,

    NLL(a, b) = sum_i r_i [logsumexp_y(a z_iy + b_y) - (a z_iy_i + b_y_i)] / sum_i r_i,

which is convex in (a, b). At its minimum the gradient in b vanishes, i.e.
sum_i r_i p_cal(.|x_i) = sum_i r_i e_{y_i}: the calibrated posteriors average exactly to
the sample's label distribution (the "bias correction"). Temperature scaling ("ts") fits a
only (b = 0); "none" is the identity (a = 1, b = 0).

The fit runs optax's L-BFGS (zoom line search) inside ``jax.lax.while_loop`` for at most
``max_iter`` iterations, stopping early once the gradient norm is below ``gtol``; it is
jittable and vmappable. Row weights may be a boolean mask or non-negative numbers (e.g.
bootstrap counts).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from alsa_jax import validation


@struct.dataclass
class TemperatureBias:
    """Calibration parameters: calibrated logits = inverse_temperature * z + bias.

    ``inverse_temperature``: scalar a = 1/T; ``bias``: b [k]. ``iterations``: int32
    L-BFGS iterations the fit took (0 for the identity).
    """

    inverse_temperature: jax.Array
    bias: jax.Array
    iterations: jax.Array

    def logits(self, logits: jax.Array) -> jax.Array:
        """Calibrated logits a z + b, [..., k]."""
        return self.inverse_temperature * logits + self.bias

    def probs(self, logits: jax.Array) -> jax.Array:
        """Calibrated probabilities softmax(a z + b), [..., k]."""
        return jax.nn.softmax(self.logits(logits), axis=-1)


def logits_from_probs(probs: jax.Array) -> jax.Array:
    """Log-probabilities as logits: z = log max(p, tiny), [..., k] (softmax(z) = p).

    Zero probabilities map to log(tiny) (about -87 in float32) rather than -inf, so that
    every calibrated logit a z + b stays finite.
    """
    probs = jnp.asarray(probs)
    dtype = probs.dtype if jnp.issubdtype(probs.dtype, jnp.floating) else jnp.float32
    probs = probs.astype(dtype)
    return jnp.log(jnp.maximum(probs, jnp.finfo(dtype).tiny))


def negative_log_likelihood(
    params: TemperatureBias, logits: jax.Array, labels: jax.Array, rows: jax.Array
) -> jax.Array:
    """Weighted mean NLL of the calibrated posteriors: scalar (0 for an empty sample).

    logits: [n, k]; labels: int [n]; rows: float [n] row weights r_i >= 0.
    """
    z = params.logits(logits)
    true = jnp.take_along_axis(z, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    per_row = jax.nn.logsumexp(z, axis=-1) - true
    total = jnp.sum(rows)
    return jnp.sum(rows * per_row) / jnp.where(total > 0, total, 1.0)


def identity(num_classes: int, dtype=jnp.float32) -> TemperatureBias:
    """The "none" calibration: a = 1, b = 0 (softmax(z) = p)."""
    return TemperatureBias(
        inverse_temperature=jnp.ones((), dtype),
        bias=jnp.zeros((num_classes,), dtype),
        iterations=jnp.zeros((), jnp.int32),
    )


def _fit(
    logits: jax.Array,
    labels: jax.Array,
    rows: jax.Array,
    *,
    fit_bias: bool,
    max_iter: int,
    gtol: jax.Array,
) -> TemperatureBias:
    """L-BFGS on NLL(a, b) (b held at 0 unless ``fit_bias``), from a = 1, b = 0."""
    k = logits.shape[-1]
    dtype = logits.dtype
    labels = jnp.clip(labels.astype(jnp.int32), 0, k - 1)  # unused rows may hold anything

    def unpack(params):
        bias = params["bias"] if fit_bias else jnp.zeros((k,), dtype)
        return TemperatureBias(params["inverse_temperature"], bias, jnp.zeros((), jnp.int32))

    def loss(params):
        return negative_log_likelihood(unpack(params), logits, labels, rows)

    params = {"inverse_temperature": jnp.ones((), dtype)}
    if fit_bias:
        params["bias"] = jnp.zeros((k,), dtype)
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def cond(carry):
        _, _, it, grad_norm = carry
        return (it < max_iter) & (grad_norm > gtol)

    def body(carry):
        params, state, it, _ = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state, it + 1, optax.tree.norm(grad)

    init = (params, solver.init(params), jnp.zeros((), jnp.int32), jnp.asarray(jnp.inf, dtype))
    params, _, iterations, _ = jax.lax.while_loop(cond, body, init)
    fitted = unpack(params)
    return fitted.replace(iterations=iterations)


def fit_none(
    logits: jax.Array, labels: jax.Array, rows: jax.Array, *, max_iter: int, gtol: jax.Array
) -> TemperatureBias:
    """The identity calibration (a = 1, b = 0); the arguments only fix k and the dtype."""
    return identity(logits.shape[-1], logits.dtype)


def fit_ts(
    logits: jax.Array, labels: jax.Array, rows: jax.Array, *, max_iter: int, gtol: jax.Array
) -> TemperatureBias:
    """Temperature scaling: a = argmin NLL(a, 0), b = 0 (jittable core, no checks)."""
    return _fit(logits, labels, rows, fit_bias=False, max_iter=max_iter, gtol=gtol)


def fit_bcts_core(
    logits: jax.Array, labels: jax.Array, rows: jax.Array, *, max_iter: int, gtol: jax.Array
) -> TemperatureBias:
    """BCTS: (a, b) = argmin NLL(a, b) (jittable core, no checks; see :func:`fit_bcts`)."""
    return _fit(logits, labels, rows, fit_bias=True, max_iter=max_iter, gtol=gtol)


CALIBRATIONS: dict[str, Callable[..., TemperatureBias]] = {
    "none": fit_none,
    "ts": fit_ts,
    "bcts": fit_bcts_core,
}
"""Calibration name -> jittable ``fit(logits [n, k], labels [n], rows [n], *, max_iter,
gtol) -> TemperatureBias`` (no argument checks: those are :func:`fit_calibration`'s).
The names are those of the ``mlls`` estimator's ``calibration`` option."""


@partial(jax.jit, static_argnames=("method", "max_iter"))
def _fit_checked(logits, labels, mask, gtol, *, method, max_iter):
    k = logits.shape[-1]
    entries = [
        validation.finite_stats("logits", logits),
        validation.labels_stats("labels", labels, k),
        validation.nonnegative_stats("gtol", gtol, strict=True),
    ]
    entries.append(validation.nonnegative_stats("mask", mask))
    dtype = logits.dtype if jnp.issubdtype(logits.dtype, jnp.floating) else jnp.float32
    logits = logits.astype(dtype)
    rows = mask.astype(dtype)
    fitted = CALIBRATIONS[method](
        logits, labels, rows, max_iter=max_iter, gtol=jnp.asarray(gtol, dtype)
    )
    return fitted, validation.value_report(*entries)


def fit_calibration(
    method: str,
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array | None = None,
    *,
    max_iter: int = 100,
    gtol: float = 1e-6,
) -> TemperatureBias:
    """Fit a calibration of ``logits`` to ``labels`` over the masked rows by minimum NLL.

    method: "none", "ts" or "bcts" (:data:`CALIBRATIONS`); logits: [n, k] finite
    (log-probabilities: :func:`logits_from_probs`); labels: int [n] in [0, k); mask: bool
    [n] or non-negative row weights [n] (None: every row); max_iter: most L-BFGS
    iterations (static); gtol: stop once the gradient norm is at most this. Returns
    :class:`TemperatureBias` (apply it with ``.probs(logits)``).
    """
    validation.check_choice("method", method, CALIBRATIONS)
    validation.check_rank("logits", logits, 2)
    n, _ = np.shape(logits)
    validation.check_shape("labels", labels, (n,))
    validation.check_integer_dtype("labels", labels)
    if mask is not None:
        validation.check_shape("mask", mask, (n,))
    if not isinstance(max_iter, (int, np.integer)) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"max_iter must be a Python int >= 1 (static), got {max_iter!r}")
    # One compilation serves every kind of mask: None, bool and weights all become weights.
    rows = np.ones((n,), np.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    return validation.run_checked(
        _fit_checked, logits, labels, rows, gtol, method=method, max_iter=int(max_iter)
    )


def fit_bcts(
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array | None = None,
    *,
    max_iter: int = 100,
    gtol: float = 1e-6,
) -> TemperatureBias:
    """Bias-corrected temperature scaling: (a, b) = argmin NLL(a, b) over the masked rows.

    Shapes and options as :func:`fit_calibration` (this is ``fit_calibration("bcts", ...)``).
    """
    return fit_calibration("bcts", logits, labels, mask, max_iter=max_iter, gtol=gtol)
