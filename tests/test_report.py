"""Tests of the report's computations (alsa_jax/report.py) and of launch/report.py.

The figures are checked against values worked out by hand in the comments.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from alsa_jax import report
from launch import report as report_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_common_grid_and_interpolation_by_hand():
    # Seed 0 pays 100, 200, 300 labels; seed 1 pays 110, 210, 290 at the same rounds.
    xs = [np.array([100.0, 200, 300]), np.array([110.0, 210, 290])]
    ys = [np.array([0.5, 0.6, 0.7]), np.array([0.5, 0.7, 0.8])]
    grid = report.common_grid(xs)
    np.testing.assert_array_equal(grid, [110, 200, 210, 290])  # inside [110, 290]
    # Seed 0 at 110: 0.5 + 0.1 * 10/100 = 0.51; at 210: 0.61; at 290: 0.69.
    np.testing.assert_allclose(report.on_grid(xs[0], ys[0], grid), [0.51, 0.6, 0.61, 0.69])
    # Seed 1 at 200: 0.5 + 0.2 * 90/100 = 0.68.
    np.testing.assert_allclose(report.on_grid(xs[1], ys[1], grid), [0.5, 0.68, 0.7, 0.8])
    curve = report.label_curve(xs, ys)
    np.testing.assert_allclose(curve.mean, [0.505, 0.64, 0.655, 0.745])
    assert curve.seeds == 2
    # Outside a seed's range: NaN, not an extrapolation.
    assert np.isnan(report.on_grid(xs[1], ys[1], np.array([100.0, 300.0]))).all()


def test_repeated_label_count_keeps_the_later_round():
    x, y = np.array([100.0, 200, 200, 300]), np.array([0.5, 0.6, 0.65, 0.7])
    np.testing.assert_allclose(
        report.on_grid(x, y, np.array([150.0, 200, 250])), [0.575, 0.65, 0.675]
    )
    with pytest.raises(ValueError, match="must not decrease"):
        report.on_grid(np.array([200.0, 100]), np.array([0.5, 0.6]), np.array([150.0]))


def test_mean_band_is_the_student_t_interval():
    values = np.array([[1.0, 2.0], [3.0, 4.0]])
    mean, low, high = report.mean_band(values)
    np.testing.assert_allclose(mean, [2.0, 3.0])
    # std (ddof 1) = sqrt(2), over sqrt(2 seeds) = 1; t(0.975, 1 dof) = 12.7062.
    np.testing.assert_allclose(high - mean, 12.706204736, rtol=1e-8)
    np.testing.assert_allclose(mean - low, 12.706204736, rtol=1e-8)
    three = np.array([[0.8], [0.9], [1.0]])
    _, low, high = report.mean_band(three, confidence=0.9)
    half = stats.t.ppf(0.95, 2) * 0.1 / np.sqrt(3)
    np.testing.assert_allclose([low[0], high[0]], [0.9 - half, 0.9 + half])
    one = report.mean_band(np.array([[0.7, 0.8]]))
    np.testing.assert_array_equal(one[1], one[0])


def test_first_crossing_by_hand():
    x = np.array([0.0, 10, 20])
    assert report.first_crossing(x, np.array([0.0, 0.5, 1.0]), 0.75) == pytest.approx(15.0)
    assert report.first_crossing(x, np.array([0.0, 0.5, 1.0]), 0.5) == 10.0
    assert report.first_crossing(x, np.array([0.6, 0.5, 1.0]), 0.55) == 0.0  # already there
    assert report.first_crossing(x, np.array([0.0, 0.5, 1.0]), 1.5) == np.inf
    # A curve that starts later (NaN before its range) crosses from its first point.
    assert report.first_crossing(x, np.array([np.nan, 0.2, 0.8]), 0.2) == 10.0
    assert report.first_crossing(x, np.array([np.nan, 0.2, 0.8]), 0.5) == pytest.approx(15.0)
    # The first crossing, not a later one after a dip.
    y = np.array([0.0, 1.0, 0.0, 1.0])
    assert report.first_crossing(np.arange(4.0), y, 0.5) == pytest.approx(0.5)


# Synthetic sweep, worked out by hand. Two seeds, three rounds each.
#   random (baseline): labels 100, 200, 300; accuracy seed 0: .5 .6 .7, seed 1: .5 .7 .8.
#   maxent (baseline): labels 100, 200, 320; accuracy seed 0: .5 .6 .74, seed 1: .5 .6 .70.
#   malls: labels seed 0: 100, 200, 300, seed 1: 100, 220, 300;
#          accuracy seed 0: .6 .8 .9, seed 1: .5 .7 .8.
# Point estimate: final means random .75 (at 300 labels), maxent .72, so the target is .75
# and L* = 300. malls on the grid 100, 200, 220, 300: seed 0 at 220 = .82, seed 1 at 200 =
# .5 + .2 * 100/120 = .6667; mean .55, .7333, .76, .85; it reaches .75 between 200 and 220:
# 200 + (.75 - .7333) / (.76 - .7333) * 20 = 212.5 labels, saving 1 - 212.5/300 = 29.17%.
# random's own mean .5 .65 .75 reaches .75 at 300 (saves 0); maxent's (.5 .6 .72) never does.
# Bootstrap (paired): seeds {0, 0}: maxent .74 beats random .70, target .74, L* = 320; malls
# seed 0 reaches .74 at 100 + .14/.2 * 100 = 170 (saves 1 - 170/320 = 46.875%). Seeds
# {1, 1}: random .8, L* = 300; malls seed 1 reaches .8 at 300 (saves 0). Seeds {0, 1}: the
# point estimate. Each extreme has probability 1/4, so the 95% interval is its extremes.
SYNTHETIC = {
    "random": ([[100, 200, 300]] * 2, [[0.5, 0.6, 0.7], [0.5, 0.7, 0.8]]),
    "maxent": ([[100, 200, 320]] * 2, [[0.5, 0.6, 0.74], [0.5, 0.6, 0.70]]),
    "malls": ([[100, 200, 300], [100, 220, 300]], [[0.6, 0.8, 0.9], [0.5, 0.7, 0.8]]),
}


def synthetic_curves():
    return {
        m: ([np.array(x, float) for x in xs], [np.array(y, float) for y in ys])
        for m, (xs, ys) in SYNTHETIC.items()
    }


def test_sample_complexity_table_matches_hand_computed_figures():
    table = report.sample_complexity(synthetic_curves(), ["random", "maxent"], num_bootstrap=4000)
    assert table.baseline == "random"
    assert table.target == pytest.approx(0.75)
    assert table.reference_labels == pytest.approx(300.0)
    malls = table.rows["malls"]
    assert malls.labels_needed == pytest.approx(212.5)
    assert malls.saved == pytest.approx(1 - 212.5 / 300)
    assert malls.labels_interval == pytest.approx((170.0, 300.0))
    assert malls.saved_interval == pytest.approx((0.0, 1 - 170 / 320))
    assert malls.reached == 1.0
    assert table.rows["random"].labels_needed == pytest.approx(300.0)
    assert table.rows["random"].saved == pytest.approx(0.0)
    maxent = table.rows["maxent"]
    assert maxent.labels_needed == np.inf and maxent.saved == -np.inf
    # maxent reaches the target only in the {0, 0} resamples, where it is the target.
    assert 0.2 < maxent.reached < 0.3
    assert maxent.labels_interval[1] == np.inf
    # Deterministic given its seed.
    again = report.sample_complexity(synthetic_curves(), ["random", "maxent"], num_bootstrap=4000)
    assert again == table


def test_sample_complexity_checks_its_inputs():
    curves = synthetic_curves()
    with pytest.raises(ValueError, match="baseline"):
        report.sample_complexity(curves, [])
    with pytest.raises(ValueError, match="no curves"):
        report.sample_complexity(curves, ["bald"])
    curves["malls"] = ([curves["malls"][0][0]], [curves["malls"][1][0]])
    with pytest.raises(ValueError, match="same seeds"):
        report.sample_complexity(curves, ["random"])


def test_round_curve_covers_rounds_every_seed_finished():
    curve = report.round_curve([np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0])])
    np.testing.assert_array_equal(curve.x, [0, 1])
    np.testing.assert_allclose(curve.mean, [2.0, 3.0])


# ---------------------------------------------------------------------------------------
# launch/report.py on a synthetic sweep folder.

UNCORRECTED = {
    "estimator": "none",
    "posterior_correction_scoring": False,
    "posterior_correction_eval": False,
}
CORRECTED = {**UNCORRECTED, "estimator": "rlls"}


def write_run(workdir, method, shift, seed, labels, accuracy, *, num_batches=2, uncorrected):
    directory = os.path.join(workdir, method, shift, f"seed{seed}")
    os.makedirs(directory, exist_ok=True)
    rounds = [
        {
            "round": r,
            "labels_paid": labels[r],
            "accuracy": accuracy[r],
            "average_class_accuracy": accuracy[r] - 0.1,
            "f1_macro": accuracy[r] - 0.2,
            "weight_l2_error": 1.0 / (r + 1) + seed,
            "source_shift": 2.0 - r,
        }
        for r in range(len(labels))
    ]
    config = {
        "seed": seed,
        "query": {"num_batches": num_batches},
        "label_shift": UNCORRECTED if uncorrected else CORRECTED,
    }
    with open(os.path.join(directory, "results.json"), "w") as f:
        json.dump({"config": config, "rounds": rounds}, f)


def write_synthetic_sweep(workdir, shift="mix0.7"):
    for method, (xs, ys) in SYNTHETIC.items():
        for seed, (x, y) in enumerate(zip(xs, ys, strict=True)):
            write_run(workdir, method, shift, seed, x, y, uncorrected=method != "malls")


def test_report_files_table_and_plot_series(tmp_path):
    workdir = str(tmp_path / "sweep")
    write_synthetic_sweep(workdir)
    path, shifts = report_cli.write_report(workdir, num_bootstrap=4000)
    names = sorted(os.listdir(path))
    for metric in (
        "accuracy",
        "average_class_accuracy",
        "f1_macro",
        "weight_l2_error",
        "source_shift",
    ):
        assert f"{metric}.png" in names and f"{metric}.svg" in names
    assert {"summary.csv", "report.md"} <= set(names)
    assert not [n for n in os.listdir(workdir) if n.startswith(".report")]  # no leftovers

    (item,) = shifts
    assert sorted(item.baselines) == ["maxent", "random"]
    with open(os.path.join(path, "summary.csv")) as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert float(rows["malls"]["labels_needed"]) == pytest.approx(212.5)
    assert float(rows["malls"]["labels_saved"]) == pytest.approx(1 - 212.5 / 300)
    assert float(rows["malls"]["labels_saved_high"]) == pytest.approx(1 - 170 / 320)
    assert float(rows["random"]["accuracy"]) == pytest.approx(0.75)
    assert float(rows["maxent"]["labels_paid"]) == pytest.approx(320)
    assert rows["maxent"]["baseline"] == "True" and rows["malls"]["baseline"] == "False"
    assert float(rows["malls"]["weight_l2_error"]) == pytest.approx((1 / 3 + 1 / 3 + 1) / 2)

    markdown = open(os.path.join(path, "report.md")).read()
    assert "accuracy **0.7500**, the final accuracy of `random`" in markdown
    assert "| `malls` | 0.8500 ± " in markdown
    assert "| 212 | [170, 300] | 29.2% | [0.0%, 46.9%] |" in markdown
    assert "| `maxent` (baseline) |" in markdown and "not reached" in markdown
    for metric in ("accuracy", "f1_macro", "weight_l2_error"):
        assert f"]({metric}.png)" in markdown
    assert "first crossing" in markdown and "paired bootstrap" in markdown

    # The SVG carries each method's mean line and band by id, and the target.
    svg = open(os.path.join(path, "accuracy.svg")).read()
    for method in SYNTHETIC:
        assert f'id="mean:{method}"' in svg and f'id="band:{method}"' in svg
    assert 'id="target"' in svg and ">malls<" in svg  # legend text kept as text


def test_plot_has_one_series_per_method_with_the_mean_curve():
    curves = synthetic_curves()
    panels = {
        "mix0.7": {m: report.label_curve(xs, ys) for m, (xs, ys) in curves.items()},
        "target0.4": {"malls": report.label_curve(*curves["malls"])},
    }
    figure = report_cli.plot_metric(
        panels,
        title="accuracy",
        xlabel="labels paid",
        baselines={"random", "maxent"},
        targets={"mix0.7": (0.75, 300.0)},
    )
    axes = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["mix0.7 (2 seeds)", "target0.4 (2 seeds)"]
    lines = {line.get_label(): line for line in axes[0].get_lines()}
    assert set(lines) >= set(SYNTHETIC)
    np.testing.assert_allclose(lines["malls"].get_xdata(), [100, 200, 220, 300])
    np.testing.assert_allclose(lines["malls"].get_ydata(), [0.55, 0.7333333, 0.76, 0.85])
    assert lines["random"].get_linestyle() == "--" and lines["malls"].get_linestyle() == "-"
    assert len(axes[0].collections) == 3  # one band per method
    assert [line.get_label() for line in axes[1].get_lines()] == ["malls"]
    target = [line for line in axes[0].get_lines() if line.get_gid() == "target"]
    assert target and target[0].get_ydata()[0] == 0.75


def test_report_on_a_sweep_still_running(tmp_path):
    workdir = str(tmp_path / "sweep")
    write_synthetic_sweep(workdir)
    # A third seed of malls has one round so far; a run with no round yet is ignored.
    write_run(workdir, "malls", "mix0.7", 2, [100], [0.4], uncorrected=False)
    write_run(workdir, "random", "mix0.7", 3, [], [], uncorrected=True)
    with open(os.path.join(workdir, "sweep.json"), "w") as f:
        json.dump({"runs": {f"{m}/mix0.7/seed{s}": {} for m in SYNTHETIC for s in range(4)}}, f)
    path, (item,) = report_cli.write_report(workdir, num_bootstrap=200)
    assert [r.seed for r in item.runs["malls"]] == [0, 1, 2]
    assert item.table_seeds == [0, 1]  # the table pairs seeds every method has
    assert item.table.rows["malls"].labels_needed == pytest.approx(212.5)
    # The curve covers what every seed has: seed 2 stops at round 0.
    assert item.label_curves["accuracy"]["malls"].x.tolist() == [100.0]
    markdown = open(os.path.join(path, "report.md")).read()
    assert "7 runs with results: 6 complete, 1 in progress" in markdown
    assert "`malls/mix0.7/seed2` (1/3 rounds)" in markdown
    assert "5 of the sweep's 12 runs have no finished round yet" in markdown


def test_report_without_baseline_says_so(tmp_path):
    workdir = str(tmp_path / "sweep")
    write_run(
        workdir, "malls", "mix0.7", 0, [100, 200], [0.5, 0.6], num_batches=1, uncorrected=False
    )
    path, (item,) = report_cli.write_report(workdir, num_bootstrap=10)
    assert item.table is None
    assert "no uncorrected baseline" in open(os.path.join(path, "report.md")).read()


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "launch.report", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_prints_the_table_and_rewrites_the_report(tmp_path):
    workdir = tmp_path / "sweep"
    write_synthetic_sweep(str(workdir))
    (workdir / "report").mkdir()
    (workdir / "report" / "stale.txt").write_text("old")
    result = run_cli(str(workdir), "--num_bootstrap", "500")
    assert result.returncode == 0, result.stderr
    assert "target accuracy 0.7500 = final accuracy of random at 300 labels paid" in result.stdout
    assert "malls" in result.stdout and "29.2%" in result.stdout
    assert not (workdir / "report" / "stale.txt").exists()  # replaced as a whole
    assert (workdir / "report" / "report.md").exists()


@pytest.mark.parametrize("case", ["empty", "missing", "old_results", "foreign", "bad_flag"])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    workdir = tmp_path / "sweep"
    workdir.mkdir()
    args = [str(workdir)]
    if case == "missing":
        args = [str(tmp_path / "nowhere")]
    elif case == "old_results":
        write_run(str(workdir), "malls", "s", 0, [100], [0.5], uncorrected=False)
        path = workdir / "malls" / "s" / "seed0" / "results.json"
        data = json.loads(path.read_text())
        data["rounds"][0].pop("labels_paid")
        path.write_text(json.dumps(data))
    elif case == "foreign":
        path = workdir / "a" / "b" / "seed0" / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"config": {}, "rounds": [{"labels_paid": 3}]}))
    elif case == "bad_flag":
        args += ["--num_bootstrap", "0"]
    before = sorted(p.name for p in workdir.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:  # in process: the same main as the CLI
        sys.exit(report_cli.main(args))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    expected = {
        "empty": "no runs with results",
        "missing": "is not a folder",
        "old_results": "has no labels_paid",
        "foreign": "has no accuracy; it is not a replicate run's results",
        "bad_flag": "--num_bootstrap",
    }[case]
    assert expected in lines[0]
    assert sorted(p.name for p in workdir.rglob("*")) == before
