"""End-to-end tests of the replicate loop on the embedded digits data."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from alsa_jax import checkpoint, experiment
from configs import digits
from launch import replicate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("seconds_", "compilations", "h0_cache_hit")


# The small experiment of these tests, as config overrides of configs/digits.py.
SMALL = {
    "model.name": "mlp",
    "shift.dataset_cap": 300,
    "query.num_batches": 3,
    "query.sample_prop": 0.3,
    "query.mc_samples": 4,
    "query.committee_size": 3,
    "train.initial_epochs": 10,
    "train.learning_rate": 1e-2,
    "train.partial_epochs": 1,
    "train.batch_size": 32,
}


def small_config(**overrides):
    config = digits.get_config()
    for dotted, value in {**SMALL, **overrides}.items():
        node = config
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def cli(workdir, *extra):
    """The replicate command line for ``workdir``: configs/digits.py plus ``extra`` flags."""
    return [
        sys.executable,
        "-m",
        "launch.replicate",
        "--config",
        "configs/digits.py",
        "--workdir",
        str(workdir),
        *extra,
    ]


def comparable(history):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in history]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("runs") / "reference")
    history = replicate.run(small_config(), workdir, verbose=False)
    return workdir, history


def _distinct(exp, rows):
    return len(np.unique(exp.source_index[np.asarray(rows)]))


def test_end_to_end_three_rounds(reference_run):
    workdir, history = reference_run
    assert [r["round"] for r in history] == [0, 1, 2, 3]
    exp = experiment.setup(replicate.options_of(small_config()))
    # A pool of 150 rows resampled with replacement holds fewer distinct examples; 30% of
    # them are bought over 3 rounds, the same number each round.
    start = exp.initial_pool
    examples = _distinct(exp, start.pool)
    assert examples < 150 and exp.budget == int(0.3 * examples / 3)
    assert [r["labels_bought"] for r in history] == [0, exp.budget, 2 * exp.budget, 3 * exp.budget]
    # The label axis counts every paid label once: warm start and holdout examples, then
    # the bought ones.
    assert history[0]["labels_paid"] == _distinct(exp, start.warm | start.holdout)
    assert history[0]["labels_holdout"] == _distinct(exp, start.holdout) > 0
    assert [r["labels_paid"] - history[0]["labels_paid"] for r in history] == [
        r["labels_bought"] for r in history
    ]
    manager = checkpoint.RoundCheckpointer(os.path.join(workdir, "checkpoints"))
    final, _ = manager.restore(3, experiment.initial_state(exp))
    manager.close()
    paid_rows = np.asarray(final.pool.labeled | final.pool.holdout)
    assert history[-1]["labels_paid"] == _distinct(exp, paid_rows)
    # Every row of a bought example is labeled (buying one slot reveals its example).
    bought_examples = np.unique(exp.source_index[np.asarray(final.pool.labeled & final.pool.pool)])
    in_pool = np.asarray(final.pool.pool)
    assert np.all(
        np.asarray(final.pool.labeled)[in_pool & np.isin(exp.source_index, bought_examples)]
    )
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in history)
    assert history[-1]["accuracy"] > 0.5  # digits are easy; far above chance (0.1)
    assert len(history[-1]["weights"]) == 10
    with open(os.path.join(workdir, "results.json")) as f:
        stored = json.load(f)
    assert stored["config"]["query"]["strategy"] == "maxent"
    assert comparable(stored["rounds"]) == comparable(history)
    with open(os.path.join(workdir, "results.csv")) as f:
        lines = f.read().splitlines()
    assert len(lines) == 5 and "per_class_accuracy_9" in lines[0]
    # TensorBoard events under a run name that says method, shift and seed.
    run_dir = os.path.join(
        workdir, "tensorboard", "rlls-maxent-medial0.5-iw_dirichlet_target-alpha0.6_seed0"
    )
    assert any(name.startswith("events") for name in os.listdir(run_dir))


def test_resume_after_exception_matches_uninterrupted(reference_run, tmp_path, monkeypatch):
    _, reference = reference_run
    workdir = str(tmp_path / "interrupted")
    real_fit = experiment.fit

    def failing(exp, state, key, **kwargs):
        if int(state.round) == 2:
            raise RuntimeError("simulated crash in round 2")
        return real_fit(exp, state, key, **kwargs)

    monkeypatch.setattr(experiment, "fit", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        replicate.run(small_config(), workdir, verbose=False)
    monkeypatch.setattr(experiment, "fit", real_fit)
    resumed = replicate.run(small_config(), workdir, verbose=False)
    assert comparable(resumed) == comparable(reference)


def test_resume_after_sigkill_matches_uninterrupted(reference_run, tmp_path):
    _, reference = reference_run
    workdir = tmp_path / "killed"
    args = cli(
        workdir,
        *(f"--config.{name}={value}" for name, value in SMALL.items()),
        f"--config.h0_cache_dir={tmp_path / 'cache'}",
    )

    def kill_when(ready, *, delay=0.0):
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and not ready() and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert ready(), proc.stderr.read().decode()[-2000:]

    # 1. Mid-h0: the workdir is claimed, nothing trained or checkpointed yet.
    kill_when(lambda: (workdir / "experiment.json").exists())
    assert not (workdir / "checkpoints" / "0").exists()
    # 2. Right after round 1's checkpoint; 3. a moment into round 3 (or its save).
    kill_when(lambda: (workdir / "checkpoints" / "1").exists())
    kill_when(lambda: (workdir / "checkpoints" / "2").exists(), delay=0.1)
    config = small_config(h0_cache_dir=str(tmp_path / "cache"))
    resumed = replicate.run(config, str(workdir), verbose=False)
    assert comparable(resumed) == comparable(reference)


def test_h0_cache_hit_skips_training(reference_run, tmp_path, monkeypatch):
    _, reference = reference_run
    cache = str(tmp_path / "cache")
    first = replicate.run(small_config(h0_cache_dir=cache), str(tmp_path / "a"), verbose=False)
    assert first[0]["h0_cache_hit"] is False and first[0]["seconds_h0"] > 0
    real_fit = experiment.fit

    def no_h0_training(exp, state, key, **kwargs):
        assert not kwargs["initial"], "h0 was trained despite the cache"
        return real_fit(exp, state, key, **kwargs)

    monkeypatch.setattr(experiment, "fit", no_h0_training)
    second = replicate.run(small_config(h0_cache_dir=cache), str(tmp_path / "b"), verbose=False)
    assert second[0]["h0_cache_hit"] is True and second[0]["seconds_h0"] == 0.0
    assert comparable(second) == comparable(first) == comparable(reference)
    # Another query strategy shares h0 (its cache key has no query fields).
    other = small_config(h0_cache_dir=cache, **{"query.strategy": "margin"})
    third = replicate.run(other, str(tmp_path / "c"), verbose=False)
    assert third[0]["h0_cache_hit"] is True


def test_bad_config_value_is_one_line(tmp_path):
    with pytest.raises(replicate.ConfigError, match="query.strategy"):
        replicate.run(small_config(**{"query.strategy": "maxentt"}), str(tmp_path / "x"))
    with pytest.raises(replicate.ConfigError, match="label_shift.estimator"):
        replicate.run(small_config(**{"label_shift.estimator": "em"}), str(tmp_path / "x"))
    typo = small_config()
    with typo.unlocked():
        typo.query.stratgy = "margin"
    with pytest.raises(replicate.ConfigError, match="query.stratgy"):
        replicate.run(typo, str(tmp_path / "x"))
    with pytest.raises(replicate.ConfigError, match="query.diversify"):
        replicate.run(small_config(**{"query.strategy": "iwal"}), str(tmp_path / "x"))
    with pytest.raises(replicate.ConfigError, match="query.medial_lambda must lie in"):
        replicate.run(
            small_config(**{"query.diversify": "medial", "query.medial_lambda": 1.5}),
            str(tmp_path / "x"),
        )
    # medial_lambda is the parameter of diversify=medial: with another mode it would be ignored.
    with pytest.raises(replicate.ConfigError, match="query.medial_lambda.*query.diversify"):
        replicate.run(
            small_config(**{"query.diversify": "guess", "query.medial_lambda": 0.5}),
            str(tmp_path / "x"),
        )
    with pytest.raises(replicate.ConfigError, match="checkpoint_keep"):
        replicate.run(small_config(checkpoint_keep=0), str(tmp_path / "x"))
    with pytest.raises(replicate.ConfigError, match="shift.alpha"):
        replicate.run(small_config(**{"shift.alpha": float("nan")}), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()  # nothing written
    (tmp_path / "file").write_text("")
    with pytest.raises(replicate.ConfigError, match="--workdir"):
        replicate.run(small_config(), str(tmp_path / "file"))


def test_workdir_of_another_experiment_is_refused(reference_run):
    workdir, _ = reference_run
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    with pytest.raises(checkpoint.ExperimentMismatchError, match="seed"):
        replicate.run(small_config(seed=7), workdir, verbose=False)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def _one_line_error(args):
    """Run the command line ``args``; it must exit 2 with exactly one non-empty line on
    stderr, which is returned."""
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config.query.strategy=maxentt"], "query.strategy"),
        (["--config.no_such_field=1"], "no_such_field"),
        (["--config.query.diversify=guess", "--config.query.medial_lambda=0.3"], "query.diversify"),
        (["--config.query.diversify=medial", "--config.query.medial_lambda=-0.1"], "medial_lambda"),
        # A typo in a field: named plainly, with the closest field.
        (
            ["--config.query.stratgy=margin"],
            "the config has no field 'query.stratgy' (did you mean 'query.strategy'?)",
        ),
        (["--progress=loud"], "--progress"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, extra, message):
    line = _one_line_error(cli(tmp_path / "w", *extra))
    assert message in line
    assert "\\" not in line  # no escaped quotes or newlines
    assert not (tmp_path / "w").exists()


def _replicate_with(config, workdir):
    return [sys.executable, "-m", "launch.replicate", "--config", config, "--workdir", workdir]


def test_cli_missing_config_lists_the_configs(tmp_path):
    line = _one_line_error(_replicate_with("configs/nabird.py", str(tmp_path / "w")))
    assert "configs/nabird.py does not exist" in line
    assert "configs/nabirds.py" in line and "configs/digits.py" in line
    assert "Errno" not in line


def test_cli_unknown_config_argument_names_the_cause(tmp_path):
    line = _one_line_error(_replicate_with("configs/mnist.py:bogus", str(tmp_path / "w")))
    assert "config argument 'bogus' is not known" in line
    assert "Traceback" not in line and not (tmp_path / "w").exists()


def test_cli_help_is_plain_text_and_exits_0():
    done = subprocess.run(
        [sys.executable, "-m", "launch.replicate", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for flag in ("--config", "--workdir", "--progress", "--config.FIELD=VALUE"):
        assert flag in done.stdout
    assert "``" not in done.stdout and ":func:" not in done.stdout
    assert "default: 'None'" not in done.stdout


def test_a_finished_run_says_so_at_once(reference_run, monkeypatch, capsys):
    workdir, history = reference_run
    # Nothing is loaded or computed again: setup would fail here.
    monkeypatch.setattr(experiment, "setup", lambda *a, **k: pytest.fail("set up again"))
    again = replicate.run(small_config(), workdir)
    assert comparable(again) == comparable(history)
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{workdir}: the run is complete (3 rounds)", replicate.summary(history[-1])]


def test_progress_always_shows_training_live(tmp_path):
    args = cli(
        tmp_path / "w",
        *(f"--config.{name}={value}" for name, value in SMALL.items()),
        "--config.query.num_batches=1",
        "--progress=always",
    )
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        "h0" in done.stderr and "examples/s" in done.stderr and "fine-tune round 1" in done.stderr
    )
    # The round lines stay on stdout, free of the display.
    assert all(line.startswith(("h0:", "round", "rounds")) for line in done.stdout.splitlines())
    quiet = subprocess.run(
        cli(
            tmp_path / "q",
            *(f"--config.{name}={value}" for name, value in SMALL.items()),
            "--config.query.num_batches=1",
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert quiet.returncode == 0 and quiet.stderr.strip() == "", quiet.stderr[-3000:]


def test_eight_devices_match_one_device(reference_run, tmp_path):
    """The data-parallel path (batches sharded over 8 CPU devices) gives the same run."""
    _, reference = reference_run
    script = (
        "import json, sys\n"
        "import jax\n"
        "from tests.test_replicate import small_config, comparable\n"
        "from launch import replicate\n"
        "assert len(jax.devices()) == 8, jax.devices()\n"
        f"history = replicate.run(small_config(), {str(tmp_path / 'run')!r}, verbose=False)\n"
        "print(json.dumps([history[0]['h0_cache_hit'], comparable(history)]))\n"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sharded_h0_cache_hit, sharded = json.loads(done.stdout.strip().splitlines()[-1])
    expected = comparable(reference)
    assert [r["labels_bought"] for r in sharded] == [r["labels_bought"] for r in expected]
    # Each side trained its own h0 (separate h0 caches), so the match covers h0's training.
    assert sharded_h0_cache_hit is False and reference[0]["h0_cache_hit"] is False
    for got, want in zip(sharded, expected, strict=True):
        for name, value in want.items():
            # The weight estimate (BCTS by L-BFGS, then EM) iterates to a tolerance, which
            # float32 reduction orders move by a few parts in 10^4.
            rtol = 2e-3 if name.startswith("weight") else 1e-4
            np.testing.assert_allclose(got[name], value, rtol=rtol, atol=1e-5, err_msg=name)


def test_no_compilation_after_round_one(reference_run):
    _, history = reference_run
    assert history[1]["compilations"] >= 0
    assert [r["compilations"] for r in history[2:]] == [0] * (len(history) - 2)


@pytest.mark.slow
def test_a_second_process_compiles_nothing_from_the_warm_compilation_cache(tmp_path):
    """Two processes, one cache beside their workdirs: the second loads every program."""
    flags = [
        "--config.model.name=mlp",
        "--config.shift.dataset_cap=200",
        "--config.query.num_batches=2",
        "--config.train.initial_epochs=1",
        "--config.train.partial_epochs=1",
        "--progress=never",
    ]
    runs = []
    for name in ("cold", "warm"):  # a fresh h0 cache each time: both train h0
        args = cli(tmp_path / name, *flags, f"--config.h0_cache_dir={tmp_path / name}_h0")
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        with open(tmp_path / name / "results.json") as f:
            runs.append([r["compilations"] for r in json.load(f)["rounds"]])
    assert os.listdir(tmp_path / "compilation_cache")
    assert runs[0][0] > 0
    assert runs[1] == [0, 0, 0], runs
