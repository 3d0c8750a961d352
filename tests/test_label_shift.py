import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from alsa_jax import label_shift

try:
    import cvxpy as cp
except ImportError:  # the dev extra
    cp = None

needs_cvxpy = pytest.mark.skipif(cp is None, reason="cvxpy (the dev extra) is not installed")

# --- helpers ------------------------------------------------------------------------------

# Tight Clarabel settings for the reference. With its defaults Clarabel stops at a relative
# gap of 1e-8, which on these problems (C entries ~ 1/k^2) leaves errors of up to ~1e-3 in
# w; on the same problem scaled to ||C||_2 = 1 with these tolerances it agrees with a
# float64 KKT solve to ~1e-5.
_TIGHT = dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-10, max_iter=500)


def cvxpy_theta(confusion, b, reg):
    """The original's problem min ||C th - b|| + reg ||th|| s.t. th >= -1, solved by cvxpy."""
    c = np.asarray(confusion, np.float64)
    b = np.asarray(b, np.float64)
    scale = 1.0 / np.linalg.norm(c, 2) if np.any(c) else 1.0
    theta = cp.Variable(c.shape[1])
    objective = cp.norm(scale * c @ theta - scale * b) + reg * scale * cp.norm(theta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cp.Problem(cp.Minimize(objective), [theta >= -1]).solve(solver=cp.CLARABEL, **_TIGHT)
    return theta.value


def rlls_objective(confusion, b, reg, theta):
    c = np.asarray(confusion, np.float64)
    theta = np.asarray(theta, np.float64)
    return np.linalg.norm(c @ theta - np.asarray(b, np.float64)) + reg * np.linalg.norm(theta)


def realistic_instance(k, seed, *, noisy=True, p_alpha=2.0, q_alpha=1.0):
    """C = C_cond diag(p) of a 70-90% accurate classifier; mu_t = C_cond q (+ sampling noise)."""
    rng = np.random.default_rng(seed)
    hit = rng.uniform(0.7, 0.9, size=k)
    cond = np.zeros((k, k))
    for j in range(k):
        cond[:, j] = np.insert(rng.dirichlet(np.full(k - 1, 0.3)) * (1.0 - hit[j]), j, hit[j])
    p = rng.dirichlet(np.full(k, p_alpha))
    q = rng.dirichlet(np.full(k, q_alpha))
    if not noisy:  # a mild shift observed without noise: the residual is zero at the optimum
        q = 0.5 * p + 0.5 * q
    confusion = cond * p[None, :]
    mu_t = cond @ q
    if noisy:
        n = 20 * k
        mu_t = rng.multinomial(n, mu_t / mu_t.sum()) / n
    return (
        confusion.astype(np.float32),
        confusion.sum(1).astype(np.float32),
        mu_t.astype(np.float32),
    )


C3 = np.array([[0.30, 0.05, 0.02], [0.05, 0.25, 0.03], [0.05, 0.05, 0.20]], np.float32)
C3 = C3 / C3.sum()


# --- confusion matrix and distributions -------------------------------------------------

PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # pred 0, y 0
        [0.1, 0.6, 0.3],  # pred 1, y 0
        [0.2, 0.3, 0.5],  # pred 2, y 2
        [0.4, 0.5, 0.1],  # pred 1, y 1
        [0.6, 0.3, 0.1],
    ],  # pred 0, y 1
    np.float32,
)
LABELS = np.array([0, 0, 2, 1, 1], np.int32)


def test_confusion_matrix_hard_by_hand():
    expected = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], np.float32) / 5
    np.testing.assert_allclose(label_shift.confusion_matrix(PROBS, LABELS), expected, atol=1e-7)
    mask = np.array([True, True, False, True, False])
    expected = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], np.float32) / 3
    np.testing.assert_allclose(
        label_shift.confusion_matrix(PROBS, LABELS, mask), expected, atol=1e-7
    )


def test_confusion_matrix_soft_by_hand():
    # Column j = sum of probability rows with label j, divided by n.
    expected = np.array([[0.8, 1.0, 0.2], [0.8, 0.8, 0.3], [0.4, 0.2, 0.5]], np.float32) / 5
    got = label_shift.confusion_matrix(PROBS, LABELS, hard=False)
    np.testing.assert_allclose(got, expected, atol=1e-7)
    assert float(got.sum()) == pytest.approx(1.0, abs=1e-6)


def test_confusion_matrix_two_classes():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], np.float32)
    labels = np.array([0, 0, 1, 1], np.int32)
    np.testing.assert_allclose(
        label_shift.confusion_matrix(probs, labels), [[0.25, 0.25], [0.25, 0.25]]
    )
    np.testing.assert_allclose(
        label_shift.confusion_matrix(probs, labels, hard=False),
        [[0.275, 0.225], [0.225, 0.275]],
        atol=1e-7,
    )


