"""A synthetic benchmark with known structure: a Gaussian mixture whose classes overlap.

    python benchmarks/mixture.py --out /tmp/mixture.npz [--classes 10 --dim 20 --spread 0.6]

Class c has mean m_c ~ N(0, spread^2 I_d) (drawn once from the seed) and unit covariance,
so neighbouring classes overlap and a small network reaches clearly less than perfect
accuracy (the Bayes rate at the default spread 0.6 is 0.79), leaving room for label choices
to matter. The file holds ``x_train`` [N, d] float32, ``y_train`` [N], ``x_test``,
``y_test``, balanced over classes; run it with ``--config.dataset.name=npz``,
``--config.dataset.path=<file>`` and ``--config.model.name=mlp``. The label shift itself is
simulated by the config's ``shift.*`` fields, so the true weights of every run are known.
"""

from __future__ import annotations

import argparse

import numpy as np


def gaussian_mixture(
    *,
    num_classes: int = 10,
    dim: int = 20,
    spread: float = 0.6,
    train_per_class: int = 600,
    test_per_class: int = 300,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The arrays of the benchmark (see the module docstring)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, spread, size=(num_classes, dim))

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(num_classes), per_class)
        x = means[y] + rng.normal(size=(y.shape[0], dim))
        order = rng.permutation(y.shape[0])
        return x[order].astype(np.float32), y[order].astype(np.int32)

    x_train, y_train = draw(train_per_class)
    x_test, y_test = draw(test_per_class)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def bayes_accuracy(arrays: dict[str, np.ndarray], *, spread: float, seed: int = 0) -> float:
    """Accuracy of the Bayes classifier (nearest true mean) on the test rows."""
    k = int(arrays["y_train"].max()) + 1
    means = np.random.default_rng(seed).normal(0.0, spread, size=(k, arrays["x_test"].shape[1]))
    distance = ((arrays["x_test"][:, None, :] - means[None]) ** 2).sum(-1)
    return float(np.mean(distance.argmin(1) == arrays["y_test"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--dim", type=int, default=20)
    parser.add_argument("--spread", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    arrays = gaussian_mixture(
        num_classes=args.classes, dim=args.dim, spread=args.spread, seed=args.seed
    )
    np.savez(args.out, **arrays)
    print(
        f"{args.out}: {arrays['x_train'].shape[0]} train / {arrays['x_test'].shape[0]} test rows, "
        f"Bayes accuracy {bayes_accuracy(arrays, spread=args.spread, seed=args.seed):.3f}"
    )


if __name__ == "__main__":
    main()
