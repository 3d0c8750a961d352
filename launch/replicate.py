"""Run one MALLS experiment end to end, resumable, watched in TensorBoard.

Usage:
  python -m launch.replicate --config configs/digits.py --workdir runs/digits
  python -m launch.replicate --config configs/cifar10.py:small --workdir runs/c10 \\
      --config.seed=3 --config.query.strategy=margin
  srun python -m launch.replicate --config configs/cifar10.py --workdir /shared/runs/c10 \\
      --config.distributed.enabled=True      # one run over the hosts of a Slurm job

Flags:
  --config FILE[:ARG]   the experiment's config file (configs/*.py); ARG goes to its
                        get_config (e.g. small, or a shift preset)
  --config.FIELD=VALUE  override any config field (see configs/base.py for the fields)
  --workdir DIR         where checkpoints, results and TensorBoard events go; running the
                        same command again resumes the run after its last complete round
  --progress MODE       live progress of long phases: auto (in a terminal only, the
                        default), always, never

The rounds themselves are library functions (alsa_jax.experiment): the shifted splits, the
initial network h0, the weight estimates, and each round's query, reveal, fine-tuning,
re-estimation and evaluation. This launcher adds what touches the outside world: the command
line, the workdir, the cache of h0 shared by runs beside each other, Orbax checkpoints after
every round, the results files, TensorBoard and the printed round lines.
"""

from __future__ import annotations

import difflib
import gc
import glob
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