def test_empty_mask_gives_zeros_not_nan():
    empty = np.zeros(5, bool)
    for value in (
        label_shift.confusion_matrix(PROBS, LABELS, empty),
        label_shift.confusion_matrix(PROBS, LABELS, empty, hard=False),
        label_shift.predicted_distribution(PROBS, empty),
        label_shift.label_distribution(LABELS, 3, empty),
    ):
        np.testing.assert_array_equal(value, np.zeros_like(value))


def test_predicted_and_label_distributions_by_hand():
    np.testing.assert_allclose(label_shift.predicted_distribution(PROBS), [0.4, 0.4, 0.2])
    np.testing.assert_allclose(
        label_shift.predicted_distribution(PROBS, hard=False), [0.4, 0.38, 0.22], atol=1e-7
    )
    mask = np.array([False, True, True, True, False])
    np.testing.assert_allclose(
        label_shift.predicted_distribution(PROBS, mask), [0, 2 / 3, 1 / 3], atol=1e-7
    )
    np.testing.assert_allclose(label_shift.label_distribution(LABELS, 3), [0.4, 0.4, 0.2])
    np.testing.assert_allclose(
        label_shift.label_distribution(LABELS, 4, mask), [1 / 3, 1 / 3, 1 / 3, 0], atol=1e-7
    )
    # mu_s is the row sum of the joint confusion.
    np.testing.assert_allclose(
        label_shift.confusion_matrix(PROBS, LABELS).sum(1),
        label_shift.predicted_distribution(PROBS),
        atol=1e-7,
    )


# --- BBSE -------------------------------------------------------------------------------


def test_bbse_recovers_exact_weights():
    w_true = np.array([2.0, 0.5, 0.25], np.float32)
    mu_t = C3 @ w_true
    mu_t = mu_t / mu_t.sum()
    w_true = w_true / (C3 @ w_true).sum()  # Q sums to 1 only for the rescaled weights
    np.testing.assert_allclose(label_shift.bbse(C3, target_pred_dist=mu_t), w_true, rtol=1e-5)


def test_bbse_clips_negative_weights():
    mu_t = np.array([0.0, 0.1, 0.9], np.float32)
    raw = np.linalg.solve(C3.astype(np.float64), mu_t)
    assert raw.min() < 0
    np.testing.assert_allclose(
        label_shift.bbse(C3, target_pred_dist=mu_t), np.maximum(raw, 0), rtol=1e-5, atol=1e-6
    )


def test_bbse_singular_confusion_is_the_pseudo_inverse():
    confusion = np.array([[0.4, 0.1, 0.0], [0.1, 0.4, 0.0], [0.0, 0.0, 0.0]], np.float32)
    mu_t = np.array([0.5, 0.3, 0.2], np.float32)
    first = np.asarray(label_shift.bbse(confusion, target_pred_dist=mu_t))
    second = np.asarray(label_shift.bbse(confusion, target_pred_dist=mu_t))
    np.testing.assert_array_equal(first, second)
    assert np.all(np.isfinite(first))
    expected = np.maximum(np.linalg.pinv(confusion.astype(np.float64)) @ mu_t, 0)
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-6)
    assert first[2] == 0.0  # the unseen class gets no weight
    # Singular values below rcond * s_max are dropped too, not only exact zeros.
    nearly = confusion.copy()
    nearly[2, 2] = 1e-9
    np.testing.assert_allclose(
        label_shift.bbse(nearly, target_pred_dist=mu_t), expected, rtol=1e-5, atol=1e-6
    )


def _simulate(k, n, seed):
    """Labels and hard predictions of a 75%-accurate classifier on P and Q samples."""
    rng = np.random.default_rng(seed)
    cond = np.full((k, k), 0.25 / (k - 1))
    np.fill_diagonal(cond, 0.75)
    p = np.array([0.35, 0.25, 0.2, 0.12, 0.08])
    q = np.array([0.1, 0.15, 0.2, 0.25, 0.3])

    def sample(dist):
        labels = rng.choice(k, size=n, p=dist)
        cumulative = np.cumsum(cond[:, labels].T, axis=1)
        preds = (rng.random((n, 1)) > cumulative).sum(axis=1).clip(0, k - 1)
        return labels.astype(np.int32), np.eye(k, dtype=np.float32)[preds]

    source_labels, source_probs = sample(p)
    _, target_probs = sample(q)
    confusion = label_shift.confusion_matrix(source_probs, source_labels)
    return (confusion, confusion.sum(1), label_shift.predicted_distribution(target_probs), q / p)


@pytest.mark.parametrize("method", ["bbse", "rlls"])
def test_estimates_converge_to_the_true_weights(method):
    k = 5
    errors = []
    for n in (2_000, 200_000):
        confusion, mu_s, mu_t, w_true = _simulate(k, n, seed=0)
        if method == "bbse":
            w = label_shift.bbse(confusion, target_pred_dist=mu_t)
        else:
            w = label_shift.rlls(confusion, source_pred_dist=mu_s, target_pred_dist=mu_t, reg=2e-6)
        errors.append(float(np.max(np.abs(np.asarray(w) - w_true))))
    # Sampling error shrinks like 1/sqrt(n): 100 times the sample, about a tenth the error.
    assert errors[1] < errors[0] / 3, errors
    assert errors[1] < 0.1, errors


