"""Label-shift estimation: confusion matrices, BBSE, RLLS, MLLS, oracle weights, correction.

Under label shift the source P and the target Q share P(x|y) = Q(x|y) and differ in the
class marginals. The importance weights w(y) = Q(y)/P(y) are estimated from a classifier h
through its joint confusion matrix on labeled source rows,

    C[i, j] = P_source(h(x) = i, y = j),        C: [k, k], sum_ij C[i, j] = 1,

(rows: predicted class i, columns: true class j; the same orientation as
:func:`alsa_jax.metrics.confusion_counts`), its predicted-class distribution on source rows
mu_s[i] = P_source(h(x) = i) = sum_j C[i, j] and on unlabeled target rows
mu_t[i] = Q(h(x) = i). Label shift gives mu_t = C w, which BBSE inverts directly and RLLS
solves as a regularised convex problem in theta = w - 1. MLLS instead maximises the
likelihood of the target rows' calibrated posteriors by EM.

**Estimators as plug-ins.** An estimator is one function
``estimator(sample: ShiftSample, **options) -> w [k]`` over per-row source probabilities,
labels and row weights and per-row target probabilities and row weights; it returns
w = Q(y)/P_sample(y) relative to the labeled source rows it was given (rebasing onto
another labeled set, :func:`rebase_weights`, and shrinking with :func:`mix_weights` are
the caller's). :data:`ESTIMATORS` maps the config names (``label_shift.estimator``) to
them and :func:`estimate` runs a name or a user's function. Row weights instead of
boolean masks make a bootstrap one ``jax.vmap`` over resampled counts.

**Checks and speed.** Every public function checks shapes on the host and reduces the
value checks (probabilities sum to one, labels in range, weights non-negative) on the
device in the same jitted computation as its result; one small transfer brings them back
when the inputs are concrete. Under ``jit``/``vmap`` the value checks are skipped and
XLA drops them, so a public function costs the same as its jitted core. The package works
in float32 (it never enables x64).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from flax import struct

from alsa_jax import calibration as _calibration
from alsa_jax import validation

# Smallest norm treated as non-zero inside the RLLS solver (float32 normal range).
_TINY = 1e-30


# --- the sample an estimator sees --------------------------------------------------------


@struct.dataclass
class ShiftSample:
    """What a label-shift estimator sees: labeled source rows and unlabeled target rows.

    source_probs: [n, k] class probabilities of the labeled source rows (rows sum to 1).
    source_labels: int [n] their true classes in [0, k).
    target_probs: [m, k] class probabilities of the target rows.
    source_mask: [n] which source rows count: a bool mask or non-negative row weights
      (e.g. bootstrap counts); None for every row.
    target_mask: [m] the same for the target rows.
    target_labels: int [m] the target rows' hidden classes, or None; read only by the
      oracle (and diagnostics), never by a real estimator.

    Weighted by row weights r_i, every empirical distribution is sum_i r_i (.) / sum_i r_i.
    """

    source_probs: jax.Array
    source_labels: jax.Array
    target_probs: jax.Array
    source_mask: jax.Array | None = None
    target_mask: jax.Array | None = None
    target_labels: jax.Array | None = None

    @property
    def num_classes(self) -> int:
        """k, from ``source_probs``' last dimension (static)."""
        return int(np.shape(self.source_probs)[-1])


# --- argument checks (host: shapes and dtypes; device: values) ---------------------------


def _check_probs(name: str, probs: Any) -> tuple[int, int]:
    validation.check_rank(name, probs, 2)
    dtype = getattr(probs, "dtype", None) or np.asarray(probs).dtype
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"{name} must hold floating-point probabilities, got {dtype}")
    if np.size(probs) == 0:
        raise ValueError(f"{name} is empty")
    n, k = np.shape(probs)
    return int(n), int(k)


def _check_labels(name: str, labels: Any, n: int) -> None:
    validation.check_rank(name, labels, 1)
    validation.check_shape(name, labels, (n,))
    validation.check_integer_dtype(name, labels)


def _check_mask(name: str, mask: Any, n: int) -> None:
    if mask is None:
        return
    validation.check_shape(name, mask, (n,))
    dtype = getattr(mask, "dtype", None) or np.asarray(mask).dtype
    if not (
        dtype == np.bool_ or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    ):
        raise ValueError(f"{name} must be a bool mask or real row weights, got dtype {dtype}")


def _check_vector(name: str, x: Any, k: int) -> None:
    validation.check_shape(name, x, (k,))


def _check_square(name: str, confusion: Any) -> int:
    validation.check_rank(name, confusion, 2)
    k = int(np.shape(confusion)[0])
    validation.check_shape(name, confusion, (k, k))
    return k


def _check_static_int(name: str, value: Any, least: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name} must be a Python int >= {least} (static), got {value!r}")
    return int(value)


def _check_num_classes(num_classes: Any, hint: str = "") -> int:
    if (
        not isinstance(num_classes, (int, np.integer))
        or isinstance(num_classes, bool)
        or num_classes < 1
    ):
        got = (
            repr(num_classes) if np.ndim(num_classes) == 0 else f"an array {np.shape(num_classes)}"
        )
        raise ValueError(f"num_classes must be a positive Python int, got {got}{hint}")
    return int(num_classes)


def _mask_stats(name: str, mask: jax.Array | None) -> list:
    """Value checks of a mask: none for a bool mask, non-negative finite row weights else."""
    if mask is None or mask.dtype == jnp.bool_:
        return []
    return [validation.nonnegative_stats(name, mask)]


