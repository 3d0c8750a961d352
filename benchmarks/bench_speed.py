"""Speed of a whole run, cold and with a warm compilation cache: phases, compilation, images/s.

    python benchmarks/bench_speed.py [--data digits28.npz] [--cap 3000] [--rounds 5]
        [--stacked 8]

The experiment of the side-by-side comparison with the original code: 28x28 digits (an npz
of ``x`` [n, 28, 28(, 1)] and ``y``; without ``--data``, random images of that shape, so
only the timings mean anything), the MNIST CNN, dataset_cap ``--cap``, dirichlet_mix,
``--rounds`` rounds buying 20% of the pool, 3 initial + 2 fine-tuning epochs, batch 128 /
512, RLLS re-estimated every round, importance-weighted training, maxent with class
balance (``diversify=guess``), the original's uncorrected posteriors.

Each run is a fresh process (so JAX's in-memory caches start empty) doing setup, h0, round
0 and the rounds through :mod:`alsa_jax.experiment`: first with an empty persistent
compilation cache (cold), then with the cache the first run filled (warm). Printed: the
process's wall seconds (without the ``--stacked`` comparison that follows the warm run),
the seconds from the start of the process to the end of the last round, seconds and XLA
compilations per phase (``compiled`` = programs
XLA compiled; ``hits`` = programs loaded from the persistent cache), then the training
and prediction throughput measured after the run on compiled programs, and with
``--stacked S`` S seeds trained in one vmapped loop (``train.fit_stacked``) against S
sequential ``train.fit`` calls.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def anchor_config(data: str, cap: int, rounds: int):
    from configs import digits

    config = digits.get_config()
    config.dataset.name = "npz"
    config.dataset.path = data
    config.model.name = "cnn"
    config.shift.strategy = "dirichlet_mix"
    config.shift.dataset_cap = cap
    config.shift.warmstart_ratio = 1.0
    config.shift.holdout_fraction = 0.0
    config.shift.target_fraction = 0.0
    config.query.num_batches = rounds
    config.query.sample_prop = 0.2
    config.query.strategy = "maxent"
    config.query.diversify = "guess"
    t = config.train
    t.initial_epochs, t.partial_epochs, t.batch_size, t.eval_batch_size = 3, 2, 128, 512
    t.learning_rate = t.finetune_learning_rate = 0.01
    ls = config.label_shift
    ls.estimator, ls.iterative, ls.reweight_all_labeled = "rlls", True, True
    ls.posterior_correction_scoring = ls.posterior_correction_eval = True
    ls.calibrated_correction, ls.importance_weighting = False, True
    return config


def child(args: argparse.Namespace) -> dict:
    """One run in this process; returns its figures."""
    started = time.perf_counter()
    import jax
    import numpy as np

    from alsa_jax import compilation, experiment, train
    from launch import replicate

    compilation.use_persistent_cache(args.cache)
    phases: dict[str, dict[str, float]] = {}

    def phase(name, fn):
        with compilation.CompileCounter() as counter:
            start = time.perf_counter()
            out = jax.block_until_ready(fn())
            seconds = time.perf_counter() - start
        entry = phases.setdefault(
            name, {"seconds": 0.0, "compiled": 0, "hits": 0, "compile_seconds": 0.0}
        )
        entry["seconds"] += seconds
        entry["compiled"] += counter.compiled
        entry["hits"] += counter.cache_hits
        entry["compile_seconds"] += counter.seconds
        return out

    config = anchor_config(args.data, args.cap, args.rounds)
    options = replicate.options_of(config)
    exp = phase("setup", lambda: experiment.setup(options))
    state = phase("setup", lambda: experiment.initial_state(exp))
    state = state.replace(train=phase("h0", lambda: experiment.train_initial(exp, state)))
    state, preds, _ = experiment.initial_round(exp, state, phase=lambda n, f: phase(f"0:{n}", f))
    per_round = []
    for r in range(1, args.rounds + 1):
        with compilation.CompileCounter() as counter:
            state, preds, record = experiment.run_round(
                exp, state, preds, r, phase=lambda n, f: phase(n, f)
            )
        per_round.append(counter.compiled)
    run_seconds = time.perf_counter() - started
    accuracy = float(record["accuracy"])

    # Throughput on compiled programs: one more fine-tuning and one more prediction pass.
    rows = int(np.sum(np.asarray(experiment.pool.training_mask(state.pool))))
    key = jax.random.PRNGKey(123)
    start = time.perf_counter()
    jax.block_until_ready(experiment.fit(exp, state, key, initial=False))
    train_rate = rows * options.train.partial_epochs / (time.perf_counter() - start)
    predicted = int(exp.source_rows.shape[0] + exp.target_rows.shape[0] + exp.test_rows.shape[0])
    start = time.perf_counter()
    jax.block_until_ready(experiment.predict(exp, state.train))
    predict_rate = predicted / (time.perf_counter() - start)
    out = {
        "run_seconds": run_seconds,
        "phases": phases,
        "compiled_per_round": per_round,
        "accuracy": accuracy,
        "train_images_per_s": train_rate,
        "predict_images_per_s": predict_rate,
        "train_rows": rows,
    }
    if args.stacked:
        start = time.perf_counter()
        out["stacked"] = stacked_vs_sequential(exp, state, args.stacked, train)
        out["stacked"]["wall_seconds"] = time.perf_counter() - start
    return out


def stacked_vs_sequential(exp, state, seeds: int, train) -> dict:
    """Seconds of ``seeds`` fits on the round's labeled rows: vmapped in one loop vs in turn."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from alsa_jax import experiment

    t = exp.options.train
    rows = np.asarray(experiment.pool.training_mask(state.pool))
    weights = np.asarray(
        experiment.malls.training_weights(
            state.pool,
            exp.source_y,
            experiment.class_weights(exp, state),
            importance_weighting=True,
            all_labeled=True,
        )
    )
    keys = jax.random.split(jax.random.PRNGKey(9), seeds)
    starts = [
        train.create_train_state(jax.random.PRNGKey(s), exp.model, exp.tx, exp.input_shape)
        for s in range(seeds)
    ]
    steps = -(-int(rows.sum()) // t.batch_size)
    lr_fn = t.learning_rate_fn(finetune=True, steps_per_epoch=steps)
    common = dict(epochs=t.partial_epochs, batch_size=t.batch_size)

    def sequential():
        return [
            train.fit(
                starts[s],
                exp.train_step,
                exp.train_images,
                exp.source_y,
                weights,
                rows,
                index=exp.source_rows,
                key=keys[s],
                lr_fn=lr_fn,
                **common,
            )[0]
            for s in range(seeds)
        ]

    stacked_state = jax.tree.map(lambda *leaves: jnp.stack(leaves), *starts)
    tile = lambda a: np.broadcast_to(np.asarray(a), (seeds, *np.shape(a)))  # noqa: E731

    def stacked():
        return train.fit_stacked(
            stacked_state,
            exp.train_step,
            exp.train_images,
            tile(exp.source_y),
            tile(weights),
            tile(rows),
            index=tile(exp.source_rows),
            keys=keys,
            lr_fns=[lr_fn] * seeds,
            **common,
        )[0]

    figures = {}
    for name, fn in (("sequential", sequential), ("stacked", stacked)):
        jax.block_until_ready(fn())  # compile
        start = time.perf_counter()
        jax.block_until_ready(fn())
        figures[f"{name}_seconds"] = time.perf_counter() - start
    figures["seeds"] = seeds
    figures["images"] = seeds * int(rows.sum()) * t.partial_epochs
    return figures


def random_digits(path: str) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 180)
    np.savez(path, x=rng.random((y.size, 28, 28, 1), dtype=np.float32), y=y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="", help="npz with x, y (default: random images)")
    parser.add_argument("--cap", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stacked", type=int, default=0, help="S seeds vmapped vs in turn")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or os.path.join(tmp, "digits28.npz")
        if not args.data:
            random_digits(data)
        cache = os.path.join(tmp, "compilation_cache")
        runs = {}
        for name in ("cold", "warm"):
            command = [sys.executable, os.path.abspath(__file__), "--child", "--cache", cache]
            command += ["--data", data, "--cap", str(args.cap), "--rounds", str(args.rounds)]
            if name == "warm" and args.stacked:
                command += ["--stacked", str(args.stacked)]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            wall = time.perf_counter() - start
            if done.returncode:
                sys.exit(f"the {name} run failed:\n{done.stderr[-3000:]}")
            runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
            # The process's wall time without the seeds comparison that followed the run.
            runs[name]["process_seconds"] = wall - runs[name].get("stacked", {}).get(
                "wall_seconds", 0.0
            )
    report(runs)


def report(runs: dict) -> None:
    cold, warm = runs["cold"], runs["warm"]
    print(f"{'':24}{'cold':>10}{'warm':>10}{'warm/cold':>11}")

    def row(label, a, b, fmt="{:10.2f}"):
        ratio = f"{b / a:11.2f}" if a else f"{'-':>11}"
        print(f"{label:<24}" + fmt.format(a) + fmt.format(b) + ratio)

    row("process wall s", cold["process_seconds"], warm["process_seconds"])
    row("run s (start..round)", cold["run_seconds"], warm["run_seconds"])
    for name in cold["phases"]:
        row(f"  {name} s", cold["phases"][name]["seconds"], warm["phases"][name]["seconds"])
    total = lambda r, f: sum(p[f] for p in r["phases"].values())  # noqa: E731
    row("compile s (all phases)", total(cold, "compile_seconds"), total(warm, "compile_seconds"))
    row("programs compiled", total(cold, "compiled"), total(warm, "compiled"), "{:10d}")
    row("cache hits", total(cold, "hits"), total(warm, "hits"), "{:10d}")
    print("compiled per phase (cold):", {n: p["compiled"] for n, p in cold["phases"].items()})
    print(
        "compiled per round (cold, warm):", cold["compiled_per_round"], warm["compiled_per_round"]
    )
    row("train images/s", cold["train_images_per_s"], warm["train_images_per_s"], "{:10.0f}")
    row("predict images/s", cold["predict_images_per_s"], warm["predict_images_per_s"], "{:10.0f}")
    print(f"final accuracy (cold, warm): {cold['accuracy']:.4f} {warm['accuracy']:.4f}")
    stacked = warm.get("stacked")
    if stacked:
        s, q = stacked["stacked_seconds"], stacked["sequential_seconds"]
        print(
            f"{stacked['seeds']} seeds, one fine-tuning each ({stacked['images']} images): "
            f"sequential {q:.2f} s ({stacked['images'] / q:.0f} img/s), stacked {s:.2f} s "
            f"({stacked['images'] / s:.0f} img/s), sequential/stacked {q / s:.2f}"
        )


if __name__ == "__main__":
    main()
