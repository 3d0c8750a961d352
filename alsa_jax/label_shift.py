"""Label-shift estimation: confusion matrices, BBSE, RLLS, oracle weights, posterior correction.

Under label shift the source P and the target Q share P(x|y) = Q(x|y) and differ in the
class marginals. The importance weights w(y) = Q(y)/P(y) are estimated from a classifier h
through its joint confusion matrix on labeled source rows,

    C[i, j] = P_source(h(x) = i, y = j),        C: [k, k], sum_ij C[i, j] = 1,

its predicted-class distribution on source rows mu_s[i] = P_source(h(x) = i) = sum_j C[i, j]
and on unlabeled target rows mu_t[i] = Q(h(x) = i). Label shift gives mu_t = C w, which
BBSE inverts directly and RLLS solves as a regularised convex problem in theta = w - 1.

All functions are pure and jit-compatible over static shapes; they work in float32 (the
package never enables x64). Arguments are checked with :mod:`alsa_jax.validation`: shapes
always, values only when the arrays are concrete.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from alsa_jax import validation

ESTIMATORS = ("none", "bbse", "rlls", "oracle")

# Smallest norm treated as non-zero inside the RLLS solver (float32 normal range).
_TINY = 1e-30


# --- argument checks --------------------------------------------------------------------


def _check_probs(name: str, probs: jax.Array) -> None:
    validation.check_rank(name, probs, 2)
    if not jnp.issubdtype(jnp.asarray(probs).dtype, jnp.floating):
        raise ValueError(f"{name} must hold floating-point probabilities, got {probs.dtype}")
    validation.check_distribution(name, probs, axis=-1)


def _check_labels(name: str, labels: jax.Array, n: int, num_classes: int) -> None:
    validation.check_shape(name, labels, (n,))
    validation.check_labels(name, labels, num_classes)


def _row_weights(mask: jax.Array | None, n: int, dtype: jnp.dtype) -> jax.Array:
    """The mask as 0/1 row weights [n] (all ones for ``None``)."""
    if mask is None:
        return jnp.ones((n,), dtype)
    validation.check_shape("mask", mask, (n,))
    if jnp.asarray(mask).dtype != jnp.bool_:
        raise ValueError(f"mask must be boolean, got dtype {jnp.asarray(mask).dtype}")
    return jnp.asarray(mask).astype(dtype)


def _check_mass(name: str, x: jax.Array, *, atol: float = 1e-3) -> None:
    """Non-negative finite entries summing to 1, or all zeros (the empty sample)."""
    if not validation.is_concrete(x):
        return
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite entries; pass a probability distribution")
    if np.any(arr < -atol):
        raise ValueError(f"{name} has negative entries; pass a probability distribution")
    total = float(arr.sum())
    if not (np.all(arr == 0) or abs(total - 1.0) <= atol):
        raise ValueError(f"{name} must sum to 1 (or be all zeros), found a sum of {total:.4g}")


def _check_square(name: str, confusion: jax.Array) -> int:
    validation.check_rank(name, confusion, 2)
    k = np.shape(confusion)[0]
    validation.check_shape(name, confusion, (k, k))
    _check_mass(name, confusion)
    return k


def _float(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


# --- empirical distributions ------------------------------------------------------------


def confusion_matrix(
    probs: jax.Array, labels: jax.Array, mask: jax.Array | None = None, *, hard: bool = True
) -> jax.Array:
    """Joint confusion matrix C[i, j] = P_source(h(x) = i, y = j): [k, k].

    Over the rows selected by ``mask`` (all rows for ``None``), with n_m selected rows,

        C[i, j] = (1 / n_m) sum_{m : y_m = j} h_i(x_m),

    where h(x_m) is the one-hot argmax of ``probs[m]`` when ``hard`` and the probability
    vector itself otherwise (the soft confusion). C sums to 1; an all-False mask gives zeros.

    Args:
      probs: [n, k] class probabilities (rows sum to 1).
      labels: int [n] true classes in [0, k).
      mask: bool [n] rows to use, or ``None`` for all.
      hard: argmax predictions (default) or soft probabilities.
    """
    _check_probs("probs", probs)
    n, k = np.shape(probs)
    _check_labels("labels", labels, n, k)
    probs = _float(probs)
    rows = _row_weights(mask, n, probs.dtype)
    preds = jax.nn.one_hot(jnp.argmax(probs, axis=-1), k, dtype=probs.dtype) if hard else probs
    truth = jax.nn.one_hot(labels, k, dtype=probs.dtype)
    joint = (preds * rows[:, None]).T @ truth
    count = jnp.sum(rows)
    return joint / jnp.maximum(count, 1.0)


def predicted_distribution(
    probs: jax.Array, mask: jax.Array | None = None, *, hard: bool = True
) -> jax.Array:
    """Predicted-class distribution mu[i] = P(h(x) = i) over the masked rows: [k].

    mu[i] = (1 / n_m) sum_m h_i(x_m) with h as in :func:`confusion_matrix` (one-hot argmax
    when ``hard``, probabilities otherwise). An all-False mask gives zeros.

    Args:
      probs: [n, k] class probabilities.
      mask: bool [n] rows to use, or ``None`` for all.
    """
    _check_probs("probs", probs)
    n, k = np.shape(probs)
    probs = _float(probs)
    rows = _row_weights(mask, n, probs.dtype)
    preds = jax.nn.one_hot(jnp.argmax(probs, axis=-1), k, dtype=probs.dtype) if hard else probs
    return rows @ preds / jnp.maximum(jnp.sum(rows), 1.0)


def label_distribution(
    labels: jax.Array, num_classes: int, mask: jax.Array | None = None
) -> jax.Array:
    """Empirical class proportions P(y = j) of the masked labels: float32 [num_classes].

    An all-False mask gives zeros. ``num_classes`` is static (a Python int).
    """
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive Python int, got {num_classes!r}")
    validation.check_rank("labels", labels, 1)
    n = np.shape(labels)[0]
    _check_labels("labels", labels, n, int(num_classes))
    rows = _row_weights(mask, n, jnp.float32)
    counts = rows @ jax.nn.one_hot(labels, int(num_classes), dtype=jnp.float32)
    return counts / jnp.maximum(jnp.sum(rows), 1.0)


# --- simple weights ---------------------------------------------------------------------


def mix_weights(w: jax.Array, lam: float | jax.Array) -> jax.Array:
    """Shrink weights towards one: (1 - lam) + lam * w, same shape as ``w``.

    lam = 1 keeps w, lam = 0 gives the unweighted ones; the same lam means the same
    shrinkage for every estimator.
    """
    validation.check_in_range("lam", lam, 0.0, 1.0)
    return (1.0 - lam) + lam * _float(w)


def uniform_weights(num_classes: int) -> jax.Array:
    """The weights of the "none" estimator: ones, float32 [num_classes]."""
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive Python int, got {num_classes!r}")
    return jnp.ones((int(num_classes),), jnp.float32)


def oracle_weights(
    source_label_dist: jax.Array, target_label_dist: jax.Array, *, lam: float | jax.Array = 1.0
) -> jax.Array:
    """True importance weights from the hidden labels, mixed: [k].

    w(y) = Q(y) / P(y), with w(y) = 0 for classes absent from the source (P(y) = 0: no
    source row can carry their weight), then (1 - lam) + lam * w.

    Args:
      source_label_dist: P(y), [k].
      target_label_dist: Q(y), [k].
    """
    validation.check_rank("source_label_dist", source_label_dist, 1)
    k = np.shape(source_label_dist)[0]
    validation.check_shape("target_label_dist", target_label_dist, (k,))
    _check_mass("source_label_dist", source_label_dist)
    _check_mass("target_label_dist", target_label_dist)
    p = _float(source_label_dist)
    q = _float(target_label_dist)
    present = p > 0
    w = jnp.where(present, q / jnp.where(present, p, 1.0), 0.0)
    return mix_weights(w, lam)


# --- BBSE -------------------------------------------------------------------------------


@jax.jit
def _bbse(confusion: jax.Array, target_pred_dist: jax.Array, rcond: jax.Array) -> jax.Array:
    u, s, vt = jnp.linalg.svd(confusion)
    keep = s > rcond * s[0]
    s_inv = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)
    w = vt.T @ (s_inv * (u.T @ target_pred_dist))
    return jnp.maximum(w, 0.0)


def bbse(confusion: jax.Array, target_pred_dist: jax.Array, *, rcond: float = 1e-6) -> jax.Array:
    """Black-box shift estimation: w = max(C^+ mu_t, 0), [k].

    C^+ is the pseudo-inverse from the SVD C = U diag(s) V^T with singular values
    s_i <= rcond * s_max dropped, so w = V diag(1/s_i for kept i, else 0) U^T mu_t. For a
    well-conditioned C this is exactly C^{-1} mu_t; for a singular or ill-conditioned C it
    is the minimum-norm least-squares solution of C w = mu_t (deterministic, finite; an
    all-zero C, from an empty sample, gives w = 0). Negative entries are clipped to 0.

    Args:
      confusion: C, [k, k] joint confusion matrix.
      target_pred_dist: mu_t, [k].
      rcond: relative cut-off for small singular values (>= 0).
    """
    k = _check_square("confusion", confusion)
    validation.check_shape("target_pred_dist", target_pred_dist, (k,))
    _check_mass("target_pred_dist", target_pred_dist)
    validation.check_positive("rcond", rcond, strict=False)
    return _bbse(_float(confusion), _float(target_pred_dist), jnp.asarray(rcond, jnp.float32))


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


@partial(jax.jit, static_argnames=("max_iter", "max_backtracks", "max_expansions"))
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


def solve_rlls(
    confusion: jax.Array,
    b: jax.Array,
    *,
    reg: float | jax.Array = 1e-3,
    max_iter: int = 50,
    max_backtracks: int = 30,
    max_expansions: int = 6,
    xtol: float = 1e-6,
    rcond: float = 1e-6,
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
    validation.check_rank("confusion", confusion, 2)
    k = np.shape(confusion)[0]
    validation.check_shape("confusion", confusion, (k, k))
    validation.check_shape("b", b, (k,))
    validation.check_positive("reg", reg, strict=False)
    validation.check_positive("xtol", xtol)
    validation.check_positive("rcond", rcond, strict=False)
    for name, value, least in (
        ("max_iter", max_iter, 1),
        ("max_backtracks", max_backtracks, 1),
        ("max_expansions", max_expansions, 0),
    ):
        if not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be a Python int >= {least} (static), got {value!r}")
    confusion = _float(confusion)
    dtype = confusion.dtype
    return _solve_rlls(
        confusion,
        jnp.asarray(b, dtype),
        jnp.asarray(reg, dtype),
        jnp.asarray(xtol, dtype),
        jnp.asarray(rcond, dtype),
        max_iter=int(max_iter),
        max_backtracks=int(max_backtracks),
        max_expansions=int(max_expansions),
    )


def rlls(
    confusion: jax.Array,
    source_pred_dist: jax.Array,
    target_pred_dist: jax.Array,
    *,
    reg: float | jax.Array = 1e-3,
    lam: float | jax.Array = 1.0,
    max_iter: int = 50,
    max_backtracks: int = 30,
    max_expansions: int = 6,
    xtol: float = 1e-6,
    rcond: float = 1e-6,
) -> jax.Array:
    """Regularised learning under label shift: w = 1 + lam * theta, [k].

        theta = argmin_theta ||C theta - b||_2 + reg ||theta||_2   s.t. theta >= -1,
        b = mu_t - mu_s,

    (norms not squared, as in the original's cvxpy problem), so w = 1 + lam * theta >= 1 - lam.
    Solved in JAX by :func:`solve_rlls` (closed forms certified by their optimality
    conditions, else projected Newton; see there for the method and stopping rule).

    Args:
      confusion: C, [k, k] joint confusion matrix.
      source_pred_dist: mu_s, [k].
      target_pred_dist: mu_t, [k].
      reg: regulariser weight (>= 0); the original's default 1e-3, the paper's runs 2e-6.
      lam: mixing weight in [0, 1].
      max_iter, max_backtracks, max_expansions, xtol, rcond: solver settings, see
        :func:`solve_rlls`.
    """
    k = _check_square("confusion", confusion)
    validation.check_shape("source_pred_dist", source_pred_dist, (k,))
    validation.check_shape("target_pred_dist", target_pred_dist, (k,))
    _check_mass("source_pred_dist", source_pred_dist)
    _check_mass("target_pred_dist", target_pred_dist)
    validation.check_in_range("lam", lam, 0.0, 1.0)
    b = _float(target_pred_dist) - _float(source_pred_dist)
    solution = solve_rlls(
        confusion,
        b,
        reg=reg,
        max_iter=max_iter,
        max_backtracks=max_backtracks,
        max_expansions=max_expansions,
        xtol=xtol,
        rcond=rcond,
    )
    return 1.0 + lam * solution.theta


# --- dispatch ---------------------------------------------------------------------------


def estimate_weights(
    method: str,
    *,
    confusion: jax.Array,
    source_pred_dist: jax.Array,
    target_pred_dist: jax.Array,
    source_label_dist: jax.Array | None = None,
    target_label_dist: jax.Array | None = None,
    reg: float | jax.Array = 1e-3,
    lam: float | jax.Array = 1.0,
    num_classes: int | None = None,
) -> jax.Array:
    """Importance weights w [k] by the estimator ``method`` (one of :data:`ESTIMATORS`).

    * ``none``: ones;
    * ``bbse``: (1 - lam) + lam * max(C^+ mu_t, 0) (:func:`bbse`, mixed like the others so
      that lam means the same for every estimator);
    * ``rlls``: 1 + lam * theta (:func:`rlls`), which is (1 - lam) + lam * (1 + theta);
    * ``oracle``: (1 - lam) + lam * Q(y)/P(y) from the label distributions
      (:func:`oracle_weights`), which must then be given.

    ``num_classes`` (static) defaults to C's size and must match it when given.
    """
    validation.check_choice("method", method, ESTIMATORS)
    validation.check_rank("confusion", confusion, 2)
    k = np.shape(confusion)[0]
    if num_classes is not None and num_classes != k:
        raise ValueError(f"num_classes={num_classes!r} must equal confusion's size {k}")
    validation.check_in_range("lam", lam, 0.0, 1.0)
    if method == "none":
        return uniform_weights(k)
    if method == "bbse":
        return mix_weights(bbse(confusion, target_pred_dist), lam)
    if method == "rlls":
        return rlls(confusion, source_pred_dist, target_pred_dist, reg=reg, lam=lam)
    if source_label_dist is None or target_label_dist is None:
        raise ValueError(
            "method='oracle' needs source_label_dist and target_label_dist (the true P(y), Q(y))"
        )
    validation.check_shape("source_label_dist", source_label_dist, (k,))
    return oracle_weights(source_label_dist, target_label_dist, lam=lam)


# --- using the weights ------------------------------------------------------------------


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
    k = np.shape(weights)[0]
    if np.ndim(probs) < 1 or np.shape(probs)[-1] != k:
        raise ValueError(
            f"probs must have last dimension {k} (weights' size), got shape "
            f"{tuple(np.shape(probs))}"
        )
    validation.check_distribution("probs", probs, axis=-1)
    validation.check_positive("weights", weights, strict=False)
    probs = _float(probs)
    weighted = probs * _float(weights)
    total = jnp.sum(weighted, axis=-1, keepdims=True)
    defined = total > 0
    return jnp.where(defined, weighted / jnp.where(defined, total, 1.0), probs)


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
    diff = _float(w_est) - _float(w_true)
    return {
        "l2": jnp.linalg.norm(diff),
        "mse": jnp.mean(diff**2),
        "max_abs": jnp.max(jnp.abs(diff)),
    }
