"""Does MALLS save labels? Methods compared over seeds on the paid-label axis.

    python benchmarks/compare_methods.py --dataset digits --shift target03 --seeds 10
    python benchmarks/compare_methods.py --dataset mixture --shift mix07 --seeds 10 \
        --methods maxent "MALLS l=0.5" --out /tmp/mixture_mix07.json

Every method runs the same schedule (configs/digits.py) from the same seeds; the methods of a
seed share one h0 through the cache where their splits agree. Printed per method: final
accuracy and average class accuracy (mean +- std over seeds), labels paid at the end, and
the paper's measure: the paid labels each method needs to reach the best uncorrected
baseline's final mean accuracy (first crossing of each seed's curve, linear between rounds;
mean +- std over the seeds that reach it, and how many do). ``--out`` keeps every round of
every run as JSON (method -> seed -> records) for plots.

Datasets: ``digits`` (scikit-learn's 8x8 digits, the MNIST CNN), ``mixture`` (the
overlapping Gaussian mixture of benchmarks/mixture.py, an MLP). Shifts: ``target03``
(dirichlet_target, alpha 0.3: a uniform warm start, pool and test from one Dirichlet draw),
``mix07`` (the paper's main dirichlet_mix, alpha 0.7), ``online03`` (dirichlet_online,
alpha 0.3: the pool's class mix differs from the target's, which equals the warm start's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import mixture  # noqa: E402
from configs import digits  # noqa: E402
from launch import replicate  # noqa: E402

UNCORRECTED = {
    "label_shift.estimator": "none",
    "label_shift.importance_weighting": False,
    "label_shift.posterior_correction_scoring": False,
    "label_shift.posterior_correction_eval": False,
    "query.diversify": "none",
}

METHODS: dict[str, dict[str, object]] = {
    "random": {**UNCORRECTED, "query.strategy": "random"},
    "maxent": {**UNCORRECTED, "query.strategy": "maxent"},
    "margin": {**UNCORRECTED, "query.strategy": "margin"},
    "bald": {**UNCORRECTED, "query.strategy": "bald"},
    **{
        f"MALLS l={lam:g}": {
            "query.strategy": "maxent",
            "query.diversify": "medial",
            "query.medial_lambda": lam,
        }
        for lam in (0.0, 0.5, 1.0)
    },
    # The original's MALLS: class-balanced maxent, importance weights and posterior
    # correction on top, the confusion matrix on the training rows, mu_t on the test split.
    "original MALLS": {
        "query.strategy": "maxent",
        "query.diversify": "guess",
        "label_shift.posterior_correction_scoring": True,
        "label_shift.posterior_correction_eval": True,
        "shift.holdout_fraction": 0.0,
        "shift.target_fraction": 0.0,
    },
}
BASELINES = ("random", "maxent", "margin", "bald")

SHIFTS: dict[str, dict[str, object]] = {
    "target03": {"shift.strategy": "dirichlet_target", "shift.alpha": 0.3},
    "mix07": {"shift.strategy": "dirichlet_mix", "shift.alpha": 0.7},
    "online03": {"shift.strategy": "dirichlet_online", "shift.alpha": 0.3},
}


def dataset_overrides(name: str, scratch: str) -> dict[str, object]:
    if name == "digits":
        return {}
    path = os.path.join(scratch, "mixture.npz")
    if not os.path.exists(path):
        np.savez(path, **mixture.gaussian_mixture())
    return {"dataset.name": "npz", "dataset.path": path, "model.name": "mlp"}


def make_config(overrides: dict[str, object]):
    config = digits.get_config()
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def labels_to_reach(records: list[dict], target: float) -> float:
    """Paid labels at which the accuracy curve first reaches ``target`` (linear between
    rounds); inf when it never does."""
    x = np.array([r["labels_paid"] for r in records], float)
    y = np.array([r["accuracy"] for r in records], float)
    hit = np.flatnonzero(y >= target)
    if hit.size == 0:
        return float("inf")
    i = hit[0]
    if i == 0:
        return float(x[0])
    return float(x[i - 1] + (target - y[i - 1]) / (y[i] - y[i - 1]) * (x[i] - x[i - 1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("digits", "mixture"), default="digits")
    parser.add_argument("--shift", choices=tuple(SHIFTS), default="target03")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides field=value")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    extra = {}
    for item in args.set:
        field, value = item.split("=", 1)
        extra[field] = json.loads(value) if value[:1] in "0123456789-[{tfn" else value
    runs: dict[str, dict[int, list[dict]]] = {name: {} for name in args.methods}
    start = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        base = {**dataset_overrides(args.dataset, scratch), **SHIFTS[args.shift], **extra}
        for seed in range(args.seeds):
            for name in args.methods:
                overrides = {**base, **METHODS[name], "seed": seed}
                overrides["h0_cache_dir"] = os.path.join(scratch, "h0")
                workdir = os.path.join(scratch, f"{name}-{seed}".replace(" ", "_"))
                history = replicate.run(make_config(overrides), workdir, verbose=False)
                runs[name][seed] = history
                last = history[-1]
                print(
                    f"seed {seed} {name:<16} h0 {history[0]['accuracy']:.4f} -> acc "
                    f"{last['accuracy']:.4f} class-avg {last['average_class_accuracy']:.4f} "
                    f"labels {last['labels_paid']} w-err {last['weight_l2_error']:.3f} "
                    f"[{time.time() - start:.0f}s]",
                    flush=True,
                )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f)
    summarize(runs, f"{args.dataset} / {args.shift}, {args.seeds} seeds")


def summarize(runs: dict[str, dict[int, list[dict]]], title: str) -> None:
    finals = {
        name: np.array(
            [[h[-1]["accuracy"], h[-1]["average_class_accuracy"]] for h in by_seed.values()]
        )
        for name, by_seed in runs.items()
    }
    baselines = [name for name in runs if name in BASELINES]
    best = max(baselines, key=lambda name: finals[name][:, 0].mean()) if baselines else None
    target = finals[best][:, 0].mean() if best else None
    print(f"\n{title} (mean ± std over seeds)")
    if best:
        print(f"labels to reach {target:.4f}, the final accuracy of the best baseline ({best})")
    print(
        f"{'method':<16}{'h0 acc':>10}{'final acc':>18}{'class-avg acc':>18}"
        f"{'labels paid':>13}{'labels to reach':>22}"
    )
    for name, by_seed in runs.items():
        acc, cls = finals[name].T
        h0 = np.mean([h[0]["accuracy"] for h in by_seed.values()])
        paid = np.mean([h[-1]["labels_paid"] for h in by_seed.values()])
        reach = ""
        if target is not None:
            needed = np.array([labels_to_reach(h, target) for h in by_seed.values()])
            done = np.isfinite(needed)
            if done.any():
                spread = f"{needed[done].mean():.0f} ± {needed[done].std():.0f}"
                reach = f"{spread} ({done.sum()}/{len(needed)})"
            else:
                reach = f"never (0/{len(needed)})"
        print(
            f"{name:<16}{h0:>10.4f}{acc.mean():>10.4f} ± {acc.std():.4f}"
            f"{cls.mean():>10.4f} ± {cls.std():.4f}{paid:>13.0f}{reach:>22}"
        )


if __name__ == "__main__":
    main()
