"""Wall time of the digits default run, split by phase, and XLA compilations per round.

    python benchmarks/bench_replicate.py [--config configs/digits.py] [--seed 0]

Runs the experiment in a fresh temporary workdir (h0 trained, not cached) and prints
per-phase seconds (summed over rounds), the seconds spent compiling, and the number
of XLA compilations in each round (the target is none after the first round).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from launch import replicate  # noqa: E402

COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
compile_seconds = collections.Counter()


def _listen(event: str, duration: float, **_: object) -> None:
    if event in COMPILE_EVENTS:
        compile_seconds[event] += duration


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits.py")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    jax.monitoring.register_event_duration_secs_listener(_listen)
    config = load_config(args.config)
    config.seed = args.seed
    with tempfile.TemporaryDirectory() as tmp:
        config.h0_cache_dir = os.path.join(tmp, "cache")
        start = time.perf_counter()
        history = replicate.run(config, os.path.join(tmp, "run"), verbose=False)
        total = time.perf_counter() - start
    phases = collections.Counter()
    for record in history:
        for name, value in record.items():
            if name.startswith("seconds_"):
                phases[name.removeprefix("seconds_")] += value
    print(f"devices: {jax.devices()}")
    print(f"config: {args.config}  rounds: {len(history) - 1}  total wall: {total:.2f} s")
    print(f"{'phase':<14}{'seconds':>10}{'share':>9}")
    for name, seconds in sorted(phases.items(), key=lambda item: -item[1]):
        print(f"{name:<14}{seconds:>10.3f}{seconds / total:>9.1%}")
    compiling = sum(compile_seconds.values())
    print(f"{'compilation':<14}{compiling:>10.3f}{compiling / total:>9.1%}  (inside the phases)")
    print("XLA compilations per round:", [r["compilations"] for r in history])
    last = history[-1]
    print(
        f"final accuracy {last['accuracy']:.4f}, average class accuracy "
        f"{last['average_class_accuracy']:.4f}, labels paid {last['labels_paid']}"
    )


if __name__ == "__main__":
    main()
