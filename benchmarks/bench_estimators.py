"""Weight-estimation error of MLLS (+BCTS / +TS / uncalibrated), BBSE and RLLS, by hand.

    python benchmarks/bench_estimators.py [--replicates 32] [--rows 2000] [--k 10] [--seed 0]

A synthetic label-shift benchmark with known weights. Class y has logit features
z ~ N(s e_y, I_k) (separation s = 2, about 66% accuracy at k = 10), whose log-likelihood
is s z_y up to a constant; the Bayes posterior under the source prior P is
softmax(s z + log P). The classifier reports softmax((s z + log P) / T + b):

* calibrated: T = 1, b = 0;
* over-confident: T = 1/4 (four times the logits);
* over-confident and biased: T = 1/4 and b ~ N(0, 0.5^2) per class (a network whose
  implicit prior is off, as after training on a different class mix).

P is uniform, Q ~ Dirichlet(1) (fixed by the seed), w = Q / P. Each replicate draws
``--rows`` labeled source rows (the held-out sample the estimators calibrate and build the
confusion matrix on) and as many unlabeled target rows; the estimators run vmapped over
the replicates (one jitted call per estimator). Printed: the mean and standard deviation
over replicates of ||w_est - w||_2, and the seconds of one vmapped call after compilation
(compile time apart). "oracle" (the true Q_sample / P_sample of each replicate) is the
sampling-error floor.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alsa_jax import label_shift  # noqa: E402

ESTIMATORS = {
    "MLLS+BCTS": ("mlls", {"calibration": "bcts"}),
    "MLLS+TS": ("mlls", {"calibration": "ts"}),
    "MLLS (none)": ("mlls", {"calibration": "none"}),
    "BBSE": ("bbse", {}),
    "RLLS": ("rlls", {}),
    "oracle": ("oracle", {}),
}


def draw(key, prior, n, separation):
    """Labels y ~ prior and the log-likelihood separation * z, z ~ N(separation e_y, I)."""
    k = prior.shape[0]
    ky, kz = jax.random.split(key)
    y = jax.random.categorical(ky, jnp.log(prior), shape=(n,))
    z = jax.random.normal(kz, (n, k)) + separation * jax.nn.one_hot(y, k)
    return y, separation * z


def replicate(key, p, q, n, *, temperature, bias, separation):
    ks, kt = jax.random.split(key)
    ys, ls = draw(ks, p, n, separation)
    yt, lt = draw(kt, q, n, separation)

    def classifier(loglik):
        return jax.nn.softmax((loglik + jnp.log(p)) / temperature + bias, axis=-1)

    return label_shift.ShiftSample(
        source_probs=classifier(ls),
        source_labels=ys,
        target_probs=classifier(lt),
        target_labels=yt,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=32)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--separation", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    k = args.k
    rng = np.random.default_rng(args.seed)
    p = jnp.full((k,), 1.0 / k, jnp.float32)
    q = jnp.asarray(rng.dirichlet(np.ones(k)), jnp.float32)
    w_true = q / p
    bias = jnp.asarray(rng.normal(size=k) * 0.5, jnp.float32)
    settings = {
        "calibrated": (1.0, jnp.zeros(k)),
        "over-confident": (0.25, jnp.zeros(k)),
        "over-confident+biased": (0.25, bias),
    }
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print(
        f"k={k}, {args.replicates} replicates of {args.rows} source + {args.rows} target rows, "
        f"w = Q/P in [{float(w_true.min()):.2f}, {float(w_true.max()):.2f}]"
    )
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.replicates)
    runs = {}
    for estimator, (name, options) in ESTIMATORS.items():

        def run(samples, name=name, options=options):
            return jax.vmap(lambda s: label_shift.estimate(name, s, **options))(samples)

        runs[estimator] = jax.jit(run)

    header = f"{'setting':<22} {'accuracy':>8} " + " ".join(f"{e:>14}" for e in ESTIMATORS)
    print("\n||w_est - w||_2, mean (sd) over replicates")
    print(header)
    timings = {}
    for setting, (temperature, b) in settings.items():
        samples = jax.jit(
            jax.vmap(
                lambda key, temperature=temperature, b=b: replicate(
                    key,
                    p,
                    q,
                    args.rows,
                    temperature=temperature,
                    bias=b,
                    separation=args.separation,
                )
            )
        )(keys)
        accuracy = float(jnp.mean(samples.source_probs.argmax(-1) == samples.source_labels))
        cells = []
        for estimator, run in runs.items():
            start = time.perf_counter()
            compiled = run.lower(samples).compile()
            compile_s = time.perf_counter() - start
            w = compiled(samples).block_until_ready()
            start = time.perf_counter()
            compiled(samples).block_until_ready()
            timings.setdefault(estimator, (compile_s, time.perf_counter() - start))
            errors = np.asarray(jnp.linalg.norm(w - w_true, axis=-1))
            cells.append(f"{errors.mean():>7.3f} ({errors.std():.3f})")
        print(f"{setting:<22} {accuracy:>8.3f} " + " ".join(f"{c:>14}" for c in cells))
    print("\nseconds per vmapped call (all replicates), after compilation; compile seconds")
    for estimator, (compile_s, run_s) in timings.items():
        print(f"  {estimator:<12} run {run_s:>7.3f}   compile {compile_s:>6.2f}")


if __name__ == "__main__":
    main()