def _float(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _rows(mask: jax.Array | None, n: int, dtype: Any) -> jax.Array:
    """Row weights [n]: ones for ``None``, 0/1 for a bool mask, the weights themselves else."""
    return jnp.ones((n,), dtype) if mask is None else jnp.asarray(mask).astype(dtype)


def _weighted_mean(rows: jax.Array, values: jax.Array) -> jax.Array:
    """sum_i r_i values_i / sum_i r_i over the leading axis (0 for an empty sample)."""
    total = jnp.sum(rows)
    return rows @ values / jnp.where(total > 0, total, 1.0)


def _hard_or_soft(probs: jax.Array, hard: bool) -> jax.Array:
    k = probs.shape[-1]
    return jax.nn.one_hot(jnp.argmax(probs, axis=-1), k, dtype=probs.dtype) if hard else probs


# --- empirical distributions ------------------------------------------------------------


def _joint_confusion(probs, labels, rows, hard):
    truth = jax.nn.one_hot(labels, probs.shape[-1], dtype=probs.dtype)
    total = jnp.sum(rows)
    joint = (_hard_or_soft(probs, hard) * rows[:, None]).T @ truth
    return joint / jnp.where(total > 0, total, 1.0)


def _label_distribution(labels, num_classes, rows):
    return _weighted_mean(rows, jax.nn.one_hot(labels, num_classes, dtype=rows.dtype))


@partial(jax.jit, static_argnames=("hard",))
def _confusion_matrix(probs, labels, mask, *, hard):
    report = validation.value_report(
        validation.distribution_stats("probs", probs),
        validation.labels_stats("labels", labels, probs.shape[-1]),
        *_mask_stats("mask", mask),
    )
    probs = _float(probs)
    rows = _rows(mask, probs.shape[0], probs.dtype)
    return _joint_confusion(probs, labels, rows, hard), report


def confusion_matrix(
    probs: jax.Array, labels: jax.Array, mask: jax.Array | None = None, *, hard: bool = True
) -> jax.Array:
    """Joint confusion matrix C[i, j] = P_source(h(x) = i, y = j): [k, k], [predicted, true].

    Over the rows weighted by ``mask`` (r_m = 1 for every row when ``None``),

        C[i, j] = sum_{m : y_m = j} r_m h_i(x_m) / sum_m r_m,

    where h(x_m) is the one-hot argmax of ``probs[m]`` when ``hard`` and the probability
    vector itself otherwise (the soft confusion). C sums to 1; an all-zero mask gives zeros.

    Args:
      probs: [n, k] class probabilities (rows sum to 1).
      labels: int [n] true classes in [0, k).
      mask: bool [n] rows to use, or non-negative row weights [n], or ``None`` for all.
      hard: argmax predictions (default) or soft probabilities.
    """
    n, _ = _check_probs("probs", probs)
    _check_labels("labels", labels, n)
    _check_mask("mask", mask, n)
    return validation.run_checked(_confusion_matrix, probs, labels, mask, hard=bool(hard))


@partial(jax.jit, static_argnames=("hard",))
def _predicted_distribution(probs, mask, *, hard):
    report = validation.value_report(
        validation.distribution_stats("probs", probs), *_mask_stats("mask", mask)
    )
    probs = _float(probs)
    rows = _rows(mask, probs.shape[0], probs.dtype)
    return _weighted_mean(rows, _hard_or_soft(probs, hard)), report


def predicted_distribution(
    probs: jax.Array, mask: jax.Array | None = None, *, hard: bool = True
) -> jax.Array:
    """Predicted-class distribution mu[i] = P(h(x) = i) over the masked rows: [k].

    mu[i] = sum_m r_m h_i(x_m) / sum_m r_m with h as in :func:`confusion_matrix` (one-hot
    argmax when ``hard``, probabilities otherwise). An all-zero mask gives zeros.

    Args:
      probs: [n, k] class probabilities.
      mask: bool [n], non-negative row weights [n], or ``None`` for all rows.
    """
    n, _ = _check_probs("probs", probs)
    _check_mask("mask", mask, n)
    return validation.run_checked(_predicted_distribution, probs, mask, hard=bool(hard))


@partial(jax.jit, static_argnames=("num_classes",))
def _label_distribution_checked(labels, mask, *, num_classes):
    entries = [validation.labels_stats("labels", labels, num_classes)] if labels.size else []
    report = validation.value_report(*entries, *_mask_stats("mask", mask))
    rows = _rows(mask, labels.shape[0], jnp.float32)
    return _label_distribution(labels, num_classes, rows), report


def label_distribution(
    labels: jax.Array, num_classes: int, mask: jax.Array | None = None
) -> jax.Array:
    """Empirical class proportions P(y = j) of the masked labels: float32 [num_classes].

    P(y = j) = sum_{m : y_m = j} r_m / sum_m r_m. An all-zero mask gives zeros.
    ``num_classes`` is static (a Python int); ``mask`` a bool mask, non-negative row
    weights or ``None``.
    """
    num_classes = _check_num_classes(
        num_classes, " (the order is label_distribution(labels, num_classes, mask))"
    )
    validation.check_rank("labels", labels, 1)
    n = int(np.shape(labels)[0])
    validation.check_integer_dtype("labels", labels)
    _check_mask("mask", mask, n)
    return validation.run_checked(
        _label_distribution_checked, labels, mask, num_classes=num_classes
    )


# --- simple weights ---------------------------------------------------------------------


@jax.jit
def _mix_weights(w, lam):
    report = validation.value_report(validation.range_stats("lam", lam, 0.0, 1.0))
    return (1.0 - lam) + lam * _float(w), report


def mix_weights(w: jax.Array, lam: float | jax.Array) -> jax.Array:
    """Shrink weights towards one: (1 - lam) + lam * w, same shape as ``w``.

    lam = 1 keeps w, lam = 0 gives the unweighted ones; the same lam means the same
    shrinkage for every estimator. ``lam`` in [0, 1].
    """
    validation.check_rank("lam", lam, 0)
    return validation.run_checked(_mix_weights, w, lam)


def uniform_weights(num_classes: int) -> jax.Array:
    """The weights of the "none" estimator: ones, float32 [num_classes]."""
    return jnp.ones((_check_num_classes(num_classes),), jnp.float32)


def _ratio(q: jax.Array, p: jax.Array, *, absent: float) -> jax.Array:
    """q / p where p > 0, ``absent`` where p = 0."""
    present = p > 0
    return jnp.where(present, q / jnp.where(present, p, 1.0), absent)


@jax.jit
def _oracle_weights(source_label_dist, target_label_dist, lam):
    report = validation.value_report(
        validation.mass_stats("source_label_dist", source_label_dist),
        validation.mass_stats("target_label_dist", target_label_dist),
        validation.range_stats("lam", lam, 0.0, 1.0),
    )
    w = _ratio(_float(target_label_dist), _float(source_label_dist), absent=0.0)
    return (1.0 - lam) + lam * w, report


def oracle_weights(
    source_label_dist: jax.Array, target_label_dist: jax.Array, *, lam: float | jax.Array = 1.0
) -> jax.Array:
    """True importance weights from the hidden labels, mixed: [k].

    w(y) = Q(y) / P(y), with w(y) = 0 for classes absent from the source (P(y) = 0: no
    source row can carry their weight), then (1 - lam) + lam * w.

    Args:
      source_label_dist: P(y), [k].
      target_label_dist: Q(y), [k].
      lam: mixing weight in [0, 1].
    """
    validation.check_rank("source_label_dist", source_label_dist, 1)
    k = int(np.shape(source_label_dist)[0])
    _check_vector("target_label_dist", target_label_dist, k)
    return validation.run_checked(_oracle_weights, source_label_dist, target_label_dist, lam)


# --- BBSE -------------------------------------------------------------------------------


def _bbse_weights(confusion, target_pred_dist, rcond):
    u, s, vt = jnp.linalg.svd(confusion)
    keep = s > rcond * s[0]
    s_inv = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)
    w = vt.T @ (s_inv * (u.T @ target_pred_dist))
    return jnp.maximum(w, 0.0)


@jax.jit
def _bbse(confusion, target_pred_dist, rcond):
    report = validation.value_report(
        validation.mass_stats("confusion", confusion),
        validation.mass_stats("target_pred_dist", target_pred_dist),
        validation.nonnegative_stats("rcond", rcond),
    )
    confusion = _float(confusion)
    w = _bbse_weights(confusion, target_pred_dist.astype(confusion.dtype), rcond)
    return w, report


def bbse(
    confusion: jax.Array, *, target_pred_dist: jax.Array, rcond: float | jax.Array = 1e-6
) -> jax.Array:
    """Black-box shift estimation: w = max(C^+ mu_t, 0), [k].

    C^+ is the pseudo-inverse from the SVD C = U diag(s) V^T with singular values
    s_i <= rcond * s_max dropped, so w = V diag(1/s_i for kept i, else 0) U^T mu_t. For a
    well-conditioned C this is exactly C^{-1} mu_t; for a singular or ill-conditioned C it
    is the minimum-norm least-squares solution of C w = mu_t (deterministic, finite; an
    all-zero C, from an empty sample, gives w = 0). Negative entries are clipped to 0.

    The distribution is keyword-only (``bbse(C, target_pred_dist=mu_t)``), so it cannot
    be confused with :func:`rlls`' two distributions.

    Args:
      confusion: C, [k, k] joint confusion matrix [predicted, true].
      target_pred_dist: mu_t, [k].
      rcond: relative cut-off for small singular values (>= 0).
    """
    k = _check_square("confusion", confusion)
    _check_vector("target_pred_dist", target_pred_dist, k)
    return validation.run_checked(_bbse, confusion, target_pred_dist, rcond)


