"""Per-round results: ``results.csv``, ``results.json`` and TensorBoard laid out for MALLS.

One record per round is a flat dict (``round``, ``labels_paid``, ``accuracy``, ...,
``seconds_<phase>``); vector entries (``per_class_accuracy``, ``weights``) are lists.
The CSV expands vectors into one column per entry (``per_class_accuracy_3``); the JSON
keeps them whole beside the config, for later tools to read. Both keep the record's own
field order, ``round`` first.

:class:`RunWriter` writes a run's TensorBoard events under
``<workdir>/tensorboard/<run name>``: the headline curves against paid labels and against
rounds first, estimated and true importance weights side by side per class, the other
metrics, then per-class accuracy and timing; the config's key fields in the HParams
dashboard; a custom-scalars layout. It reads back what the run's event files already
hold and writes only what is missing, so a resumed run continues the same curves
without a repeated step.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import re
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from alsa_jax.checkpoint import WriteError, atomic_write_text

# ---------------------------------------------------------------------------------------
# results.csv and results.json


def _flat_columns(record: Mapping[str, Any]) -> dict[str, Any]:
    flat = {}
    for name, value in record.items():
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                flat[f"{name}_{i}"] = v
        else:
            flat[name] = value
    return flat


def _ordered(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` with ``round`` first and every other field in its own order."""
    if "round" not in record:
        return dict(record)
    return {"round": record["round"], **{k: v for k, v in record.items() if k != "round"}}


def write_results(workdir: str, config: dict, history: Sequence[Mapping[str, Any]]) -> None:
    """(Re)write ``results.csv`` (a row a round) and ``results.json`` (config + rows).

    Columns and keys keep the records' own order with ``round`` first; a field that a
    later round adds (say the seconds of a phase round 0 does not have) becomes a column
    after the ones seen before. Both files are replaced whole (see
    :func:`alsa_jax.checkpoint.atomic_write_text`).
    """
    records = [_ordered(r) for r in history]
    rows = [_flat_columns(r) for r in records]
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(os.path.join(workdir, "results.csv"), buffer.getvalue())
    payload = {"config": config, "rounds": records}
    atomic_write_text(
        os.path.join(workdir, "results.json"), json.dumps(payload, indent=1, default=float)
    )


def read_results(workdir: str) -> dict[str, Any]:
    """The ``results.json`` of a run: ``{"config": ..., "rounds": [...]}``."""
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------
# Run names and hyperparameters from the config.


def _diversify(query: Mapping[str, Any]) -> str:
    """``query.diversify``, with ``medial``'s lambda (0.5 when unset): ``medial0.25``."""
    diversify = query.get("diversify", "none")
    if diversify == "medial":
        lam = query.get("medial_lambda")
        return f"medial{0.5 if lam is None else float(lam):g}"
    return diversify


def _correction(label_shift: Mapping[str, Any]) -> str:
    """How the weights correct for the target: ``iw`` (importance-weighted training),
    ``cal`` (calibrated posterior correction), ``pc`` (uncalibrated), joined by ``+``;
    ``""`` when there are no weights or nothing uses them."""
    if label_shift.get("estimator", "none") == "none":
        return ""
    parts = ["iw"] if label_shift.get("importance_weighting") else []
    if label_shift.get("posterior_correction_scoring") or label_shift.get(
        "posterior_correction_eval"
    ):
        parts.append("cal" if label_shift.get("calibrated_correction") else "pc")
    return "+".join(parts)


def method_name(config: Mapping[str, Any]) -> str:
    """The method as ``<estimator>-<strategy>[-<diversify>][-<correction>]``, e.g.
    ``rlls-maxent-medial0.5-iw`` (the defaults) or ``mlls-maxent-medial0.5-cal``.

    ``config`` is the config as a dict (``ConfigDict.to_dict()``). ``medial``
    diversification carries its lambda (``-medial0.25``; 0.5 when
    ``query.medial_lambda`` is unset); ``none`` is left out. The correction says how the
    estimated weights act: ``iw`` importance-weighted training, ``cal`` the calibrated
    posterior correction (scoring or evaluation), ``pc`` the uncalibrated one, joined by
    ``+`` (the original's MALLS is ``iw+pc``); left out with the ``none`` estimator.
    """
    query = config["query"]
    parts = [config["label_shift"]["estimator"], query["strategy"]]
    if _diversify(query) != "none":
        parts.append(_diversify(query))
    if _correction(config["label_shift"]):
        parts.append(_correction(config["label_shift"]))
    return "-".join(parts)