# --- RLLS -------------------------------------------------------------------------------


@needs_cvxpy
@pytest.mark.parametrize("reg", [1e-3, 2e-6])
@pytest.mark.parametrize("k", [10, 100, 228])
@pytest.mark.parametrize("noisy", [True, False], ids=["noisy", "exact"])
def test_rlls_agrees_with_cvxpy(k, reg, noisy):
    seed = {10: 1, 100: 0, 228: 2}[k]
    confusion, mu_s, mu_t = realistic_instance(k, seed, noisy=noisy)
    b = mu_t - mu_s
    reference = cvxpy_theta(confusion, b, reg)
    solution = label_shift.solve_rlls(confusion, b, reg=reg)
    w = label_shift.rlls(confusion, source_pred_dist=mu_s, target_pred_dist=mu_t, reg=reg)
    np.testing.assert_allclose(np.asarray(w), 1 + np.asarray(solution.theta), atol=1e-7)
    assert np.max(np.abs(np.asarray(w, np.float64) - (1 + reference))) <= 1e-4
    if noisy:  # sampling noise pushes some weights to the bound: constraints are active
        assert np.sum(np.asarray(solution.theta) == -1.0) >= 1
        assert not bool(solution.closed_form)
    elif reg == 2e-6 or k == 10:  # the zero-residual solution is certified, no iterations
        assert bool(solution.closed_form) and int(solution.iterations) == 0
    else:  # reg exceeds C's small singular values: an interior solution shrunk towards 0
        assert not bool(solution.closed_form) and np.all(np.asarray(solution.theta) > -1)


def test_rlls_zero_solution_when_the_regulariser_dominates():
    confusion, mu_s, mu_t = realistic_instance(10, 0)
    solution = label_shift.solve_rlls(confusion, mu_t - mu_s, reg=10.0)
    assert bool(solution.closed_form)
    np.testing.assert_array_equal(solution.theta, np.zeros(10))
    np.testing.assert_array_equal(
        label_shift.rlls(
            confusion, source_pred_dist=mu_s, target_pred_dist=mu_t, reg=10.0, lam=0.5
        ),
        np.ones(10),
    )


def test_rlls_lambda_mixing():
    confusion, mu_s, mu_t = realistic_instance(10, 1)
    theta = (
        np.asarray(label_shift.rlls(confusion, source_pred_dist=mu_s, target_pred_dist=mu_t)) - 1
    )
    np.testing.assert_allclose(
        label_shift.rlls(confusion, source_pred_dist=mu_s, target_pred_dist=mu_t, lam=0.3),
        1 + 0.3 * theta,
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        label_shift.rlls(confusion, source_pred_dist=mu_s, target_pred_dist=mu_t, lam=0.0),
        np.ones(10),
    )


@needs_cvxpy
@pytest.mark.parametrize("case", ["zero_row", "zero_column", "repeated_column"])
@pytest.mark.parametrize("reg", [1e-3, 2e-6])
def test_rlls_singular_confusion(case, reg):
    confusion, _, mu_t = realistic_instance(20, 3)
    confusion = confusion.astype(np.float64)
    if case == "zero_row":  # class 5 never predicted
        confusion[5] = 0
    elif case == "zero_column":  # class 5 absent from the source sample
        confusion[:, 5] = 0
    else:
        confusion[:, 6] = confusion[:, 5]
    confusion = (confusion / confusion.sum()).astype(np.float32)
    mu_s = confusion.sum(1)
    first = label_shift.solve_rlls(confusion, mu_t - mu_s, reg=reg)
    second = label_shift.solve_rlls(confusion, mu_t - mu_s, reg=reg)
    np.testing.assert_array_equal(first.theta, second.theta)
    theta = np.asarray(first.theta, np.float64)
    assert np.all(np.isfinite(theta)) and np.all(theta >= -1)
    reference = cvxpy_theta(confusion, mu_t - mu_s, reg)
    gap = rlls_objective(confusion, mu_t - mu_s, reg, theta) - rlls_objective(
        confusion, mu_t - mu_s, reg, reference
    )
    assert gap <= 1e-7
    assert np.max(np.abs(theta - reference)) <= 1e-3


def test_rlls_singular_zero_residual_is_the_pseudo_inverse():
    # A class that is never predicted, neither on the source nor on the target: C has a
    # zero row, b has a zero there, and C theta = b has the minimum-norm solution C^+ b.
    confusion, _, _ = realistic_instance(20, 0, noisy=False)
    confusion = confusion.astype(np.float64)
    confusion[5] = 0
    confusion /= confusion.sum()
    rng = np.random.default_rng(0)
    w = rng.uniform(0.5, 2.0, 20)
    mu_t = confusion @ w / (confusion @ w).sum()
    confusion32 = confusion.astype(np.float32)
    b = (mu_t - confusion.sum(1)).astype(np.float32)
    solution = label_shift.solve_rlls(confusion32, b, reg=2e-6)
    assert bool(solution.closed_form)
    expected = np.linalg.pinv(confusion32.astype(np.float64)) @ b
    np.testing.assert_allclose(solution.theta, expected, atol=1e-5)


