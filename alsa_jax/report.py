"""What a sweep's report computes: curves over seeds and the sample-complexity table.

Pure NumPy functions on per-seed curves (the rounds of one method's runs). A seed's
curve is the piecewise-linear function through its points (labels paid, metric) in
round order. Seeds of one method may pay different label counts at the same round
(resampled splits differ by seed), so the curves are compared on a common grid: the
union of the seeds' label counts within the range every seed covers, where each seed's
curve is linearly interpolated. The mean of piecewise-linear curves is itself piecewise
linear with its corners on that grid, so the mean curve on the grid is exact.

**Labels needed** (the sample-complexity table): the target is the final accuracy of the
best uncorrected baseline, i.e. the highest, over baselines b, of the mean over seeds of
b's accuracy at its last round (the last round every seed of b has finished); its label
count L* is the mean labels paid at that round. A method needs N labels, the first
crossing of its mean curve: the smallest x at which the linearly interpolated mean curve
reaches the target (inf when it never does). The share of labels saved is 1 - N / L*.
Confidence intervals come from a paired bootstrap over seeds: each resample draws the
seeds with replacement, the same seeds for every method (runs of one seed share their
splits and h0), and recomputes the whole figure (baseline choice, target, L*, N).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats


def _clean(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A seed's points in round order, keeping the later round where x repeats."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"a curve's x and y must be 1-D of one length, got {x.shape}, {y.shape}")
    if x.size and np.any(np.diff(x) < 0):
        raise ValueError("labels paid must not decrease from one round to the next")
    keep = np.append(x[1:] != x[:-1], True) if x.size else np.zeros(0, bool)
    return x[keep], y[keep]


def common_grid(xs: Sequence[np.ndarray]) -> np.ndarray:
    """The seeds' x values that lie in the range every seed covers, sorted and unique.

    xs: S arrays of one seed's x per round (non-decreasing). Returns [G]; empty when the
    seeds' ranges [x_s[0], x_s[-1]] do not overlap.
    """
    xs = [np.asarray(x, float) for x in xs if len(x)]
    if not xs:
        return np.zeros(0)
    low = max(x[0] for x in xs)
    high = min(x[-1] for x in xs)
    union = np.unique(np.concatenate(xs))
    return union[(union >= low) & (union <= high)]


def on_grid(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """One seed's curve linearly interpolated at ``grid`` [G]; NaN outside [x[0], x[-1]]."""
    x, y = _clean(x, y)
    grid = np.asarray(grid, float)
    out = np.full(grid.shape, np.nan)
    if x.size == 0:
        return out
    inside = (grid >= x[0]) & (grid <= x[-1])
    out[inside] = np.interp(grid[inside], x, y)
    return out


def mean_band(values: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, ...]:
    """Mean over seeds and the Student-t confidence interval of the mean.

    values: [S, G]. Returns (mean, low, high), each [G]; with one seed the band is the
    mean itself.
    """
    values = np.asarray(values, float)
    mean = values.mean(axis=0)
    seeds = values.shape[0]
    if seeds < 2:
        return mean, mean.copy(), mean.copy()
    half = stats.t.ppf(0.5 + confidence / 2, seeds - 1) * values.std(axis=0, ddof=1)
    half /= np.sqrt(seeds)
    return mean, mean - half, mean + half


@dataclasses.dataclass(frozen=True)
class Curve:
    """A method's mean curve over ``seeds`` seeds with its confidence band, all [G]."""

    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    seeds: int


def label_curve(
    xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], confidence: float = 0.95
) -> Curve:
    """Mean over seeds of y against labels paid, seeds interpolated on their common grid."""
    grid = common_grid([_clean(x, y)[0] for x, y in zip(xs, ys, strict=True)])
    values = np.stack([on_grid(x, y, grid) for x, y in zip(xs, ys, strict=True)])
    return Curve(grid, *mean_band(values, confidence), seeds=len(xs))


def round_curve(ys: Sequence[np.ndarray], confidence: float = 0.95) -> Curve:
    """Mean over seeds of y per round, over the rounds every seed has finished."""
    rounds = min(len(y) for y in ys)
    values = np.stack([np.asarray(y, float)[:rounds] for y in ys])
    return Curve(np.arange(rounds, dtype=float), *mean_band(values, confidence), seeds=len(ys))


def first_crossing(x: np.ndarray, y: np.ndarray, target: float) -> float:
    """The smallest x at which the piecewise-linear curve (x, y) reaches ``target``.

    NaN entries of y (outside the curve's range) are skipped; returns inf when the curve
    never reaches the target.
    """
    return float(_first_crossing(np.asarray(x, float), np.asarray(y, float)[None], [target])[0])


def _first_crossing(grid: np.ndarray, curves: np.ndarray, targets) -> np.ndarray:
    """Vectorised :func:`first_crossing`: curves [B, G] (NaN outside one contiguous valid
    range per row), targets [B]; returns [B]."""
    targets = np.asarray(targets, float)
    out = np.full(curves.shape[0], np.inf)
    if curves.shape[1] == 0:
        return out
    with np.errstate(invalid="ignore"):
        reach = curves >= targets[:, None]
    valid = ~np.isnan(curves)
    hit = reach.any(axis=1)
    j = np.argmax(reach, axis=1)
    start = np.argmax(valid, axis=1)
    rows = np.arange(curves.shape[0])
    at_start = hit & (j == start)
    out[at_start] = grid[j[at_start]]
    inner = hit & (j > start)
    b, k = rows[inner], j[inner]
    y0, y1 = curves[b, k - 1], curves[b, k]
    x0, x1 = grid[k - 1], grid[k]
    out[inner] = x0 + (targets[inner] - y0) / (y1 - y0) * (x1 - x0)
    return out