T = TypeVar("T")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_PROGRESS = flags.DEFINE_enum(
    "progress", "auto", ["auto", "always", "never"], "Live progress of long phases."
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Config fields of this launcher, not of the experiment's computation.
LAUNCHER_FIELDS = (
    "h0_cache_dir",
    "checkpoint_keep",
    "compilation_cache_dir",
    "num_parallel_seeds",
    "distributed",
)

# distributed.*: each field's value when the run is on one host ("" / 0 / -1: from the cluster).
_DISTRIBUTED_DEFAULTS = {
    "coordinator_address": "",
    "num_processes": 0,
    "process_id": -1,
    "initialization_timeout": 300,
}


def _library():
    """The library, imported on first use: ``--help`` and bad command lines answer at once."""
    from alsa_jax import checkpoint, experiment

    return checkpoint, experiment


def options_of(config: ml_collections.ConfigDict):
    """The experiment's options, and this launcher's own fields checked, as one-line errors."""
    _, experiment = _library()
    distributed_settings(config)
    options = experiment.Options.from_config(config, ignore=LAUNCHER_FIELDS)
    keep = config.get("checkpoint_keep", 2)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise experiment.ConfigError(f"checkpoint_keep must be an integer >= 1, got {keep!r}")
    parallel = config.get("num_parallel_seeds", 1)
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise experiment.ConfigError(
            f"num_parallel_seeds must be an integer >= 1 (1 = this seed alone), got {parallel!r}"
        )
    cache = config.get("compilation_cache_dir", "")
    if not isinstance(cache, str):
        raise experiment.ConfigError(
            f"compilation_cache_dir must be a folder, '' or 'none', got {cache!r}"
        )
    return options


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def distributed_settings(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """``config.distributed`` checked (one-line errors): the arguments of
    :func:`alsa_jax.parallel.initialize`, or None for a run on one host. Touches no JAX."""
    _, experiment = _library()
    section = config.get("distributed")
    if section is None:  # a config made before the section existed: one host
        return None
    known = {"enabled", *_DISTRIBUTED_DEFAULTS}
    for name in section.keys():
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean 'distributed.{close[0]}'?)" if close else ""
            raise experiment.ConfigError(
                f"the config has no field 'distributed.{name}'{hint}; see configs/base.py"
            )
    values = {**_DISTRIBUTED_DEFAULTS, **{k: v for k, v in section.items() if k != "enabled"}}
    enabled = section.get("enabled", False)
    address, count, index = (
        values["coordinator_address"],
        values["num_processes"],
        values["process_id"],
    )
    timeout = values["initialization_timeout"]
    problem = None
    if not isinstance(enabled, bool):
        problem = f"distributed.enabled must be True or False, got {enabled!r}"
    elif not isinstance(address, str) or (address and not _is_host_port(address)):
        problem = (
            "distributed.coordinator_address must be host:port of process 0 (e.g. "
            f"node001:12345), or '' to take it from the cluster, got {address!r}"
        )
    elif not _is_int(count) or count < 0:
        problem = (
            "distributed.num_processes must be an integer >= 1, or 0 to take it from the "
            f"cluster, got {count!r}"
        )
    elif not _is_int(index) or index < -1:
        problem = (
            "distributed.process_id must be an integer >= 0, or -1 to take it from the "
            f"cluster, got {index!r}"
        )
    elif count and index >= count:
        problem = (
            f"distributed.process_id={index} must be below distributed.num_processes={count} "
            "(processes count from 0)"
        )
    elif not _is_int(timeout) or timeout < 1:
        problem = (
            "distributed.initialization_timeout must be a whole number of seconds >= 1, "
            f"got {timeout!r}"
        )
    if problem:
        raise experiment.ConfigError(problem)
    if not enabled:
        changed = [name for name, unset in _DISTRIBUTED_DEFAULTS.items() if values[name] != unset]
        if changed:
            raise experiment.ConfigError(
                f"distributed.{changed[0]} is set but distributed.enabled is False; add "
                "--config.distributed.enabled=True to run over several processes"
            )
        return None
    return values


def _is_host_port(address: str) -> bool:
    host, colon, port = address.rpartition(":")
    return bool(host and colon and port.isdigit() and 0 < int(port) < 65536)


# What jax.distributed.initialize says when the cluster does not give a field left to it.
_UNDETECTED = {
    "coordinator_address should be defined": "coordinator_address",
    "Number of processes must be defined": "num_processes",
    "process id of the current process must be defined": "process_id",
}


def join_processes(config: ml_collections.ConfigDict) -> None:
    """With ``distributed.enabled``: join the run's other processes (once per process).

    Must come before any other JAX call of the process. A field that neither the config
    nor the cluster's environment gives is a one-line :class:`ConfigError`.
    """
    settings = distributed_settings(config)
    if settings is None:
        return
    import jax

    from alsa_jax import parallel

    _, experiment = _library()
    if jax.distributed.is_initialized():  # joined already, by an earlier run in this process
        return
    try:
        parallel.initialize(**settings)
    except ValueError as error:
        field = next((f for text, f in _UNDETECTED.items() if text in str(error)), None)
        if field is None:
            raise experiment.ConfigError(f"distributed: {error}") from None
        raise experiment.ConfigError(
            f"distributed.{field} is not set and no cluster environment (Slurm, Open MPI) "
            "gives it; start the processes with srun, or set distributed.coordinator_address, "
            "distributed.num_processes and distributed.process_id"
        ) from None
    except RuntimeError as error:
        if "must be called before" not in str(error):
            raise
        raise experiment.ConfigError(
            "distributed.enabled=True needs a process that has not used JAX yet; run it "
            "through python -m launch.replicate (or call launch.replicate.run first)"
        ) from None


def __getattr__(name: str) -> Any:
    if name == "ConfigError":  # one class for every bad config value
        return _library()[1].ConfigError
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------
# Timing.


class _Timer:
    """Wall seconds per phase (after device work finishes) and XLA compilations."""

    _counter = None  # one CompileCounter, open for the rest of the process

    def __init__(self):
        from alsa_jax import compilation

        self.seconds: dict[str, float] = {}
        if _Timer._counter is None:
            _Timer._counter = compilation.CompileCounter().__enter__()
        # Programs loaded from the persistent compilation cache are not counted as compiled.
        self.start_compilations = _Timer._counter.compiled

    def phase(self, name: str, fn: Callable[[], T]) -> T:
        import jax

        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        key = f"seconds_{name}"
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start
        return out

    def compiled(self) -> int:
        return _Timer._counter.compiled - self.start_compilations


_PHASE_NAMES = {
    "h0": "h0",
    "committee": "committee",
    "selection": "select",
    "finetune": "fit",
    "prediction": "predict",
    "estimation": "estimate",
    "evaluation": "eval",
}


def summary(record: dict[str, Any]) -> str:
    """The printed line of a round's record."""
    phases = " ".join(
        f"{short} {record[f'seconds_{name}']:.2f}s"
        for name, short in _PHASE_NAMES.items()
        if f"seconds_{name}" in record
    )
    return (
        f"round {record['round']:3d} | labels {record['labels_paid']:5d} "
        f"(+{record['labels_bought']:4d}) | acc {record['accuracy']:.4f} "
        f"| class-avg {record['average_class_accuracy']:.4f} "
        f"| f1 {record['f1_macro']:.4f} | w-err {record['weight_l2_error']:.3f} "
        f"| shift {record['source_shift']:.3f} | {phases}"
    )


def _spread(q: Any) -> str:
    """How the query options spread a round's budget, as the round header says it."""
    if q.diversify == "medial":
        return f"diversify=medial (medial_lambda={q.lambda_})"
    return f"diversify={q.diversify}"


def _record(r: int, arrays: dict[str, Any], timer: _Timer, **extra: Any) -> dict[str, Any]:
    """A round's record as plain Python: the round first, then metrics, timing."""
    from alsa_jax import parallel

    values = {name: v.tolist() for name, v in parallel.to_host(arrays).items()}
    return {"round": r, **values, **timer.seconds, **extra, "compilations": timer.compiled()}


# ---------------------------------------------------------------------------------------
# The loop.


def _finished(workdir: str, config_dict: dict, num_rounds: int) -> list[dict] | None:
    """The history of a complete run in ``workdir`` of this config, or None."""
    from alsa_jax import logging as results_log

    checkpoint, _ = _library()
    try:
        stored = results_log.read_results(workdir)
        checkpoint.claim_workdir(workdir, config_dict)  # the same experiment, or refused
    except (OSError, ValueError, KeyError):
        return None
    rounds = stored.get("rounds", [])
    if len(rounds) == num_rounds + 1 and rounds[-1].get("round") == num_rounds:
        return rounds
    return None


def identity(config: ml_collections.ConfigDict, **changes: Any) -> dict[str, Any]:
    """The config that owns a workdir (``experiment.json``), with ``changes`` applied.

    Where compiled programs are cached, how many seeds run beside this one and how many
    processes compute it change nothing in the run's results, so they are not part of it: a
    workdir made before those fields existed, with another cache folder, by a run of several
    seeds, or on another number of hosts, resumes.
    """
    config_dict = {**config.to_dict(), **changes}
    for name in ("compilation_cache_dir", "num_parallel_seeds", "distributed"):
        config_dict.pop(name, None)
    return config_dict


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    verbose: bool = True,
    stop_after_round: int | None = None,
    progress_mode: str = "never",
) -> list[dict[str, Any]]:
    """Run (or resume) the experiment of ``config`` in ``workdir``; returns the round records.

    ``stop_after_round`` ends the run early after that round's checkpoint (the next call
    resumes from it). ``progress_mode`` (auto / always / never) shows long phases live.
    """
    from alsa_jax import compilation

    join_processes(config)  # before any other JAX call
    options = options_of(config)
    if config.get("num_parallel_seeds", 1) > 1:
        _, experiment = _library()
        raise experiment.ConfigError(
            f"num_parallel_seeds={config.num_parallel_seeds} runs several seeds: call "
            "run_seeds, which returns each seed's records"
        )
    # Compiled programs go to (and come from) the cache folder during the run only.
    with compilation.persistent_cache(compilation_cache_dir(config, workdir)):
        return _run(config, options, workdir, verbose, stop_after_round, progress_mode)


