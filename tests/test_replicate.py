"""End-to-end tests of the replicate loop on the embedded digits data."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
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
    typo = small_config()
    with typo.unlocked():
        typo.distributed.proces_id = 1
    with pytest.raises(replicate.ConfigError, match="'distributed.process_id'"):
        replicate.run(typo, str(tmp_path / "x"))
    jax.devices()  # this process has used JAX: too late to join others
    late = {"distributed.enabled": True, "distributed.coordinator_address": "localhost:1"}
    late.update({"distributed.num_processes": 1, "distributed.process_id": 0})
    with pytest.raises(replicate.ConfigError, match="needs a process that has not used JAX"):
        replicate.run(small_config(**late), str(tmp_path / "x"))
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


def _one_line_error(args, env=None):
    """Run the command line ``args`` (in ``env``, default this process's environment); it
    must exit 2 with exactly one non-empty line on stderr, which is returned."""
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
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
        # The fields of a run over several processes, named with the fix.
        (
            ["--config.distributed.num_processes=2"],
            "distributed.num_processes is set but distributed.enabled is False; add "
            "--config.distributed.enabled=True",
        ),
        (
            ["--config.distributed.enabled=True", "--config.distributed.num_processes=2"]
            + ["--config.distributed.process_id=2"],
            "distributed.process_id=2 must be below distributed.num_processes=2",
        ),
        (
            ["--config.distributed.enabled=True", "--config.distributed.coordinator_address=n1"],
            "distributed.coordinator_address must be host:port of process 0",
        ),
        (
            ["--config.distributed.enabled=True", "--config.distributed.num_processes=-1"],
            "distributed.num_processes must be an integer >= 1, or 0",
        ),
        (
            ["--config.distributed.enabled=True"]
            + ["--config.distributed.initialization_timeout=0"],
            "distributed.initialization_timeout must be a whole number of seconds >= 1",
        ),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, extra, message):
    line = _one_line_error(cli(tmp_path / "w", *extra))
    assert message in line
    assert "\\" not in line  # no escaped quotes or newlines
    assert not (tmp_path / "w").exists()


def test_cli_distributed_without_cluster_or_coordinator_is_one_line(tmp_path):
    """Outside a cluster, the fields JAX cannot detect must be given; nothing waits."""
    from tests.test_parallel import process_env

    line = _one_line_error(
        cli(tmp_path / "w", "--config.distributed.enabled=True"), env=process_env(devices=1)
    )
    assert line == (
        "error: distributed.coordinator_address is not set and no cluster environment (Slurm, "
        "Open MPI) gives it; start the processes with srun, or set "
        "distributed.coordinator_address, distributed.num_processes and distributed.process_id"
    )
    assert not (tmp_path / "w").exists()


def test_a_process_whose_others_never_come_is_stopped_after_the_timeout(tmp_path):
    from tests.test_parallel import free_port, process_env

    args = cli(
        tmp_path / "w",
        "--config.distributed.enabled=True",
        f"--config.distributed.coordinator_address=localhost:{free_port()}",
        "--config.distributed.num_processes=2",
        "--config.distributed.process_id=1",
        "--config.distributed.initialization_timeout=2",
    )
    start = time.monotonic()
    done = subprocess.run(
        args, cwd=ROOT, env=process_env(devices=1), capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and "DEADLINE_EXCEEDED" in done.stderr, done.stderr[-2000:]
    assert time.monotonic() - start < 60
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


def on_eight_devices(script):
    """Run ``script`` in a fresh process with 8 CPU devices; its last stdout line as JSON."""
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
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    sharded_h0_cache_hit, sharded = on_eight_devices(script)
    # Each side trained its own h0 (separate h0 caches), so the match covers h0's training.
    assert sharded_h0_cache_hit is False and reference[0]["h0_cache_hit"] is False
    assert_same_run(sharded, reference)


def assert_same_run(history, reference):
    """``history`` holds ``reference``'s rounds: the same labels bought, the metrics equal to
    float rounding (the data-parallel runs' reduction orders differ)."""
    expected = comparable(reference)
    got = comparable(history)
    assert [r["round"] for r in got] == [r["round"] for r in expected]
    assert [r["labels_bought"] for r in got] == [r["labels_bought"] for r in expected]
    assert [r["labels_paid"] for r in got] == [r["labels_paid"] for r in expected]
    for mine, want in zip(got, expected, strict=True):
        for name, value in want.items():
            # The weight estimate (BCTS by L-BFGS, then EM) iterates to a tolerance, which
            # float32 reduction orders move by a few parts in 10^4.
            rtol = 2e-3 if name.startswith("weight") else 1e-4
            np.testing.assert_allclose(mine[name], value, rtol=rtol, atol=1e-5, err_msg=name)


def _process_script(workdir, port, process_id, stop_after_round):
    """``python -c`` of one of two processes running the small experiment in ``workdir``,
    joined at ``localhost:port`` through the config, ending after ``stop_after_round``."""
    return (
        "from tests.test_replicate import small_config\n"
        "from launch import replicate\n"
        "config = small_config()\n"
        "config.distributed.enabled = True\n"
        f"config.distributed.coordinator_address = 'localhost:{port}'\n"
        "config.distributed.num_processes = 2\n"
        f"config.distributed.process_id = {process_id}\n"
        f"replicate.run(config, {str(workdir)!r}, stop_after_round={stop_after_round})\n"
    )


@pytest.mark.slow  # 50-80 s on 2 shared cores; tests/test_parallel.py has the fast core
def test_two_processes_run_and_resume_as_one(reference_run, tmp_path):
    """One run over two processes of 2 CPU devices each (one mesh of 4, batches split over
    both processes), stopped after round 1, resumed by one process to round 2, then by two
    processes started as srun starts them (the coordinator, the number of processes and
    each one's id from Slurm's environment): the rounds of one process, process 0 alone
    printing and writing."""
    from tests.test_parallel import free_port, process_env, run_processes

    _, reference = reference_run
    workdir = tmp_path / "run"
    port = free_port()
    started = run_processes(
        [
            (
                [sys.executable, "-c", _process_script(workdir, port, i, stop_after_round=1)],
                process_env(devices=2),
            )
            for i in range(2)
        ],
        timeout=240,
    )
    for code, _, err in started:
        assert code == 0, err[-3000:]
    assert "round   1 |" in started[0][1] and "round   2 |" not in started[0][1]
    assert "round" not in started[1][1]  # only process 0 prints
    # h0 was trained over both processes and stored by process 0 alone.
    assert os.listdir(tmp_path / "h0_cache") == [
        checkpoint.fingerprint(experiment.h0_key(replicate.options_of(small_config())))
    ]

    # Another number of processes resumes the same run: one, here, for round 2.
    replicate.run(small_config(), str(workdir), verbose=False, stop_after_round=2)

    port = free_port()
    srun = []
    for i in range(2):
        env = process_env(devices=2)
        env.update(
            SLURM_JOB_ID="4242",
            SLURM_STEP_NODELIST="localhost",
            SLURM_NTASKS="2",
            SLURM_PROCID=str(i),
            SLURM_LOCALID=str(i),
            JAX_COORDINATOR_PORT=str(port),  # instead of Slurm's port from the job id
        )
        flags = [f"--config.{name}={value}" for name, value in SMALL.items()]
        srun.append((cli(workdir, *flags, "--config.distributed.enabled=True"), env))
    resumed = run_processes(srun, timeout=240)
    for code, _, err in resumed:
        assert code == 0, err[-3000:]
    assert "resuming" in resumed[0][1] and "round   3 |" in resumed[0][1]
    assert "round" not in resumed[1][1] and "resuming" not in resumed[1][1]

    with open(workdir / "results.json") as f:
        assert_same_run(json.load(f)["rounds"], reference)
    # One writer a start: three starts, three TensorBoard event files.
    (run_dir,) = (workdir / "tensorboard").iterdir()
    assert len([n for n in os.listdir(run_dir) if n.startswith("events")]) == 3
    # The round-3 checkpoint the two processes wrote restores in one, as one process's.
    exp = experiment.setup(replicate.options_of(small_config()))
    restored = []
    for folder in (workdir, reference_run[0]):
        manager = checkpoint.RoundCheckpointer(os.path.join(folder, "checkpoints"))
        restored.append(manager.restore(3, experiment.initial_state(exp))[0])
        manager.close()
    final, expected = restored
    np.testing.assert_array_equal(final.pool.labeled, expected.pool.labeled)
    np.testing.assert_array_equal(final.key, expected.key)
    for got, want in zip(
        jax.tree_util.tree_leaves(final.train.params),
        jax.tree_util.tree_leaves(expected.train.params),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


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
