"""Run a sweep: every run of a sweep file, each in its own folder, with the replicate loop.

    python -m launch.sweep --config configs/digits.py \\
        --sweep configs/sweeps/digits_methods.py --workdir runs/digits_methods
    python -m launch.sweep --config configs/cifar10.py --sweep configs/sweeps/paper_methods.py \\
        --workdir runs/cifar10_methods --executor slurm --partition gpu --gpus_per_job 1

Each run is ``python -m launch.replicate --config <config> --workdir
<workdir>/<method>/<shift>/seed<k> --config.<field>=<value> ...`` with its output in
``run.log`` beside its results; ``--config.<field>=<value>`` flags given here apply to every
run (after the sweep's own overrides). Runs whose configs give the same h0 cache key (seed,
data, shift, model, initial training) share one h0 through ``<workdir>/h0_cache``. Every
run is checked before anything starts; a complete run is skipped, an interrupted one
resumes from its checkpoints, a failed one is named at the end (exit code 1) while the
others go on. Then:

    python -m launch.report runs/digits_methods
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import signal
import sys
import time
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags
from rich.console import Console
from rich.live import Live
from rich.text import Text

from alsa_jax import sweeps

SWEEP_FILE = "sweep.json"
STATUS_FILE = "sweep_status.json"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The sweep's flags, and the ``--config.<field>=<value>`` flags for every run."""
    parser = _Parser(prog="python -m launch.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="configs/<name>.py[:<arg>]")
    parser.add_argument("--sweep", required=True, help="configs/sweeps/<name>.py")
    parser.add_argument("--workdir", required=True, help="folder of the sweep's runs")
    parser.add_argument("--executor", default="local", choices=("local", "slurm", "submitit"))
    parser.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="local: runs side by side (default: one per accelerator, else one per core)",
    )
    parser.add_argument("--partition", default=None, help="slurm: partition")
    parser.add_argument("--time_min", type=int, default=24 * 60, help="minutes a job may run")
    parser.add_argument("--gpus_per_job", type=int, default=0)
    parser.add_argument("--cpus_per_job", type=int, default=None)
    parser.add_argument("--mem_gb", type=float, default=None)
    parser.add_argument("--array_parallelism", type=int, default=None, help="slurm: jobs at once")
    parser.add_argument("--max_requeues", type=int, default=3, help="slurm: time-outs requeued")
    parser.add_argument("--dry_run", action="store_true", help="check and list, start nothing")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config.") or "=" not in item:
            parser.error(
                f"unrecognised argument {item!r} (run overrides: --config.<field>=<value>)"
            )
        if item.split("=", 1)[0] == "--config.seed":
            parser.error("--config.seed: the sweep's runs set the seed")
        overrides.append(item)
    return args, overrides


# ---------------------------------------------------------------------------------------
# Every run's config, built exactly as the replicate command line will build it.


def config_path(spec: str) -> str:
    """``configs/x.py[:arg]`` with the file made absolute (runs start from the repo root)."""
    path, sep, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise sweeps.SweepError(f"--config={spec}: no such file")
    return os.path.abspath(path) + sep + arg


def parse_config(spec: str, overrides: list[str]) -> ml_collections.ConfigDict:
    """The config that ``--config spec`` plus ``overrides`` gives the replicate command."""
    values = flags.FlagValues()
    argv = ["replicate", "--config", spec, *overrides]
    holder = config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    config = holder.value
    config.to_dict()  # config files load lazily: surface their errors here
    return config