# --- RLLS -------------------------------------------------------------------------------


class RllsSolution(NamedTuple):
    """Result of :func:`solve_rlls`.

    theta: [k] the minimiser; iterations: int32 Newton iterations and factorizations: int32
    Cholesky factorisations in them (both 0 when a closed form was certified optimal);
    closed_form: bool, the zero-residual or zero solution was certified; kkt: the
    projected gradient's max-abs entry at theta (problem normalised to ||C||_F = 1; 0 for
    a certified closed form).
    """

    theta: jax.Array
    iterations: jax.Array
    factorizations: jax.Array
    closed_form: jax.Array
    kkt: jax.Array


def _projected_gradient(theta: jax.Array, g: jax.Array) -> jax.Array:
    return jnp.where(theta <= -1.0, jnp.minimum(g, 0.0), g)


def _jacobi_cholesky(
    matrix: jax.Array, free: jax.Array, damping: float
) -> tuple[jax.Array, jax.Array]:
    """Cholesky factor of D^{-1/2} A D^{-1/2} + damping I on the free block (identity on
    the rest), D = diag(A); returns (factor, D^{-1/2})."""
    diag = jnp.diagonal(matrix)
    diag = jnp.where(diag > 0, diag, 1.0)
    inv_sqrt = jax.lax.rsqrt(diag)
    eye = jnp.eye(matrix.shape[0], dtype=matrix.dtype)
    scaled = matrix * inv_sqrt[:, None] * inv_sqrt[None, :] + damping * eye
    scaled = jnp.where(free[:, None] & free[None, :], scaled, eye)
    return jsl.cholesky(scaled, lower=True), inv_sqrt


def _jacobi_solve(factor: jax.Array, inv_sqrt: jax.Array, rhs: jax.Array) -> jax.Array:
    """Solve A x = rhs from :func:`_jacobi_cholesky`'s output (``inv_sqrt`` [k] for a vector
    rhs, [k, 1] for a matrix rhs)."""
    return inv_sqrt * jsl.cho_solve((factor, True), inv_sqrt * rhs)