def test_rlls_vmaps_over_instances():
    instances = [realistic_instance(10, seed) for seed in (1, 4)]
    confusion, mu_s, mu_t = (np.stack(parts) for parts in zip(*instances, strict=True))
    batched = jax.vmap(
        lambda c, s, t: label_shift.rlls(c, source_pred_dist=s, target_pred_dist=t, reg=2e-6)
    )(confusion, mu_s, mu_t)
    for i in range(2):
        np.testing.assert_allclose(
            batched[i],
            label_shift.rlls(
                confusion[i], source_pred_dist=mu_s[i], target_pred_dist=mu_t[i], reg=2e-6
            ),
            atol=1e-5,
        )


# --- oracle, mixing, dispatch -----------------------------------------------------------


def test_oracle_weights_by_hand():
    p = np.array([0.5, 0.25, 0.25, 0.0], np.float32)
    q = np.array([0.25, 0.25, 0.25, 0.25], np.float32)
    np.testing.assert_allclose(label_shift.oracle_weights(p, q), [0.5, 1.0, 1.0, 0.0])
    # The class absent from the source gets 0 before mixing, (1 - lam) after it.
    np.testing.assert_allclose(label_shift.oracle_weights(p, q, lam=0.5), [0.75, 1.0, 1.0, 0.5])
    np.testing.assert_allclose(
        label_shift.mix_weights(jnp.array([0.0, 2.0, 4.0]), 0.25), [0.75, 1.25, 1.75]
    )
    np.testing.assert_array_equal(label_shift.uniform_weights(3), np.ones(3, np.float32))


# --- posterior correction and errors ----------------------------------------------------


def test_posterior_correction_by_hand():
    probs = np.array([[0.5, 0.5, 0.0], [0.2, 0.2, 0.6], [0.0, 0.0, 1.0]], np.float32)
    weights = np.array([1.0, 3.0, 0.0], np.float32)
    expected = np.array([[0.25, 0.75, 0.0], [0.25, 0.75, 0.0], [0.0, 0.0, 1.0]])
    # The last row has all its mass on a zero-weight class: it keeps its probabilities.
    np.testing.assert_allclose(
        label_shift.posterior_correction(probs, weights), expected, atol=1e-7
    )


@settings(max_examples=30, deadline=None)
@given(
    hnp.arrays(np.float32, (6, 4), elements=st.floats(0.0, 1.0, width=32)),
    hnp.arrays(np.float32, (4,), elements=st.floats(0.0, 10.0, width=32)),
)
def test_posterior_correction_rows_are_distributions(raw, weights):
    raw = raw + 1e-3
    probs = raw / raw.sum(axis=1, keepdims=True)
    corrected = np.asarray(label_shift.posterior_correction(probs, weights))
    assert np.all(corrected >= 0)
    np.testing.assert_allclose(corrected.sum(axis=1), 1.0, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([1e-3, 2e-6]), st.floats(0.0, 1.0))
def test_rlls_weights_are_feasible(seed, reg, lam):
    confusion, mu_s, mu_t = realistic_instance(10, seed)
    w = np.asarray(
        label_shift.rlls(confusion, source_pred_dist=mu_s, target_pred_dist=mu_t, reg=reg, lam=lam)
    )
    assert np.all(np.isfinite(w)) and np.all(w >= 1 - lam - 1e-6)


def test_weight_errors_by_hand():
    errors = label_shift.weight_errors(
        jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([1.0, 0.0, 3.0, 5.0])
    )
    assert float(errors["l2"]) == pytest.approx(np.sqrt(5.0))
    assert float(errors["mse"]) == pytest.approx(5.0 / 4)
    assert float(errors["max_abs"]) == pytest.approx(2.0)


# --- jit ---------------------------------------------------------------------------------

_CONF, _MU_S, _MU_T = realistic_instance(10, 1)
_P = np.full(10, 0.1, np.float32)
_MASK = np.array([True, False, True, True, True])


def _estimate_rlls(source_probs, target_probs, reg):
    sample = label_shift.ShiftSample(
        source_probs=source_probs, source_labels=LABELS, target_probs=target_probs
    )
    return label_shift.estimate("rlls", sample, reg=reg)