def _has_field(config: ml_collections.ConfigDict, dotted: str) -> bool:
    node: Any = config
    for name in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            return False
        node = node[name]
    return True


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A checked run: its command-line overrides, its config, and its h0 group.

    ``group`` is the fingerprint of the replicate driver's h0 cache key for this config,
    so runs in one group load the h0 that the first of them trains.
    """

    run: sweeps.Run
    flags: list[str]
    config: dict
    group: str


def resolve_runs(
    spec: str, runs: list[sweeps.Run], overrides: list[str], workdir: str
) -> list[Resolved]:
    """Each run with its flags, checked config and h0 group; a one-line SweepError names a
    bad run.

    Checks, before anything is written: every override names a field of the config (the
    fields of configs/base.py), parses as that field's type, and passes the replicate
    driver's own config checks (``launch.replicate.options_of``).
    """
    from alsa_jax import checkpoint, experiment
    from launch import replicate  # the driver's checks are the one source of truth

    try:
        base = parse_config(spec, [])
        replicate.options_of(base)
    except (experiment.ConfigError, flags.Error, ValueError, TypeError) as error:
        raise sweeps.SweepError(f"--config={spec}: {_one_line(error)}") from None
    except Exception as error:  # noqa: BLE001 - any failure of the config file
        raise sweeps.SweepError(
            f"--config={spec} could not be loaded: {_one_line(error)}"
        ) from None
    for item in overrides:
        field = item[len("--config.") :].split("=", 1)[0]
        if not _has_field(base, field):
            raise sweeps.SweepError(
                f"{item}: the config has no field {field!r}; see configs/base.py for the fields"
            )
    cache = f"--config.h0_cache_dir={os.path.join(os.path.abspath(workdir), 'h0_cache')}"
    compiled = "--config.compilation_cache_dir=" + os.path.join(
        os.path.abspath(workdir), "compilation_cache"
    )
    resolved = []
    for run in runs:
        for field in run.overrides:
            if not _has_field(base, field):
                raise sweeps.SweepError(
                    f"sweep run {run.name}: the config has no field {field!r}; "
                    "see configs/base.py for the fields"
                )
        run_overrides = sweeps.run_flags(run) + overrides
        if not any(f.startswith("--config.h0_cache_dir=") for f in run_overrides):
            run_overrides.append(cache)
        if not any(f.startswith("--config.compilation_cache_dir=") for f in run_overrides):
            run_overrides.append(compiled)
        try:
            config = parse_config(spec, run_overrides)
            options = replicate.options_of(config)
        except (experiment.ConfigError, flags.Error, ValueError, TypeError, KeyError) as error:
            raise sweeps.SweepError(f"sweep run {run.name}: {_one_line(error)}") from None
        if config.num_parallel_seeds != 1:
            raise sweeps.SweepError(
                f"sweep run {run.name}: num_parallel_seeds={config.num_parallel_seeds} would run "
                "several seeds inside one run's folder; a sweep gives each seed its own run "
                "(list the seeds in the sweep file)"
            )
        group = checkpoint.fingerprint(experiment.h0_key(options))
        config_dict = json.loads(json.dumps(config.to_dict()))
        # How many processes run it is not part of a run's identity (as in the driver's
        # experiment.json); sweeps recorded before the field existed still match.
        config_dict.pop("distributed", None)
        resolved.append(Resolved(run, run_overrides, config_dict, group))
    return resolved


def claim_workdir(workdir: str, record: dict) -> None:
    """Write ``sweep.json`` in a new workdir; refuse one that holds another sweep.

    The sweep is its runs' names and configs: a workdir made by the same sweep file on
    the same config (also with its runs half done) is accepted, anything else refused
    before a file is touched.
    """
    path = os.path.join(workdir, SWEEP_FILE)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise sweeps.SweepError(f"--workdir={workdir} is a file; name a folder")
    if os.path.exists(path):
        try:
            with open(path) as f:
                stored = json.load(f)["runs"]
        except (OSError, ValueError, KeyError) as error:
            raise sweeps.SweepError(
                f"--workdir={workdir}: {SWEEP_FILE} cannot be read ({_one_line(error)}); "
                "use a new --workdir"
            ) from None
        difference = _first_difference(stored, record["runs"])
        if difference:
            raise sweeps.SweepError(
                f"--workdir={workdir} holds another sweep ({difference}); "
                "use a new --workdir or the sweep and config that made it"
            )
        return
    if os.path.isdir(workdir) and os.listdir(workdir):
        raise sweeps.SweepError(
            f"--workdir={workdir} is not empty and holds no {SWEEP_FILE}; use a new --workdir"
        )
    os.makedirs(workdir, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)


def _first_difference(stored: dict, current: dict) -> str:
    for name in current:
        if name not in stored:
            return f"it has no run {name}"
    for name in stored:
        if name not in current:
            return f"it has a run {name} that this sweep has not"
    for name, config in current.items():
        fields = _differing_fields(stored[name], config)
        if fields:
            return f"run {name} differs in {', '.join(fields[:3])}"
    return ""


def _differing_fields(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differing_fields(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


# ---------------------------------------------------------------------------------------
# Progress: a live line in a terminal, one plain line per change in a log.


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "time left: estimating"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (
        f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
    )
    return f"~{text} left"


def progress_line(snapshot: sweeps.Snapshot, total: int) -> str:
    """``runs 3/9 done | 2 running | 0 failed | 4 left | ~1m20s left``."""
    return (
        f"runs {snapshot.done}/{total} done | {snapshot.running} running | "
        f"{snapshot.failed} failed | {snapshot.left} left | {_duration(snapshot.eta_seconds)}"
    )


class Progress:
    """Shows the driver's snapshots: rich's live line on a terminal, plain lines otherwise."""

    def __init__(self, total: int, *, console: Console | None = None):
        self.total = total
        self.console = console or Console(stderr=True)
        self.live = None
        if self.console.is_terminal:
            self.live = Live(Text(""), console=self.console, refresh_per_second=4, transient=True)
        self._last_counts: tuple | None = None

    def __enter__(self) -> Progress:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, snapshot: sweeps.Snapshot) -> None:
        """Redraw the live line, or print a plain line when the counts changed."""
        line = progress_line(snapshot, self.total)
        if self.live is not None:
            self.live.update(Text(line))
            return
        counts = (snapshot.done, snapshot.running, snapshot.failed, snapshot.left)
        if counts != self._last_counts:
            print(line, flush=True)
            self._last_counts = counts

    def message(self, text: str) -> None:
        """A line of its own (a run started, ended or failed)."""
        if self.live is not None:
            self.console.print(text, highlight=False)
        else:
            print(text, flush=True)


# ---------------------------------------------------------------------------------------


def check_executor(args: argparse.Namespace) -> None:
    """Refuse an executor that cannot run here, before anything is written."""
    if args.executor == "local":
        sweeps.local_slots(args.parallel)
    elif args.executor == "slurm" and shutil.which("srun") is None:
        raise sweeps.SweepError(
            "--executor=slurm: no srun on this machine; start the sweep on a Slurm login node"
        )
    for name in ("time_min", "gpus_per_job", "cpus_per_job", "mem_gb", "array_parallelism"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "gpus_per_job" else 1):
            raise sweeps.SweepError(f"--{name}={value}: must be positive")
    if args.max_requeues < 0:
        raise sweeps.SweepError(f"--max_requeues={args.max_requeues}: must be >= 0")


def make_executor(
    args: argparse.Namespace, workdir: str
) -> sweeps.LocalExecutor | sweeps.SubmititExecutor:
    """The executor the flags ask for; the runs share one JAX compilation cache."""
    env = sweeps.run_environment(workdir)
    if args.executor == "local":
        return sweeps.LocalExecutor(sweeps.local_slots(args.parallel), env=env)
    return sweeps.SubmititExecutor(
        os.path.join(workdir, "submitit"),
        cluster="slurm" if args.executor == "slurm" else "local",
        timeout_min=args.time_min,
        partition=args.partition,
        gpus_per_job=args.gpus_per_job,
        cpus_per_job=args.cpus_per_job,
        mem_gb=args.mem_gb,
        array_parallelism=args.array_parallelism,
        max_requeues=args.max_requeues,
        env=env,
    )


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Check every run, claim the workdir, run what is left; the exit code (0, 1, 2, 130)."""
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    workdir = os.path.abspath(args.workdir)
    try:
        spec = config_path(args.config)
        runs = sweeps.load_sweep(args.sweep)
        resolved = resolve_runs(spec, runs, overrides, workdir)
        check_executor(args)
        record = {
            "config": args.config,
            "sweep": args.sweep,
            "overrides": overrides,
            "runs": {item.run.name: item.config for item in resolved},
        }
        if args.dry_run:
            for item in resolved:
                directory = sweeps.run_dir(workdir, item.run)
                print(shlex.join(sweeps.replicate_command(spec, directory, item.flags)))
            return 0
        claim_workdir(workdir, record)
        executor = make_executor(args, workdir)
    except sweeps.SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    tasks = [
        sweeps.Task(
            name=item.run.name,
            directory=sweeps.run_dir(workdir, item.run),
            command=tuple(
                sweeps.replicate_command(spec, sweeps.run_dir(workdir, item.run), item.flags)
            ),
            group=item.group,
        )
        for item in resolved
    ]
    complete = sum(sweeps.is_complete(task.directory) for task in tasks)
    if complete == len(tasks):
        print(f"all {len(tasks)} runs in {args.workdir} are complete; nothing to run")
        return 0
    print(
        f"sweep: {len(tasks)} runs ({complete} complete) in {args.workdir}; {executor.describe()}",
        flush=True,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    start = time.monotonic()
    with Progress(len(tasks)) as shown:
        try:
            failures = sweeps.execute(
                tasks,
                executor,
                status_path=os.path.join(workdir, STATUS_FILE),
                on_change=shown.update,
                on_message=shown.message,
            )
        except KeyboardInterrupt:
            executor.stop()
            shown.message("interrupted: run the same command again to resume")
            return 130
    elapsed = time.monotonic() - start
    if failures:
        print(f"{len(failures)} of {len(tasks)} runs failed ({elapsed:.0f}s):", file=sys.stderr)
        for failure in failures:
            print(f"  {failure.name}: {failure.message}; log: {failure.log}", file=sys.stderr)
        return 1
    print(f"all {len(tasks)} runs complete ({elapsed:.0f}s)")
    print(f"report: python -m launch.report {args.workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
