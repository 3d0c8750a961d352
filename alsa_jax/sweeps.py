"""Sweeps: many replicate runs (method x shift preset x seed) as one resumable experiment.

A sweep file (``configs/sweeps/*.py``) defines ``get_sweep()`` returning a list of
:class:`Run`, usually built by :func:`grid`. Each run is the replicate command line
``python -m launch.replicate --config <file> --workdir <sweep>/<method>/<shift>/seed<k>``
with the run's config overrides as ``--config.<field>=<value>`` flags, so that a run of a
sweep is exactly the run a user would start by hand, and it resumes from its own
checkpoints when started again.

This module holds what the sweep driver (``launch/sweep.py``) and a cluster job share:
loading and checking sweep files, the flags of a run, reading a run's progress from its
``results.json``, the per-run lock that keeps two processes out of one run directory, the
executors (local processes with a share of the cores or one accelerator each; Slurm or
local jobs through submitit) and the loop that starts each run when its h0 group allows.
It imports no JAX, so that a cluster job that only starts the replicate process stays
light.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import submitit

# A run directory's name parts: letters, digits and . _ + - (no separators, no "..").
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

# Returned by a cluster job that found its run directory locked by another process.
RUN_BUSY = -100

LOG_NAME = "run.log"
LOCK_NAME = ".sweep.lock"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SweepError(ValueError):
    """A sweep file, its runs or the sweep's workdir cannot be used (one-line message)."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One replicate run of a sweep: its method, shift preset, seed and config overrides.

    ``overrides`` maps dotted config fields (``"query.strategy"``) to values; it holds
    ``seed`` too. The run's directory under the sweep workdir is ``name``:
    ``<method>/<shift>/seed<seed>``.
    """

    method: str
    shift: str
    seed: int
    overrides: Mapping[str, Any]

    @property
    def name(self) -> str:
        """``<method>/<shift>/seed<seed>``: the run's directory and its name in messages."""
        return f"{self.method}/{self.shift}/seed{self.seed}"


def grid(
    methods: Mapping[str, Mapping[str, Any]],
    shifts: Mapping[str, Mapping[str, Any]],
    seeds: Iterable[int],
    *,
    common: Mapping[str, Any] | None = None,
) -> list[Run]:
    """Every (method, shift, seed) combination as a :class:`Run`.

    Each run's overrides are ``common``, then the shift's, then the method's, then
    ``seed``. Runs are ordered seed-major, so that the first runs started cover every
    seed's h0 before the methods sharing it.
    """
    runs = []
    for seed in seeds:
        for shift_name, shift_overrides in shifts.items():
            for method_name, method_overrides in methods.items():
                overrides = {**(common or {}), **shift_overrides, **method_overrides}
                overrides["seed"] = seed
                runs.append(Run(method_name, shift_name, seed, overrides))
    return runs