JITTABLE = {
    "confusion_hard": (label_shift.confusion_matrix, (PROBS, LABELS, _MASK)),
    "confusion_soft": (
        lambda p, y: label_shift.confusion_matrix(p, y, hard=False),
        (PROBS, LABELS),
    ),
    "predicted": (label_shift.predicted_distribution, (PROBS, _MASK)),
    "labels": (lambda y, m: label_shift.label_distribution(y, 3, m), (LABELS, _MASK)),
    "bbse": (lambda c, t: label_shift.bbse(c, target_pred_dist=t), (_CONF, _MU_T)),
    "rlls": (
        lambda c, s, t, r: label_shift.rlls(c, source_pred_dist=s, target_pred_dist=t, reg=r),
        (_CONF, _MU_S, _MU_T, 1e-3),
    ),
    "solve_rlls": (lambda c, b: label_shift.solve_rlls(c, b, reg=2e-6), (_CONF, _MU_T - _MU_S)),
    "oracle": (lambda p, q, lam: label_shift.oracle_weights(p, q, lam=lam), (_P, _MU_T, 0.5)),
    "mix": (label_shift.mix_weights, (_MU_T, 0.5)),
    "estimate": (_estimate_rlls, (PROBS, PROBS[::-1], 2e-6)),
    "rebase": (
        lambda w, f, t: label_shift.rebase_weights(w, from_dist=f, to_dist=t, lam=0.5),
        (_MU_T, _MU_S, _P),
    ),
    "posterior": (label_shift.posterior_correction, (PROBS, np.array([1.0, 2.0, 0.5]))),
    "errors": (label_shift.weight_errors, (_MU_S, _MU_T)),
}


@pytest.mark.parametrize("name", sorted(JITTABLE))
def test_jit_matches_eager(name):
    fn, args = JITTABLE[name]
    eager = fn(*args)
    jitted = jax.jit(fn)(*args)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), eager, jitted)


