"""S seeds of one config run together (num_parallel_seeds = S) against S runs one after another.

    python benchmarks/bench_seeds.py [--config configs/digits.py] [--seeds 4] \\
        [--override query.num_batches=5 ...]

Each side runs in a fresh process with the persistent compilation cache off and h0 trained
(no cache): ``replicate.run`` for seeds 0..S-1 in turn (the later seeds reuse the first
one's compiled programs) against one ``replicate.run_seeds``. Prints each side's wall
seconds, its per-phase seconds summed over rounds (and seeds), the ratio, and whether
every seed bought the same labels on both sides.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import collections, importlib.util, json, sys, time
sys.path.insert(0, {root!r})
from launch import replicate
spec = importlib.util.spec_from_file_location("bench_config", {config!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config()
for dotted, value in {overrides!r}:
    node = config
    *parents, leaf = dotted.split(".")
    for name in parents:
        node = node[name]
    node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], bool) else value == "True"
config.h0_cache_dir = {cache!r}
config.compilation_cache_dir = "none"
start = time.perf_counter()
if {together!r}:
    config.num_parallel_seeds = {seeds!r}
    histories = replicate.run_seeds(config, {workdir!r}, verbose=False)
else:
    histories = {{}}
    for seed in range({seeds!r}):
        config.seed = seed
        histories[seed] = replicate.run(config, {workdir!r} + f"/seed{{seed}}", verbose=False)
total = time.perf_counter() - start
print(json.dumps({{"seconds": total, "histories": {{str(k): v for k, v in histories.items()}}}}))
"""


def _side(args, together: bool, tmp: str) -> dict:
    name = "together" if together else "sequential"
    code = _CHILD.format(
        root=ROOT,
        config=os.path.abspath(args.config),
        overrides=[tuple(o.split("=", 1)) for o in args.override],
        cache=os.path.join(tmp, f"{name}_h0"),
        together=together,
        seeds=args.seeds,
        workdir=os.path.join(tmp, name),
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode:
        sys.exit(f"the {name} side failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _phases(histories: dict, together: bool) -> dict[str, float]:
    """Seconds per phase summed over rounds and seeds (a stacked round's seconds are
    repeated in every seed's record: counted once)."""
    sums: collections.Counter = collections.Counter()
    for history in histories.values():
        for record in history:
            for key, value in record.items():
                if key.startswith("seconds_"):
                    sums[key[len("seconds_") :]] += value / (len(histories) if together else 1)
    return dict(sums)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits.py")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--override", action="append", default=[], help="field=value")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sequential = _side(args, False, tmp)
        together = _side(args, True, tmp)
    print(f"{args.seeds} seeds of {args.config} {' '.join(args.override)}")
    for name, side in (("sequential", sequential), ("together", together)):
        seconds = _phases(side["histories"], side is together)
        phases = " ".join(f"{k} {v:.1f}s" for k, v in sorted(seconds.items()))
        print(f"{name:>10}: {side['seconds']:7.1f} s  ({phases})")
    print(f"together / sequential speed-up: {sequential['seconds'] / together['seconds']:.2f}x")
    same = all(
        [r["labels_paid"] for r in sequential["histories"][s]]
        == [r["labels_paid"] for r in together["histories"][s]]
        for s in sequential["histories"]
    )
    print(f"every seed bought the same labels on both sides: {same}")


if __name__ == "__main__":
    main()