def load_sweep(path: str) -> list[Run]:
    """Import the sweep file at ``path`` and return its checked ``get_sweep()`` runs."""
    if not os.path.isfile(path):
        raise SweepError(f"--sweep={path}: no such file")
    digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(f"_sweep_{digest}", path)
    if spec is None or spec.loader is None:
        raise SweepError(f"--sweep={path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        get_sweep = module.get_sweep
    except Exception as error:  # noqa: BLE001 - any failure in the user's file, as one line
        raise SweepError(
            f"--sweep={path} could not be loaded: {type(error).__name__}: {error}"
        ) from None
    try:
        runs = get_sweep()
    except Exception as error:  # noqa: BLE001
        raise SweepError(
            f"--sweep={path}: get_sweep() failed: {type(error).__name__}: {error}"
        ) from None
    check_runs(runs, source=path)
    return list(runs)


def check_runs(runs: Any, *, source: str = "the sweep") -> None:
    """Raise a one-line :class:`SweepError` for a malformed run list.

    Checks that ``runs`` is a non-empty sequence of :class:`Run` with unique names made
    of path-safe parts, integer seeds, and overrides that are dotted field names mapped to
    values a command line can carry (bool, int, float, str or a tuple of them).
    """
    if not isinstance(runs, Sequence) or isinstance(runs, str) or not runs:
        raise SweepError(f"{source}: get_sweep() must return a non-empty list of sweeps.Run")
    seen: set[str] = set()
    for run in runs:
        if not isinstance(run, Run):
            raise SweepError(f"{source}: get_sweep() returned {run!r}, not a sweeps.Run")
        for part, value in (("method", run.method), ("shift", run.shift)):
            if not isinstance(value, str) or not _NAME.match(value):
                raise SweepError(
                    f"{source}: run {value!r}: the {part} name must be letters, digits and "
                    "'._+-' (it names a directory)"
                )
        if isinstance(run.seed, bool) or not isinstance(run.seed, int) or run.seed < 0:
            raise SweepError(f"{source}: run {run.name}: seed must be an integer >= 0")
        if run.name in seen:
            raise SweepError(f"{source}: run {run.name} appears twice")
        seen.add(run.name)
        if run.overrides.get("seed", run.seed) != run.seed:
            raise SweepError(
                f"{source}: run {run.name}: overrides set seed={run.overrides['seed']!r}; "
                "the run's seed is its seed field"
            )
        for field, value in run.overrides.items():
            if not isinstance(field, str) or not re.match(r"^[A-Za-z_][\w.]*$", field):
                raise SweepError(f"{source}: run {run.name}: {field!r} is not a config field")
            try:
                flag_value(value)
            except SweepError as error:
                raise SweepError(f"{source}: run {run.name}: {field}: {error}") from None


def flag_value(value: Any) -> str:
    """``value`` as the text of a ``--config.<field>=<text>`` flag."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise SweepError(f"{value!r} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, tuple | list) and all(
        isinstance(v, bool | int | float | str) for v in value
    ):
        return repr(tuple(value))
    if value is None:
        raise SweepError("None cannot be passed on the command line; leave the field out")
    raise SweepError(f"{value!r} ({type(value).__name__}) cannot be passed on the command line")


def run_flags(run: Run) -> list[str]:
    """The ``--config.<field>=<value>`` flags of ``run``, seed first."""
    overrides = {"seed": run.seed, **{k: v for k, v in run.overrides.items() if k != "seed"}}
    return [f"--config.{field}={flag_value(value)}" for field, value in overrides.items()]


def run_dir(workdir: str, run: Run) -> str:
    """The run's directory: ``<workdir>/<method>/<shift>/seed<k>``."""
    return os.path.join(workdir, run.method, run.shift, f"seed{run.seed}")


def replicate_command(config: str, directory: str, flags: Sequence[str]) -> list[str]:
    """The replicate command line of one run (absolute paths; run from the repo root)."""
    return [
        sys.executable,
        "-m",
        "launch.replicate",
        "--config",
        config,
        "--workdir",
        os.path.abspath(directory),
        *flags,
    ]


def progress(directory: str) -> tuple[int, int | None]:
    """(rounds finished, rounds in all) of the run in ``directory`` from its results.json.

    A run not started (or whose results cannot be read yet) has 0 rounds; the total is
    ``query.num_batches + 1`` from the stored config, or None when unknown.
    """
    try:
        with open(os.path.join(directory, "results.json")) as f:
            results = json.load(f)
        total = int(results["config"]["query"]["num_batches"]) + 1
        return len(results["rounds"]), total
    except (OSError, ValueError, KeyError, TypeError):
        return 0, None


def is_complete(directory: str) -> bool:
    """True when the run in ``directory`` has all its rounds in results.json."""
    done, total = progress(directory)
    return total is not None and done >= total


def try_lock(directory: str) -> int | None:
    """Take the run directory's exclusive lock; its file descriptor, or None when held.

    The lock lives as long as the descriptor's open file: a process started with it in
    ``pass_fds`` keeps the run locked even if its parent dies.
    """
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_locked(directory: str) -> bool:
    """True when another process holds the run directory's lock."""
    if not os.path.exists(os.path.join(directory, LOCK_NAME)):
        return False
    fd = try_lock(directory)
    if fd is None:
        return True
    os.close(fd)
    return False


@contextlib.contextmanager
def _affinity(cpus: frozenset[int] | None) -> Iterator[None]:
    """Pin the calling thread to ``cpus`` while a child is forked (it inherits the mask)."""
    if cpus is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def start_run(
    command: Sequence[str],
    directory: str,
    lock_fd: int,
    *,
    env: Mapping[str, str] | None = None,
    cpus: frozenset[int] | None = None,
) -> subprocess.Popen:
    """Start ``command`` with its output appended to ``<directory>/run.log``.

    The child holds the run's lock (``lock_fd``), runs from the repository root, and is
    pinned to ``cpus`` when given. Each start writes a header line with the command.
    """
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p
    )
    with open(os.path.join(directory, LOG_NAME), "a") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"=== {stamp} started: {shlex.join(command)}\n")
        log.flush()
        with _affinity(cpus):
            return subprocess.Popen(
                list(command),
                cwd=REPO_ROOT,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(lock_fd,),
            )