def _solve_rlls(
    confusion: jax.Array,
    b: jax.Array,
    reg: jax.Array,
    xtol: jax.Array,
    rcond: jax.Array,
    *,
    max_iter: int,
    max_backtracks: int,
    max_expansions: int,
) -> RllsSolution:
    k = confusion.shape[0]
    dtype = confusion.dtype
    eye = jnp.eye(k, dtype=dtype)
    all_free = jnp.ones((k,), bool)

    # Scaling C and b by s is the same problem with reg * s; ||C||_F = 1 keeps every
    # quantity below O(1) and the tolerances meaningful whatever k is.
    fro = jnp.linalg.norm(confusion)
    scale = jnp.where(fro > 0, 1.0 / jnp.where(fro > 0, fro, 1.0), 1.0)
    c = confusion * scale
    b = b * scale
    reg = reg * scale
    b_norm = jnp.linalg.norm(b)
    gram = c.T @ c

    def objective(theta):
        return jnp.linalg.norm(c @ theta - b) + reg * jnp.linalg.norm(theta)

    # Closed form 1, zero residual: theta0 = C^{-1} b (C^+ b when C is singular) is optimal
    # iff it is feasible and some u with ||u|| <= 1 has C^T u = -reg theta0 / ||theta0||.
    # C = C_cond diag(p) puts the source distribution p on the diagonal of C^T C; scaled
    # by that diagonal (Jacobi) the normal equations are as well conditioned as C_cond
    # and, with two steps of iterative refinement on C theta = b, accurate in float32.
    factor0, inv_sqrt0 = _jacobi_cholesky(gram, all_free, 0.0)
    pivots = jnp.diagonal(factor0) ** 2
    regular = jnp.all(jnp.isfinite(factor0)) & (jnp.min(pivots) > rcond)

    def by_cholesky(_):
        theta = _jacobi_solve(factor0, inv_sqrt0, c.T @ b)
        for _ in range(2):
            theta = theta + _jacobi_solve(factor0, inv_sqrt0, c.T @ (b - c @ theta))
        unit = theta / jnp.maximum(jnp.linalg.norm(theta), _TINY)
        return theta, c @ _jacobi_solve(factor0, inv_sqrt0, unit)  # C^{-T} = C (C^T C)^{-1}

    def by_pinv(_):
        u, s, vt = jnp.linalg.svd(c)
        keep = s > rcond * s[0]
        s_inv = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)
        theta = vt.T @ (s_inv * (u.T @ b))
        unit = theta / jnp.maximum(jnp.linalg.norm(theta), _TINY)
        return theta, u @ (s_inv * (vt @ unit))

    theta0, dual0 = jax.lax.cond(regular, by_cholesky, by_pinv, None)
    finite0 = jnp.all(jnp.isfinite(theta0)) & jnp.all(jnp.isfinite(dual0))
    zero_residual = (
        finite0
        & jnp.all(theta0 >= -1.0)
        & (reg * jnp.linalg.norm(dual0) <= 1.0)
        & (jnp.linalg.norm(c @ theta0 - b) <= 1e-4 * b_norm)
    )
    # Closed form 2: theta = 0 is optimal iff ||C^T b|| <= reg ||b||.
    zero = jnp.linalg.norm(c.T @ b) <= reg * b_norm
    closed = zero | zero_residual
    closed_theta = jnp.where(zero, jnp.zeros_like(theta0), theta0)

    def gradient(theta):
        r = c @ theta - b
        rho = jnp.maximum(jnp.linalg.norm(r), _TINY)
        tau = jnp.maximum(jnp.linalg.norm(theta), _TINY)
        g_fit = c.T @ r / rho
        return g_fit + reg * theta / tau, g_fit, rho, tau

    def kkt_norm(theta, g):
        return jnp.linalg.norm(_projected_gradient(theta, g))

    # Projected Newton from a start on the face the unconstrained solution points to; off
    # the kink at C theta = b when theta0 is feasible (its residual is not zero at the
    # optimum then). The loop runs no iteration when a closed form was certified.
    start = jnp.where(jnp.all(theta0 >= -1.0), 0.5 * theta0, jnp.maximum(theta0, -1.0))
    start = jnp.where(finite0, start, jnp.zeros_like(theta0))

    # When the regulariser is strong enough to move even the zero-residual point
    # (reg ||C^{-T} theta0|| / ||theta0|| > 1) the optimum is shrunk well inside theta0
    # and its residual is large; a ridge solution, clipped, starts closer. The optimum
    # is a ridge solution with alpha = reg ||r|| / ||theta||; ||b|| stands in for ||r||.
    def ridge(_):
        alpha = reg * b_norm / jnp.maximum(jnp.linalg.norm(start), _TINY)
        factor, inv_sqrt = _jacobi_cholesky(gram + alpha * eye, all_free, 0.0)
        return jnp.maximum(_jacobi_solve(factor, inv_sqrt, c.T @ b), -1.0)

    use_ridge = ~closed & (reg * jnp.linalg.norm(dual0) > 1.0)
    start = jax.lax.cond(use_ridge, ridge, lambda _: start, None)
    start = jnp.where(jnp.all(jnp.isfinite(start)), start, jnp.zeros_like(start))

    def body(state):
        it, theta, f, _, factor, inv_sqrt, free_prev, kkt_prev, nfact, alpha_factored = state[:10]
        # The gradient at theta comes with the state: the line search that accepted theta
        # has already computed it.
        g, g_fit, rho, tau = state[10]
        kkt = kkt_norm(theta, g)
        alpha = reg * rho / tau
        unit = theta / tau
        # rho * Hessian of f = (C^T C + alpha I) - V V^T, V = [g_fit, sqrt(alpha) unit].
        diag = jnp.diagonal(gram) - g_fit**2 + alpha * (1.0 - unit**2)
        diag = jnp.maximum(diag, 1e-12 * jnp.max(diag) + _TINY)
        # Bertsekas' projected Newton: variables within eps of the bound and pushed
        # against it are held there; Newton on the rest. eps is measured in the
        # diagonally scaled step rho g / diag(rho H).
        coordinate_step = rho * g / diag
        eps = jnp.minimum(
            1e-3, jnp.max(jnp.abs(theta - jnp.maximum(theta - coordinate_step, -1.0)))
        )
        free = ~((theta <= -1.0 + eps) & (g > 0))
        # C^T C + alpha I is factorised on the free block; the rank-2 part enters through
        # the Woodbury identity, so the factorisation stays valid while the face and alpha
        # hold. It is renewed when the face changes, alpha moved by more than 10% or the
        # last step shrank the projected gradient less than 4-fold.
        drift = jnp.abs(alpha - alpha_factored) > 0.1 * alpha_factored
        refactor = (it == 0) | jnp.any(free != free_prev) | (kkt > 0.25 * kkt_prev) | drift
        factor, inv_sqrt, alpha_factored = jax.lax.cond(
            refactor,
            lambda: (*_jacobi_cholesky(gram + alpha * eye, free, 1e-6), alpha),
            lambda: (factor, inv_sqrt, alpha_factored),
        )
        low_rank = jnp.stack([g_fit, jnp.sqrt(alpha) * unit], axis=1)
        low_rank = jnp.where(free[:, None], low_rank, 0.0)
        rhs = jnp.concatenate([jnp.where(free, -rho * g, 0.0)[:, None], low_rank], axis=1)
        solved = _jacobi_solve(factor, inv_sqrt[:, None], rhs)
        capacitance = jnp.eye(2, dtype=dtype) - low_rank.T @ solved[:, 1:]
        # The 2 x 2 capacitance system by Cramer's rule (no LAPACK call per iteration).
        cap_rhs = low_rank.T @ solved[:, 0]
        det = capacitance[0, 0] * capacitance[1, 1] - capacitance[0, 1] * capacitance[1, 0]
        correction = (
            jnp.stack(
                [
                    capacitance[1, 1] * cap_rhs[0] - capacitance[0, 1] * cap_rhs[1],
                    capacitance[0, 0] * cap_rhs[1] - capacitance[1, 0] * cap_rhs[0],
                ]
            )
            / det
        )
        step = solved[:, 0] + solved[:, 1:] @ correction
        step = jnp.where(jnp.all(jnp.isfinite(step)), step, -coordinate_step)
        step = jnp.where(free, step, -1.0 - theta)

        def search_cond(s):
            _, j, _, _, ok, _ = s
            return ~ok & (j < max_backtracks)

        def search_body(s):
            t, j, _, _, _, _ = s
            trial = jnp.maximum(theta + t * step, -1.0)
            f_trial = objective(trial)
            armijo = f_trial <= f + 1e-4 * jnp.dot(g, trial - theta)
            # Near the optimum f changes below float32 resolution; there a step that
            # keeps f within rounding and shrinks the projected gradient is progress.
            level = f_trial <= f + 16 * jnp.finfo(dtype).eps * jnp.abs(f)
            grad_trial = gradient(trial)
            closer = kkt_norm(trial, grad_trial[0]) < kkt
            return t * 0.5, j + 1, trial, f_trial, armijo | (level & closer), grad_trial

        init = (jnp.asarray(1.0, dtype), 0, theta, f, jnp.asarray(False), (g, g_fit, rho, tau))
        _, j, trial, f_trial, ok, grad_trial = jax.lax.while_loop(search_cond, search_body, init)

        # Far from the optimum, where the residual is small, the Newton model is too
        # curved and the full step too short: while it keeps decreasing f, double it.
        def expand_cond(s):
            _, j, _, _, grow = s
            return grow & (j < max_expansions)

        def expand_body(s):
            t, j, best, f_best, _ = s
            trial = jnp.maximum(theta + t * step, -1.0)
            f_trial = objective(trial)
            grow = f_trial < f_best - 1e-4 * jnp.abs(f_best - f)
            return (
                t * 2.0,
                j + 1,
                jnp.where(grow, trial, best),
                jnp.where(grow, f_trial, f_best),
                grow,
            )

        expand = ok & (j == 1) & (f_trial < f - 0.05 * jnp.abs(f))
        init = (jnp.asarray(2.0, dtype), 0, trial, f_trial, expand)
        _, _, trial, f_trial, _ = jax.lax.while_loop(expand_cond, expand_body, init)
        # After a doubling attempt the gradient at the new point is computed afresh;
        # otherwise the new point is the search's last trial (ok) or theta (not ok), whose
        # gradients are at hand.
        new_grad = jax.lax.cond(
            expand,
            lambda: gradient(trial),
            lambda: jax.tree.map(
                lambda new, old: jnp.where(ok, new, old), grad_trial, (g, g_fit, rho, tau)
            ),
        )

        new_theta = jnp.where(ok, trial, theta)
        newton_size = jnp.max(jnp.where(free, jnp.abs(step), 0.0))
        done = ~ok | (newton_size <= xtol * (1.0 + jnp.max(jnp.abs(new_theta))))
        return (
            it + 1,
            new_theta,
            jnp.where(ok, f_trial, f),
            done,
            factor,
            inv_sqrt,
            free,
            kkt,
            nfact + refactor,
            alpha_factored,
            new_grad,
        )

    def cond(state):
        it, _, _, done = state[:4]
        return ~done & (it < max_iter)

    state = (
        jnp.asarray(0, jnp.int32),
        start,
        objective(start),
        closed,
        factor0,
        inv_sqrt0,
        all_free,
        jnp.asarray(jnp.inf, dtype),
        jnp.asarray(0, jnp.int32),
        jnp.asarray(0.0, dtype),
        gradient(start),
    )
    it, theta, _, _, _, _, _, _, factorizations, _, _ = jax.lax.while_loop(cond, body, state)
    theta = jnp.where(closed, closed_theta, theta)
    kkt = jnp.where(closed, 0.0, jnp.max(jnp.abs(_projected_gradient(theta, gradient(theta)[0]))))
    return RllsSolution(
        theta=theta,
        iterations=it,
        factorizations=factorizations,
        closed_form=closed,
        kkt=kkt,
    )


_RLLS_STATIC = ("max_iter", "max_backtracks", "max_expansions")


def _check_rlls_settings(max_iter: Any, max_backtracks: Any, max_expansions: Any) -> dict:
    return {
        "max_iter": _check_static_int("max_iter", max_iter, 1),
        "max_backtracks": _check_static_int("max_backtracks", max_backtracks, 1),
        "max_expansions": _check_static_int("max_expansions", max_expansions, 0),
    }


def _rlls_settings_stats(reg, xtol, rcond) -> list:
    return [
        validation.nonnegative_stats("reg", reg),
        validation.nonnegative_stats("xtol", xtol, strict=True),
        validation.nonnegative_stats("rcond", rcond),
    ]


