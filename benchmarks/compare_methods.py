"""Final accuracy of MALLS against uncorrected max-entropy sampling over several seeds.

    python benchmarks/compare_methods.py [--config configs/digits.py] [--seeds 5]

MALLS: RLLS weights re-estimated every round, importance-weighted training on every
label, class-balanced ("guess") max-entropy queries (the config's defaults); the same
with the original's posterior correction on top; posterior correction without
importance-weighted training.
Uncorrected maxent: no weight estimation, no correction, plain top-k max entropy.
Both methods of a seed share one h0 through the cache. Prints mean and standard
deviation of the final accuracy and average class accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_replicate import load_config  # noqa: E402
from launch import replicate  # noqa: E402

METHODS = {
    "MALLS (rlls, iterative, guess)": {},
    "MALLS + posterior corr. (orig.)": {
        "label_shift.posterior_correction_scoring": True,
        "label_shift.posterior_correction_eval": True,
    },
    "posterior corr., no IW training": {
        "label_shift.importance_weighting": False,
        "label_shift.posterior_correction_scoring": True,
        "label_shift.posterior_correction_eval": True,
    },
    "uncorrected maxent": {
        "label_shift.estimator": "none",
        "label_shift.importance_weighting": False,
        "label_shift.posterior_correction_scoring": False,
        "label_shift.posterior_correction_eval": False,
        "query.diversify": "none",
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits.py")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    finals: dict[str, list[tuple[float, float]]] = {name: [] for name in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for name, overrides in METHODS.items():
                config = load_config(args.config)
                config.seed = seed
                config.h0_cache_dir = os.path.join(tmp, "cache")
                for dotted, value in overrides.items():
                    section, field = dotted.split(".")
                    config[section][field] = value
                workdir = os.path.join(tmp, f"{len(finals[name])}-{abs(hash(name))}")
                last = replicate.run(config, workdir, verbose=False)[-1]
                finals[name].append((last["accuracy"], last["average_class_accuracy"]))
                print(
                    f"seed {seed} {name:<32} acc {last['accuracy']:.4f} "
                    f"class-avg {last['average_class_accuracy']:.4f}",
                    flush=True,
                )
    print(f"\n{args.config}, {args.seeds} seeds (mean ± std)")
    print(f"{'method':<32}{'accuracy':>20}{'average class acc':>22}")
    for name, values in finals.items():
        acc, cls = np.array(values).T
        print(
            f"{name:<32}{acc.mean():>12.4f} ± {acc.std():.4f}{cls.mean():>14.4f} ± {cls.std():.4f}"
        )


if __name__ == "__main__":
    main()