def _stop(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; a run resumes from its checkpoints."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _stop_pid(pid: int, grace: float = 20.0) -> None:
    """SIGTERM the child ``pid``, SIGKILL after ``grace`` seconds, and reap it.

    Waits with ``os.waitpid`` itself: :meth:`RunJob.checkpoint` runs in a signal handler
    that may have interrupted ``Popen.wait`` on the same child, whose lock it still holds.
    """

    def reaped() -> bool:
        try:
            return os.waitpid(pid, os.WNOHANG)[0] == pid
        except ChildProcessError:  # already reaped
            return True

    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if reaped():
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


class RunJob(submitit.helpers.Checkpointable):
    """One run as a submitit job: start the replicate command and wait for it.

    A complete run returns 0 at once; a run locked by another process returns
    :data:`RUN_BUSY`. On preemption or time-out submitit calls :meth:`checkpoint`: the
    replicate process is stopped and the same job is requeued; the requeued job starts
    the same command, which resumes after the run's last checkpointed round.
    """

    def __init__(self, command: Sequence[str], directory: str, env: Mapping[str, str]):
        self.command = list(command)
        self.directory = directory
        self.env = dict(env)
        self._process: subprocess.Popen | None = None

    def __call__(self) -> int:
        if is_complete(self.directory):
            return 0
        lock_fd = try_lock(self.directory)
        if lock_fd is None:
            return RUN_BUSY
        try:
            self._process = start_run(self.command, self.directory, lock_fd, env=self.env)
            return self._process.wait()
        finally:
            os.close(lock_fd)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Stop the replicate process and requeue this job (called on SIGUSR2)."""
        if self._process is not None:
            _stop_pid(self._process.pid)
        self._process = None
        return super().checkpoint(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_process": None}


# ---------------------------------------------------------------------------------------
# Executors: start runs, report the ones that ended. The driver decides what to start.


@dataclasses.dataclass(frozen=True)
class Task:
    """A run ready to execute: its name, directory, command and h0 group.

    Runs of one ``group`` (any hashable, e.g. the fingerprint of their h0 cache key) share
    one initial network: the first to start trains it, the others wait for it.
    """

    name: str
    directory: str
    command: tuple[str, ...]
    group: Any


@dataclasses.dataclass(frozen=True)
class Slot:
    """What one local run gets: a set of CPU cores and at most one accelerator."""

    cpus: frozenset[int] | None
    gpu: str | None = None

    def env(self) -> dict[str, str]:
        """Environment of a run in this slot: thread counts of its share, its accelerator."""
        threads = str(len(self.cpus)) if self.cpus else None
        env = {}
        if threads:
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
            env.update(OPENBLAS_NUM_THREADS=threads)
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        return env


def run_environment(workdir: str) -> dict[str, str]:
    """Environment variables for a sweep's runs (those already set by the user are kept).

    The runs share one persistent compilation cache through their config
    (``--config.compilation_cache_dir=<workdir>/compilation_cache``, added by
    ``launch.sweep``), so only the first runs compile their programs; here JAX is also
    told to cache programs however quickly they compile. ``workdir`` is the sweep's.
    """
    del workdir  # the cache folder travels in each run's config
    wanted = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return {name: value for name, value in wanted.items() if name not in os.environ}


def visible_gpus() -> list[str]:
    """Accelerator ids this process may use: ``CUDA_VISIBLE_DEVICES`` or ``nvidia-smi -L``."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def local_slots(
    parallel: int | None = None,
    *,
    cpus: Iterable[int] | None = None,
    gpus: Sequence[str] | None = None,
) -> list[Slot]:
    """Split the machine among ``parallel`` runs side by side.

    With accelerators, one run per accelerator (``parallel`` defaults to their number and
    may not exceed it); without, one run per core by default. The cores are dealt out in
    contiguous, near-equal shares.
    """
    cores = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    gpus = list(visible_gpus() if gpus is None else gpus)
    if parallel is None:
        parallel = len(gpus) or len(cores)
    if parallel < 1:
        raise SweepError(f"--parallel={parallel}: run at least one run at a time")
    if gpus and parallel > len(gpus):
        raise SweepError(
            f"--parallel={parallel} but {len(gpus)} accelerator(s) are visible; "
            "runs share no accelerator: lower --parallel"
        )
    shares = [
        cores[i * len(cores) // parallel : (i + 1) * len(cores) // parallel]
        for i in range(parallel)
    ]
    slots = []
    for i, share in enumerate(shares):
        slots.append(
            Slot(
                cpus=frozenset(share) if share else None,  # more runs than cores: unpinned
                gpu=gpus[i] if gpus else None,
            )
        )
    return slots


@dataclasses.dataclass
class Ended:
    """A task whose process or job ended: its exit code (RUN_BUSY: locked elsewhere)."""

    task: Task
    returncode: int
    seconds: float
    message: str = ""


class LocalExecutor:
    """Runs side by side as child processes, each pinned to its :class:`Slot`."""

    def __init__(self, slots: Sequence[Slot], *, env: Mapping[str, str] | None = None):
        self.slots = list(slots)
        self.env = dict(env or {})
        self._free = list(range(len(self.slots)))
        self._active: dict[str, tuple[Task, subprocess.Popen, int, int, float]] = {}

    @property
    def parallel(self) -> int:
        """Runs side by side at most."""
        return len(self.slots)

    def capacity(self) -> int:
        """Runs that could start now (free slots)."""
        return len(self._free)

    def start(self, tasks: Sequence[Task]) -> list[Ended]:
        """Start ``tasks`` (at most :meth:`capacity`); locked ones end at once as busy."""
        ended = []
        for task in tasks:
            lock_fd = try_lock(task.directory)
            if lock_fd is None:
                ended.append(Ended(task, RUN_BUSY, 0.0))
                continue
            index = self._free.pop(0)
            slot = self.slots[index]
            try:
                process = start_run(
                    task.command,
                    task.directory,
                    lock_fd,
                    env={**self.env, **slot.env()},
                    cpus=slot.cpus,
                )
            except OSError as error:
                os.close(lock_fd)
                self._free.append(index)
                ended.append(Ended(task, 127, 0.0, f"could not start: {error}"))
                continue
            self._active[task.name] = (task, process, lock_fd, index, time.monotonic())
        return ended

    def poll(self) -> list[Ended]:
        """The runs whose process ended since the last poll; frees their slots and locks."""
        ended = []
        for name, (task, process, lock_fd, index, started) in list(self._active.items()):
            code = process.poll()
            if code is None:
                continue
            os.close(lock_fd)
            self._free.append(index)
            del self._active[name]
            ended.append(Ended(task, code, time.monotonic() - started))
        self._free.sort()
        return ended

    def stop(self) -> None:
        """Stop every running child (SIGTERM; each run resumes from its checkpoints)."""
        for _, process, _, _, _ in self._active.values():
            if process.poll() is None:
                process.terminate()
        for _, process, lock_fd, _, _ in self._active.values():
            _stop(process)
            os.close(lock_fd)
        self._active.clear()

    def describe(self) -> str:
        """One line for the start of the sweep's output."""
        gpus = [s.gpu for s in self.slots if s.gpu is not None]
        cores = [len(s.cpus) for s in self.slots if s.cpus]
        where = f"{len(gpus)} accelerator(s)" if gpus else f"{sum(cores) or 'all'} core(s)"
        share = f", {min(cores)} core(s) each" if cores else ""
        return f"local: {self.parallel} run(s) side by side on {where}{share}"


class SubmititExecutor:
    """Runs as submitit jobs (Slurm job arrays, or submitit's local executor).

    Each start submits its tasks as one job array of :class:`RunJob`; a preempted or
    timed-out job is requeued by submitit and resumes from the run's checkpoints.
    """

    def __init__(
        self,
        folder: str,
        *,
        cluster: str,
        timeout_min: int,
        partition: str | None = None,
        gpus_per_job: int = 0,
        cpus_per_job: int | None = None,
        mem_gb: float | None = None,
        array_parallelism: int | None = None,
        max_requeues: int = 3,
        name: str = "alsa_sweep",
        env: Mapping[str, str] | None = None,
    ):
        kwargs = {f"{cluster}_max_num_timeout": max_requeues} if cluster == "slurm" else {}
        self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **kwargs)
        parameters: dict[str, Any] = {"name": name, "timeout_min": timeout_min}
        if gpus_per_job:
            parameters["gpus_per_node"] = gpus_per_job
        if cpus_per_job:
            parameters["cpus_per_task"] = cpus_per_job
        if mem_gb:
            parameters["mem_gb"] = mem_gb
        if cluster == "slurm":
            if partition:
                parameters["slurm_partition"] = partition
            if array_parallelism:
                parameters["slurm_array_parallelism"] = array_parallelism
        self.executor.update_parameters(**parameters)
        self.cluster = cluster
        self.array_parallelism = array_parallelism
        self._env = dict(env or {})
        if cpus_per_job:
            threads = str(cpus_per_job)
            self._env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        self._active: dict[str, tuple[Task, Any, float]] = {}

    @property
    def parallel(self) -> int:
        """Jobs expected to run at once (for the estimate of the time left)."""
        return self.array_parallelism or max(1, len(self._active))

    def capacity(self) -> int:
        """Unbounded: submitted jobs wait in the cluster's queue."""
        return sys.maxsize  # the cluster's scheduler queues what cannot start yet

    def start(self, tasks: Sequence[Task]) -> list[Ended]:
        """Submit ``tasks`` as one job array (a job finds a run locked elsewhere itself)."""
        if not tasks:
            return []
        # The job imports alsa_jax from this checkout: sbatch and the local executor pass
        # the environment on.
        path = os.environ.get("PYTHONPATH", "")
        if REPO_ROOT not in path.split(os.pathsep):
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, path) if p)
        jobs = self.executor.submit_array(
            [RunJob(task.command, task.directory, self._env) for task in tasks]
        )
        now = time.monotonic()
        for task, job in zip(tasks, jobs, strict=True):
            self._active[task.name] = (task, job, now)
        return []

    def poll(self) -> list[Ended]:
        """The jobs that finished since the last poll, with the run's exit code."""
        ended = []
        for name, (task, job, started) in list(self._active.items()):
            if not job.done():
                continue
            del self._active[name]
            seconds = time.monotonic() - started
            try:
                code = int(job.result())
                message = ""
            except Exception as error:  # noqa: BLE001 - a failed or cancelled job
                code = 1
                lines = str(error).strip().splitlines()
                message = f"job {job.job_id}: {lines[-1] if lines else type(error).__name__}"
            ended.append(Ended(task, code, seconds, message))
        return ended

    def stop(self) -> None:
        """Leave submitted jobs to the cluster: a new driver follows them through the locks."""
        self._active.clear()

    def describe(self) -> str:
        """One line for the start of the sweep's output."""
        return f"submitit ({self.cluster}): job arrays in {self.executor.folder}"