def seed_workdir(workdir: str, seed: int) -> str:
    """Where seed ``seed`` of a run of several seeds lives: ``<workdir>/seed<seed>``."""
    return os.path.join(workdir, f"seed{seed}")


def run_seeds(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    verbose: bool = True,
    stop_after_round: int | None = None,
    progress_mode: str = "never",
) -> dict[int, list[dict[str, Any]]]:
    """Run (or resume) seeds ``config.seed .. config.seed + num_parallel_seeds - 1`` of
    ``config`` together (:mod:`alsa_jax.seeds`); returns each seed's round records.

    Seed k's checkpoints, results and TensorBoard events go to ``<workdir>/seed<k>``,
    exactly as a run of that seed alone (``--config.seed=k --workdir <workdir>/seed<k>``)
    leaves them, so either resumes the other and reports read them as separate runs. Each
    record's ``seconds_<phase>`` are the seconds of that phase for all the seeds together. h0 and
    compiled programs are cached beside ``workdir`` (``<workdir>/../h0_cache``,
    ``<workdir>/../compilation_cache``) as for a single run, unless the config names other
    folders.
    """
    from alsa_jax import compilation

    options = options_of(config)
    if distributed_settings(config) is not None:
        _, experiment = _library()
        raise experiment.ConfigError(
            "num_parallel_seeds > 1 runs its seeds on one host; with distributed.enabled=True "
            "run one seed at a time over the hosts (num_parallel_seeds=1)"
        )
    seeds = [options.seed + i for i in range(config.get("num_parallel_seeds", 1))]
    with compilation.persistent_cache(compilation_cache_dir(config, workdir)):
        return _run_seeds(config, options, workdir, seeds, verbose, stop_after_round, progress_mode)