@dataclasses.dataclass(frozen=True)
class ComplexityRow:
    """One method's labels needed N, share saved 1 - N/L*, and their bootstrap intervals.

    ``labels_needed`` is inf (``saved`` -inf) when the mean curve never reaches the
    target; an interval bound is inf / -inf when that many resamples never reach it.
    ``reached`` is the share of bootstrap resamples in which the method reached it.
    """

    method: str
    labels_needed: float
    saved: float
    labels_interval: tuple[float, float]
    saved_interval: tuple[float, float]
    reached: float


@dataclasses.dataclass(frozen=True)
class ComplexityTable:
    """The sample-complexity table of one shift preset (see the module docstring)."""

    baseline: str  # the best uncorrected baseline
    target: float  # its final mean accuracy
    reference_labels: float  # L*: its mean labels paid at that round
    seeds: int
    num_bootstrap: int
    confidence: float
    rows: dict[str, ComplexityRow]


class _Method:
    """One method's seeds, precomputed for many resamples of the seed set."""

    def __init__(self, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]):
        cleaned = [_clean(x, y) for x, y in zip(xs, ys, strict=True)]
        # Interpolating on the union of every seed's x is exact for any subset of seeds.
        self.grid = np.unique(np.concatenate([c[0] for c in cleaned]))
        self.values = np.stack([on_grid(x, y, self.grid) for x, y in cleaned])  # [S, G]
        self.rounds = np.array([len(y) for y in ys])
        width = int(self.rounds.max())
        self.x_rounds = np.full((len(xs), width), np.nan)
        self.y_rounds = np.full((len(xs), width), np.nan)
        for s, (x, y) in enumerate(zip(xs, ys, strict=True)):
            self.x_rounds[s, : len(x)] = x
            self.y_rounds[s, : len(y)] = y

    def mean_curves(self, draws: np.ndarray) -> np.ndarray:
        """[B, G]: each draw's mean curve, NaN where a drawn seed has no value."""
        return self.values[draws].mean(axis=1)

    def final(self, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per draw: mean y and mean x at the last round every drawn seed has finished."""
        last = self.rounds[draws].min(axis=1) - 1  # [B]
        y = self.y_rounds[draws, last[:, None]].mean(axis=1)
        x = self.x_rounds[draws, last[:, None]].mean(axis=1)
        return y, x


def _figures(
    methods: Mapping[str, _Method], baselines: Sequence[str], draws: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Per draw [B]: the best baseline's index, target and L*, and each method's N."""
    finals = [methods[b].final(draws) for b in baselines]
    targets = np.stack([f[0] for f in finals])  # [num_baselines, B]
    labels = np.stack([f[1] for f in finals])
    best = np.argmax(targets, axis=0)  # first best on ties
    columns = np.arange(draws.shape[0])
    target, reference = targets[best, columns], labels[best, columns]
    needed = {
        name: _first_crossing(method.grid, method.mean_curves(draws), target)
        for name, method in methods.items()
    }
    return best, target, reference, needed


def sample_complexity(
    curves: Mapping[str, tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    baselines: Sequence[str],
    *,
    num_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ComplexityTable:
    """Labels each method needs to reach the best baseline's final accuracy, with intervals.

    curves: method -> (xs, ys), S per-seed arrays of labels paid and accuracy per round,
    the seeds in the same order for every method (paired). baselines: the uncorrected
    methods among them. Definitions in the module docstring; intervals are the
    ``confidence`` percentiles (empirical quantiles, no interpolation) of
    ``num_bootstrap`` paired resamples drawn with ``np.random.default_rng(seed)``.
    """
    if not baselines:
        raise ValueError("sample_complexity needs at least one uncorrected baseline")
    missing = [b for b in baselines if b not in curves]
    if missing:
        raise ValueError(f"baselines {missing} have no curves")
    sizes = {name: len(xs) for name, (xs, _) in curves.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"every method needs the same seeds (paired), got {sizes}")
    num_seeds = next(iter(sizes.values()))
    methods = {name: _Method(xs, ys) for name, (xs, ys) in curves.items()}
    everyone = np.arange(num_seeds)[None]
    best, target, reference, needed = _figures(methods, baselines, everyone)
    draws = np.random.default_rng(seed).integers(0, num_seeds, size=(num_bootstrap, num_seeds))
    _, _, boot_reference, boot_needed = _figures(methods, baselines, draws)
    tail = (1 - confidence) / 2

    def interval(values: np.ndarray) -> tuple[float, float]:
        low, high = np.quantile(values, [tail, 1 - tail], method="inverted_cdf")
        return float(low), float(high)

    rows = {}
    for name in methods:
        boot_saved = 1 - boot_needed[name] / boot_reference
        rows[name] = ComplexityRow(
            method=name,
            labels_needed=float(needed[name][0]),
            saved=float(1 - needed[name][0] / reference[0]),
            labels_interval=interval(boot_needed[name]),
            saved_interval=interval(boot_saved),
            reached=float(np.mean(np.isfinite(boot_needed[name]))),
        )
    return ComplexityTable(
        baseline=baselines[int(best[0])],
        target=float(target[0]),
        reference_labels=float(reference[0]),
        seeds=num_seeds,
        num_bootstrap=num_bootstrap,
        confidence=confidence,
        rows=rows,
    )
