"""Speed and agreement of the JAX RLLS solver against cvxpy; public entry points as called.

    python benchmarks/bench_rlls.py [--parts cvxpy calls compile] [--ks 10 100 228 555]
        [--regs 1e-3 2e-6] [--seed 0] [--rows 2000] [--call-ks 10 228]

Part "calls": every public entry point called as a user calls it (shape checks on the
host, value checks reduced on the device and read back in one transfer) against the same
function under the user's own ``jax.jit`` (no checks at all: the jitted core), median of
many calls with ``block_until_ready``, at k classes and ``--rows`` rows, and the ratio.

Part "compile": seconds to compile ``label_shift.rlls`` alone and under ``jax.vmap`` over
32 instances, per k.

Part "cvxpy" (the original benchmark):
For each k and reg it builds one realistic instance (the confusion of a 70-90% accurate
classifier times a Dirichlet source distribution, mu_t from a Dirichlet target with
multinomial sampling noise), times cvxpy on the original's problem (median of a few
solves, default tolerances) and the jitted ``label_shift.rlls`` (median of many calls
with ``block_until_ready``; compile time reported apart, once per k since reg is traced),
and prints k, reg, the two times, the speed-up, max |w_jax - w_cvxpy| against the default
cvxpy solve and against a tight one (tolerances 1e-12 on the problem scaled to
||C||_2 = 1, the same problem), and the solver's Newton iterations and Cholesky
factorisations inside them. Clarabel's default tolerances leave errors up to ~1e-3 in w
on these problems; the tight solve is the reference.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cvxpy as cp  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from alsa_jax import acquisition, label_shift, metrics, selection  # noqa: E402

TIGHT = dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-10, max_iter=500)


def instance(k: int, seed: int, *, accuracy=(0.7, 0.9), p_alpha=2.0, q_alpha=1.0, n_target=None):
    """(C, mu_s, mu_t) as float32: C = C_cond diag(p), mu_t = multinomial(C_cond q) / n."""
    rng = np.random.default_rng(seed)
    hit = rng.uniform(*accuracy, size=k)
    cond = np.zeros((k, k))
    for j in range(k):
        miss = rng.dirichlet(np.full(k - 1, 0.3)) * (1.0 - hit[j])
        cond[:, j] = np.insert(miss, j, hit[j])
    p = rng.dirichlet(np.full(k, p_alpha))
    q = rng.dirichlet(np.full(k, q_alpha))
    confusion = cond * p[None, :]
    n = n_target or 20 * k
    mu_t = rng.multinomial(n, cond @ q) / n
    return (
        confusion.astype(np.float32),
        confusion.sum(1).astype(np.float32),
        mu_t.astype(np.float32),
    )


def cvxpy_weights(confusion, mu_s, mu_t, reg, *, tight=False):
    """The original's cvxpy problem; ``tight`` solves it scaled to ||C||_2 = 1 at 1e-12."""
    c = np.asarray(confusion, np.float64)
    b = np.asarray(mu_t, np.float64) - np.asarray(mu_s, np.float64)
    scale = 1.0 / np.linalg.norm(c, 2) if tight else 1.0
    theta = cp.Variable(c.shape[1])
    objective = cp.norm(scale * c @ theta - scale * b) + reg * scale * cp.norm(theta)
    problem = cp.Problem(cp.Minimize(objective), [theta >= -1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problem.solve(solver=cp.CLARABEL, **(TIGHT if tight else {}))
    return 1.0 + theta.value


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def compare_cvxpy(args) -> None:
    solve = jax.jit(
        lambda c, s, t, reg: label_shift.rlls(c, source_pred_dist=s, target_pred_dist=t, reg=reg)
    )
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, cvxpy {cp.__version__}")
    header = (
        f"{'k':>5} {'reg':>7} {'cvxpy ms':>9} {'jax ms':>8} {'speed-up':>9} {'compile s':>9} "
        f"{'|dw| default':>12} {'|dw| tight':>10} {'iters':>5} {'chol':>4}"
    )
    print(header)
    for k in args.ks:
        confusion, mu_s, mu_t = instance(k, args.seed)
        args_jax = tuple(jax.device_put(x) for x in (confusion, mu_s, mu_t))
        # reg is traced, so one compilation per k serves every reg.
        start = time.perf_counter()
        solve.lower(*args_jax, args.regs[0]).compile()
        compile_s = time.perf_counter() - start
        for reg in args.regs:
            problem = (confusion, mu_s, mu_t, reg)
            w_cvxpy = cvxpy_weights(*problem)
            w_tight = cvxpy_weights(*problem, tight=True)
            cvxpy_ms = median_ms(partial(cvxpy_weights, *problem), args.cvxpy_repeats)
            w_jax = np.asarray(solve(*args_jax, reg).block_until_ready(), np.float64)
            run = partial(solve, *args_jax, reg)
            jax_ms = median_ms(lambda run=run: run().block_until_ready(), args.jax_repeats)
            solution = label_shift.solve_rlls(confusion, mu_t - mu_s, reg=reg)
            print(
                f"{k:>5} {reg:>7.0e} {cvxpy_ms:>9.1f} {jax_ms:>8.3f} {cvxpy_ms / jax_ms:>8.0f}x "
                f"{compile_s:>9.2f} {np.max(np.abs(w_jax - w_cvxpy)):>12.1e} "
                f"{np.max(np.abs(w_jax - w_tight)):>10.1e} {int(solution.iterations):>5} "
                f"{int(solution.factorizations):>4}",
                flush=True,
            )


def entry_points(k: int, n: int, seed: int) -> dict:
    """name -> (function, args) for every public entry point timed by ``compare_calls``."""
    rng = np.random.default_rng(seed)
    confusion, mu_s, mu_t = (jax.device_put(x) for x in instance(k, seed))
    probs = jax.device_put(rng.dirichlet(np.full(k, 0.3), size=n).astype(np.float32))
    target = jax.device_put(rng.dirichlet(np.full(k, 0.3), size=n).astype(np.float32))
    labels = jax.device_put(rng.integers(0, k, n).astype(np.int32))
    mask = jax.device_put(rng.random(n) < 0.5)
    weights = jax.device_put(rng.uniform(0.2, 3.0, k).astype(np.float32))
    scores = jax.device_put(rng.random(n).astype(np.float32))
    features = jax.device_put(rng.normal(size=(n, 64)).astype(np.float32))
    key = jax.random.PRNGKey(seed)
    sample = label_shift.ShiftSample(
        source_probs=probs, source_labels=labels, target_probs=target, source_mask=mask
    )
    ctx = acquisition.QueryContext(
        key=key, probs=probs, available=mask, weights=weights, features=features
    )
    budget = n // 20
    return {
        "label_shift.confusion_matrix": (label_shift.confusion_matrix, (probs, labels, mask)),
        "label_shift.bbse": (
            lambda c, t: label_shift.bbse(c, target_pred_dist=t),
            (confusion, mu_t),
        ),
        "label_shift.rlls": (
            lambda c, s, t: label_shift.rlls(c, source_pred_dist=s, target_pred_dist=t),
            (confusion, mu_s, mu_t),
        ),
        "label_shift.estimate bbse": (lambda s: label_shift.estimate("bbse", s), (sample,)),
        "label_shift.estimate rlls": (lambda s: label_shift.estimate("rlls", s), (sample,)),
        "label_shift.estimate mlls": (lambda s: label_shift.estimate("mlls", s), (sample,)),
        "label_shift.posterior_correction": (
            label_shift.posterior_correction,
            (probs, weights),
        ),
        "acquisition.entropy": (acquisition.entropy, (probs,)),
        "acquisition.margin": (acquisition.margin, (probs,)),
        "acquisition.choose maxent": (
            lambda c: acquisition.choose("maxent", c, budget, medial_lambda=0.5),
            (ctx,),
        ),
        "acquisition.choose badge": (lambda c: acquisition.choose("badge", c, budget), (ctx,)),
        "selection.top_k": (lambda s, a: selection.top_k(s, a, budget), (scores, mask)),
        "selection.diversified_top_k": (
            lambda s, a, y, w: selection.diversified_top_k(s, a, y, w, budget, 0.5),
            (scores, mask, labels, weights),
        ),
        "metrics.classification_metrics": (metrics.classification_metrics, (probs, labels)),
    }


def _ready(fn, fn_args):
    return jax.block_until_ready(fn(*fn_args))


def compare_calls(args) -> None:
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print(f"{'entry point':<34} {'k':>4} {'as called ms':>12} {'jitted ms':>10} {'ratio':>6}")
    for k in args.call_ks:
        for name, (fn, fn_args) in entry_points(k, args.rows, args.seed).items():
            jitted = jax.jit(fn)
            jax.block_until_ready(fn(*fn_args))  # compile both before timing
            jax.block_until_ready(jitted(*fn_args))
            called = median_ms(partial(_ready, fn, fn_args), args.call_repeats)
            core = median_ms(partial(_ready, jitted, fn_args), args.call_repeats)
            print(
                f"{name:<34} {k:>4} {called:>12.3f} {core:>10.3f} {called / core:>6.2f}", flush=True
            )


def compare_compile(args) -> None:
    def rlls(c, s, t):
        return label_shift.rlls(c, source_pred_dist=s, target_pred_dist=t)

    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print(f"{'k':>5} {'compile s':>10} {'vmap(32) compile s':>19}")
    for k in args.ks:
        parts = [instance(k, args.seed + i) for i in range(32)]
        single = tuple(jax.device_put(x) for x in parts[0])
        batched = tuple(jax.device_put(np.stack(x)) for x in zip(*parts, strict=True))
        start = time.perf_counter()
        jax.jit(rlls).lower(*single).compile()
        alone = time.perf_counter() - start
        start = time.perf_counter()
        jax.jit(jax.vmap(rlls)).lower(*batched).compile()
        under_vmap = time.perf_counter() - start
        print(f"{k:>5} {alone:>10.2f} {under_vmap:>19.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["calls", "compile", "cvxpy"])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 100, 228, 555])
    parser.add_argument("--regs", type=float, nargs="+", default=[1e-3, 2e-6])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cvxpy-repeats", type=int, default=5)
    parser.add_argument("--jax-repeats", type=int, default=200)
    parser.add_argument("--call-ks", type=int, nargs="+", default=[10, 228])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--call-repeats", type=int, default=200)
    args = parser.parse_args()
    for part in args.parts:
        {"cvxpy": compare_cvxpy, "calls": compare_calls, "compile": compare_compile}[part](args)
        print()


if __name__ == "__main__":
    main()