def _rlls_theta(confusion, b, reg, xtol, rcond, **static) -> RllsSolution:
    dtype = confusion.dtype
    return _solve_rlls(
        confusion,
        b.astype(dtype),
        jnp.asarray(reg, dtype),
        jnp.asarray(xtol, dtype),
        jnp.asarray(rcond, dtype),
        **static,
    )


@partial(jax.jit, static_argnames=_RLLS_STATIC)
def _solve_rlls_checked(confusion, b, reg, xtol, rcond, **static):
    report = validation.value_report(
        validation.finite_stats("confusion", confusion),
        validation.finite_stats("b", b),
        *_rlls_settings_stats(reg, xtol, rcond),
    )
    return _rlls_theta(_float(confusion), b, reg, xtol, rcond, **static), report


def solve_rlls(
    confusion: jax.Array,
    b: jax.Array,
    *,
    reg: float | jax.Array = 1e-3,
    max_iter: int = 50,
    max_backtracks: int = 30,
    max_expansions: int = 6,
    xtol: float | jax.Array = 1e-6,
    rcond: float | jax.Array = 1e-6,
) -> RllsSolution:
    """Solve the RLLS problem  min_theta ||C theta - b||_2 + reg ||theta||_2  s.t. theta >= -1.

    C: [k, k], b: [k] (b = mu_t - mu_s in RLLS); the norms are not squared. Returns the
    minimiser theta [k] with diagnostics (:class:`RllsSolution`). Pure JAX, float32, jittable.

    Method. The problem is scaled to ||C||_F = 1 (scaling C and b by s is the same problem
    with reg * s). Every linear system is solved by a Cholesky factorisation after Jacobi
    scaling (D^{-1/2} A D^{-1/2}, D = diag A): a confusion C = C_cond diag(p) puts the
    source class distribution p on the diagonal of C^T C, and once that is divided out the
    systems are as well conditioned as C_cond, so float32 factorisations are accurate.

    1. Two closed forms, each certified by its optimality condition:

       * zero residual: theta0 = C^{-1} b (normal equations C^T C theta = C^T b with two
         steps of iterative refinement on C theta = b; when a pivot of the scaled
         factorisation is <= rcond, C^+ b from an SVD with singular values
         <= rcond * s_max dropped) is optimal iff theta0 >= -1, C theta0 = b and
         reg ||C^{-T} theta0|| <= ||theta0|| (a u with ||u|| <= 1 and
         C^T u = -reg theta0 / ||theta0|| exists);
       * theta = 0 is optimal iff ||C^T b|| <= reg ||b||.

    2. Otherwise the residual r = C theta - b is non-zero at the optimum, the objective
       is smooth there, and a projected Newton method (Bertsekas, 1982) finds it. It starts
       from max(theta0, -1) (0.5 theta0 when theta0 is feasible, off the kink C theta = b);
       when reg ||C^{-T} theta0|| > ||theta0|| (the regulariser dominates) from the clipped
       ridge solution (C^T C + alpha I)^{-1} C^T b, alpha = reg ||b|| / ||start||. Each
       iteration holds at -1 the variables within eps = min(1e-3, max|theta - P(theta - s)|)
       of the bound whose gradient g pushes them against it (s = rho g / diag(rho H), P the
       projection on theta >= -1), and takes a Newton step d on the others from

           (C^T C - g_fit g_fit^T + alpha (I - u u^T)) d = -rho g,

       which is rho times the Hessian (rho = ||r||, g_fit = C^T r / rho, u = theta /
       ||theta||, alpha = reg rho / ||theta||). C^T C + alpha I is factorised on the free
       block (1e-6 added to the scaled diagonal) and the rank-2 part enters through the
       Woodbury identity, so the factorisation is reused (a simplified Newton step) while
       the held set is unchanged, alpha is within 10% of its value at factorisation and
       the projected gradient fell at least 4-fold at the last step. A backtracking search
       along the projection arc max(theta + t d, -1) accepts t when the Armijo condition
       holds, or when f is unchanged within float32 rounding and the projected gradient
       shrank (near the optimum f no longer resolves progress); a full step that decreases
       f by more than 5% is doubled while f keeps decreasing (from a small residual the
       Newton model is too curved). Once the held set is the optimal active set these are
       Newton steps on the smooth face problem (the exact polish), converging quadratically
       (linearly at a rate below 1/4 while a factorisation is reused).

    Stopping rule: the last Newton step on the free variables is at most
    xtol * (1 + max |theta|) in every entry, or the search finds no acceptable step within
    ``max_backtracks`` halvings (nothing left to gain at float32 precision), or
    ``max_iter`` iterations. On realistic confusion matrices (k up to 555) it stops after
    2-10 iterations with theta within about 1e-6 * max |theta| of the exact minimiser (the
    float32 floor).

    Compilation: once per k and static settings (``reg``, ``lam``, ``xtol`` and ``rcond``
    are traced, so new values do not recompile). Measured with
    ``benchmarks/bench_rlls.py --parts compile`` on the 2-core development machine: 1.3 s
    at k = 10 when idle; 1.4-2.3 s for k = 10..555 alone and 2.1-2.7 s under ``jax.vmap``
    over 32 instances with other jobs running (expect several times that on a heavily
    loaded machine). A solve then takes about 0.05 ms at k = 10 and 2 ms at k = 228.

    Args:
      confusion: C, [k, k].
      b: [k].
      reg: the regulariser weight (>= 0).
      max_iter: most Newton iterations (static).
      max_backtracks: most step halvings per iteration (static).
      max_expansions: most step doublings per iteration (static).
      xtol: relative Newton-step size that ends the iterations.
      rcond: pivot / singular-value cut-off for the zero-residual candidate.
    """
    k = _check_square("confusion", confusion)
    _check_vector("b", b, k)
    static = _check_rlls_settings(max_iter, max_backtracks, max_expansions)
    return validation.run_checked(_solve_rlls_checked, confusion, b, reg, xtol, rcond, **static)


@partial(jax.jit, static_argnames=_RLLS_STATIC)
def _rlls(confusion, source_pred_dist, target_pred_dist, reg, lam, xtol, rcond, **static):
    report = validation.value_report(
        validation.mass_stats("confusion", confusion),
        validation.mass_stats("source_pred_dist", source_pred_dist),
        validation.mass_stats("target_pred_dist", target_pred_dist),
        validation.range_stats("lam", lam, 0.0, 1.0),
        *_rlls_settings_stats(reg, xtol, rcond),
    )
    confusion = _float(confusion)
    b = _float(target_pred_dist) - _float(source_pred_dist)
    theta = _rlls_theta(confusion, b, reg, xtol, rcond, **static).theta
    return 1.0 + lam * theta, report