def _run(config, options, workdir, verbose, stop_after_round, progress_mode):
    from alsa_jax import logging as results_log
    from alsa_jax import parallel, progress

    checkpoint, experiment = _library()
    # With several processes all of them compute every round, save and restore the
    # checkpoints together (Orbax), and process 0 alone prints and writes the other files.
    primary = parallel.is_primary()
    say = print if verbose and primary else (lambda *a, **k: None)
    warn = (lambda m: print(m, file=sys.stderr)) if verbose and primary else (lambda m: None)
    config_dict = identity(config)
    together = sorted(glob.glob(os.path.join(workdir, "seed*", "experiment.json")))
    if together:
        raise experiment.ConfigError(
            f"--workdir={workdir} holds seeds run together ({os.path.dirname(together[0])}, ...); "
            "resume them with --config.num_parallel_seeds, or run one seed in its own folder "
            "(e.g. --workdir <workdir>/seed<k>)"
        )
    done = _finished(workdir, config_dict, options.query.num_batches)
    if done is not None:
        say(f"{workdir}: the run is complete ({options.query.num_batches} rounds)")
        say(summary(done[-1]))
        return done
    exp = experiment.setup(options)  # bad values surface as one line, before any write
    _claim(workdir, config_dict)
    display = progress.Progress(progress_mode if primary else "never")
    manager = checkpoint.RoundCheckpointer(
        os.path.join(workdir, "checkpoints"), keep=config.checkpoint_keep
    )
    state = experiment.initial_state(exp)

    restored = manager.restore_latest(state)
    if restored is not None:
        latest, state, history, skipped = restored
        for r, reason in skipped:
            warn(f"skipped the checkpoint of round {r}: {reason}")
        # A run killed between its checkpoint and its results files left them one behind.
        if primary:
            results_log.write_results(workdir, config_dict, history)
        say(f"resuming {workdir} after round {latest}")
        preds = experiment.predict(exp, state.train)
    else:
        state, preds, record = _round_zero(exp, state, config, workdir, say, warn, display)
        history = [record]
        manager.save(0, state, history)
        if primary:
            results_log.write_results(workdir, config_dict, history)
        say(summary(record))
        latest = 0

    writer = _open_writer(workdir, config_dict, exp.class_names, history) if primary else None
    q = options.query
    if latest < q.num_batches:
        say(
            f"rounds {latest + 1}..{q.num_batches}: {q.strategy}, "
            f"{exp.budget} labels a round, {_spread(q)}"
        )

    for r in range(latest + 1, q.num_batches + 1):
        if stop_after_round is not None and r > stop_after_round:
            break
        timer = _Timer()
        state, preds, arrays = experiment.run_round(
            exp, state, preds, r, phase=timer.phase, display=display
        )
        record = _record(r, arrays, timer)
        history.append(record)
        manager.save(r, state, history)
        if primary:
            results_log.write_results(workdir, config_dict, history)
            writer.write(record)
        say(summary(record))
    if writer is not None:
        writer.close()
    manager.close()
    return history


def _claim(workdir: str, config_dict: dict[str, Any]) -> None:
    """Make ``workdir`` this experiment's (or refuse it) as a one-line error."""
    checkpoint, experiment = _library()
    try:
        checkpoint.claim_workdir(workdir, config_dict)
    except checkpoint.CheckpointError:
        raise
    except OSError as error:  # e.g. --workdir names a file
        raise experiment.ConfigError(
            f"--workdir={workdir} cannot hold a run: {error.strerror}"
        ) from None


