"""Round checkpoints and the shared cache of initial networks h0, both through Orbax.

A run's workdir holds ``checkpoints/<round>/`` (the whole round state plus the metric
history) and ``experiment.json`` (the config that made them). Orbax writes each step to
a temporary directory and renames it when complete, so a run killed at any moment
leaves only complete rounds behind, and a restart resumes from the newest of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import orbax.checkpoint as ocp


class ExperimentMismatchError(ValueError):
    """The workdir holds checkpoints of an experiment with another config."""


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able object (a config dict)."""
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()[:16]


def _json_round_trip(obj: Any) -> Any:
    return json.loads(_canonical(obj))


def claim_workdir(workdir: str, experiment: dict) -> None:
    """Record ``experiment`` (the config as a dict) in ``workdir/experiment.json``.

    A workdir already holding another experiment raises :class:`ExperimentMismatchError`
    naming the first differing fields; nothing in it is touched.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "experiment.json")
    current = _json_round_trip(experiment)
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
    _atomic_write_text(path, json.dumps(current, indent=2, sort_keys=True))


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in set(a) | set(b):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _atomic_write_text(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class RoundCheckpointer:
    """Saves the round state pytree and the JSON metric history after every round."""

    def __init__(self, directory: str, *, keep: int = 2):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(
            os.path.abspath(directory), options=options, item_names=("state", "history")
        )

    def latest_round(self) -> int | None:
        """The newest complete round saved, or None."""
        return self._manager.latest_step()

    def save(self, round_index: int, state: Any, history: list[dict]) -> None:
        """Save ``state`` (a pytree of arrays) and ``history`` (JSON) as ``round_index``."""
        self._manager.save(
            round_index,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                history=ocp.args.JsonSave(_json_round_trip(history)),
            ),
        )
        self._manager.wait_until_finished()

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

    def close(self) -> None:
        self._manager.close()


def h0_path(cache_dir: str, key: dict) -> str:
    """Directory of the cached initial network for the cache ``key`` (a JSON-able dict)."""
    return os.path.join(os.path.abspath(cache_dir), fingerprint(key))


def load_h0(cache_dir: str, key: dict, like: Any) -> Any | None:
    """The cached h0 train state for ``key`` restored into the structure of ``like``, or None."""
    path = h0_path(cache_dir, key)
    if not os.path.exists(os.path.join(path, "key.json")):
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(os.path.join(path, "state"), abstract)


def save_h0(cache_dir: str, key: dict, state: Any) -> str:
    """Store h0 under ``key``; safe against a concurrent writer of the same key."""
    path = h0_path(cache_dir, key)
    if os.path.exists(os.path.join(path, "key.json")):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    staging = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".h0-")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(staging, "state"), state)
        checkpointer.wait_until_finished()
    _atomic_write_text(os.path.join(staging, "key.json"), json.dumps(key, indent=2, default=str))
    try:
        os.rename(staging, path)
    except OSError:  # another run stored the same h0 first
        shutil.rmtree(staging, ignore_errors=True)
    return path