def shift_name(config: Mapping[str, Any]) -> str:
    """The label shift as ``<strategy>-alpha<alpha>``, e.g. ``dirichlet_target-alpha0.6``."""
    shift = config["shift"]
    return f"{shift['strategy']}-alpha{float(shift['alpha']):g}"


def run_name(config: Mapping[str, Any]) -> str:
    """``<method>_<shift>_seed<seed>``: the name of a run's TensorBoard event directory.

    E.g. ``rlls-maxent-medial0.5-iw_dirichlet_target-alpha0.6_seed0``; characters outside
    ``[A-Za-z0-9._-]`` become ``-``.
    """
    name = f"{method_name(config)}_{shift_name(config)}_seed{config['seed']}"
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)


def hparams(config: Mapping[str, Any]) -> dict[str, str | float | bool]:
    """The config's key fields for TensorBoard's HParams dashboard (flat, str/float/bool).

    ``method`` (as :func:`method_name`), its parts (``estimator``, ``strategy``,
    ``diversify``, ``medial_lambda``), the label-shift fields that change the method, the shift
    (``shift``, ``alpha``), ``seed``, ``dataset`` and ``model``.
    """
    ls, query = config["label_shift"], config["query"]
    return {
        "method": method_name(config),
        "estimator": ls["estimator"],
        "strategy": query["strategy"],
        "diversify": _diversify(query),
        "importance_weighting": bool(ls["importance_weighting"]),
        "iterative": bool(ls["iterative"]),
        "posterior_correction_scoring": bool(ls["posterior_correction_scoring"]),
        "posterior_correction_eval": bool(ls["posterior_correction_eval"]),
        "calibrated_correction": bool(ls.get("calibrated_correction", False)),
        "calibration": str(ls.get("calibration", "none")),
        "medial_lambda": float(
            0.5 if query.get("medial_lambda") is None else query["medial_lambda"]
        ),
        "shift": config["shift"]["strategy"],
        "alpha": float(config["shift"]["alpha"]),
        "seed": float(config["seed"]),
        "dataset": config["dataset"]["name"],
        "model": config["model"]["name"],
    }


# ---------------------------------------------------------------------------------------
# Reading event files back.


def _masked_crc(data: bytes) -> int:
    from tensorboardX.record_writer import masked_crc32c

    return masked_crc32c(data)


def _records(path: str) -> Iterator[bytes]:
    """The intact records of a TFRecord file; stops at the first torn or damaged one."""
    with open(path, "rb") as f:
        data = f.read()
    offset = 0
    while offset + 12 <= len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        end = offset + 12 + length + 4
        if header_crc != _masked_crc(header) or end > len(data):
            return  # a writer killed mid-record leaves a torn tail
        payload = data[offset + 12 : offset + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[end - 4 : end])
        if payload_crc != _masked_crc(payload):
            return
        yield payload
        offset = end


def event_files(directory: str) -> list[str]:
    """The TensorBoard event files directly in ``directory``, in the order TensorBoard reads."""
    return sorted(glob.glob(os.path.join(glob.escape(directory), "events.out.tfevents.*")))


def read_events(directory: str) -> list[Any]:
    """Every intact ``Event`` proto of the event files in ``directory``, file by file."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in event_files(directory):
        for payload in _records(path):
            event = event_pb2.Event()
            event.ParseFromString(payload)
            events.append(event)
    return events


def read_scalars(directory: str) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the event files in ``directory``: ``{tag: [(step, value), ...]}``.

    Steps are listed in the order they were written, repeats included (a resumed run
    that wrote a step twice shows it twice).
    """
    scalars: dict[str, list[tuple[int, float]]] = {}
    for event in read_events(directory):
        for value in event.summary.value:
            if value.WhichOneof("value") == "simple_value":
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


# ---------------------------------------------------------------------------------------
# TensorBoard.

HEADLINE = ("accuracy", "average_class_accuracy", "f1_macro", "weight_l2_error")
_HEADLINE_TITLES = {
    "accuracy": "accuracy",
    "average_class_accuracy": "average class accuracy",
    "f1_macro": "macro F1",
    "weight_l2_error": "weight estimation error (L2)",
}
# Tag families in the order TensorBoard sorts them, which is the order of interest.
BY_LABELS = "by_labels_paid"  # step = labels paid
BY_ROUND = "by_round"  # step = round
WEIGHTS = "class_weights"
METRICS = "metrics"
PER_CLASS = "per_class_accuracy"
TIMING = "timing"
_LAYOUT_TAG = "custom_scalars__config__"
_HPARAMS_TAG = "_hparams_/session_start_info"


