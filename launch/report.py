"""Write a sweep's report: plots over seeds, summary.csv and the sample-complexity table.

    python -m launch.report runs/digits_methods

Reads every ``<workdir>/<method>/<shift>/seed<k>/results.json`` (the rounds finished so
far, so it works on a sweep still running) and writes ``<workdir>/report/``:

- ``accuracy``, ``average_class_accuracy``, ``f1_macro`` (.png, .svg): each method's mean
  over seeds against labels paid, with a 95% band, one panel per shift preset;
- ``weight_l2_error``, ``source_shift`` (.png, .svg): the same per round;
- ``summary.csv``: one row per shift and method (final figures, labels needed and saved);
- ``report.md``: the plots and the sample-complexity table, with its definitions.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from alsa_jax import report  # noqa: E402

LABEL_METRICS = {
    "accuracy": "accuracy",
    "average_class_accuracy": "average class accuracy",
    "f1_macro": "macro F1",
}
ROUND_METRICS = {
    "weight_l2_error": "weight-estimation error ||w_est - w||_2",
    "source_shift": "source shift ||Q/P_labeled - 1||_2",
}
SUMMARY_METRICS = (*LABEL_METRICS, *ROUND_METRICS)
_SEED = re.compile(r"^seed(\d+)$")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


class ReportError(ValueError):
    """The folder holds nothing to report on (one-line message)."""


@dataclasses.dataclass
class RunResult:
    """The rounds a run has finished so far."""

    method: str
    shift: str
    seed: int
    rounds: list[dict[str, Any]]
    config: dict[str, Any]

    @property
    def total_rounds(self) -> int:
        return int(self.config["query"]["num_batches"]) + 1

    @property
    def complete(self) -> bool:
        return len(self.rounds) >= self.total_rounds

    def series(self, name: str) -> np.ndarray:
        """[rounds] values of one record field."""
        return np.array([float(r[name]) for r in self.rounds])


def is_uncorrected(config: Mapping[str, Any]) -> bool:
    """A baseline: no weight estimate (w = 1) and no posterior correction."""
    ls = config.get("label_shift", {})
    return (
        ls.get("estimator") == "none"
        and not ls.get("posterior_correction_scoring", False)
        and not ls.get("posterior_correction_eval", False)
    )


def load_runs(workdir: str) -> list[RunResult]:
    """Every run under ``workdir`` with at least one finished round, sorted by name."""
    if not os.path.isdir(workdir):
        raise ReportError(f"{workdir} is not a folder")
    runs = []
    for path in sorted(glob.glob(os.path.join(workdir, "*", "*", "seed*", "results.json"))):
        method, shift, seed_dir = os.path.relpath(path, workdir).split(os.sep)[:3]
        match = _SEED.match(seed_dir)
        if match is None:
            continue
        try:
            with open(path) as f:
                results = json.load(f)
            rounds, config = results["rounds"], results["config"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ReportError(f"{path} cannot be read: {error!r}") from None
        if not rounds:
            continue
        if "labels_paid" not in rounds[0]:
            raise ReportError(
                f"{path} has no labels_paid (written by an older replicate driver); "
                "re-run that run to report it"
            )
        missing = [
            name for name in ("accuracy", *SUMMARY_METRICS) if any(name not in r for r in rounds)
        ]
        if missing or not isinstance(config.get("query", {}).get("num_batches"), int):
            field = missing[0] if missing else "config.query.num_batches"
            raise ReportError(f"{path} has no {field}; it is not a replicate run's results")
        runs.append(RunResult(method, shift, int(match.group(1)), rounds, config))
    if not runs:
        raise ReportError(
            f"no runs with results under {workdir} "
            "(expected <method>/<shift>/seed<k>/results.json, as launch.sweep writes them)"
        )
    return runs


# ---------------------------------------------------------------------------------------
# Figures.


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    palette = plt.get_cmap("tab10").colors
    return {m: palette[i % len(palette)] for i, m in enumerate(sorted(methods))}


def plot_metric(
    panels: Mapping[str, Mapping[str, report.Curve]],
    *,
    title: str,
    xlabel: str,
    baselines: set[str],
    targets: Mapping[str, tuple[float, float]] | None = None,
    bounds: tuple[float, float] | None = None,
) -> Figure:
    """One panel per shift: each method's mean curve (baselines dashed) and its band.

    Lines carry the method as label and as SVG id ``mean:<method>``; bands ``band:<method>``;
    ``targets`` (shift -> (accuracy, labels paid)) adds each panel's sample-complexity
    target as a dotted line and the best baseline's final point as a cross. ``bounds``
    clips the drawn bands to a metric's range (a t-interval of a mean near 1 can pass 1).
    """
    shifts = list(panels)
    columns = min(3, len(shifts))
    rows = math.ceil(len(shifts) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False, layout="constrained"
    )
    colors = _colors({m for curves in panels.values() for m in curves})
    for ax, shift in zip(axes.flat, shifts, strict=False):
        for method, curve in panels[shift].items():
            style = "--" if method in baselines else "-"
            (line,) = ax.plot(
                curve.x, curve.mean, style, color=colors[method], label=method, linewidth=1.6
            )
            line.set_gid(f"mean:{method}")
            low, high = curve.low, curve.high
            if bounds is not None:
                low, high = np.clip(low, *bounds), np.clip(high, *bounds)
            band = ax.fill_between(curve.x, low, high, color=colors[method], alpha=0.18)
            band.set_gid(f"band:{method}")
        if targets and shift in targets:
            level, labels = targets[shift]
            target = ax.axhline(level, color="0.4", linestyle=":", linewidth=1)
            target.set_gid("target")
            (point,) = ax.plot([labels], [level], "x", color="0.2", markersize=7)
            point.set_gid("target-point")
        seeds = max((c.seeds for c in panels[shift].values()), default=0)
        ax.set_title(f"{shift} ({seeds} seed{'s' if seeds != 1 else ''})", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(shifts) :]:
        ax.set_visible(False)
    figure.suptitle(title)
    return figure


def save_figure(figure: Figure, directory: str, name: str) -> list[str]:
    """``name``.png and ``name``.svg in ``directory`` (SVG text kept as text)."""
    paths = []
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "alsa_jax"}):
        for ext in ("png", "svg"):
            path = os.path.join(directory, f"{name}.{ext}")
            figure.savefig(path, dpi=120, metadata={"Date": None} if ext == "svg" else None)
            paths.append(path)
    plt.close(figure)
    return paths


# ---------------------------------------------------------------------------------------
# Tables.


def _fmt(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "not reached"
    return f"{value:.{digits}f}"


def _pct(value: float) -> str:
    if math.isinf(value):
        return "not reached"
    return f"{100 * value:.1f}%"


@dataclasses.dataclass
class ShiftReport:
    """Everything the report shows for one shift preset."""

    shift: str
    runs: dict[str, list[RunResult]]  # method -> runs sorted by seed
    baselines: list[str]
    label_curves: dict[str, dict[str, report.Curve]]  # metric -> method -> curve
    round_curves: dict[str, dict[str, report.Curve]]
    table: report.ComplexityTable | None
    table_seeds: list[int]
    note: str = ""


def analyse(
    runs: Sequence[RunResult], *, num_bootstrap: int = 2000, confidence: float = 0.95
) -> list[ShiftReport]:
    """Curves and the sample-complexity table of each shift preset."""
    shifts: dict[str, dict[str, list[RunResult]]] = {}
    for run in runs:
        shifts.setdefault(run.shift, {}).setdefault(run.method, []).append(run)
    out = []
    for shift, methods in shifts.items():
        for seeds in methods.values():
            seeds.sort(key=lambda r: r.seed)
        baselines = [m for m, rs in methods.items() if is_uncorrected(rs[0].config)]
        label_curves = {
            metric: {
                m: report.label_curve(
                    [r.series("labels_paid") for r in rs],
                    [r.series(metric) for r in rs],
                    confidence,
                )
                for m, rs in methods.items()
            }
            for metric in LABEL_METRICS
        }
        round_curves = {
            metric: {
                m: report.round_curve([r.series(metric) for r in rs], confidence)
                for m, rs in methods.items()
            }
            for metric in ROUND_METRICS
        }
        common = sorted(set.intersection(*({r.seed for r in rs} for rs in methods.values())))
        table, note = None, ""
        if not baselines:
            note = "no uncorrected baseline (label_shift.estimator=none) in this preset"
        elif not common:
            note = "no seed has results for every method yet"
        else:
            paired = {
                m: (
                    [r.series("labels_paid") for r in rs if r.seed in common],
                    [r.series("accuracy") for r in rs if r.seed in common],
                )
                for m, rs in methods.items()
            }
            table = report.sample_complexity(
                paired, baselines, num_bootstrap=num_bootstrap, confidence=confidence
            )
        out.append(
            ShiftReport(shift, methods, baselines, label_curves, round_curves, table, common, note)
        )
    return out


def summary_rows(shifts: Sequence[ShiftReport], confidence: float = 0.95) -> list[dict]:
    """One row per shift and method: seeds, final figures with their half-width, labels."""
    rows = []
    for item in shifts:
        for method, runs in item.runs.items():
            last = min(len(r.rounds) for r in runs) - 1
            row: dict[str, Any] = {
                "shift": item.shift,
                "method": method,
                "baseline": method in item.baselines,
                "seeds": len(runs),
                "complete_seeds": sum(r.complete for r in runs),
                "round": last,
                "labels_paid": float(np.mean([r.rounds[last]["labels_paid"] for r in runs])),
            }
            for metric in SUMMARY_METRICS:
                values = np.array([[float(r.rounds[last][metric]) for r in runs]])
                mean, low, high = report.mean_band(values.T, confidence)
                row[metric] = float(mean[0])
                row[f"{metric}_ci"] = float(high[0] - mean[0])
            complexity = item.table.rows.get(method) if item.table else None
            if complexity is not None:
                row.update(
                    labels_needed=complexity.labels_needed,
                    labels_needed_low=complexity.labels_interval[0],
                    labels_needed_high=complexity.labels_interval[1],
                    labels_saved=complexity.saved,
                    labels_saved_low=complexity.saved_interval[0],
                    labels_saved_high=complexity.saved_interval[1],
                )
            rows.append(row)
    return rows


def _csv(rows: Sequence[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def complexity_markdown(item: ShiftReport, rows: Sequence[dict]) -> str:
    """The sample-complexity table of one shift as Markdown."""
    table = item.table
    if table is None:
        return f"*{item.note}.*\n"
    level = f"{100 * table.confidence:.0f}%"
    lines = [
        f"Target: accuracy **{table.target:.4f}**, the final accuracy of `{table.baseline}` "
        f"(the best uncorrected baseline) at **{table.reference_labels:.0f}** labels paid; "
        f"mean over seeds {', '.join(map(str, item.table_seeds))}.",
        "",
        f"| method | final accuracy | labels paid at end | labels needed | {level} CI "
        f"| labels saved | {level} CI |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    by_method = {r["method"]: r for r in rows if r["shift"] == item.shift}
    for method, row in table.rows.items():
        summary = by_method[method]
        name = f"`{method}`" + (" (baseline)" if method in item.baselines else "")
        low, high = row.labels_interval
        saved_low, saved_high = row.saved_interval
        lines.append(
            f"| {name} | {summary['accuracy']:.4f} ± {summary['accuracy_ci']:.4f} "
            f"| {summary['labels_paid']:.0f} | {_fmt(row.labels_needed)} "
            f"| [{_fmt(low)}, {_fmt(high)}] | {_pct(row.saved)} "
            f"| [{_pct(saved_low)}, {_pct(saved_high)}] |"
        )
    return "\n".join(lines) + "\n"


def _status(workdir: str, runs: Sequence[RunResult]) -> str:
    complete = sum(r.complete for r in runs)
    text = f"{len(runs)} runs with results: {complete} complete, {len(runs) - complete} in progress"
    partial = [
        f"`{r.method}/{r.shift}/seed{r.seed}` ({len(r.rounds)}/{r.total_rounds} rounds)"
        for r in runs
        if not r.complete
    ]
    try:
        with open(os.path.join(workdir, "sweep.json")) as f:
            planned = set(json.load(f)["runs"])
        started = {f"{r.method}/{r.shift}/seed{r.seed}" for r in runs}
        waiting = len(planned - started)
        if waiting:
            text += f"; {waiting} of the sweep's {len(planned)} runs have no finished round yet"
    except (OSError, ValueError, KeyError):
        pass
    try:
        with open(os.path.join(workdir, "sweep_status.json")) as f:
            failed = [n for n, s in json.load(f).items() if s.get("state") == "failed"]
        if failed:
            text += f"; failed: {', '.join(f'`{n}`' for n in failed)}"
    except (OSError, ValueError, AttributeError):
        pass
    if partial:
        text += (
            ". In progress: "
            + ", ".join(partial)
            + "; the figures cover the rounds finished so far"
        )
    return text + "."


def report_markdown(
    workdir: str, runs: Sequence[RunResult], shifts: Sequence[ShiftReport], rows: Sequence[dict]
) -> str:
    """report.md: status, the sample-complexity tables with their definitions, the plots."""
    table = next((s.table for s in shifts if s.table is not None), None)
    level = f"{100 * table.confidence:.0f}%" if table else "95%"
    boot = table.num_bootstrap if table else 0
    parts = [
        f"# Sweep report: {os.path.basename(os.path.abspath(workdir))}",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} from {_status(workdir, runs)}",
        "",
        "## Sample complexity",
        "",
        "**Labels needed.** The target is the final accuracy of the best uncorrected "
        "baseline (a method with `label_shift.estimator=none`, hence no importance weights "
        "and no posterior correction): the highest, over baselines, of the mean over seeds "
        "of the accuracy at the baseline's last round; L* is the mean labels paid there. A "
        "method needs N labels where its *mean* accuracy curve (seeds linearly interpolated "
        "on a common grid of labels paid) first reaches the target, linearly interpolated "
        "between grid points; *labels saved* is 1 - N / L*. The first crossing of the mean "
        "curve is used rather than a mean of per-seed crossings: a single seed's curve is "
        "noisy, so its first crossing is biased early by upward spikes, and it is undefined "
        "for seeds that never reach the target; the mean curve is also what the plots show.",
        "",
        f"**Intervals.** {level} percentile intervals of a paired bootstrap over seeds "
        f"({boot} resamples): each resample draws seeds with replacement, the same seeds for "
        "every method (runs of one seed share their splits and h0), and recomputes the "
        "baseline choice, target, L* and N. With few seeds the interval is coarse (3 seeds "
        "give 10 distinct resamples). *Not reached*: the mean curve never reaches the target "
        "within the labels paid so far.",
        "",
    ]
    for item in shifts:
        parts += [f"### {item.shift}", "", complexity_markdown(item, rows)]
    parts += [
        "## Against labels paid",
        "",
        "Each method's mean over seeds with a 95% Student-t band of the mean; uncorrected "
        "baselines dashed; the dotted line is the sample-complexity target and the cross the "
        "best baseline's final point (its mean final accuracy at its mean final labels paid; "
        "seeds end at different label counts, so the cross can lie beyond the end of the "
        "mean curve, which stops where the first seed stops). Labels paid "
        "count every distinct example whose label was revealed (warm start, held-out "
        "confusion sample, bought). Seeds of one method can pay different label counts at "
        "the same round, so their curves are linearly interpolated on the union of their "
        "label counts within the range all seeds cover.",
        "",
    ]
    for metric, label in LABEL_METRICS.items():
        parts += [f"![{label}]({metric}.png)", ""]
    parts += [
        "## Per round",
        "",
        "The weight-estimation error ||w_est - w||_2 against the true Q(y)/P(y) of the "
        "labeled set, and the source shift ||Q/P_labeled - 1||_2 of the labeled set, mean "
        "over seeds per round (for the baselines w_est = 1).",
        "",
    ]
    for metric, label in ROUND_METRICS.items():
        parts += [f"![{label}]({metric}.png)", ""]
    parts += ["Every figure is also in `summary.csv` (one row per shift and method).", ""]
    return "\n".join(parts)


def write_report(
    workdir: str, *, num_bootstrap: int = 2000, confidence: float = 0.95
) -> tuple[str, list[ShiftReport]]:
    """Compute and write ``<workdir>/report/``; returns its path and the analysis.

    The files are written to a fresh folder that replaces ``report/`` only when complete.
    """
    runs = load_runs(workdir)
    shifts = analyse(runs, num_bootstrap=num_bootstrap, confidence=confidence)
    rows = summary_rows(shifts, confidence)
    staging = tempfile.mkdtemp(dir=workdir, prefix=".report-")
    try:
        targets = {
            s.shift: (s.table.target, s.table.reference_labels)
            for s in shifts
            if s.table is not None
        }
        for metric, label in LABEL_METRICS.items():
            figure = plot_metric(
                {s.shift: s.label_curves[metric] for s in shifts},
                title=f"{label} against labels paid",
                xlabel="labels paid",
                baselines={b for s in shifts for b in s.baselines},
                targets=targets if metric == "accuracy" else None,
                bounds=(0.0, 1.0),
            )
            figure.supylabel(label)
            save_figure(figure, staging, metric)
        for metric, label in ROUND_METRICS.items():
            figure = plot_metric(
                {s.shift: s.round_curves[metric] for s in shifts},
                title=f"{label} per round",
                xlabel="round",
                baselines={b for s in shifts for b in s.baselines},
            )
            save_figure(figure, staging, metric)
        with open(os.path.join(staging, "summary.csv"), "w") as f:
            f.write(_csv(rows))
        with open(os.path.join(staging, "report.md"), "w") as f:
            f.write(report_markdown(workdir, runs, shifts, rows))
        os.chmod(staging, 0o755)
        target = os.path.join(workdir, "report")
        if os.path.isdir(target):
            old = tempfile.mkdtemp(dir=workdir, prefix=".report-old-")
            os.rename(target, os.path.join(old, "report"))
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target, shifts


def main(argv: list[str] | None = None) -> int:
    """Write the report of the folder given; print the tables; the exit code (0 or 2)."""
    parser = _Parser(prog="python -m launch.report", description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="the sweep's --workdir")
    parser.add_argument("--num_bootstrap", type=int, default=2000)
    parser.add_argument("--confidence", type=float, default=0.95)
    args = parser.parse_args(argv)
    if args.num_bootstrap < 1:
        parser.error(f"--num_bootstrap={args.num_bootstrap}: draw at least one resample")
    if not 0 < args.confidence < 1:
        parser.error(f"--confidence={args.confidence}: use a level between 0 and 1")
    try:
        path, shifts = write_report(
            args.workdir, num_bootstrap=args.num_bootstrap, confidence=args.confidence
        )
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {os.path.join(path, 'report.md')}")
    for item in shifts:
        if item.table is None:
            print(f"{item.shift}: {item.note}")
            continue
        table = item.table
        print(
            f"{item.shift}: target accuracy {table.target:.4f} = final accuracy of "
            f"{table.baseline} at {table.reference_labels:.0f} labels paid"
        )
        for row in table.rows.values():
            print(
                f"  {row.method:<28} labels needed {_fmt(row.labels_needed)} "
                f"[{_fmt(row.labels_interval[0])}, {_fmt(row.labels_interval[1])}], "
                f"saved {_pct(row.saved)} [{_pct(row.saved_interval[0])}, "
                f"{_pct(row.saved_interval[1])}]"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