# ---------------------------------------------------------------------------------------
# The driver loop: start what may start, note what ended, until every run is done.


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Counts of runs for the progress line, and the estimated seconds left (or None)."""

    done: int
    running: int
    failed: int
    left: int
    eta_seconds: float | None


@dataclasses.dataclass(frozen=True)
class Failure:
    """A run that ended without finishing its rounds."""

    name: str
    returncode: int
    log: str
    message: str


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line and not line.startswith("===")]
    return lines[-1] if lines else ""


def execute(
    tasks: Sequence[Task],
    executor: LocalExecutor | SubmititExecutor,
    *,
    status_path: str | None = None,
    on_change: Any = None,
    on_message: Any = None,
    poll_seconds: float = 0.5,
) -> list[Failure]:
    """Run every task whose run is not complete; return the runs that failed.

    Order: a run starts when its h0 group's h0 exists (a run of the group has finished
    round 0) or when no run of its group is running yet (it then trains the group's h0
    for the others). A run whose directory is locked by another process (a job of an
    earlier driver, say) is waited for and started afterwards if still incomplete.
    ``on_change(snapshot)`` is called at every poll (the caller decides what to show),
    ``on_message(text)`` for each start, end and failure; ``status_path`` receives the
    state of every run as JSON after each change.
    """
    state: dict[str, str] = {}
    started: dict[str, float] = {}
    failures: dict[str, Failure] = {}
    durations: list[float] = []
    ready_groups: set[Any] = set()
    by_name = {task.name: task for task in tasks}
    say = on_message or (lambda text: None)
    for task in tasks:
        done, total = progress(task.directory)
        state[task.name] = "done" if total is not None and done >= total else "pending"
        if done >= 1:
            ready_groups.add(task.group)

    def snapshot() -> Snapshot:
        counts = {s: 0 for s in ("done", "running", "failed", "pending")}
        for s in state.values():
            counts["running" if s in ("running", "elsewhere") else s] += 1
        eta = None
        if durations:
            mean = sum(durations) / len(durations)
            now = time.monotonic()
            work = counts["pending"] * mean + sum(
                max(0.0, mean - (now - started[n])) for n, s in state.items() if s == "running"
            )
            lanes = max(1, min(executor.parallel, counts["pending"] + counts["running"]))
            eta = work / lanes
        elif counts["pending"] + counts["running"] == 0:
            eta = 0.0
        return Snapshot(counts["done"], counts["running"], counts["failed"], counts["pending"], eta)

    def record() -> None:
        if status_path is None:
            return
        payload = {
            name: {
                "state": state[name],
                "log": os.path.join(by_name[name].directory, LOG_NAME),
                **(
                    {"returncode": failures[name].returncode, "message": failures[name].message}
                    if name in failures
                    else {}
                ),
            }
            for name in state
        }
        tmp = f"{status_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(tmp, status_path)

    def finish(ended: Ended) -> None:
        task = ended.task
        if ended.returncode == RUN_BUSY:
            state[task.name] = "elsewhere"
            say(f"{task.name}: running in another process; waiting for it")
            return
        log = os.path.join(task.directory, LOG_NAME)
        if is_complete(task.directory):
            state[task.name] = "done"
            failures.pop(task.name, None)
            durations.append(ended.seconds)
            say(f"done    {task.name} ({ended.seconds:.0f}s)")
            return
        state[task.name] = "failed"
        reason = ended.message or (
            f"exit code {ended.returncode}" if ended.returncode else "exited before its last round"
        )
        detail = _last_line(log)
        message = f"{reason}: {detail}" if detail else reason
        failures[task.name] = Failure(task.name, ended.returncode, log, message)
        say(f"failed  {task.name} ({message}); log: {log}")

    record()
    try:
        while True:
            changed = False
            for ended in executor.poll():
                finish(ended)
                changed = True
            for name, s in state.items():
                if s == "elsewhere" and not is_locked(by_name[name].directory):
                    state[name] = "done" if is_complete(by_name[name].directory) else "pending"
                    changed = True
            for name, s in state.items():
                task = by_name[name]
                if s in ("running", "elsewhere") and task.group not in ready_groups:
                    if progress(task.directory)[0] >= 1:
                        ready_groups.add(task.group)
            active = {by_name[n].group for n, s in state.items() if s in ("running", "elsewhere")}
            chosen: list[Task] = []
            capacity = executor.capacity()
            for task in tasks:
                if len(chosen) >= capacity:
                    break
                if state[task.name] != "pending":
                    continue
                if task.group in ready_groups:
                    chosen.append(task)
                elif task.group not in active:  # this run trains the group's h0
                    chosen.append(task)
                    active.add(task.group)
            if chosen:
                now = time.monotonic()
                for task in chosen:
                    state[task.name] = "running"
                    started[task.name] = now
                    failures.pop(task.name, None)
                    say(f"start   {task.name}")
                for ended in executor.start(chosen):
                    finish(ended)
                changed = True
            if changed:
                record()
            if on_change is not None:
                on_change(snapshot())
            if not any(s in ("pending", "running", "elsewhere") for s in state.values()):
                break
            time.sleep(poll_seconds)
    finally:
        record()
    return [failures[name] for name in state if name in failures]