def test_uniform_weights_under_jit():
    np.testing.assert_array_equal(jax.jit(lambda: label_shift.uniform_weights(4))(), np.ones(4))


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: label_shift.confusion_matrix(PROBS, LABELS[:4]), "labels"),
        (lambda: label_shift.confusion_matrix(PROBS * 2, LABELS), "probs"),
        (lambda: label_shift.confusion_matrix(PROBS, LABELS + 1), "labels"),
        (lambda: label_shift.confusion_matrix(PROBS, LABELS.astype(np.float32)), "labels"),
        (lambda: label_shift.confusion_matrix(PROBS, LABELS, np.ones(4, bool)), "mask"),
        (lambda: label_shift.predicted_distribution(PROBS[0]), "probs"),
        (lambda: label_shift.label_distribution(LABELS, 0), "num_classes"),
        (lambda: label_shift.bbse(C3, target_pred_dist=_MU_T), "target_pred_dist"),
        (lambda: label_shift.bbse(C3[:2], target_pred_dist=C3[0]), "confusion"),
        (lambda: label_shift.bbse(C3 * 3, target_pred_dist=C3.sum(1)), "confusion"),
        (
            lambda: label_shift.rlls(
                _CONF, source_pred_dist=_MU_S, target_pred_dist=_MU_T, reg=-1e-3
            ),
            "reg",
        ),
        (
            lambda: label_shift.rlls(_CONF, source_pred_dist=_MU_S[:5], target_pred_dist=_MU_T),
            "source_pred_dist",
        ),
        (
            lambda: label_shift.rlls(_CONF, source_pred_dist=_MU_S, target_pred_dist=_MU_T * 2),
            "target_pred_dist",
        ),
        (
            lambda: label_shift.rlls(
                _CONF, source_pred_dist=_MU_S, target_pred_dist=_MU_T, lam=1.5
            ),
            "lam",
        ),
        (
            lambda: label_shift.rlls(
                _CONF, source_pred_dist=_MU_S, target_pred_dist=_MU_T, max_iter=0
            ),
            "max_iter",
        ),
        (lambda: label_shift.oracle_weights(_P, _MU_T[:3]), "target_label_dist"),
        (lambda: label_shift.posterior_correction(PROBS, np.ones(4)), "probs"),
        (lambda: label_shift.posterior_correction(PROBS, -np.ones(3)), "weights"),
        (lambda: label_shift.weight_errors(jnp.ones(3), jnp.ones(4)), "w_true"),
        (lambda: _estimate_rlls(PROBS, PROBS, -1.0), "reg"),
        (lambda: label_shift.mix_weights(_MU_T, 1.5), "lam"),
        (lambda: label_shift.bbse(C3, target_pred_dist=C3.sum(1), rcond=-1.0), "rcond"),
        (lambda: label_shift.confusion_matrix(PROBS, LABELS, -np.ones(5)), "mask"),
        (lambda: label_shift.confusion_matrix(PROBS, LABELS, np.full(5, np.nan)), "mask"),
        (lambda: label_shift.label_distribution(LABELS, _MASK, 3), "num_classes"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# --- traps: calls that used to run with wrong numbers now fail ------------------------------


def test_distributions_are_keyword_only():
    # rlls(C, mu_t, mu_s) used to run and return entirely different weights.
    with pytest.raises(TypeError, match="positional"):
        label_shift.rlls(_CONF, _MU_T, _MU_S)
    with pytest.raises(TypeError, match="positional"):
        label_shift.rlls(_CONF, _MU_S, _MU_T, reg=1e-3)
    with pytest.raises(TypeError, match="positional"):
        label_shift.bbse(_CONF, _MU_T)
    with pytest.raises(TypeError, match="positional"):
        label_shift.mlls(PROBS, np.full(3, 1 / 3, np.float32))


def test_label_distribution_has_one_argument_order():
    with pytest.raises(ValueError, match=r"num_classes must be .*label_distribution\(labels, num"):
        label_shift.label_distribution(LABELS, _MASK, 3)  # the old pool order
    np.testing.assert_allclose(
        label_shift.label_distribution(LABELS, 3, _MASK), [0.25, 0.5, 0.25], atol=1e-7
    )


# --- row weights ----------------------------------------------------------------------------


def test_row_weights_equal_repeated_rows():
    counts = np.array([2, 0, 1, 3, 1], np.int32)
    repeated = np.repeat(np.arange(5), counts)
    for soft in (False, True):
        np.testing.assert_allclose(
            label_shift.confusion_matrix(PROBS, LABELS, counts, hard=not soft),
            label_shift.confusion_matrix(PROBS[repeated], LABELS[repeated], hard=not soft),
            atol=1e-7,
        )
    np.testing.assert_allclose(
        label_shift.predicted_distribution(PROBS, counts.astype(np.float32)),
        label_shift.predicted_distribution(PROBS[repeated]),
        atol=1e-7,
    )
    np.testing.assert_allclose(
        label_shift.label_distribution(LABELS, 3, counts),
        label_shift.label_distribution(LABELS[repeated], 3),
        atol=1e-7,
    )


# --- MLLS -----------------------------------------------------------------------------------


def test_mlls_two_classes_by_hand():
    # 7 rows with p = (0.8, 0.2), 3 with (0.2, 0.8), under pi_s = (1/2, 1/2). The likelihood
    # of Q = (t, 1 - t) is 0.7 log u + 0.3 log(1 - u) with u = 0.2 + 0.6 t, maximal at
    # u = 0.7: t = 5/6, so w = Q / pi_s = (5/3, 1/3).
    probs = np.array([[0.8, 0.2]] * 7 + [[0.2, 0.8]] * 3, np.float32)
    half = np.full(2, 0.5, np.float32)
    np.testing.assert_allclose(
        label_shift.mlls(probs, source_prior=half, tol=1e-9), [5 / 3, 1 / 3], rtol=1e-5
    )
    # One-hot posteriors: EM stops at the predicted distribution in one step.
    onehot = np.eye(3, dtype=np.float32)[[0, 0, 1, 2]]
    prior = np.array([0.5, 0.25, 0.25], np.float32)
    np.testing.assert_allclose(
        label_shift.mlls(onehot, source_prior=prior), [1.0, 1.0, 1.0], rtol=1e-6
    )
    # Row weights: dropping the last row gives Q = (2/3, 1/3, 0).
    mask = np.array([True, True, True, False])
    np.testing.assert_allclose(
        label_shift.mlls(onehot, source_prior=prior, target_mask=mask),
        [4 / 3, 4 / 3, 0.0],
        rtol=1e-6,
        atol=1e-7,
    )
    # A class the source prior lacks is not identified: w = 1 there.
    w = label_shift.mlls(probs, source_prior=np.array([1.0, 0.0], np.float32))
    assert float(w[1]) == 1.0


def _logit_model(key, prior, n, *, separation=2.0):
    """Labels y ~ prior and z ~ N(separation e_y, I): the log-likelihood is separation * z_y."""
    k = prior.shape[0]
    ky, kz = jax.random.split(key)
    y = jax.random.categorical(ky, jnp.log(prior), shape=(n,))
    z = jax.random.normal(kz, (n, k)) + separation * jax.nn.one_hot(y, k)
    return y, separation * z


def synthetic_sample(key, p, q, n, *, temperature=1.0, bias=0.0):
    """A classifier with posteriors softmax((log-lik + log P) / temperature + bias).

    temperature = 1, bias = 0 is the Bayes posterior under P (calibrated); a temperature
    below 1 is over-confident.
    """
    ks, kt = jax.random.split(key)
    ys, ls_ = _logit_model(ks, p, n)
    yt, lt = _logit_model(kt, q, n)

    def classifier(loglik):
        return jax.nn.softmax((loglik + jnp.log(p)) / temperature + bias, axis=-1)

    return label_shift.ShiftSample(
        source_probs=classifier(ls_),
        source_labels=ys,
        target_probs=classifier(lt),
        target_labels=yt,
    )


K = 10
_P10 = jnp.full((K,), 1.0 / K)
_Q10 = jnp.asarray(np.random.default_rng(0).dirichlet(np.ones(K)), jnp.float32)
_W10 = _Q10 / _P10
_BIAS10 = jnp.asarray(np.random.default_rng(1).normal(size=K) * 0.5, jnp.float32)


def _error(w):
    return float(jnp.linalg.norm(w - _W10))


# Every sample below has 20,000 source and target rows and row weights of ones, so the
# tests share one compilation per estimator (resampled counts replace the ones).
_ONES = jnp.ones(20_000)
_CAL = synthetic_sample(jax.random.PRNGKey(0), _P10, _Q10, 20_000).replace(source_mask=_ONES)
# Over-confident (temperature 1/4) with a class bias: the BCTS family holds the exact
# correction, so calibrated MLLS does as well as on the calibrated classifier.
_MIS = synthetic_sample(
    jax.random.PRNGKey(1), _P10, _Q10, 20_000, temperature=0.25, bias=_BIAS10
).replace(source_mask=_ONES)


def test_mlls_recovers_known_weights_with_a_calibrated_classifier():
    oracle = _error(label_shift.estimate("oracle", _CAL))  # the sampling error alone
    for calibration in ("none", "bcts"):
        error = _error(label_shift.estimate("mlls", _CAL, calibration=calibration))
        assert error < 0.25 and error < 2.5 * oracle, (calibration, error, oracle)


def test_bcts_is_what_makes_mlls_work_on_a_miscalibrated_classifier():
    calibrated = _error(label_shift.estimate("mlls", _MIS))
    uncalibrated = _error(label_shift.estimate("mlls", _MIS, calibration="none"))
    bbse = _error(label_shift.estimate("bbse", _MIS))
    assert calibrated < 0.25, calibrated
    assert uncalibrated > 4 * calibrated, (uncalibrated, calibrated)
    assert calibrated < bbse, (calibrated, bbse)


# --- estimators as plug-ins ---------------------------------------------------------------

_SAMPLE = label_shift.ShiftSample(
    source_probs=PROBS,
    source_labels=LABELS,
    target_probs=PROBS[[0, 2, 2, 3, 4, 2]],
    source_mask=np.array([True, True, True, True, False]),
    target_labels=np.array([0, 2, 2, 1, 1, 2], np.int32),
)


def test_registry_holds_every_estimator_by_config_name():
    assert set(label_shift.ESTIMATORS) == {"none", "bbse", "rlls", "mlls", "oracle"}


def test_estimators_agree_with_the_matrix_functions():
    c = label_shift.confusion_matrix(_SAMPLE.source_probs, LABELS, _SAMPLE.source_mask)
    mu_t = label_shift.predicted_distribution(_SAMPLE.target_probs)
    np.testing.assert_allclose(
        label_shift.estimate("bbse", _SAMPLE),
        label_shift.bbse(c, target_pred_dist=mu_t),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        label_shift.estimate("rlls", _SAMPLE, reg=1e-2),
        label_shift.rlls(c, source_pred_dist=c.sum(1), target_pred_dist=mu_t, reg=1e-2),
        rtol=1e-6,
    )
    c_soft = label_shift.confusion_matrix(PROBS, LABELS, _SAMPLE.source_mask, hard=False)
    mu_soft = label_shift.predicted_distribution(_SAMPLE.target_probs, hard=False)
    np.testing.assert_allclose(
        label_shift.estimate("bbse", _SAMPLE, hard=False),
        label_shift.bbse(c_soft, target_pred_dist=mu_soft),
        rtol=1e-5,
    )
    np.testing.assert_array_equal(label_shift.estimate("none", _SAMPLE), np.ones(3))


def test_oracle_estimator_by_hand():
    # Source rows 0..3: labels (0, 0, 2, 1) -> P = (1/2, 1/4, 1/4); target labels
    # (0, 2, 2, 1, 1, 2) -> Q = (1/6, 1/3, 1/2); w = Q / P.
    np.testing.assert_allclose(
        label_shift.estimate("oracle", _SAMPLE), [1 / 3, 4 / 3, 2.0], rtol=1e-6
    )
    # Class 1 absent from the source rows: not identified, w = 1.
    absent = _SAMPLE.replace(source_mask=np.array([True, True, True, False, False]))
    assert float(label_shift.estimate("oracle", absent)[1]) == 1.0
    with pytest.raises(ValueError, match="target_labels"):
        label_shift.estimate("oracle", _SAMPLE.replace(target_labels=None))


def test_a_new_estimator_is_a_function_passed_directly():
    def target_prior_ratio(sample, *, smoothing=0.0):
        """Q(pred) / P(pred) with hard predictions: a naive estimator."""
        k = sample.num_classes
        mu_t = label_shift.predicted_distribution(sample.target_probs, sample.target_mask)
        mu_s = label_shift.predicted_distribution(sample.source_probs, sample.source_mask)
        return (mu_t + smoothing / k) / (mu_s + smoothing / k)

    registry = dict(label_shift.ESTIMATORS)
    w = label_shift.estimate(target_prior_ratio, _SAMPLE, smoothing=0.3)
    mu_s = np.array([1, 2, 1]) / 4  # predictions of the source rows 0..3: (0, 1, 2, 1)
    mu_t = np.array([2, 1, 3]) / 6  # of the target rows: (0, 2, 2, 1, 0, 2)
    np.testing.assert_allclose(w, (mu_t + 0.1) / (mu_s + 0.1), rtol=1e-6)
    assert label_shift.ESTIMATORS == registry  # nothing registered globally
    with pytest.raises(ValueError, match="'target_prior_ratio' takes no option 'reg'"):
        label_shift.estimate(target_prior_ratio, _SAMPLE, reg=1.0)
    # Later errors list the built-in names only.
    with pytest.raises(ValueError, match="'none', 'bbse', 'rlls', 'mlls', 'oracle'$"):
        label_shift.estimate("em", _SAMPLE)
    # The user's function gets its sample checked before it runs.
    with pytest.raises(ValueError, match="target_probs must sum to 1"):
        label_shift.estimate(
            target_prior_ratio, _SAMPLE.replace(target_probs=_SAMPLE.target_probs * 2)
        )

    def bad(sample):
        return jnp.ones(4)

    with pytest.raises(ValueError, match="returned by estimator 'bad' must have shape"):
        label_shift.estimate(bad, _SAMPLE)


def test_unknown_options_and_bad_samples_fail_with_one_line():
    with pytest.raises(ValueError, match="'bbse' takes no option 'reg'; it takes: hard, rcond"):
        label_shift.estimate("bbse", _SAMPLE, reg=1e-3)
    with pytest.raises(ValueError, match="calibration='platt'"):
        label_shift.estimate("mlls", _SAMPLE, calibration="platt")
    with pytest.raises(ValueError, match="source_labels must lie in"):
        label_shift.estimate("rlls", _SAMPLE.replace(source_labels=LABELS + 1))
    with pytest.raises(ValueError, match="target_probs must have 3 classes"):
        label_shift.estimate("mlls", _SAMPLE.replace(target_probs=np.ones((2, 4)) / 4))
    with pytest.raises(ValueError, match="source_mask must have shape"):
        label_shift.estimate("bbse", _SAMPLE.replace(source_mask=np.ones(3, bool)))
    with pytest.raises(ValueError, match="sample must be a label_shift.ShiftSample"):
        label_shift.estimate("bbse", (PROBS, LABELS, PROBS))


@pytest.mark.parametrize("name", ["bbse", "mlls", "oracle"])  # rlls: JITTABLE["estimate"]
def test_estimators_under_jit_match_eager(name):
    eager = label_shift.estimate(name, _MIS)
    jitted = jax.jit(lambda s: label_shift.estimate(name, s))(_MIS)
    np.testing.assert_allclose(eager, jitted, rtol=1e-4, atol=1e-5)


def test_bootstrap_of_the_weights_under_vmap():
    n = 20_000
    counts = np.random.default_rng(5).multinomial(n, np.full(n, 1.0 / n), size=3)
    counts = jnp.asarray(counts, jnp.float32)

    def one(name, c):
        return label_shift.estimate(name, _MIS.replace(source_mask=c))

    batched = jax.jit(jax.vmap(lambda c: one("mlls", c)))(counts)
    assert batched.shape == (3, K)
    for i in range(3):
        np.testing.assert_allclose(batched[i], one("mlls", counts[i]), rtol=1e-4, atol=1e-5)
    assert float(jnp.max(jnp.std(batched, axis=0))) > 0  # the replicates differ
    # Resampled counts equal repeated rows.
    rows = np.repeat(np.arange(n), np.asarray(counts[0]).astype(int))
    repeated = _MIS.replace(
        source_probs=_MIS.source_probs[rows], source_labels=_MIS.source_labels[rows]
    )
    np.testing.assert_allclose(
        one("bbse", counts[0]), label_shift.estimate("bbse", repeated), rtol=1e-4, atol=1e-5
    )


def test_rebase_weights_by_hand():
    w = jnp.array([2.0, 0.5, 1.0, 3.0])
    p_from = jnp.array([0.25, 0.5, 0.25, 0.0])
    p_to = jnp.array([0.5, 0.25, 0.25, 0.0])
    # Q = w * P_from = (0.5, 0.25, 0.25, ?): against P_to that is (1, 1, 1); class 3 is not
    # identified (P_from = 0) and gets the neutral 1.
    rebased = label_shift.rebase_weights(w, from_dist=p_from, to_dist=p_to)
    np.testing.assert_allclose(rebased, [1.0, 1.0, 1.0, 1.0])
    # Mixing comes after rebasing: (1 - lam) + lam * rebased.
    w2 = jnp.array([2.0, 0.5, 1.0, 3.0])
    p_to2 = jnp.array([0.25, 0.25, 0.5, 0.0])  # Q/P_to2 = (2, 1, 0.5)
    np.testing.assert_allclose(
        label_shift.rebase_weights(w2, from_dist=p_from, to_dist=p_to2, lam=0.3),
        [0.7 + 0.3 * 2.0, 1.0, 0.7 + 0.3 * 0.5, 1.0],
        rtol=1e-6,
    )
    # No estimate (all-zero sample distribution): weights 1 against any set.
    np.testing.assert_allclose(
        label_shift.rebase_weights(w, from_dist=jnp.zeros(4), to_dist=p_to, lam=0.7), 1.0
    )
    with pytest.raises(TypeError):
        label_shift.rebase_weights(w, p_from, p_to)  # the distributions are keyword-only