def rlls(
    confusion: jax.Array,
    *,
    source_pred_dist: jax.Array,
    target_pred_dist: jax.Array,
    reg: float | jax.Array = 1e-3,
    lam: float | jax.Array = 1.0,
    max_iter: int = 50,
    max_backtracks: int = 30,
    max_expansions: int = 6,
    xtol: float | jax.Array = 1e-6,
    rcond: float | jax.Array = 1e-6,
) -> jax.Array:
    """Regularised learning under label shift: w = 1 + lam * theta, [k].

        theta = argmin_theta ||C theta - b||_2 + reg ||theta||_2   s.t. theta >= -1,
        b = mu_t - mu_s,

    (norms not squared, as in the original's cvxpy problem), so w = 1 + lam * theta >= 1 - lam.
    Solved in JAX by :func:`solve_rlls` (closed forms certified by their optimality
    conditions, else projected Newton; see there for the method, stopping rule and
    compile times).

    Both distributions are keyword-only
    (``rlls(C, source_pred_dist=mu_s, target_pred_dist=mu_t)``): swapped positionally
    they would give entirely different weights without any error.

    Args:
      confusion: C, [k, k] joint confusion matrix [predicted, true].
      source_pred_dist: mu_s, [k].
      target_pred_dist: mu_t, [k].
      reg: regulariser weight (>= 0); the original's default 1e-3, the paper's runs 2e-6.
      lam: mixing weight in [0, 1].
      max_iter, max_backtracks, max_expansions, xtol, rcond: solver settings, see
        :func:`solve_rlls`.
    """
    k = _check_square("confusion", confusion)
    _check_vector("source_pred_dist", source_pred_dist, k)
    _check_vector("target_pred_dist", target_pred_dist, k)
    validation.check_rank("lam", lam, 0)
    static = _check_rlls_settings(max_iter, max_backtracks, max_expansions)
    return validation.run_checked(
        _rlls, confusion, source_pred_dist, target_pred_dist, reg, lam, xtol, rcond, **static
    )


# --- MLLS (EM) --------------------------------------------------------------------------


class EmResult(NamedTuple):
    """Result of the EM iterations: target_prior Q_hat [k], iterations int32."""

    target_prior: jax.Array
    iterations: jax.Array


def _em(target_probs, rows, source_prior, max_iter, tol) -> EmResult:
    """Saerens et al. (2002) EM for the target prior; classes with pi_s = 0 stay at 0."""
    present = source_prior > 0
    inv_prior = jnp.where(present, 1.0 / jnp.where(present, source_prior, 1.0), 0.0)

    def step(target_prior):
        adapted = target_probs * (target_prior * inv_prior)
        total = jnp.sum(adapted, axis=-1, keepdims=True)
        # A row whose whole mass sits on classes with pi_s = 0 carries no information.
        adapted = jnp.where(total > 0, adapted / jnp.where(total > 0, total, 1.0), 0.0)
        new = _weighted_mean(rows, adapted)
        mass = jnp.sum(new)
        return jnp.where(mass > 0, new / jnp.where(mass > 0, mass, 1.0), target_prior)

    def cond(state):
        _, _, it, change = state
        return (it < max_iter) & (change > tol)

    def body(state):
        _, prior, it, _ = state
        new = step(prior)
        return prior, new, it + 1, jnp.sum(jnp.abs(new - prior))

    start = jnp.where(present, source_prior, 0.0)
    start = start / jnp.maximum(jnp.sum(start), _TINY)
    init = (start, start, jnp.zeros((), jnp.int32), jnp.asarray(jnp.inf, start.dtype))
    _, prior, iterations, _ = jax.lax.while_loop(cond, body, init)
    return EmResult(target_prior=prior, iterations=iterations)


@partial(jax.jit, static_argnames=("max_iter",))
def _mlls(target_probs, source_prior, target_mask, tol, *, max_iter):
    report = validation.value_report(
        validation.distribution_stats("target_probs", target_probs),
        validation.mass_stats("source_prior", source_prior),
        *_mask_stats("target_mask", target_mask),
        validation.nonnegative_stats("tol", tol, strict=True),
    )
    target_probs = _float(target_probs)
    source_prior = source_prior.astype(target_probs.dtype)
    rows = _rows(target_mask, target_probs.shape[0], target_probs.dtype)
    result = _em(target_probs, rows, source_prior, max_iter, tol)
    return _ratio(result.target_prior, source_prior, absent=1.0), report


def mlls(
    target_probs: jax.Array,
    *,
    source_prior: jax.Array,
    target_mask: jax.Array | None = None,
    max_iter: int = 1000,
    tol: float | jax.Array = 1e-6,
) -> jax.Array:
    """Maximum-likelihood label shift by EM (Saerens, Latinne and Decaestecker, 2002): w [k].

    With posteriors p_i(y) = p(y | x_i) of the target rows under the source prior pi_s,
    the target prior Q maximising the likelihood of the target rows is the fixed point of

        E-step:  q_i(y) = p_i(y) Q(y)/pi_s(y) / sum_y' p_i(y') Q(y')/pi_s(y'),
        M-step:  Q(y)  = sum_i r_i q_i(y) / sum_i r_i,

    started at Q = pi_s and iterated until sum_y |Q_new(y) - Q(y)| <= tol or ``max_iter``
    steps. Returns w = Q / pi_s (w = 1 where pi_s = 0: not identified). The posteriors must
    be calibrated for this to be consistent; :func:`estimate_mlls` calibrates them first
    (BCTS) and takes pi_s from the calibrated source rows.

    Args:
      target_probs: [m, k] target rows' class probabilities under the source prior.
      source_prior: pi_s, [k] the prior the posteriors are relative to (sums to 1).
      target_mask: bool [m], non-negative row weights [m], or None for every row.
      max_iter: most EM steps (static).
      tol: stop once the L1 change of Q is at most this (> 0).
    """
    m, k = _check_probs("target_probs", target_probs)
    _check_vector("source_prior", source_prior, k)
    _check_mask("target_mask", target_mask, m)
    max_iter = _check_static_int("max_iter", max_iter, 1)
    return validation.run_checked(
        _mlls, target_probs, source_prior, target_mask, tol, max_iter=max_iter
    )


# --- estimators over a ShiftSample -------------------------------------------------------

Estimator = Callable[..., jax.Array]
"""``estimator(sample: ShiftSample, **options) -> w [k]`` = Q(y)/P_sample(y)."""


def check_sample(sample: ShiftSample) -> tuple[int, int, int]:
    """Check a :class:`ShiftSample`'s shapes and dtypes; returns (n, m, k).

    Values (probabilities, label ranges, row weights) are checked on the device by each
    estimator; :func:`sample_stats` lists those checks.
    """
    if not isinstance(sample, ShiftSample):
        raise ValueError(f"sample must be a label_shift.ShiftSample, got {type(sample).__name__}")
    n, k = _check_probs("source_probs", sample.source_probs)
    m, k_target = _check_probs("target_probs", sample.target_probs)
    if k_target != k:
        raise ValueError(
            f"target_probs must have {k} classes (source_probs' last dimension), got {k_target}"
        )
    _check_labels("source_labels", sample.source_labels, n)
    _check_mask("source_mask", sample.source_mask, n)
    _check_mask("target_mask", sample.target_mask, m)
    if sample.target_labels is not None:
        _check_labels("target_labels", sample.target_labels, m)
    return n, m, k


def sample_stats(sample: ShiftSample) -> list:
    """The value checks of a sample as :mod:`alsa_jax.validation` report entries (jittable)."""
    k = sample.num_classes
    entries = [
        validation.distribution_stats("source_probs", sample.source_probs),
        validation.labels_stats("source_labels", sample.source_labels, k),
        validation.distribution_stats("target_probs", sample.target_probs),
        *_mask_stats("source_mask", sample.source_mask),
        *_mask_stats("target_mask", sample.target_mask),
    ]
    if sample.target_labels is not None:
        entries.append(validation.labels_stats("target_labels", sample.target_labels, k))
    return entries


def _source_rows(sample: ShiftSample, dtype) -> jax.Array:
    return _rows(sample.source_mask, sample.source_probs.shape[0], dtype)


def _target_rows(sample: ShiftSample, dtype) -> jax.Array:
    return _rows(sample.target_mask, sample.target_probs.shape[0], dtype)


