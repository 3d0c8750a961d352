"""Does MALLS save labels? Methods compared over seeds on the paid-label axis.

    python benchmarks/compare_methods.py --dataset digits --shift mix07 --seeds 10
    python benchmarks/compare_methods.py --dataset mixture --shift target03 --seeds 10 \
        --methods maxent "MALLS l=0.5 mlls" --out /tmp/mixture_target03.json

Every method runs the same schedule (configs/digits.py) from the same seeds; the methods of a
seed share one h0 through the cache where their splits agree. Printed per method: h0's and
the final accuracy and average class accuracy (mean +- std over seeds), labels paid at the
end, how many seeds end below h0's accuracy; then the paper's measure, the paid labels each
method needs to reach the best uncorrected baseline's final mean accuracy, with its
interval (alsa_jax.report.sample_complexity: first crossing of the mean curve, paired
bootstrap over seeds). ``--out`` keeps every round of every run as JSON (method -> seed ->
records) for plots.

Datasets: ``digits`` (scikit-learn's 8x8 digits, the MNIST CNN), ``mixture`` (the
overlapping Gaussian mixture of benchmarks/mixture.py, an MLP). Shifts: ``target03``
(dirichlet_target, alpha 0.3: a uniform warm start, pool and test from one Dirichlet draw),
``mix07`` (the paper's main dirichlet_mix, alpha 0.7), ``online03`` (dirichlet_online,
alpha 0.3: the pool's class mix differs from the target's, which equals the warm start's).
A persistent compilation cache (``--cache``) lets later runs skip compiling.
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

from alsa_jax import report  # noqa: E402
from benchmarks import mixture  # noqa: E402
from configs import digits  # noqa: E402
from configs.sweeps import paper  # noqa: E402
from launch import replicate  # noqa: E402

METHODS: dict[str, dict[str, object]] = {
    # Plain active learning: no weights, the top of the score (as in the paper's sweeps).
    **{name: paper.uncorrected(name) for name in ("random", "maxent", "margin", "bald")},
    # MALLS: medial sampling N ~ P w^lambda on max-entropy scores, importance-weighted
    # training, weights re-estimated every round (RLLS as in the paper, or MLLS + BCTS).
    **{
        f"MALLS l={lam:g} {estimator}": {
            "query.strategy": "maxent",
            "query.diversify": "medial",
            "query.medial_lambda": lam,
            "label_shift.estimator": estimator,
            "label_shift.importance_weighting": True,
            "label_shift.posterior_correction_scoring": False,
            "label_shift.posterior_correction_eval": False,
        }
        for estimator in ("rlls", "mlls")
        for lam in (0.0, 0.5, 1.0)
    },
    # Only the sampling half of MALLS: medial sampling with the estimated weights, training
    # without importance weights.
    "medial sampling mlls": {
        "query.strategy": "maxent",
        "query.diversify": "medial",
        "label_shift.estimator": "mlls",
        "label_shift.importance_weighting": False,
        "label_shift.posterior_correction_scoring": False,
        "label_shift.posterior_correction_eval": False,
    },
    # MALLS's sampling with the correction moved from training to prediction: trained
    # without weights, the network's probabilities calibrated (BCTS) on the held-out sample
    # and corrected by Q / P_holdout for scoring and evaluation.
    "MALLS calibrated": {
        "query.strategy": "maxent",
        "query.diversify": "medial",
        "label_shift.estimator": "mlls",
        "label_shift.importance_weighting": False,
        "label_shift.posterior_correction_scoring": True,
        "label_shift.posterior_correction_eval": True,
        "label_shift.calibrated_correction": True,
    },
    # BADGE (gradient embeddings, k-means++), plain and label-shift-aware: embeddings scaled
    # by the medial w^0.5 of their predicted class, with MALLS's calibrated correction.
    "badge": paper.uncorrected("badge"),
    "badge MALLS": {
        "query.strategy": "badge",
        "query.diversify": "medial",
        "label_shift.estimator": "mlls",
        "label_shift.importance_weighting": False,
        "label_shift.posterior_correction_scoring": True,
        "label_shift.posterior_correction_eval": True,
        "label_shift.calibrated_correction": True,
    },
    # The original's MALLS: class-balanced maxent, importance weights and posterior
    # correction on top, the confusion matrix on the training rows, mu_t on the test split.
    "original MALLS": {
        "query.strategy": "maxent",
        "query.diversify": "guess",
        "label_shift.estimator": "rlls",
        "label_shift.importance_weighting": True,
        "label_shift.posterior_correction_scoring": True,
        "label_shift.posterior_correction_eval": True,
        "label_shift.calibrated_correction": False,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("digits", "mixture"), default="digits")
    parser.add_argument("--shift", choices=tuple(SHIFTS), default="target03")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--methods", nargs="*", default=[m for m in METHODS if not m.startswith("badge")]
    )
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides field=value")
    parser.add_argument("--out", default="")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "alsa_jax_cache"))
    args = parser.parse_args()
    import jax

    jax.config.update("jax_compilation_cache_dir", args.cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    extra = {}
    for item in args.set:
        field, value = item.split("=", 1)
        try:
            extra[field] = json.loads(value)
        except json.JSONDecodeError:  # a bare string
            extra[field] = value
    runs: dict[str, dict[int, list[dict]]] = {name: {} for name in args.methods}
    kept: dict[str, dict] = {}  # other methods' runs in --out, written back untouched
    if args.out and os.path.exists(args.out):  # continue an interrupted comparison
        with open(args.out) as f:
            for name, by_seed in json.load(f)["runs"].items():
                if name in runs:
                    runs[name] = {int(seed): history for seed, history in by_seed.items()}
                else:
                    kept[name] = by_seed
    start = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        base = {**dataset_overrides(args.dataset, scratch), **SHIFTS[args.shift], **extra}
        for seed in range(args.seeds):
            for name in args.methods:
                if seed in runs[name]:
                    continue
                overrides = {**base, **METHODS[name], "seed": seed}
                overrides["h0_cache_dir"] = os.path.join(scratch, "h0")
                overrides["compilation_cache_dir"] = args.cache
                workdir = os.path.join(scratch, f"{name}-{seed}".replace(" ", "_"))
                history = replicate.run(make_config(overrides), workdir, verbose=False)
                runs[name][seed] = history
                if args.out:
                    with open(args.out, "w") as f:
                        json.dump({"args": vars(args), "runs": {**kept, **runs}}, f)
                last = history[-1]
                print(
                    f"seed {seed} {name:<16} h0 {history[0]['accuracy']:.4f} -> acc "
                    f"{last['accuracy']:.4f} class-avg {last['average_class_accuracy']:.4f} "
                    f"labels {last['labels_paid']} w-err {last['weight_l2_error']:.3f} "
                    f"[{time.time() - start:.0f}s]",
                    flush=True,
                )
    summarize(runs, f"{args.dataset} / {args.shift}, {args.seeds} seeds")


def summarize(runs: dict[str, dict[int, list[dict]]], title: str) -> None:
    """Final accuracy and class accuracy over seeds, and the sample-complexity table."""
    print(f"\n{title} (mean ± std over seeds)")
    print(
        f"{'method':<22}{'h0 acc':>8}{'final acc':>17}{'class-avg acc':>17}{'labels paid':>13}"
        f"{'below h0':>10}"
    )
    for name, by_seed in runs.items():
        histories = list(by_seed.values())
        acc = np.array([h[-1]["accuracy"] for h in histories])
        cls = np.array([h[-1]["average_class_accuracy"] for h in histories])
        h0 = np.array([h[0]["accuracy"] for h in histories])
        paid = np.mean([h[-1]["labels_paid"] for h in histories])
        below = f"{int((acc < h0).sum())}/{len(acc)}"
        print(
            f"{name:<22}{h0.mean():>8.4f}{acc.mean():>9.4f} ± {acc.std():.4f}"
            f"{cls.mean():>9.4f} ± {cls.std():.4f}{paid:>13.0f}{below:>10}"
        )
    baselines = [name for name in runs if name in BASELINES]
    if not baselines:
        return
    curves = {
        name: (
            [np.array([r["labels_paid"] for r in by_seed[s]], float) for s in sorted(by_seed)],
            [np.array([r["accuracy"] for r in by_seed[s]], float) for s in sorted(by_seed)],
        )
        for name, by_seed in runs.items()
    }
    table = report.sample_complexity(curves, baselines)
    print(
        f"\nlabels to reach {table.target:.4f}, the final mean accuracy of {table.baseline} "
        f"(at {table.reference_labels:.0f} labels paid); first crossing of the mean curve, "
        f"{int(table.confidence * 100)}% paired bootstrap interval over seeds"
    )
    for name, row in table.rows.items():
        low, high = row.labels_interval
        saved_low, saved_high = row.saved_interval
        print(
            f"{name:<22}{row.labels_needed:>9.0f} [{low:.0f}, {high:.0f}]  saved "
            f"{100 * row.saved:6.1f}% [{100 * saved_low:.1f}%, {100 * saved_high:.1f}%]  "
            f"reached in {100 * row.reached:.0f}% of resamples"
        )


if __name__ == "__main__":
    main()
