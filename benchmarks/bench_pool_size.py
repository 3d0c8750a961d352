"""Round time against pool size: is a round linear in the pool?

    python benchmarks/bench_pool_size.py [--sizes 1000 3000 10000 30000 100000] [--rounds 3]

For each size N, an ``.npz`` of N random 28x28 uint8-valued images (10 classes, balanced)
and N / 2 test images runs through ``python -m launch.replicate``'s loop with the MNIST CNN:
dirichlet_target shift with ``dataset_cap`` N (half warm start, half pool), a held-out and a
target sample as configured, ``--rounds`` rounds buying 20% of the pool, 1 initial and 1
fine-tuning epoch, RLLS, medial maxent. Printed per size: the seconds of the last round by
phase (query, fine-tuning, prediction, estimation, evaluation: no compilation after round 1),
its total, the total per 1,000 pool examples, and the ratio of that to the smallest size's
(1.0 = exactly linear). Fine-tuning grows with the labeled set, which is a fixed share of N
here; prediction covers the pool, the target sample and the test split. The pixels are
noise, so the accuracy means nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import digits  # noqa: E402
from launch import replicate  # noqa: E402

PHASES = ("selection", "finetune", "prediction", "estimation", "evaluation")


def _images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.integers(0, 256, (n, 28, 28, 1)).astype(np.float32) / 255.0
    return x, np.arange(n) % 10


def run_size(n: int, rounds: int, tmp: str) -> dict[str, float]:
    rng = np.random.default_rng(n)
    x_train, y_train = _images(rng, n)
    x_test, y_test = _images(rng, n // 2)
    path = os.path.join(tmp, f"pool{n}.npz")
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    config = digits.get_config()
    config.dataset.name = "npz"
    config.dataset.path = path
    config.shift.dataset_cap = n
    config.shift.test_size = n // 4
    config.query.num_batches = rounds
    config.query.sample_prop = 0.2
    config.train.initial_epochs = 1
    config.train.partial_epochs = 1
    config.train.batch_size = 128
    config.h0_cache_dir = os.path.join(tmp, f"h0_{n}")
    config.compilation_cache_dir = os.path.join(tmp, "compilation_cache")
    start = time.perf_counter()
    history = replicate.run(config, os.path.join(tmp, f"run{n}"), verbose=False)
    last = history[-1]
    seconds = {p: float(last.get(f"seconds_{p}", 0.0)) for p in PHASES}
    seconds["round"] = sum(seconds.values())
    seconds["run"] = time.perf_counter() - start
    seconds["compilations"] = float(last.get("compilations", 0))
    seconds["pool"] = float(n - n // 2)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 3000, 10000, 30000, 100000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            rows.append((n, run_size(n, args.rounds, tmp)))
            print(f"N={n}: last round {rows[-1][1]['round']:.2f}s", flush=True)
    header = " ".join(f"{p:>10}" for p in PHASES)
    columns = f"{'round s':>8} {'s/1k pool':>9} {'ratio':>6} {'compiles':>8}"
    print(f"\n{'N':>7} {'pool':>6} {header} {columns}")
    base = None
    for n, s in rows:
        per_k = s["round"] / (s["pool"] / 1000)
        base = per_k if base is None else base
        phases = " ".join(f"{s[p]:>10.3f}" for p in PHASES)
        print(
            f"{n:>7} {int(s['pool']):>6} {phases} {s['round']:>8.2f} {per_k:>9.3f}"
            f" {per_k / base:>6.2f} {int(s['compilations']):>8}"
        )


if __name__ == "__main__":
    main()
