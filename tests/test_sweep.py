"""Tests of sweeps: sweep files and their checks (alsa_jax/sweeps.py), the order in which runs
start, the executors, and launch/sweep.py end to end on a tiny digits sweep."""

import dataclasses
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import pytest
import submitit
from submitit.slurm.test_slurm import mocked_slurm

from alsa_jax import sweeps
from launch import report as report_cli
from launch import sweep as sweep_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A digits experiment shrunk to seconds: 2 rounds on a 300-example cap, a small MLP.
TINY = {
    "model.name": "mlp",
    "shift.dataset_cap": 300,
    "query.num_batches": 2,
    "query.sample_prop": 0.2,
    "train.initial_epochs": 3,
    "train.partial_epochs": 1,
    "train.batch_size": 32,
    "train.learning_rate": 1e-2,
}

TINY_SWEEP = f"""
from alsa_jax import sweeps
from configs.sweeps import paper

def get_sweep():
    methods = {{"maxent": paper.uncorrected("maxent"), "malls": paper.malls("maxent")}}
    shifts = {{"target0.6": {{"shift.strategy": "dirichlet_target", "shift.alpha": 0.6}}}}
    return sweeps.grid(methods, shifts, seeds=[0, 1], common={TINY!r})
"""


def write_sweep(tmp_path, text=TINY_SWEEP, name="tiny.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------------------
# Sweep files.


def test_grid_names_order_and_overrides():
    runs = sweeps.grid(
        {"a": {"query.strategy": "maxent"}, "b": {"query.strategy": "random"}},
        {"mix": {"shift.alpha": 0.7}},
        seeds=[3, 4],
        common={"shift.alpha": 0.1, "train.batch_size": 32},
    )
    assert [r.name for r in runs] == ["a/mix/seed3", "b/mix/seed3", "a/mix/seed4", "b/mix/seed4"]
    assert runs[1].overrides == {
        "shift.alpha": 0.7,  # the shift's value beats the common one
        "train.batch_size": 32,
        "query.strategy": "random",
        "seed": 3,
    }
    assert sweeps.run_flags(runs[1]) == [
        "--config.seed=3",
        "--config.shift.alpha=0.7",
        "--config.train.batch_size=32",
        "--config.query.strategy=random",
    ]
    assert sweeps.run_dir("/w", runs[2]) == "/w/a/mix/seed4"


def test_h0_groups_are_the_drivers_h0_cache_key(tmp_path):
    def run(method, seed=0, **overrides):
        return sweeps.Run(method, "mix", seed, {"seed": seed, **overrides})

    runs = [
        run("a", **{"query.strategy": "maxent"}),
        # Query and label-shift fields, and the fine-tuning, act after h0: same group.
        run("b", **{"query.strategy": "margin", "label_shift.estimator": "none"}),
        run("c", **{"train.partial_epochs": 2, "shift.initial_prop": 0.1}),
        # Seed, shift and initial training change h0: groups of their own.
        run("d", seed=1),
        run("e", **{"shift.alpha": 0.1}),
        run("f", **{"train.initial_epochs": 5}),
    ]
    spec = os.path.join(ROOT, "configs", "digits.py")
    groups = [item.group for item in sweep_cli.resolve_runs(spec, runs, [], str(tmp_path))]
    assert groups[0] == groups[1] == groups[2]
    assert len(set(groups)) == 4


def test_a_runs_identity_leaves_out_the_processes_that_run_it(tmp_path):
    runs = [sweeps.Run("a", "mix", 0, {"seed": 0})]
    spec = os.path.join(ROOT, "configs", "digits.py")
    plain = sweep_cli.resolve_runs(spec, runs, [], str(tmp_path))
    joined = sweep_cli.resolve_runs(
        spec, runs, ["--config.distributed.enabled=True"], str(tmp_path)
    )
    assert plain[0].config == joined[0].config and "distributed" not in plain[0].config
    assert plain[0].config["seed"] == 0 and "query" in plain[0].config


def test_flag_values_round_trip_through_the_command_line():
    assert sweeps.flag_value(True) == "True"
    assert sweeps.flag_value(2e-6) == "2e-06"
    assert sweeps.flag_value((1.0, 1.0, 0.4)) == "(1.0, 1.0, 0.4)"
    flags = [
        "--config.label_shift.rlls_reg=" + sweeps.flag_value(2e-6),
        "--config.shift.alpha_triple=" + sweeps.flag_value((3.0, 3.0, 0.7)),
        "--config.label_shift.iterative=" + sweeps.flag_value(False),
        "--config.query.medial_lambda=" + sweeps.flag_value(0.5),
    ]
    config = sweep_cli.parse_config(os.path.join(ROOT, "configs", "digits.py"), flags)
    assert config.label_shift.rlls_reg == 2e-6
    assert tuple(config.shift.alpha_triple) == (3.0, 3.0, 0.7)
    assert config.label_shift.iterative is False
    assert config.query.medial_lambda == 0.5
    for bad in (None, float("nan"), {"a": 1}):
        with pytest.raises(sweeps.SweepError):
            sweeps.flag_value(bad)


@pytest.mark.parametrize(
    "body, message",
    [
        ("def get_sweep():\n    return []", "non-empty list"),
        ("def get_sweep():\n    return [1]", "not a sweeps.Run"),
        ("x = 1", "get_sweep"),
        ("def get_sweep():\n    raise RuntimeError('boom')", "boom"),
        (
            "from alsa_jax import sweeps\ndef get_sweep():\n"
            "    return sweeps.grid({'a b': {}}, {'s': {}}, [0])",
            "method name",
        ),
        (
            "from alsa_jax import sweeps\ndef get_sweep():\n"
            "    return sweeps.grid({'a': {}}, {'s': {}}, [0, 0])",
            "appears twice",
        ),
        (
            "from alsa_jax import sweeps\ndef get_sweep():\n"
            "    return sweeps.grid({'a': {'query.medial_lambda': None}}, {'s': {}}, [0])",
            "run a/s/seed0: query.medial_lambda: None cannot be passed",
        ),
    ],
)
def test_malformed_sweep_files_are_named(tmp_path, body, message):
    path = write_sweep(tmp_path, body)
    with pytest.raises(sweeps.SweepError) as error:
        sweeps.load_sweep(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_every_shipped_sweep_file_checks_against_the_config(tmp_path):
    counts = {}
    for name in ("paper_methods", "paper_shifts", "paper_posterior_ablations", "digits_methods"):
        runs = sweeps.load_sweep(os.path.join(ROOT, "configs", "sweeps", f"{name}.py"))
        spec = os.path.join(ROOT, "configs", "digits.py")
        resolved = sweep_cli.resolve_runs(spec, runs, [], str(tmp_path / name))
        counts[name] = len(resolved)
        assert len({item.config["seed"] for item in resolved}) == (
            3 if name == "digits_methods" else 10
        )
    assert counts == {
        "paper_methods": 70,
        "paper_shifts": 490,
        "paper_posterior_ablations": 70,
        "digits_methods": 12,
    }
    assert not os.listdir(tmp_path)  # checking writes nothing
    runs = sweeps.load_sweep(os.path.join(ROOT, "configs", "sweeps", "paper_methods.py"))
    malls = next(r for r in runs if r.method == "malls_bald")
    assert malls.overrides["label_shift.estimator"] == "rlls"
    assert malls.overrides["query.diversify"] == "medial"
    assert malls.overrides["label_shift.importance_weighting"] is True
    assert malls.overrides["query.strategy"] == "bald"
    assert malls.overrides["shift.strategy"] == "dirichlet_mix"
    assert malls.overrides["shift.alpha"] == 0.7
    uncorrected = {r.method for r in runs if r.overrides["label_shift.estimator"] == "none"}
    assert uncorrected == {"random", "maxent", "margin", "bald"}


# ---------------------------------------------------------------------------------------
# Bad input on the command line: one line, exit code 2, nothing written.


def run_main(capsys, *args):
    code = sweep_cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "common, message",
    [
        (
            {"query.stratgy": "margin"},
            "sweep run maxent/target0.6/seed0: the config has no field 'query.stratgy'",
        ),
        ({"train.optimizer": "adamm"}, "sweep run maxent/target0.6/seed0: train.optimizer="),
        ({"shift.dataset_cap": "many"}, "sweep run maxent/target0.6/seed0: "),
        ({"query.sample_prop": 2.0}, "query.sample_prop"),
        ({"num_parallel_seeds": 2}, "num_parallel_seeds=2 would run several seeds"),
    ],
)
def test_unknown_field_or_value_names_the_run(tmp_path, capsys, common, message):
    text = TINY_SWEEP.replace(f"common={TINY!r}", f"common={common!r}")
    workdir = tmp_path / "sweep"
    code, _, err = run_main(
        capsys,
        "--config",
        os.path.join(ROOT, "configs", "digits.py"),
        "--sweep",
        write_sweep(tmp_path, text),
        "--workdir",
        str(workdir),
        "--dry_run",  # checks come first; a check that let a run through starts nothing
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not workdir.exists()


@pytest.mark.parametrize("case", ["other_sweep", "not_a_sweep", "file", "config", "flag"])
def test_bad_workdir_config_or_flag_is_refused(tmp_path, capsys, case):
    workdir = tmp_path / "sweep"
    config = os.path.join(ROOT, "configs", "digits.py")
    extra = []
    if case == "other_sweep":
        workdir.mkdir()
        (workdir / "sweep.json").write_text(json.dumps({"runs": {"x/y/seed0": {}}}))
    elif case == "not_a_sweep":
        workdir.mkdir()
        (workdir / "results.json").write_text("{}")
    elif case == "file":
        workdir.write_text("")
    elif case == "config":
        config = str(tmp_path / "missing.py")
    elif case == "flag":
        extra = ["--config.query.stratgy=margin"]
    sweep_file = write_sweep(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    stamp = (workdir / "sweep.json").read_text() if case == "other_sweep" else None
    code, _, err = run_main(
        capsys,
        "--config",
        config,
        "--sweep",
        sweep_file,
        "--workdir",
        str(workdir),
        *extra,
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    expected = {
        "other_sweep": "holds another sweep (it has no run maxent/target0.6/seed0)",
        "not_a_sweep": "holds no sweep.json",
        "file": "is a file",
        "config": "no such file",
        "flag": "no field 'query.stratgy'",
    }[case]
    assert expected in lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    if stamp is not None:
        assert (workdir / "sweep.json").read_text() == stamp


def test_argument_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep_cli.parse_args(["--config", "c.py", "--sweep", "s.py"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        sweep_cli.parse_args(["--config", "c", "--sweep", "s", "--workdir", "w", "--config.seed=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "the sweep's runs set the seed" in err[1]


def test_slurm_without_slurm_is_one_line(tmp_path, capsys):
    code, _, err = run_main(
        capsys,
        "--config",
        os.path.join(ROOT, "configs", "digits.py"),
        "--sweep",
        write_sweep(tmp_path),
        "--workdir",
        str(tmp_path / "sweep"),
        "--executor",
        "slurm",
    )
    assert code == 2 and "srun" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------------------------------
# The driver's order, with a stand-in executor whose runs advance one round per poll.


def write_results(directory, rounds, total=3):
    os.makedirs(directory, exist_ok=True)
    results = {"config": {"query": {"num_batches": total - 1}}, "rounds": [{}] * rounds}
    with open(os.path.join(directory, "results.json"), "w") as f:
        json.dump(results, f)


class SteppingExecutor:
    """Each running task finishes one round per poll; tasks named in ``fail`` crash."""

    def __init__(self, parallel, fail=()):
        self.parallel = parallel
        self.fail = set(fail)
        self.running = {}
        self.events = []
        self.tick = 0

    def capacity(self):
        return self.parallel - len(self.running)

    def start(self, tasks):
        ended = []
        for task in tasks:
            if sweeps.is_locked(task.directory):
                ended.append(sweeps.Ended(task, sweeps.RUN_BUSY, 0.0))
                continue
            self.events.append((self.tick, "start", task.name))
            self.running[task.name] = [task, sweeps.progress(task.directory)[0]]
        return ended

    def poll(self):
        self.tick += 1
        ended = []
        for name, entry in list(self.running.items()):
            task, rounds = entry
            if name in self.fail:
                del self.running[name]
                ended.append(sweeps.Ended(task, 1, 1.0))
                continue
            entry[1] = rounds + 1
            write_results(task.directory, entry[1])
            if entry[1] == 3:
                del self.running[name]
                ended.append(sweeps.Ended(task, 0, 1.0))
        return ended


def tasks_for(workdir, names_and_groups):
    return [
        sweeps.Task(name, os.path.join(workdir, name), ("true",), (group,))
        for name, group in names_and_groups
    ]


def test_siblings_wait_for_their_h0_group_and_failures_are_recorded(tmp_path):
    workdir = str(tmp_path)
    tasks = tasks_for(workdir, [("a1", 0), ("a2", 0), ("a3", 0), ("b1", 1), ("c1", 2)])
    executor = SteppingExecutor(parallel=4, fail={"c1"})
    snapshots, messages = [], []
    failures = sweeps.execute(
        tasks,
        executor,
        status_path=str(tmp_path / "status.json"),
        on_change=snapshots.append,
        on_message=messages.append,
        poll_seconds=0.0,
    )
    starts = {name: tick for tick, kind, name in executor.events if kind == "start"}
    # One run per group first; a1's siblings only after a1 finished round 0 (next poll).
    first = starts["a1"]
    assert starts["b1"] == starts["c1"] == first
    assert starts["a2"] == starts["a3"] == first + 1
    assert [f.name for f in failures] == ["c1"]
    assert failures[0].log == os.path.join(workdir, "c1", "run.log")
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["c1"]["state"] == "failed" and status["c1"]["returncode"] == 1
    assert all(status[n]["state"] == "done" for n in ("a1", "a2", "a3", "b1"))
    assert (snapshots[0].running, snapshots[0].left) == (3, 2)  # a2, a3 wait for h0
    final = snapshots[-1]
    assert (final.done, final.running, final.failed, final.left) == (4, 0, 1, 0)
    assert any(m.startswith("failed  c1") and "run.log" in m for m in messages)


def test_leader_that_fails_before_h0_hands_the_group_on(tmp_path):
    tasks = tasks_for(str(tmp_path), [("a1", 0), ("a2", 0), ("a3", 0)])
    executor = SteppingExecutor(parallel=3, fail={"a1"})
    sweeps.execute(tasks, executor, poll_seconds=0.0)
    first = executor.events[0][0]
    starts = [(tick - first, name) for tick, kind, name in executor.events]
    # a2 takes over training the h0 alone; a3 waits for a2's round 0.
    assert starts == [(0, "a1"), (1, "a2"), (2, "a3")]


def test_complete_runs_are_skipped_and_a_locked_run_is_waited_for(tmp_path):
    workdir = str(tmp_path)
    tasks = tasks_for(workdir, [("done", 0), ("locked", 1), ("fresh", 2)])
    write_results(tasks[0].directory, 3)
    write_results(tasks[1].directory, 1)
    lock = sweeps.try_lock(tasks[1].directory)  # another process works on it

    def finish_elsewhere():
        time.sleep(0.3)
        write_results(tasks[1].directory, 3)
        os.close(lock)

    helper = threading.Thread(target=finish_elsewhere)
    helper.start()
    executor = SteppingExecutor(parallel=3)
    messages = []
    failures = sweeps.execute(tasks, executor, on_message=messages.append, poll_seconds=0.05)
    helper.join()
    assert failures == []
    assert [name for _, _, name in executor.events] == ["fresh"]  # nothing else ran
    assert "locked: running in another process; waiting for it" in messages


# ---------------------------------------------------------------------------------------
# Executors.


def test_local_slots_share_cores_and_accelerators():
    slots = sweeps.local_slots(2, cpus=[0, 1, 2, 3], gpus=[])
    assert [sorted(s.cpus) for s in slots] == [[0, 1], [2, 3]]
    assert slots[0].env()["OMP_NUM_THREADS"] == "2" and "CUDA_VISIBLE_DEVICES" not in slots[0].env()
    assert len(sweeps.local_slots(cpus=[0, 1, 2], gpus=[])) == 3  # one run per core
    gpu_slots = sweeps.local_slots(cpus=range(8), gpus=["2", "5"])
    assert [s.env()["CUDA_VISIBLE_DEVICES"] for s in gpu_slots] == ["2", "5"]
    assert [len(s.cpus) for s in gpu_slots] == [4, 4]
    with pytest.raises(sweeps.SweepError, match="accelerator"):
        sweeps.local_slots(3, cpus=range(8), gpus=["0", "1"])
    more = sweeps.local_slots(3, cpus=[0, 1], gpus=[])
    assert [s.cpus for s in more].count(None) == 1  # more runs than cores: one unpinned


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux CPU affinity")
def test_local_executor_pins_each_run_to_its_share(tmp_path):
    core = min(os.sched_getaffinity(0))
    executor = sweeps.LocalExecutor([sweeps.Slot(cpus=frozenset({core}))], env={"MARK": "x"})
    script = "import os; print(sorted(os.sched_getaffinity(0)), os.environ['MARK'])"
    task = sweeps.Task("t", str(tmp_path / "t"), (sys.executable, "-c", script), ())
    assert executor.start([task]) == [] and executor.capacity() == 0
    assert executor.start([]) == []
    ended = []
    while not ended:
        ended = executor.poll()
        time.sleep(0.05)
    assert ended[0].returncode == 0 and executor.capacity() == 1
    log = (tmp_path / "t" / "run.log").read_text()
    assert f"[{core}] x" in log and log.startswith("=== ")
    assert sorted(os.sched_getaffinity(0)) != [core] or len(os.sched_getaffinity(0)) == 1
    assert not sweeps.is_locked(str(tmp_path / "t"))  # released when the run ended
    lock = sweeps.try_lock(str(tmp_path / "t"))  # another sweep works on it
    (busy,) = executor.start([task])
    os.close(lock)
    assert busy.returncode == sweeps.RUN_BUSY and executor.capacity() == 1
    assert log == (tmp_path / "t" / "run.log").read_text()  # nothing started


class _Requeued(Exception):
    pass


def test_run_job_skips_complete_or_locked_runs_and_requeues_itself(tmp_path):
    directory = str(tmp_path / "run")
    sleeper = (sys.executable, "-c", "import time; time.sleep(60)")
    job = sweeps.RunJob(sleeper, directory, {})
    lock = sweeps.try_lock(directory)
    assert job() == sweeps.RUN_BUSY
    os.close(lock)

    # Preemption as submitit delivers it: SIGUSR2 reaches the job's main thread while it
    # waits on the run; the handler calls checkpoint() and leaves by an exception.
    def handler(signum, frame):
        raise _Requeued(job.checkpoint())

    def preempt_when_started():
        deadline = time.time() + 30
        while job._process is None and time.time() < deadline:
            time.sleep(0.05)
        started["process"] = job._process
        os.kill(os.getpid(), signal.SIGUSR2)

    started = {}
    previous = signal.signal(signal.SIGUSR2, handler)
    try:
        helper = threading.Thread(target=preempt_when_started)
        helper.start()
        with pytest.raises(_Requeued) as requeued:
            job()
        helper.join()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    delayed = requeued.value.args[0]
    process = started["process"]
    with pytest.raises(ChildProcessError):  # stopped and reaped by checkpoint()
        os.waitpid(process.pid, os.WNOHANG)
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function is job and job._process is None
    assert pickle.loads(pickle.dumps(job)).command == list(sleeper)  # picklable for requeue
    assert not sweeps.is_locked(directory)  # the requeued job can take the run again
    write_results(directory, 3)
    assert job() == 0  # complete: nothing started
    assert (tmp_path / "run" / "run.log").read_text().count("=== ") == 1


@pytest.mark.slow
def test_preempted_submitit_job_is_requeued_and_resumes(tmp_path):
    directory = tmp_path / "run"
    flags = [f"--config.{field}={value}" for field, value in TINY.items()]
    flags.append(f"--config.h0_cache_dir={tmp_path / 'h0'}")
    command = sweeps.replicate_command(os.path.join(ROOT, "configs", "digits.py"), directory, flags)
    executor = submitit.AutoExecutor(folder=str(tmp_path / "submitit"), cluster="local")
    executor.update_parameters(timeout_min=60)
    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    job = executor.submit(sweeps.RunJob(command, str(directory), {}))
    deadline = time.time() + 300
    while sweeps.progress(str(directory))[0] < 1 and time.time() < deadline:
        time.sleep(0.05)
    assert not sweeps.is_complete(str(directory))
    controller = job._process.pid
    (task,) = open(f"/proc/{controller}/task/{controller}/children").read().split()
    os.kill(int(task), signal.SIGUSR2)  # what Slurm sends before preemption or time-out
    assert job.result() == 0
    assert "this job is preempted" in job.stderr() and "Requeued job" in job.stdout()
    log = (directory / "run.log").read_text()
    assert log.count("=== ") == 2 and "resuming" in log
    assert sweeps.is_complete(str(directory))


def test_slurm_job_arrays_carry_partition_time_gpus_and_requeue(tmp_path):
    with mocked_slurm():
        executor = sweeps.SubmititExecutor(
            str(tmp_path / "submitit"),
            cluster="slurm",
            timeout_min=120,
            partition="gpu",
            gpus_per_job=1,
            cpus_per_job=4,
            mem_gb=16,
            array_parallelism=8,
            max_requeues=5,
        )
        tasks = tasks_for(str(tmp_path), [("a", 0), ("b", 0), ("c", 1)])
        assert executor.start(tasks) == []
        (script,) = (tmp_path / "submitit").glob("*_submission.sh")
        text = script.read_text()
    for line in (
        "#SBATCH --array=0-2%3",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=120",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16GB",
        "#SBATCH --signal=USR2@90",  # submitit's preemption / time-out signal: requeue
    ):
        assert line in text
    assert executor.executor._executor.max_num_timeout == 5


# ---------------------------------------------------------------------------------------
# End to end: the tiny digits sweep.


def sweep_command(workdir, sweep_file, *extra):
    return [
        sys.executable,
        "-m",
        "launch.sweep",
        "--config",
        "configs/digits.py",
        "--sweep",
        sweep_file,
        "--workdir",
        str(workdir),
        *extra,
    ]


def logs(workdir):
    return {
        os.path.relpath(os.path.dirname(p), workdir): open(p).read().count("=== ")
        for p in map(str, sorted(workdir.rglob("run.log")))
    }


def check_complete(workdir):
    names = ["maxent", "malls"]
    hits = {}
    for method in names:
        for seed in (0, 1):
            directory = workdir / method / "target0.6" / f"seed{seed}"
            results = json.loads((directory / "results.json").read_text())
            assert len(results["rounds"]) == 3
            assert results["config"]["seed"] == seed
            assert results["config"]["h0_cache_dir"] == str(workdir / "h0_cache")
            hits.setdefault(seed, []).append(results["rounds"][0]["h0_cache_hit"])
            events = [p.name for p in (directory / "tensorboard").rglob("events*")]
            assert events, f"no TensorBoard events under {directory}"
    # Runs sharing seed and shift share one h0: each seed trained it once.
    assert {seed: sorted(h) for seed, h in hits.items()} == {0: [False, True], 1: [False, True]}


def test_local_sweep_killed_midway_resumes_what_was_left(tmp_path):
    workdir = tmp_path / "sweep"
    sweep_file = write_sweep(tmp_path)
    command = sweep_command(workdir, sweep_file, "--parallel", "1")
    first = workdir / "maxent" / "target0.6" / "seed0"
    second = workdir / "malls" / "target0.6" / "seed0"
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if sweeps.is_complete(str(first)) and (second / "run.log").exists():
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and the run it started
    output = process.communicate()[0].decode()
    assert sweeps.is_complete(str(first)), output
    assert not sweeps.is_complete(str(second)), output

    # Resumed two at a time: the executor may change between starts, the sweep may not.
    command = sweep_command(workdir, sweep_file, "--parallel", "2")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sweep: 4 runs (1 complete)" in result.stdout
    assert "runs 4/4 done | 0 running | 0 failed | 0 left" in result.stdout
    check_complete(workdir)
    # Only what was left ran again: the interrupted run twice, the others once.
    assert logs(workdir) == {
        "maxent/target0.6/seed0": 1,
        "malls/target0.6/seed0": 2,
        "maxent/target0.6/seed1": 1,
        "malls/target0.6/seed1": 1,
    }
    status = json.loads((workdir / "sweep_status.json").read_text())
    assert {s["state"] for s in status.values()} == {"done"}

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (
        again.returncode == 0 and "all 4 runs" in again.stdout and "nothing to run" in again.stdout
    )
    assert sum(logs(workdir).values()) == 5  # nothing started

    path, (item,) = report_cli.write_report(str(workdir), num_bootstrap=100)
    assert sorted(item.runs) == ["malls", "maxent"] and item.baselines == ["maxent"]
    assert item.table is not None and set(item.table.rows) == {"malls", "maxent"}
    assert {"accuracy.png", "accuracy.svg", "summary.csv", "report.md"} <= set(os.listdir(path))


def test_submitit_local_executor_runs_the_sweep(tmp_path):
    workdir = tmp_path / "sweep"
    command = sweep_command(workdir, write_sweep(tmp_path), "--executor", "submitit")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "submitit (local)" in result.stdout
    check_complete(workdir)
    assert any((workdir / "submitit").glob("*_result.pkl"))
    assert set(logs(workdir).values()) == {1}


def test_a_failing_run_is_named_and_the_others_go_on(tmp_path):
    # shift.initial_prop labels most of the pool up front, leaving too few rows for
    # query.sample_prop: the replicate driver refuses that run when it builds its splits.
    text = TINY_SWEEP.replace(
        '"malls": paper.malls("maxent")',
        '"malls": {**paper.malls("maxent"), "shift.initial_prop": 0.95}',
    ).replace("seeds=[0, 1]", "seeds=[0]")
    workdir = tmp_path / "sweep"
    command = sweep_command(workdir, write_sweep(tmp_path, text), "--parallel", "2")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    log = workdir / "malls" / "target0.6" / "seed0" / "run.log"
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("1 of 2 runs failed"), result.stderr
    assert lines[1].startswith(
        "  malls/target0.6/seed0: exit code 2: error: query.sample_prop=0.2 asks for"
    )
    assert lines[1].endswith(f"lower one of them; log: {log}")
    assert sweeps.is_complete(str(workdir / "maxent" / "target0.6" / "seed0"))
    status = json.loads((workdir / "sweep_status.json").read_text())
    assert status["malls/target0.6/seed0"]["state"] == "failed"
    assert status["malls/target0.6/seed0"]["log"] == str(log)


def test_progress_line_live_on_a_terminal_plain_in_a_log(capsys):
    import io

    from rich.console import Console

    snapshot = sweeps.Snapshot(done=3, running=2, failed=1, left=4, eta_seconds=80.4)
    line = "runs 3/10 done | 2 running | 1 failed | 4 left | ~1m20s left"
    assert sweep_cli.progress_line(snapshot, 10) == line
    waiting = sweeps.Snapshot(0, 2, 0, 8, None)
    assert sweep_cli.progress_line(waiting, 10).endswith("| time left: estimating")
    assert sweep_cli.progress_line(sweeps.Snapshot(0, 1, 0, 0, 7300), 1).endswith("~2h01m left")

    # Not a terminal: one plain line per change of the counts, none for the estimate alone.
    plain = sweep_cli.Progress(10, console=Console(file=io.StringIO(), force_terminal=False))
    with plain:
        plain.update(snapshot)
        plain.update(dataclasses.replace(snapshot, eta_seconds=60.0))
        plain.message("done    a/b/seed0 (3s)")
        plain.update(dataclasses.replace(snapshot, done=4, left=3))
    assert capsys.readouterr().out.splitlines() == [
        line,
        "done    a/b/seed0 (3s)",
        "runs 4/10 done | 2 running | 1 failed | 3 left | ~1m20s left",
    ]

    # A terminal: rich's live line, redrawn in place, messages printed above it.
    screen = io.StringIO()
    live = sweep_cli.Progress(10, console=Console(file=screen, force_terminal=True, width=100))
    assert live.live is not None
    with live:
        live.update(snapshot)
        live.message("done    a/b/seed0 (3s)")
        live.live.refresh()
        assert "runs 3/10 done" in screen.getvalue()
    assert "done    a/b/seed0 (3s)" in screen.getvalue()
    assert capsys.readouterr().out == ""


def test_readme_sweep_example_runs_as_a_dry_run(tmp_path, capsys):
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme.split("## Sweeps and reports", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    workdir = tmp_path / "sweep"
    code, out, err = run_main(
        capsys,
        "--config",
        os.path.join(ROOT, "configs", "digits.py"),
        "--sweep",
        write_sweep(tmp_path, example),
        "--workdir",
        str(workdir),
        "--dry_run",
    )
    assert code == 0, err
    commands = out.strip().splitlines()
    assert len(commands) == 20  # 2 methods x 1 shift x 10 seeds
    assert f"--workdir {workdir}/malls_maxent/dirichlet_mix-0.7/seed9 " in commands[-1]
    assert "--config.label_shift.estimator=none" in commands[0]
    assert not workdir.exists()
