"""Round checkpoints and the shared cache of initial networks h0, both through Orbax.

A run's workdir holds ``checkpoints/<round>/`` (the whole round state plus the metric
history) and ``experiment.json`` (the config that made them). Orbax writes each step to
a temporary directory and renames it when complete, so a run killed at any moment
leaves only complete rounds behind, and a restart resumes from the newest of them.

A machine that crashes (or a disk that fills) during a write can still leave a renamed
checkpoint whose files are cut short. :meth:`RoundCheckpointer.restore_latest` then
falls back to the newest checkpoint that restores cleanly and says which ones it
skipped; a write that the disk refuses stops with a one-line :class:`WriteError` and
leaves the previous checkpoint as it was. Every failure the user can act on is a
:class:`CheckpointError` (a ``ValueError``) whose message is one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from alsa_jax import parallel


class CheckpointError(ValueError):
    """A checkpoint or a run file cannot be read or written; the message is one line."""


class ExperimentMismatchError(CheckpointError):
    """The workdir holds checkpoints of an experiment with another config."""


class CorruptCheckpointError(CheckpointError):
    """No round checkpoint of the workdir restores."""


class WriteError(CheckpointError, OSError):
    """The file system refused a write (disk full, quota, read-only, file too large).

    Also an ``OSError`` carrying the ``errno`` of the refused write (None when unknown),
    so that callers handling file-system errors catch it too.
    """

    def __init__(self, message: str, code: int | None = None):
        OSError.__init__(self, code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able object (a config dict)."""
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()[:16]


def _json_round_trip(obj: Any) -> Any:
    # Key order is kept: a record's fields stay in the order the loop wrote them.
    return json.loads(json.dumps(obj, default=str))


def claim_workdir(workdir: str, experiment: dict) -> None:
    """Record ``experiment`` (the config as a dict) in ``workdir/experiment.json``.

    A workdir already holding another experiment raises :class:`ExperimentMismatchError`
    naming the first differing fields; nothing in it is touched. With several processes
    (one workdir shared by all) each of them checks and process 0 writes.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "experiment.json")
    current = json.loads(_canonical(experiment))
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        if stored != current:
            diff = sorted(_differences(stored, current))
            shown = ", ".join(diff[:3]) + (" ..." if len(diff) > 3 else "")
            raise ExperimentMismatchError(
                f"--workdir={workdir} holds another experiment (differs in {shown}); "
                "use a new --workdir or the config that made it"
            )
        return
    elif os.path.isdir(os.path.join(workdir, "checkpoints")) and os.listdir(
        os.path.join(workdir, "checkpoints")
    ):
        raise ExperimentMismatchError(
            f"--workdir={workdir} holds checkpoints without experiment.json; use a new --workdir"
        )
    if jax.process_index() == 0:
        atomic_write_text(path, json.dumps(current, indent=2, sort_keys=True))


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in set(a) | set(b):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


# ---------------------------------------------------------------------------------------
# Failures as one line.

# The errno texts of a write that the file system refuses, as OSError and TensorStore say them.
_STORAGE_FAILURES = (
    "No space left on device",
    "Disk quota exceeded",
    "File too large",
    "Read-only file system",
    "Permission denied",
    "Input/output error",
)


def _one_line(error: BaseException, limit: int = 200) -> str:
    """The gist of ``error`` on one line: an errno text if there is one, else its head."""
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = " ".join(str(error).split()) or type(error).__name__
    for failure in _STORAGE_FAILURES:
        if failure in text:
            return failure
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if type(error) is not ValueError else text


def _errno(error: BaseException) -> int | None:
    if isinstance(error, OSError):
        return error.errno
    found = re.search(r"os_error_code='?(\d+)", str(error))
    return int(found.group(1)) if found else None


def _is_storage_failure(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return True
    text = str(error)
    return "os_error_code" in text or any(failure in text for failure in _STORAGE_FAILURES)


class _DropOrbaxErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}orbax{os.sep}" not in record.pathname


def _drop_abandoned_read(unraisable: Any, previous: Callable[[Any], None]) -> None:
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
        return  # a read that a failed restore left unfinished, collected later
    if (
        isinstance(unraisable.exc_value, RuntimeError)
        and str(unraisable.exc_value) == "Event loop is closed"
    ):
        return  # TensorStore completing such a read on the failed call's closed event loop
    previous(unraisable)


_unraisable_filter_installed = False


@contextlib.contextmanager
def _orbax_failures_as_one_line() -> Iterator[None]:
    """Keep Orbax's own error logs and abandoned reads off stderr while failures are caught.

    A restore or save that fails here is reported by the caller in one line; Orbax's
    logged tracebacks (and the pending reads of a failed restore, which raise again when
    collected at exit) would repeat it at length.
    """
    global _unraisable_filter_installed
    if not _unraisable_filter_installed:
        previous = sys.unraisablehook
        sys.unraisablehook = lambda u: _drop_abandoned_read(u, previous)
        _unraisable_filter_installed = True
    quiet = _DropOrbaxErrors()
    loggers = [logging.getLogger("absl"), logging.getLogger()]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def _join_orbax_threads(timeout: float = 60.0) -> None:
    """Wait for Orbax's writer threads: a failed save raises before all of them end.

    Orbax's threads re-raise their own failure from ``join``; the caller already holds
    the first one.
    """
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and type(thread).__module__.startswith(
            "orbax."
        ):
            with contextlib.suppress(Exception):
                thread.join(timeout)


# ---------------------------------------------------------------------------------------
# Small files written whole.


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it.

    A reader sees the old file or the new one, never a part. The file gets the mode of
    any new file (0666 less the umask), is flushed to disk before the rename, and a
    write the file system refuses raises :class:`WriteError` with nothing left behind.
    """
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".tmp-{os.path.basename(path)}-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise WriteError(f"could not write {path}: {_one_line(error)}", _errno(error)) from None