def _source_label_dist(sample: ShiftSample) -> jax.Array:
    return _label_distribution(
        sample.source_labels, sample.num_classes, _source_rows(sample, jnp.float32)
    )


def _identified(w: jax.Array, source_label_dist: jax.Array) -> jax.Array:
    """w where the source rows hold class y, 1 (not identified by them) elsewhere."""
    return jnp.where(source_label_dist > 0, w, 1.0)


def estimate_none(sample: ShiftSample) -> jax.Array:
    """The "none" estimator: w = 1, float32 [k] (no label shift assumed)."""
    check_sample(sample)
    return uniform_weights(sample.num_classes)


@partial(jax.jit, static_argnames=("hard",))
def _estimate_bbse(sample, rcond, *, hard):
    report = validation.value_report(
        *sample_stats(sample), validation.nonnegative_stats("rcond", rcond)
    )
    probs = _float(sample.source_probs)
    confusion = _joint_confusion(
        probs, sample.source_labels, _source_rows(sample, probs.dtype), hard
    )
    target = _float(sample.target_probs).astype(probs.dtype)
    mu_t = _weighted_mean(_target_rows(sample, probs.dtype), _hard_or_soft(target, hard))
    w = _bbse_weights(confusion, mu_t, rcond)
    return _identified(w, _source_label_dist(sample)), report


def estimate_bbse(
    sample: ShiftSample, *, rcond: float | jax.Array = 1e-6, hard: bool = True
) -> jax.Array:
    """BBSE on a sample: w = max(C^+ mu_t, 0) (:func:`bbse`), [k].

    C from the source rows (:func:`confusion_matrix`, ``hard`` argmax or soft), mu_t from
    the target rows (:func:`predicted_distribution`). Classes absent from the source rows
    get w = 1 (no column of C identifies them).
    """
    check_sample(sample)
    return validation.run_checked(_estimate_bbse, sample, rcond, hard=bool(hard))


@partial(jax.jit, static_argnames=("hard", *_RLLS_STATIC))
def _estimate_rlls(sample, reg, xtol, rcond, *, hard, **static):
    report = validation.value_report(*sample_stats(sample), *_rlls_settings_stats(reg, xtol, rcond))
    probs = _float(sample.source_probs)
    confusion = _joint_confusion(
        probs, sample.source_labels, _source_rows(sample, probs.dtype), hard
    )
    target = _float(sample.target_probs).astype(probs.dtype)
    mu_t = _weighted_mean(_target_rows(sample, probs.dtype), _hard_or_soft(target, hard))
    b = mu_t - confusion.sum(axis=1)
    theta = _rlls_theta(confusion, b, reg, xtol, rcond, **static).theta
    return _identified(1.0 + theta, _source_label_dist(sample)), report


def estimate_rlls(
    sample: ShiftSample,
    *,
    reg: float | jax.Array = 1e-3,
    hard: bool = True,
    max_iter: int = 50,
    max_backtracks: int = 30,
    max_expansions: int = 6,
    xtol: float | jax.Array = 1e-6,
    rcond: float | jax.Array = 1e-6,
) -> jax.Array:
    """RLLS on a sample: w = 1 + theta (:func:`rlls` with lam = 1), [k].

    C and mu_s = C's row sums from the source rows, mu_t from the target rows (``hard``
    argmax or soft predictions). Classes absent from the source rows get w = 1. ``reg``
    and the solver settings as in :func:`rlls`.
    """
    check_sample(sample)
    static = _check_rlls_settings(max_iter, max_backtracks, max_expansions)
    return validation.run_checked(
        _estimate_rlls, sample, reg, xtol, rcond, hard=bool(hard), **static
    )


@partial(jax.jit, static_argnames=("calibration_method", "max_iter", "calibration_max_iter"))
def _estimate_mlls(sample, tol, *, calibration_method, max_iter, calibration_max_iter):
    report = validation.value_report(
        *sample_stats(sample), validation.nonnegative_stats("tol", tol, strict=True)
    )
    source = _float(sample.source_probs)
    dtype = source.dtype
    source_rows = _source_rows(sample, dtype)
    source_logits = _calibration.logits_from_probs(source)
    target_logits = _calibration.logits_from_probs(sample.target_probs.astype(dtype))
    fitted = _calibration.CALIBRATIONS[calibration_method](
        source_logits,
        sample.source_labels,
        source_rows,
        max_iter=calibration_max_iter,
        gtol=jnp.asarray(1e-6, dtype),
    )
    # pi_s is the calibrated source rows' mean posterior: at the BCTS optimum it equals
    # the rows' label distribution exactly, and EM on the source rows themselves then
    # finds no shift (as in Alexandari et al.'s abstention package).
    source_prior = _weighted_mean(source_rows, fitted.probs(source_logits))
    result = _em(
        fitted.probs(target_logits), _target_rows(sample, dtype), source_prior, max_iter, tol
    )
    w = _ratio(result.target_prior, source_prior, absent=1.0)
    return _identified(w, _source_label_dist(sample)), report


def estimate_mlls(
    sample: ShiftSample,
    *,
    calibration: str = "bcts",
    max_iter: int = 1000,
    tol: float | jax.Array = 1e-6,
    calibration_max_iter: int = 100,
) -> jax.Array:
    """MLLS on a sample: EM on the calibrated target posteriors (:func:`mlls`), [k].

    1. Calibrate on the labeled source rows (log-probabilities as logits, z = log p):
       ``calibration="bcts"`` fits p_cal = softmax(a z + b) by minimum NLL
       (:mod:`alsa_jax.calibration`; Alexandari et al. 2020), "ts" fits a only, "none"
       keeps p. At most ``calibration_max_iter`` L-BFGS iterations.
    2. pi_s = the source rows' mean calibrated posterior (equal to their label
       distribution at the BCTS optimum).
    3. EM for the target prior Q on the calibrated target posteriors, from Q = pi_s, at
       most ``max_iter`` steps, until the L1 change is <= ``tol``.

    Returns w = Q / pi_s; classes absent from the source rows get w = 1. Without
    calibration an over-confident network makes EM overshoot (``benchmarks/
    bench_estimators.py`` measures it); BCTS is what makes MLLS work on such networks.
    """
    check_sample(sample)
    validation.check_choice("calibration", calibration, _calibration.CALIBRATIONS)
    max_iter = _check_static_int("max_iter", max_iter, 1)
    calibration_max_iter = _check_static_int("calibration_max_iter", calibration_max_iter, 1)
    return validation.run_checked(
        _estimate_mlls,
        sample,
        tol,
        calibration_method=calibration,
        max_iter=max_iter,
        calibration_max_iter=calibration_max_iter,
    )


@jax.jit
def _estimate_oracle(sample):
    report = validation.value_report(*sample_stats(sample))
    q = _label_distribution(
        sample.target_labels, sample.num_classes, _target_rows(sample, jnp.float32)
    )
    p = _source_label_dist(sample)
    return _ratio(q, p, absent=1.0), report


def estimate_oracle(sample: ShiftSample) -> jax.Array:
    """The oracle: w = Q(y)/P_sample(y) from the hidden labels, [k].

    Q from ``sample.target_labels`` over the target rows (required), P_sample from the
    source labels over the source rows; w = 1 for classes absent from the source rows.
    (:func:`oracle_weights` is the same ratio between two given distributions.)
    """
    check_sample(sample)
    if sample.target_labels is None:
        raise ValueError(
            "the oracle estimator needs sample.target_labels (the target rows' hidden classes)"
        )
    return validation.run_checked(_estimate_oracle, sample)