def _h0_cache_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    return config.h0_cache_dir or os.path.join(
        os.path.dirname(os.path.abspath(workdir)), "h0_cache"
    )


def _open_writer(workdir, config_dict, class_names, history):
    """The run's TensorBoard writer, with ``history`` written (again): a crash may have come
    before some rounds' events, and writing a round twice is idempotent."""
    from alsa_jax import logging as results_log

    writer = results_log.RunWriter(
        workdir,
        run_name=results_log.run_name(config_dict),
        hparams=results_log.hparams(config_dict),
        class_names=class_names or None,
    )
    for record in history:
        writer.write(record)
    return writer


def compilation_cache_dir(config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """The folder of JAX's persistent compilation cache for this run, or None (``"none"``)."""
    path = config.get("compilation_cache_dir", "")
    if path == "none":
        return None
    return path or os.path.join(os.path.dirname(os.path.abspath(workdir)), "compilation_cache")


def _round_zero(exp, state, config, workdir, say, warn, display):
    """h0 (from the cache shared by runs beside each other, or trained), then round 0."""
    from alsa_jax import parallel

    checkpoint, experiment = _library()
    timer = _Timer()
    cache_dir = _h0_cache_dir(config, workdir)
    key = experiment.h0_key(exp.options)
    cached = checkpoint.load_h0(cache_dir, key, state.train, on_corrupt=warn)
    if cached is not None:
        say(f"h0: loaded from {checkpoint.h0_path(cache_dir, key)}")
        state = state.replace(train=cached)
        timer.seconds["seconds_h0"] = 0.0
    else:
        warm = int(parallel.to_host(state.pool.warm).sum())
        say(f"h0: training {exp.options.train.initial_epochs} epochs on {warm} warm-start rows")
        state = state.replace(
            train=timer.phase("h0", lambda: experiment.train_initial(exp, state, display=display))
        )
        checkpoint.save_h0(cache_dir, key, state.train)
    if state.committee is not None:
        say(f"committee: training {exp.options.query.committee_size} networks")
        state = timer.phase(
            "committee",
            lambda: experiment.train_committee(exp, state, initial=True, display=display),
        )
    state, preds, arrays = experiment.initial_round(exp, state, phase=timer.phase)
    return state, preds, _record(0, arrays, timer, h0_cache_hit=cached is not None)


# ---------------------------------------------------------------------------------------
# Several seeds together.


def _seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """``config`` as the run of ``seed`` alone."""
    single = ml_collections.ConfigDict(config.to_dict())
    single.seed = seed
    single.num_parallel_seeds = 1
    return single


def _run_seeds(config, options, workdir, seed_list, verbose, stop_after_round, progress_mode):
    import dataclasses

    import jax

    from alsa_jax import logging as results_log
    from alsa_jax import progress
    from alsa_jax import seeds as stacked

    checkpoint, experiment = _library()
    say = print if verbose else (lambda *a, **k: None)
    warn = (lambda m: print(m, file=sys.stderr)) if verbose else (lambda m: None)
    num_rounds = options.query.num_batches
    dirs = [seed_workdir(workdir, s) for s in seed_list]
    dicts = [identity(config, seed=s) for s in seed_list]
    names = f"seeds {seed_list[0]}..{seed_list[-1]}"
    done = [_finished(d, c, num_rounds) for d, c in zip(dirs, dicts, strict=True)]
    if all(history is not None for history in done):
        say(f"{workdir}: the runs of {names} are complete ({num_rounds} rounds)")
        for seed, history in zip(seed_list, done, strict=True):
            say(f"seed {seed} | {summary(history[-1])}")
        return dict(zip(seed_list, done, strict=True))
    if os.path.exists(os.path.join(workdir, "experiment.json")):
        raise experiment.ConfigError(
            f"--workdir={workdir} holds a run of one seed; give the seeds together a folder "
            "of their own (each seed goes to <workdir>/seed<k>)"
        )
    runs = stacked.setup(options, seed_list)  # bad values surface as one line, before writes
    for d, c in zip(dirs, dicts, strict=True):
        _claim(d, c)
    display = progress.Progress(progress_mode)
    managers = [
        checkpoint.RoundCheckpointer(os.path.join(d, "checkpoints"), keep=config.checkpoint_keep)
        for d in dirs
    ]
    state = stacked.initial_state(runs)
    likes = [stacked.take(state, i) for i in range(len(seed_list))]
    latest = [m.latest_round() for m in managers]
    if any(r is not None for r in latest):
        # A run stopped while saving its seeds' checkpoints one after another (or a seed
        # run alone further): the seeds behind catch up alone, then all go on together.
        ahead = max(r for r in latest if r is not None)
        if stop_after_round is not None:
            ahead = min(ahead, stop_after_round)
        for i, seed in enumerate(seed_list):
            if latest[i] is None or latest[i] < ahead:
                say(f"seed {seed}: catching up to round {ahead} alone")
                single = dataclasses.replace(options, seed=seed)
                _run(
                    _seed_config(config, seed),
                    single,
                    dirs[i],
                    verbose,
                    ahead,
                    progress_mode,
                )
                managers[i].close()
                managers[i] = checkpoint.RoundCheckpointer(
                    os.path.join(dirs[i], "checkpoints"), keep=config.checkpoint_keep
                )
        restored = []
        for i, (seed, manager) in enumerate(zip(seed_list, managers, strict=True)):
            round_index, seed_state, history, skipped = manager.restore_latest(likes[i])
            for r, reason in skipped:
                warn(f"seed {seed}: skipped the checkpoint of round {r}: {reason}")
            results_log.write_results(dirs[i], dicts[i], history)
            restored.append((round_index, seed_state, history))
        rounds = {r for r, _, _ in restored}
        if len(rounds) > 1:  # stop_after_round below a seed's own progress: nothing to run
            return {s: h for s, (_, _, h) in zip(seed_list, restored, strict=True)}
        (latest_round,) = rounds
        state = stacked.stack([s for _, s, _ in restored])
        histories = [h for _, _, h in restored]
        say(f"resuming {workdir} ({names}) after round {latest_round}")
        preds = stacked.predict(runs, state.train)
    else:
        state, preds, records = _round_zero_seeds(runs, state, config, workdir, say, warn, display)
        histories = [[record] for record in records]
        for i in range(len(seed_list)):
            managers[i].save(0, stacked.take(state, i), histories[i])
            results_log.write_results(dirs[i], dicts[i], histories[i])
            say(f"seed {seed_list[i]} | {summary(records[i])}")
        latest_round = 0

    writers = [
        _open_writer(d, c, runs.template.class_names, h)
        for d, c, h in zip(dirs, dicts, histories, strict=True)
    ]
    q = options.query
    if latest_round < q.num_batches:
        budgets = ", ".join(str(e.budget) for e in runs.experiments)
        say(
            f"rounds {latest_round + 1}..{q.num_batches} of {names} together: {q.strategy}, "
            f"{budgets} labels a round, {_spread(q)}"
        )
    for r in range(latest_round + 1, q.num_batches + 1):
        if stop_after_round is not None and r > stop_after_round:
            break
        timer = _Timer()
        state, preds, arrays = stacked.run_round(
            runs, state, preds, r, phase=timer.phase, display=display
        )
        host = jax.device_get(arrays)
        for i, seed in enumerate(seed_list):
            record = _record(r, {name: v[i] for name, v in host.items()}, timer)
            histories[i].append(record)
            managers[i].save(r, stacked.take(state, i), histories[i])
            results_log.write_results(dirs[i], dicts[i], histories[i])
            writers[i].write(record)
            say(f"seed {seed} | {summary(record)}")
    for writer, manager in zip(writers, managers, strict=True):
        writer.close()
        manager.close()
    return dict(zip(seed_list, histories, strict=True))


def _round_zero_seeds(runs, state, config, workdir, say, warn, display):
    """Every seed's h0 (from the shared cache, or trained together), then round 0."""
    import jax

    from alsa_jax import seeds as stacked

    checkpoint, experiment = _library()
    timer = _Timer()
    cache_dir = _h0_cache_dir(config, workdir)
    keys = [experiment.h0_key(exp.options) for exp in runs.experiments]
    cached = [
        checkpoint.load_h0(cache_dir, key, stacked.take(state.train, i), on_corrupt=warn)
        for i, key in enumerate(keys)
    ]
    hits = [network is not None for network in cached]
    if all(hits):
        say(f"h0: loaded the {len(runs)} seeds' networks from {cache_dir}")
        timer.seconds["seconds_h0"] = 0.0
    else:
        warm = ", ".join(str(int(w)) for w in jax.device_get(state.pool.warm).sum(axis=1))
        say(
            f"h0: training {runs.options.train.initial_epochs} epochs on {warm} warm-start "
            f"rows ({len(runs)} seeds together)"
        )
        trained = timer.phase("h0", lambda: stacked.train_initial(runs, state, display=display))
        for i, key in enumerate(keys):
            if cached[i] is None:
                cached[i] = stacked.take(trained, i)
                checkpoint.save_h0(cache_dir, key, cached[i])
    state = state.replace(train=stacked.stack(cached))
    if state.committee is not None:
        say(f"committee: training {runs.options.query.committee_size} networks per seed")
        state = timer.phase(
            "committee",
            lambda: stacked.train_committee(runs, state, initial=True, display=display),
        )
    state, preds, arrays = stacked.initial_round(runs, state, phase=timer.phase)
    host = jax.device_get(arrays)
    records = [
        _record(0, {name: v[i] for name, v in host.items()}, timer, h0_cache_hit=hits[i])
        for i in range(len(runs))
    ]
    return state, preds, records


# ---------------------------------------------------------------------------------------
# The command line.


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _known_configs() -> str:
    names = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
    shown = [
        os.path.relpath(n, os.getcwd())
        for n in names
        if os.path.basename(n) not in ("__init__.py", "base.py", "presets.py")
    ]
    return ", ".join(shown)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}; see --help")
    if _CONFIG.value is None or not _WORKDIR.value:
        _fail("pass --config=configs/<name>.py and --workdir=<dir>; see --help")
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file it writes at INFO
    # A checkpoint write that fails (a full disk) can leave one of Orbax's write coroutines
    # unawaited; Python's warning about it at exit would follow the one-line error.
    warnings.filterwarnings(
        "ignore", message="coroutine .* was never awaited", category=RuntimeWarning
    )
    checkpoint, experiment = _library()
    try:
        config = _CONFIG.value
        runner = run_seeds if config.get("num_parallel_seeds", 1) > 1 else run
        runner(config, _WORKDIR.value, progress_mode=_PROGRESS.value)
    except (experiment.ConfigError, checkpoint.CheckpointError) as error:
        # A failed write can leave Orbax's write tasks unawaited or their exceptions
        # unretrieved; asyncio would log each when it is collected, after the one line.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        gc.collect()
        _fail(str(error))


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _unknown_override(argv: list[str]) -> str | None:
    """The first ``--config.<field>`` override that names no field of the base config."""
    from configs import base

    known = set()

    def walk(node: Any, prefix: str) -> None:
        for name in node.keys():
            known.add(f"{prefix}{name}")
            if isinstance(node[name], ml_collections.ConfigDict):
                walk(node[name], f"{prefix}{name}.")

    walk(base.get_config(), "")
    for arg in argv:
        if arg.startswith("--config."):
            field = arg[len("--config.") :].split("=", 1)[0]
            if field not in known:
                close = difflib.get_close_matches(field, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                return f"the config has no field {field!r}{hint}; see configs/base.py"
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    """Flags with every bad command line as one line and exit code 2; --help exits 0."""
    if any(arg in ("--help", "-h", "--helpshort", "--helpfull", "-?") for arg in argv[1:]):
        print(__doc__.strip())
        sys.exit(0)
    path = _config_path(argv)
    if path is not None:
        file = path.split(":", 1)[0]
        if not os.path.isfile(file):
            _fail(f"--config {file} does not exist; the configs are: {_known_configs()}")
    unknown = _unknown_override(argv)
    if unknown:
        _fail(unknown)
    try:
        remaining = flags.FLAGS(argv)
        if _CONFIG.present:
            _CONFIG.value.to_dict()  # config files load lazily: a broken file surfaces here
        return remaining
    except (flags.Error, ValueError, TypeError, AttributeError, KeyError) as error:
        # One line: the flag's message and, where a config file raised, the cause (the last
        # line of the traceback that config flags append).
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        if not lines:
            _fail(repr(error))
        _fail(lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}")
    except Exception as error:  # noqa: BLE001 - a config file that fails to run, as one line
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        _fail(f"--config could not be loaded: {lines[-1] if lines else repr(error)}")
    return []


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