# ---------------------------------------------------------------------------------------
# Round checkpoints.


class RoundCheckpointer:
    """Saves the round state pytree and the JSON metric history after every round.

    ``directory`` holds one Orbax step per round (``<directory>/<round>/``), the newest
    ``keep`` of them; temporary directories of writes that never finished are removed
    when the checkpointer opens.
    """

    def __init__(self, directory: str, *, keep: int = 2):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
        )
        with _orbax_failures_as_one_line():  # a damaged step's metadata is reported later
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=("state", "history")
            )

    def latest_round(self) -> int | None:
        """The newest complete round saved, or None (its files are not read)."""
        return self._manager.latest_step()

    def save(self, round_index: int, state: Any, history: list[dict]) -> None:
        """Save ``state`` (a pytree of arrays) and ``history`` (JSON) as ``round_index``.

        A write the file system refuses (full disk, quota, read-only, file size limit)
        raises :class:`WriteError`: the partial files are removed and the previous
        checkpoint stays as it was, so the same command resumes from it once there is
        room.
        """
        try:
            with _orbax_failures_as_one_line():
                try:
                    self._manager.save(
                        round_index,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardSave(state),
                            history=ocp.args.JsonSave(_json_round_trip(history)),
                        ),
                    )
                    self._manager.wait_until_finished()
                except Exception:
                    _join_orbax_threads()  # the other writes of this save, still failing
                    raise
        except Exception as error:
            if not _is_storage_failure(error):
                raise
            self._discard_unfinished(round_index)
            kept = self._manager.latest_step()
            resume = "start again" if kept is None else f"resume after round {kept}"
            raise WriteError(
                f"could not write the checkpoint of round {round_index} in {self.directory}: "
                f"{_one_line(error)}; free space and run the same command again to {resume}",
                _errno(error),
            ) from None

    def _discard_unfinished(self, round_index: int) -> None:
        """Remove what a failed save of ``round_index`` wrote (best effort).

        TensorStore may still finish a write into it for a moment after the failure;
        whatever remains is removed when a checkpointer next opens the directory.
        """
        prefix = f"{round_index}.orbax-checkpoint-tmp"
        for attempt in range(10):
            try:
                left = [n for n in os.listdir(self.directory) if n.startswith(prefix)]
            except OSError:
                return
            if not left:
                return
            if attempt:
                time.sleep(0.1)
            for name in left:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def restore(self, round_index: int, like: Any) -> tuple[Any, list[dict]]:
        """Restore round ``round_index`` into the structure of ``like`` (a state pytree)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self._manager.restore(
            round_index,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], list(restored["history"])

    def restore_latest(
        self, like: Any
    ) -> tuple[int, Any, list[dict], list[tuple[int, str]]] | None:
        """The newest round that restores cleanly: ``(round, state, history, skipped)``.

        Rounds are tried newest first; one whose files are cut short or unreadable (or
        whose history does not end with its own round) is skipped, and ``skipped`` lists
        each as ``(round, reason)`` with a one-line reason, newest first. Skipped rounds are
        deleted, since the resumed run computes and saves them again. None when there is
        no checkpoint at all; :class:`CorruptCheckpointError` (one line) when there are
        checkpoints and none restores (then nothing is deleted).
        """
        with _orbax_failures_as_one_line():
            rounds = sorted(self._manager.all_steps(), reverse=True)
        if not rounds:
            return None
        skipped: list[tuple[int, str]] = []
        for round_index in rounds:
            try:
                with _orbax_failures_as_one_line():
                    state, history = self.restore(round_index, like)
                    jax.block_until_ready(state)
                _check_history(round_index, history)
            except Exception as error:  # noqa: BLE001 - any failure to read: the next one
                skipped.append((round_index, _one_line(error)))
                continue
            for bad, _ in skipped:
                self._manager.delete(bad)
            return round_index, state, history, skipped
        reasons = "; ".join(f"round {r}: {reason}" for r, reason in skipped)
        raise CorruptCheckpointError(
            f"no checkpoint in {self.directory} restores ({reasons}); "
            "move the folder aside and run the same command again to start over"
        )

    def close(self) -> None:
        self._manager.close()


def _check_history(round_index: int, history: Any) -> None:
    if (
        not isinstance(history, list)
        or not history
        or not isinstance(history[-1], dict)
        or history[-1].get("round") != round_index
    ):
        raise ValueError(f"its history does not end with round {round_index}")


# ---------------------------------------------------------------------------------------
# The h0 cache.


def h0_path(cache_dir: str, key: dict) -> str:
    """Directory of the cached initial network for the cache ``key`` (a JSON-able dict)."""
    return os.path.join(os.path.abspath(cache_dir), fingerprint(key))


def _h0_checkpointer() -> ocp.StandardCheckpointer:
    """Orbax's checkpointer for the h0 cache; with several processes, process 0's alone (the
    others neither read nor write the cache, nor wait in Orbax's barriers)."""
    if jax.process_count() == 1:
        return ocp.StandardCheckpointer()
    only_first = ocp.options.MultiprocessingOptions(primary_host=0, active_processes={0})
    return ocp.StandardCheckpointer(multiprocessing_options=only_first)


def load_h0(
    cache_dir: str, key: dict, like: Any, *, on_corrupt: Callable[[str], None] | None = None
) -> Any | None:
    """The cached h0 train state for ``key`` restored into the structure of ``like``, or None.

    A cache entry that does not restore (files cut short, a ``key.json`` that is not this
    key) is removed and None returned, so that h0 is trained again and stored afresh by
    :func:`save_h0`; ``on_corrupt`` then receives a one-line message saying so.

    With several processes (``like`` replicated over all their devices), process 0 reads
    the cache and sends what it found to the others (``multihost_utils.
    broadcast_one_to_all``), so every process takes the same branch even while another run
    writes the same entry; every process must call this.
    """
    if jax.process_count() == 1:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return _restore_h0(cache_dir, key, abstract, on_corrupt)
    host_like = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), like)
    found = None
    if jax.process_index() == 0:
        found = _restore_h0(cache_dir, key, host_like, on_corrupt)
    if not multihost_utils.broadcast_one_to_all(np.asarray(found is not None)):
        return None
    state = multihost_utils.broadcast_one_to_all(host_like if found is None else found)
    return jax.device_put(state, jax.tree.map(lambda leaf: leaf.sharding, like))


