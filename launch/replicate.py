"""Run one MALLS experiment end to end, resumable, watched in TensorBoard.

    python -m launch.replicate --config configs/digits.py --workdir runs/digits
    python -m launch.replicate --config configs/digits.py --workdir runs/d3 --config.seed=3

The rounds themselves are library functions (alsa_jax.experiment): the shifted splits,
the initial network h0, the weight estimates, and each round's query, reveal, fine-tuning,
re-estimation and evaluation. This launcher adds what touches the outside world: the
command line, the workdir, the cache of h0 shared by runs beside each other, Orbax
checkpoints after every round, the results files, TensorBoard and the printed round lines.

Re-running the same command with the same --workdir resumes after the last complete
round and finishes with the same results as an uninterrupted run.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import ml_collections
import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from alsa_jax import checkpoint, experiment, malls
from alsa_jax import logging as results_log

T = TypeVar("T")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")

ConfigError = experiment.ConfigError

# Config fields of this launcher, not of the experiment's computation.
LAUNCHER_FIELDS = ("h0_cache_dir", "checkpoint_keep")


def options_of(config: ml_collections.ConfigDict) -> experiment.Options:
    """The experiment's options, and this launcher's own fields checked, as one-line errors."""
    options = experiment.Options.from_config(config, ignore=LAUNCHER_FIELDS)
    keep = config.get("checkpoint_keep", 2)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError(f"checkpoint_keep must be an integer >= 1, got {keep!r}")
    return options


# ---------------------------------------------------------------------------------------
# Timing.


class _Timer:
    """Wall seconds per phase (after device work finishes) and XLA compilations."""

    compilations = 0
    _listening = False

    def __init__(self):
        self.seconds: dict[str, float] = {}
        if not _Timer._listening:
            jax.monitoring.register_event_duration_secs_listener(_count_compilation)
            _Timer._listening = True
        self.start_compilations = _Timer.compilations

    def phase(self, name: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        key = f"seconds_{name}"
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start
        return out

    def compiled(self) -> int:
        return _Timer.compilations - self.start_compilations


def _count_compilation(event: str, duration: float, **_: Any) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _Timer.compilations += 1


_PHASE_NAMES = {
    "h0": "h0",
    "committee": "committee",
    "selection": "select",
    "finetune": "fit",
    "prediction": "predict",
    "estimation": "estimate",
    "evaluation": "eval",
}


def _summary(record: dict[str, Any]) -> str:
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


def _record(r: int, arrays: dict[str, Any], timer: _Timer, **extra: Any) -> dict[str, Any]:
    """A round's record as plain Python: the round first, then metrics, timing."""
    values = {name: np.asarray(v).tolist() for name, v in jax.device_get(arrays).items()}
    return {"round": r, **values, **timer.seconds, **extra, "compilations": timer.compiled()}


