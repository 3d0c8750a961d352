"""Per-round results: TensorBoard scalars, ``results.csv`` and ``results.json``.

One record per round is a flat dict (``round``, ``labels_bought``, ``accuracy``, ...,
``seconds_<phase>``); vector entries (``per_class_accuracy``, ``weights``) are lists.
The CSV expands vectors into one column per entry (``per_class_accuracy_3``); the JSON
keeps them whole beside the config, for later tools to read.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from alsa_jax.checkpoint import _atomic_write_text


def _flat_columns(record: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for name, value in record.items():
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                flat[f"{name}_{i}"] = v
        else:
            flat[name] = value
    return flat


def write_results(workdir: str, config: dict, history: Sequence[dict[str, Any]]) -> None:
    """(Re)write ``results.csv`` (a row a round) and ``results.json`` (config + rows)."""
    rows = [_flat_columns(r) for r in history]
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write_text(os.path.join(workdir, "results.csv"), buffer.getvalue())
    payload = {"config": config, "rounds": list(history)}
    _atomic_write_text(
        os.path.join(workdir, "results.json"), json.dumps(payload, indent=1, default=float)
    )


def read_results(workdir: str) -> dict[str, Any]:
    """The ``results.json`` of a run: ``{"config": ..., "rounds": [...]}``."""
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


class ScalarWriter:
    """TensorBoard scalars under ``workdir/tensorboard``, one step per round.

    ``resume_round`` purges events at that round and after it (written by an interrupted
    run), so a resumed run's curves have no duplicated steps.
    """

    def __init__(self, workdir: str, *, resume_round: int | None = None):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_round)

    def write(self, record: dict[str, Any]) -> None:
        step = int(record["round"])
        for name, value in _flat_columns(record).items():
            if name == "round" or not isinstance(value, (int, float)):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                continue
            group = "time" if name.startswith("seconds_") else "round"
            if name.startswith("per_class_accuracy_"):
                group = "per_class"
            elif name.startswith("weights_"):
                group = "weights"
            self._writer.add_scalar(f"{group}/{name}", value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