def _class_labels(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    """Tag segments ``<index>_<name>`` (index zero-padded so tags sort by class)."""
    width = len(str(max(num_classes - 1, 0)))
    labels = []
    for i in range(num_classes):
        name = class_names[i] if class_names is not None and i < len(class_names) else ""
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_")
        labels.append(f"{i:0{width}d}_{name}" if name else f"{i:0{width}d}")
    return labels


def scalar_tags(
    record: Mapping[str, Any], class_names: Sequence[str] | None = None
) -> list[tuple[str, int, float]]:
    """The ``(tag, step, value)`` scalars :class:`RunWriter` writes for one round's record.

    ``by_labels_paid/<headline>`` at step ``labels_paid`` (when the record has it);
    ``by_round/<headline>`` and ``by_round/labels_paid`` at step ``round``;
    ``class_weights/<i>_<name>/estimated`` and ``.../true`` (``weights``,
    ``true_weights``); ``per_class_accuracy/<i>_<name>``; ``timing/seconds_<phase>`` and
    ``timing/compilations``; every other number under ``metrics/``. Booleans, strings and
    non-finite values are left out.
    """
    step = int(record["round"])
    out: list[tuple[str, int, float]] = []

    def number(value: Any) -> bool:
        return (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )

    paid = record.get("labels_paid")
    for name in HEADLINE:
        if number(record.get(name)) and number(paid):
            out.append((f"{BY_LABELS}/{name}", int(paid), float(record[name])))
    for name in (*HEADLINE, "labels_paid"):
        if number(record.get(name)):
            out.append((f"{BY_ROUND}/{name}", step, float(record[name])))
    for field, kind in (("weights", "estimated"), ("true_weights", "true")):
        values = record.get(field) or []
        for label, value in zip(_class_labels(len(values), class_names), values, strict=True):
            if number(value):
                out.append((f"{WEIGHTS}/{label}/{kind}", step, float(value)))
    for name, value in record.items():
        if name in ("round", "labels_paid", "weights", "true_weights") or name in HEADLINE:
            continue
        if name == "per_class_accuracy" and isinstance(value, (list, tuple)):
            labels = _class_labels(len(value), class_names)
            out += [
                (f"{PER_CLASS}/{lab}", step, float(v))
                for lab, v in zip(labels, value, strict=True)
                if number(v)
            ]
        elif isinstance(value, (list, tuple)):
            out += [
                (f"{METRICS}/{name}_{i}", step, float(v)) for i, v in enumerate(value) if number(v)
            ]
        elif number(value):
            family = TIMING if name.startswith("seconds_") or name == "compilations" else METRICS
            out.append((f"{family}/{name}", step, float(value)))
    return out


def _layout(num_classes: int, class_names: Sequence[str] | None) -> dict[str, dict[str, list]]:
    """The custom-scalars layout: headline against paid labels, then weights per class."""
    exact = lambda tag: f"^{re.escape(tag)}$"  # noqa: E731
    headline = {
        f"{_HEADLINE_TITLES[name]} against labels paid": [
            "Multiline",
            [exact(f"{BY_LABELS}/{name}")],
        ]
        for name in HEADLINE
    }
    headline["labels paid by round"] = ["Multiline", [exact(f"{BY_ROUND}/labels_paid")]]
    weights = {}
    for i, label in enumerate(_class_labels(num_classes, class_names)):
        name = class_names[i] if class_names is not None and i < len(class_names) else ""
        title = f"class {i} {name}".strip() + ": estimated and true weight by round"
        weights[title] = ["Multiline", [f"^{re.escape(f'{WEIGHTS}/{label}/')}"]]
    return {
        "MALLS: headline against labels paid": headline,
        "importance weights w(y) per class": weights,
    }


class RunWriter:
    """TensorBoard events of one run in ``<workdir>/tensorboard/<run_name>``.

    ``run_name``: the event directory's name, which TensorBoard shows as the run (see
    :func:`run_name`); ``hparams``: the run's hyperparameters for the HParams dashboard
    (see :func:`hparams`; written once; the dashboard's metrics are the run's scalar
    tags, the headline ``by_labels_paid`` ones first); ``class_names``: per-class tags
    say ``<index>_<name>`` when given.

    On opening, the writer reads what the directory's event files hold; :meth:`write`
    then writes only the (tag, step) pairs that are missing, so a resumed run may write
    every record of its history again and no step is repeated. A new event file is
    started only when there is something to write.
    """

    def __init__(
        self,
        workdir: str,
        *,
        run_name: str,
        hparams: Mapping[str, str | float | bool] | None = None,
        class_names: Sequence[str] | None = None,
    ):
        if not run_name or run_name in (".", "..") or os.sep in run_name:
            raise ValueError(
                f"run_name={run_name!r} must be one folder name; see alsa_jax.logging.run_name"
            )
        self._open(os.path.join(workdir, "tensorboard", run_name), hparams, class_names)

    def _open(
        self,
        logdir: str,
        hparams: Mapping[str, str | float | bool] | None,
        class_names: Sequence[str] | None,
    ) -> None:
        self.logdir = logdir
        self._hparams = dict(hparams) if hparams else None
        self._class_names = list(class_names) if class_names is not None else None
        self._written: set[tuple[str, int]] = set()
        self._has_layout = self._has_hparams = False
        for event in read_events(self.logdir):
            for value in event.summary.value:
                self._written.add((value.tag, event.step))
                self._has_layout |= value.tag == _LAYOUT_TAG
                self._has_hparams |= value.tag == _HPARAMS_TAG
        self._writer = None

    def _events_writer(self) -> Any:
        if self._writer is None:
            from tensorboardX.event_file_writer import EventsWriter

            os.makedirs(self.logdir, exist_ok=True)
            # A numbered suffix: two writers opened within one second get distinct files,
            # in the order TensorBoard reads them.
            suffix = f".{len(event_files(self.logdir)):04d}"
            self._writer = EventsWriter(os.path.join(self.logdir, "events"), suffix)
        return self._writer

    def write(self, record: Mapping[str, Any]) -> int:
        """Write the round ``record``'s scalars (:func:`scalar_tags`) that are missing.

        The first write also adds the custom-scalars layout and the hyperparameters if
        the run's events do not hold them yet. The events are on disk (flushed and
        synced) when it returns; a write the file system refuses raises
        :class:`alsa_jax.checkpoint.WriteError`, and what it did not write is written by
        a later call. Returns the number of scalars written.
        """
        from tensorboardX import summary
        from tensorboardX.proto.event_pb2 import Event

        pending = [s for s in scalar_tags(record, self._class_names) if s[:2] not in self._written]
        summaries = []
        if not self._has_layout:
            k = len(record.get("weights") or record.get("per_class_accuracy") or [])
            summaries.append((summary.custom_scalars(_layout(k, self._class_names)), 0))
        if self._hparams is not None and not self._has_hparams:
            # The session's hyperparameters only: with no experiment summary, TensorBoard
            # builds the dashboard from every run's, listing first the hyperparameters whose
            # values differ between runs, each with its values as filters.
            _, session_start, _ = summary.hparams(self._hparams, {})
            summaries.append((session_start, 0))
        summaries += [(summary.scalar(tag, value), step) for tag, step, value in pending]
        if not summaries:
            return 0
        now = time.time()
        try:
            writer = self._events_writer()
            for proto, step in summaries:
                writer.write_event(Event(wall_time=now, step=step, summary=proto))
            writer.flush()
        except OSError as error:
            self.close()  # the next writer starts a new file after the intact records
            raise WriteError(
                f"could not write TensorBoard events in {self.logdir}: "
                f"{os.strerror(error.errno) if error.errno else error}",
                error.errno,
            ) from None
        self._has_layout = True
        self._has_hparams |= self._hparams is not None
        self._written.update(s[:2] for s in pending)
        return len(pending)

    def close(self) -> None:
        """Close the event file (if one was opened); a file system error here is ignored,
        since every :meth:`write` already flushed what it wrote."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except OSError:
                pass


class ScalarWriter(RunWriter):
    """A :class:`RunWriter` whose events go straight into ``<workdir>/tensorboard``.

    No run name and no hyperparameters. ``resume_round`` is accepted and not needed:
    every write is checked against the events already on disk.
    """

    def __init__(self, workdir: str, *, resume_round: int | None = None):
        del resume_round
        self._open(os.path.join(workdir, "tensorboard"), None, None)