# ---------------------------------------------------------------------------------------
# The loop.


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    verbose: bool = True,
    stop_after_round: int | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) the experiment of ``config`` in ``workdir``; returns the round records.

    ``stop_after_round`` ends the run early after that round's checkpoint (the next
    call resumes from it).
    """
    say = print if verbose else (lambda *a, **k: None)
    options = options_of(config)
    exp = experiment.setup(options)  # bad values surface as one line, before any write
    config_dict = config.to_dict()
    try:
        checkpoint.claim_workdir(workdir, config_dict)
    except checkpoint.ExperimentMismatchError:
        raise
    except OSError as error:  # e.g. --workdir names a file
        raise ConfigError(f"--workdir={workdir} cannot hold a run: {error.strerror}") from None
    manager = checkpoint.RoundCheckpointer(
        os.path.join(workdir, "checkpoints"), keep=config.checkpoint_keep
    )
    state = experiment.initial_state(exp)

    latest = manager.latest_round()
    if latest is not None:
        state, history = manager.restore(latest, state)
        # A run killed between its checkpoint and its results files left them one behind.
        results_log.write_results(workdir, config_dict, history)
        say(f"resuming {workdir} after round {latest}")
        preds = experiment.predict(exp, state.train)
    else:
        state, preds, record = _round_zero(exp, state, config, workdir, say)
        history = [record]
        manager.save(0, state, history)
        results_log.write_results(workdir, config_dict, history)
        say(_summary(record))
        latest = 0

    # Events of rounds after the checkpoint (a crashed run's) are purged; the newest
    # checkpointed round is written again in case the crash came before its events.
    writer = results_log.ScalarWriter(workdir, resume_round=latest)
    writer.write(history[-1])
    q = options.query
    spread = f"diversify={q.diversify}"
    if q.diversify == "medial":
        spread += f" (medial_lambda={q.lambda_})"
    if latest < q.num_batches:
        say(
            f"rounds {latest + 1}..{q.num_batches}: {q.strategy}, "
            f"{exp.budget} labels a round, {spread}"
        )

    for r in range(latest + 1, q.num_batches + 1):
        if stop_after_round is not None and r > stop_after_round:
            break
        timer = _Timer()
        state, preds, arrays = experiment.run_round(exp, state, preds, r, phase=timer.phase)
        record = _record(r, arrays, timer)
        history.append(record)
        manager.save(r, state, history)
        results_log.write_results(workdir, config_dict, history)
        writer.write(record)
        say(_summary(record))
    writer.close()
    manager.close()
    return history


def _round_zero(
    exp: experiment.Experiment,
    state: malls.RoundState,
    config: ml_collections.ConfigDict,
    workdir: str,
    say: Callable[..., None],
) -> tuple[malls.RoundState, experiment.Predictions, dict[str, Any]]:
    """h0 (from the cache shared by runs beside each other, or trained), then round 0."""
    timer = _Timer()
    cache_dir = config.h0_cache_dir or os.path.join(
        os.path.dirname(os.path.abspath(workdir)), "h0_cache"
    )
    key = experiment.h0_key(exp.options)
    cached = checkpoint.load_h0(cache_dir, key, state.train)
    if cached is not None:
        say(f"h0: loaded from {checkpoint.h0_path(cache_dir, key)}")
        state = state.replace(train=cached)
        timer.seconds["seconds_h0"] = 0.0
    else:
        say(
            f"h0: training {exp.options.train.initial_epochs} epochs on "
            f"{int(np.sum(np.asarray(state.pool.warm)))} warm-start rows"
        )
        state = state.replace(train=timer.phase("h0", lambda: experiment.train_initial(exp, state)))
        checkpoint.save_h0(cache_dir, key, state.train)
    if state.committee is not None:
        say(f"committee: training {exp.options.query.committee_size} networks")
        state = timer.phase(
            "committee", lambda: experiment.train_committee(exp, state, initial=True)
        )
    state, preds, arrays = experiment.initial_round(exp, state, phase=timer.phase)
    return state, preds, _record(0, arrays, timer, h0_cache_hit=cached is not None)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None or not _WORKDIR.value:
        print("error: pass --config=configs/<name>.py and --workdir=<dir>", file=sys.stderr)
        sys.exit(2)
    try:
        _CONFIG.value.to_dict()  # config files load lazily: surface a bad path here
    except Exception as error:  # noqa: BLE001 - any failure to load the file, as one line
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        print(
            f"error: --config could not be loaded: {lines[-1] if lines else error!r}",
            file=sys.stderr,
        )
        sys.exit(2)
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file it writes at INFO
    try:
        run(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, checkpoint.ExperimentMismatchError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with bad flags (an unknown config field, say) as one line, exit 2."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as error:  # ml_collections: an override of no field
        field = str(error).strip("\"'")
        print(
            f"error: the config has no field {field!r}; see configs/base.py for the fields",
            file=sys.stderr,
        )
    except (flags.Error, ValueError, TypeError) as error:
        print(f"error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