def _restore_h0(
    cache_dir: str, key: dict, target: Any, on_corrupt: Callable[[str], None] | None
) -> Any | None:
    """:func:`load_h0` in one process: ``target`` is an abstract tree or NumPy arrays."""
    path = h0_path(cache_dir, key)
    if not os.path.exists(os.path.join(path, "key.json")):
        return None
    try:
        with open(os.path.join(path, "key.json")) as f:
            stored = json.load(f)
        if json.loads(_canonical(stored)) != json.loads(_canonical(key)):
            raise ValueError("its key.json names another h0")
        with _orbax_failures_as_one_line(), _h0_checkpointer() as checkpointer:
            state = checkpointer.restore(os.path.join(path, "state"), target)
            return jax.block_until_ready(state)
    except Exception as error:  # noqa: BLE001 - any failure to read: train h0 again
        _remove_entry(path)
        if on_corrupt is not None:
            on_corrupt(
                f"h0: the cached copy in {path} does not restore ({_one_line(error)}); "
                "training it again"
            )
        return None


def _remove_entry(path: str) -> None:
    # Renamed first, so that a concurrent run sees the entry either whole or gone.
    aside = f"{path}.corrupt-{secrets.token_hex(4)}"
    try:
        os.rename(path, aside)
    except OSError:  # another run removed it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def save_h0(cache_dir: str, key: dict, state: Any) -> str:
    """Store h0 under ``key``; safe against a concurrent writer of the same key.

    A write the file system refuses raises :class:`WriteError` and leaves no partial
    entry behind. With several processes every process must call this: each gathers a
    host copy of ``state`` and process 0 stores it.
    """
    path = h0_path(cache_dir, key)
    if jax.process_count() > 1:
        state = parallel.to_host(state)
        if jax.process_index() != 0:
            return path
    if os.path.exists(os.path.join(path, "key.json")):
        return path
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        staging = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".h0-")
    except OSError as error:
        raise WriteError(
            f"could not store h0 in {cache_dir}: {_one_line(error)}", _errno(error)
        ) from None
    try:
        with _orbax_failures_as_one_line(), _h0_checkpointer() as checkpointer:
            try:
                checkpointer.save(os.path.join(staging, "state"), state)
                checkpointer.wait_until_finished()
            except Exception:
                _join_orbax_threads()
                raise
        atomic_write_text(os.path.join(staging, "key.json"), json.dumps(key, indent=2, default=str))
    except Exception as error:
        shutil.rmtree(staging, ignore_errors=True)
        if not _is_storage_failure(error) and not isinstance(error, WriteError):
            raise
        raise WriteError(
            f"could not store h0 in {cache_dir}: {_one_line(error)}; free space and run "
            "the same command again",
            _errno(error),
        ) from None
    try:
        os.rename(staging, path)
    except OSError:  # another run stored the same h0 first
        shutil.rmtree(staging, ignore_errors=True)
    return path