ESTIMATORS: dict[str, Estimator] = {
    "none": estimate_none,
    "bbse": estimate_bbse,
    "rlls": estimate_rlls,
    "mlls": estimate_mlls,
    "oracle": estimate_oracle,
}
"""Config name (``label_shift.estimator``) -> ``estimator(sample, **options) -> w [k]``.

Options: bbse ``rcond``, ``hard``; rlls ``reg``, ``hard`` and the solver settings; mlls
``calibration`` ("bcts" default, "ts", "none"), ``max_iter``, ``tol``,
``calibration_max_iter``; none and oracle take none. A new estimator needs no entry here:
pass the function to :func:`estimate`.
"""


@functools.lru_cache(maxsize=256)
def _option_names(fn: Callable) -> frozenset[str] | None:
    """Keyword options ``fn`` accepts after the sample (None: it takes ``**kwargs``)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(
        p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    )


def _resolve(estimator: str | Estimator) -> tuple[str, Estimator]:
    if isinstance(estimator, str):
        validation.check_choice("estimator", estimator, ESTIMATORS)
        return estimator, ESTIMATORS[estimator]
    if not callable(estimator):
        raise ValueError(
            f"estimator must be a name ({', '.join(map(repr, ESTIMATORS))}) or a function "
            f"sample -> w [k], got {type(estimator).__name__}"
        )
    return getattr(estimator, "__name__", repr(estimator)), estimator


@jax.jit
def _sample_report(sample):
    return None, validation.value_report(*sample_stats(sample))


def estimate(estimator: str | Estimator, sample: ShiftSample, **options: Any) -> jax.Array:
    """Importance weights w [k] = Q(y)/P_sample(y) by ``estimator``.

    ``estimator`` is a name of :data:`ESTIMATORS` or any function
    ``fn(sample, **options) -> w [k]``; ``options`` go to it as keywords (an option it does
    not take raises ValueError naming the ones it does). A built-in estimator checks the
    sample itself; a user's function gets it checked here first (shapes, and values when
    concrete). Jittable and vmappable, e.g. a bootstrap of the weights over resampled
    source-row counts::

        counts = jax.vmap(lambda key: jax.random.multinomial(key, n, jnp.full(n, 1 / n)))(keys)
        ws = jax.vmap(lambda c: estimate("rlls", sample.replace(source_mask=c)))(counts)

    The weights are relative to the labeled source rows of ``sample``; rebase them onto
    the training rows with :func:`rebase_weights` and shrink with :func:`mix_weights`.
    """
    name, fn = _resolve(estimator)
    accepted = _option_names(fn)
    if accepted is not None:
        unknown = sorted(set(options) - accepted)
        if unknown:
            takes = ", ".join(sorted(accepted)) or "no options"
            raise ValueError(
                f"estimator {name!r} takes no option {unknown[0]!r}; it takes: {takes}"
            )
    if fn not in ESTIMATORS.values():
        check_sample(sample)
        validation.run_checked(_sample_report, sample)
    w = fn(sample, **options)
    validation.check_shape(f"the weights returned by estimator {name!r}", w, (sample.num_classes,))
    return w


# --- using the weights ------------------------------------------------------------------


@jax.jit
def _posterior_correction(probs, weights):
    report = validation.value_report(
        validation.distribution_stats("probs", probs),
        validation.nonnegative_stats("weights", weights),
    )
    probs = _float(probs)
    weighted = probs * weights.astype(probs.dtype)
    total = jnp.sum(weighted, axis=-1, keepdims=True)
    defined = total > 0
    return jnp.where(defined, weighted / jnp.where(defined, total, 1.0), probs), report


def posterior_correction(probs: jax.Array, weights: jax.Array) -> jax.Array:
    """Target posteriors from source posteriors: p(y|x) w(y) / sum_y' p(y'|x) w(y'), [..., k].

    Under label shift Q(y|x) is proportional to P(y|x) w(y). A row whose weighted sum is 0
    (all its mass on classes with w = 0) keeps its original probabilities, since no
    reweighting of it is defined.

    Args:
      probs: [n, k] (any leading dimensions) class probabilities.
      weights: w, [k] non-negative.
    """
    validation.check_rank("weights", weights, 1)
    k = int(np.shape(weights)[0])
    if np.ndim(probs) < 1 or np.shape(probs)[-1] != k:
        raise ValueError(
            f"probs must have last dimension {k} (weights' size), got shape "
            f"{tuple(np.shape(probs))}"
        )
    if np.size(probs) == 0:
        raise ValueError("probs is empty")
    return validation.run_checked(_posterior_correction, probs, weights)


@jax.jit
def _weight_errors(w_est, w_true):
    diff = _float(w_est) - _float(w_true)
    return {
        "l2": jnp.linalg.norm(diff),
        "mse": jnp.mean(diff**2),
        "max_abs": jnp.max(jnp.abs(diff)),
    }


def rebase_weights(
    weights: jax.Array,
    *,
    from_dist: jax.Array,
    to_dist: jax.Array,
    lam: float | jax.Array = 1.0,
) -> jax.Array:
    """An estimate Q/P_from re-expressed against another labeled set, then mixed: [k].

    An estimator returns w(y) = Q(y)/P_from(y) relative to the labeled sample it saw (the
    held-out confusion sample, say). Since the label distributions of that sample and of
    the set the weights are for (the training rows, the pool) are known, the rebasing is
    exact, and only then are the weights shrunk towards one:

        w_to(y) = (1 - lam) + lam * w(y) * P_from(y) / P_to(y).

    A class absent from the estimate's sample (P_from(y) = 0) is not identified and gets
    the neutral 1; where P_to(y) = 0 (no row of the class to weigh) w(y) is kept. With
    ``from_dist`` all zeros (no estimate, the "none" estimator) every weight is 1. This is
    the one function that turns a raw estimate into the weights of a labeled set, used
    after every estimate and after every change of the labeled set.

    Args:
      weights: w, [k] the raw estimate Q/P_from.
      from_dist: P_from, [k] label distribution of the sample the estimate is relative to.
      to_dist: P_to, [k] label distribution of the set the weights are for.
      lam: mixing weight in [0, 1].
    """
    validation.check_rank("weights", weights, 1)
    k = np.shape(weights)[0]
    validation.check_shape("from_dist", from_dist, (k,))
    validation.check_shape("to_dist", to_dist, (k,))
    validation.check_in_range("lam", lam, 0.0, 1.0)
    return _rebase_weights(_float(weights), _float(from_dist), _float(to_dist), lam)


@jax.jit
def _rebase_weights(
    weights: jax.Array, from_dist: jax.Array, to_dist: jax.Array, lam: jax.Array
) -> jax.Array:
    identified = from_dist > 0
    present = to_dist > 0
    rebased = jnp.where(present, weights * from_dist / jnp.where(present, to_dist, 1.0), weights)
    return (1.0 - lam) + lam * jnp.where(identified, rebased, 1.0)


def weight_errors(w_est: jax.Array, w_true: jax.Array) -> dict[str, jax.Array]:
    """Errors of a weight estimate: {"l2": ||w_est - w_true||_2, "mse": mean (w_est - w_true)^2,
    "max_abs": max |w_est - w_true|}, each a scalar; w_est, w_true: [k]."""
    validation.check_rank("w_est", w_est, 1)
    validation.check_shape("w_true", w_true, np.shape(w_est))
    return _weight_errors(w_est, w_true)
