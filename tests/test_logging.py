import csv
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from alsa_jax import checkpoint
from alsa_jax import logging as results_log
from configs import digits


def _record(r, k=3):
    """A round record in the loop's field order (``round`` first)."""
    return {
        "round": r,
        "labels_paid": 100 + 15 * r,
        "labels_bought": 15 * r,
        "labels_holdout": 20,
        "accuracy": 0.5 + 0.1 * r,
        "top5_accuracy": 0.9,
        "average_class_accuracy": 0.4 + 0.1 * r,
        "per_class_accuracy": [0.25 * (i + 1) for i in range(k)],
        "f1_macro": 0.3 + 0.1 * r,
        "source_shift": float("nan") if r == 0 else 0.5,
        "weights": [1.0 + r + i for i in range(k)],
        "true_weights": [2.0 + i for i in range(k)],
        "weight_l2_error": 1.0 / (r + 1),
        **({"seconds_h0": 3.0, "h0_cache_hit": False} if r == 0 else {"seconds_finetune": 1.5}),
        "compilations": 2,
    }


# ---------------------------------------------------------------------------------------
# results.csv / results.json


def test_results_files(tmp_path):
    history = [
        {"round": 0, "accuracy": 0.5, "per_class_accuracy": [0.25, 0.75]},
        {"round": 1, "accuracy": 0.75, "per_class_accuracy": [0.5, 1.0], "seconds_x": 1.0},
    ]
    results_log.write_results(str(tmp_path), {"seed": 0}, history)
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0] == "round,accuracy,per_class_accuracy_0,per_class_accuracy_1,seconds_x"
    assert lines[2] == "1,0.75,0.5,1.0,1.0"
    assert results_log.read_results(str(tmp_path)) == {"config": {"seed": 0}, "rounds": history}


def test_results_keep_the_record_order_through_a_checkpoint(tmp_path):
    history = [_record(r) for r in range(3)]
    os.makedirs(tmp_path / "a")
    results_log.write_results(str(tmp_path / "a"), {"seed": 0}, history)
    manager = checkpoint.RoundCheckpointer(str(tmp_path / "ckpt"))
    manager.save(2, {"x": jnp.zeros(2)}, history)
    _, _, restored, _ = manager.restore_latest({"x": jnp.zeros(2)})
    manager.close()
    os.makedirs(tmp_path / "b")
    results_log.write_results(str(tmp_path / "b"), {"seed": 0}, restored)
    for name in ("results.csv", "results.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with open(tmp_path / "b" / "results.csv") as f:
        header = next(csv.reader(f))
    assert header[:4] == ["round", "labels_paid", "labels_bought", "labels_holdout"]
    # Round 1 adds seconds_finetune after round 0's columns.
    assert header[-3:] == ["h0_cache_hit", "compilations", "seconds_finetune"]
    rounds = json.loads((tmp_path / "b" / "results.json").read_text())["rounds"]
    assert list(rounds[1]) == list(_record(1))


def test_results_put_round_first(tmp_path):
    results_log.write_results(str(tmp_path), {}, [{"accuracy": 0.5, "round": 0}])
    assert (tmp_path / "results.csv").read_text().splitlines()[0] == "round,accuracy"
    assert list(results_log.read_results(str(tmp_path))["rounds"][0]) == ["round", "accuracy"]


def test_results_files_respect_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        results_log.write_results(str(tmp_path), {}, [_record(0)])
    finally:
        os.umask(previous)
    for name in ("results.csv", "results.json"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name


# ---------------------------------------------------------------------------------------
# Run names and hyperparameters


def test_run_name_and_hparams_of_the_digits_config():
    config = digits.get_config().to_dict()
    assert results_log.method_name(config) == "rlls-maxent-medial0.5-iw"
    assert results_log.shift_name(config) == "dirichlet_target-alpha0.6"
    assert (
        results_log.run_name(config) == "rlls-maxent-medial0.5-iw_dirichlet_target-alpha0.6_seed0"
    )
    hp = results_log.hparams(config)
    assert hp["method"] == "rlls-maxent-medial0.5-iw"
    assert (hp["estimator"], hp["strategy"], hp["diversify"]) == ("rlls", "maxent", "medial0.5")
    assert (hp["shift"], hp["alpha"], hp["seed"]) == ("dirichlet_target", 0.6, 0.0)
    assert (hp["dataset"], hp["model"]) == ("digits", "cnn")
    assert hp["importance_weighting"] is True and hp["posterior_correction_eval"] is False
    assert hp["calibrated_correction"] is True and hp["calibration"] == "bcts"
    assert hp["medial_lambda"] == 0.5
    assert all(isinstance(v, (str, float, bool)) for v in hp.values())

    # The correction the weights make: calibrated posteriors, uncalibrated, or both with
    # importance-weighted training (the original's).
    config["label_shift"].update(
        importance_weighting=False, posterior_correction_scoring=True, estimator="mlls"
    )
    assert results_log.method_name(config) == "mlls-maxent-medial0.5-cal"
    config["label_shift"].update(importance_weighting=True, calibrated_correction=False)
    assert results_log.method_name(config) == "mlls-maxent-medial0.5-iw+pc"
    config["label_shift"].update(importance_weighting=False, posterior_correction_scoring=False)
    assert results_log.method_name(config) == "mlls-maxent-medial0.5"

    config["query"].update(strategy="bald_vote", diversify="medial", medial_lambda=0.25)
    config["label_shift"]["estimator"] = "none"
    config["seed"] = 3
    assert (
        results_log.run_name(config) == "none-bald_vote-medial0.25_dirichlet_target-alpha0.6_seed3"
    )
    assert results_log.hparams(config)["diversify"] == "medial0.25"
    config["query"]["medial_lambda"] = None  # medial's default lambda
    assert results_log.method_name(config) == "none-bald_vote-medial0.5"
    config["query"].update(diversify="none", medial_lambda=0.25)  # lambda only for medial
    assert results_log.method_name(config) == "none-bald_vote"


# ---------------------------------------------------------------------------------------
# TensorBoard


NAMES = ["cat", "dog house", "émeu"]


def _tags_by_family(scalars):
    families = {}
    for tag in scalars:
        families.setdefault(tag.split("/")[0], []).append(tag)
    return families


def test_scalar_tags_of_a_record():
    tags = {(t, s): v for t, s, v in results_log.scalar_tags(_record(2), NAMES)}
    assert tags[("by_labels_paid/accuracy", 130)] == pytest.approx(0.7)
    assert tags[("by_round/accuracy", 2)] == pytest.approx(0.7)
    assert tags[("by_round/labels_paid", 2)] == 130
    assert tags[("by_labels_paid/weight_l2_error", 130)] == pytest.approx(1 / 3)
    assert tags[("class_weights/0_cat/estimated", 2)] == 3.0
    assert tags[("class_weights/0_cat/true", 2)] == 2.0
    assert tags[("class_weights/1_dog_house/estimated", 2)] == 4.0
    assert tags[("class_weights/2_meu/true", 2)] == 4.0  # non-ASCII letters dropped
    assert tags[("per_class_accuracy/2_meu", 2)] == 0.75
    assert tags[("metrics/top5_accuracy", 2)] == 0.9
    assert tags[("metrics/labels_bought", 2)] == 30
    assert tags[("timing/seconds_finetune", 2)] == 1.5
    assert tags[("timing/compilations", 2)] == 2
    families = {t.split("/")[0] for t, _ in tags}
    assert families == {
        "by_labels_paid",
        "by_round",
        "class_weights",
        "metrics",
        "per_class_accuracy",
        "timing",
    }
    # Alphabetical, which is TensorBoard's order: headline, weights, the rest, per class, time.
    assert sorted(families) == [
        "by_labels_paid",
        "by_round",
        "class_weights",
        "metrics",
        "per_class_accuracy",
        "timing",
    ]
    round0 = {t for t, _, _ in results_log.scalar_tags(_record(0))}
    assert "metrics/source_shift" not in round0  # NaN left out
    assert "metrics/h0_cache_hit" not in round0  # booleans left out
    assert "per_class_accuracy/0" in round0 and "class_weights/0/true" in round0  # no names


def test_class_tags_are_zero_padded():
    tags = {t for t, _, _ in results_log.scalar_tags(_record(1, k=12))}
    assert "per_class_accuracy/03" in tags and "per_class_accuracy/11" in tags


def _hparams_of(logdir):
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    found = {}
    for event in results_log.read_events(logdir):
        for value in event.summary.value:
            if value.tag.startswith("_hparams_/"):
                data = HParamsPluginData()
                data.ParseFromString(value.metadata.plugin_data.content)
                found[value.tag] = data
    return found


def _layout_of(logdir):
    from tensorboardX.proto.layout_pb2 import Layout

    for event in results_log.read_events(logdir):
        for value in event.summary.value:
            if value.tag == "custom_scalars__config__":
                layout = Layout()
                layout.ParseFromString(value.tensor.string_val[0])
                return layout
    return None


def test_run_writer_events(tmp_path):
    config = digits.get_config().to_dict()
    name = results_log.run_name(config)
    writer = results_log.RunWriter(
        str(tmp_path), run_name=name, hparams=results_log.hparams(config), class_names=NAMES
    )
    for r in range(3):
        assert writer.write(_record(r)) > 0
    writer.close()
    logdir = tmp_path / "tensorboard" / name
    assert writer.logdir == str(logdir)
    assert len(results_log.event_files(str(logdir))) == 1
    scalars = results_log.read_scalars(str(logdir))
    assert scalars["by_labels_paid/accuracy"] == [
        (100, pytest.approx(0.5)),
        (115, pytest.approx(0.6)),
        (130, pytest.approx(0.7)),
    ]
    assert [s for s, _ in scalars["by_round/f1_macro"]] == [0, 1, 2]
    assert [v for _, v in scalars["by_round/labels_paid"]] == [100, 115, 130]
    assert [v for _, v in scalars["class_weights/1_dog_house/estimated"]] == [2.0, 3.0, 4.0]
    assert [v for _, v in scalars["class_weights/1_dog_house/true"]] == [3.0, 3.0, 3.0]
    assert [s for s, _ in scalars["metrics/source_shift"]] == [1, 2]  # round 0's NaN left out
    assert [s for s, _ in scalars["timing/seconds_h0"]] == [0]

    hp = _hparams_of(str(logdir))
    start = hp["_hparams_/session_start_info"].session_start_info.hparams
    assert start["method"].string_value == "rlls-maxent-medial0.5-iw"
    assert start["shift"].string_value == "dirichlet_target"
    assert start["alpha"].number_value == pytest.approx(0.6)
    assert start["seed"].number_value == 0.0
    assert set(hp) == {"_hparams_/session_start_info"}  # TensorBoard derives the rest
    layout = _layout_of(str(logdir))
    assert [c.title for c in layout.category] == [
        "MALLS: headline against labels paid",
        "importance weights w(y) per class",
    ]
    assert layout.category[0].chart[0].title == "accuracy against labels paid"
    assert list(layout.category[0].chart[0].multiline.tag) == [r"^by_labels_paid/accuracy$"]
    weights = layout.category[1].chart
    assert [c.title for c in weights] == [
        "class 0 cat: estimated and true weight by round",
        "class 1 dog house: estimated and true weight by round",
        "class 2 émeu: estimated and true weight by round",
    ]
    assert list(weights[1].multiline.tag) == [r"^class_weights/1_dog_house/"]


def _steps_per_tag(logdir):
    return {tag: [s for s, _ in points] for tag, points in results_log.read_scalars(logdir).items()}


def test_a_resumed_writer_repeats_no_step(tmp_path):
    kwargs = dict(run_name="run", hparams={"method": "x"}, class_names=NAMES)
    first = results_log.RunWriter(str(tmp_path), **kwargs)
    for r in range(3):
        first.write(_record(r))
    first.close()
    logdir = str(tmp_path / "tensorboard" / "run")

    # Resumed after round 1's checkpoint (round 2's events were already written): the
    # loop writes its whole history again, then the rounds after it.
    second = results_log.RunWriter(str(tmp_path), **kwargs)
    assert [second.write(_record(r)) for r in range(3)] == [0, 0, 0]
    assert len(results_log.event_files(logdir)) == 1  # nothing to write: no new file
    assert second.write(_record(3)) > 0
    assert second.write(_record(3)) == 0
    second.close()
    files = results_log.event_files(logdir)
    assert len(files) == 2 and files[1].endswith(".0001")  # read after the first one
    for tag, steps in _steps_per_tag(logdir).items():
        assert len(steps) == len(set(steps)), tag
        assert steps == sorted(steps), tag
    steps = _steps_per_tag(logdir)
    assert steps["by_round/accuracy"] == [0, 1, 2, 3]
    assert steps["by_labels_paid/accuracy"] == [100, 115, 130, 145]
    tags = [v.tag for e in results_log.read_events(logdir) for v in e.summary.value]
    assert tags.count("_hparams_/session_start_info") == 1
    assert tags.count("custom_scalars__config__") == 1


def test_a_torn_event_file_is_read_up_to_the_tear(tmp_path):
    writer = results_log.RunWriter(str(tmp_path), run_name="run")
    writer.write(_record(0))
    writer.write(_record(1))
    writer.close()
    logdir = str(tmp_path / "tensorboard" / "run")
    (path,) = results_log.event_files(logdir)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # a writer killed in the middle of its last record
        f.truncate(size - 7)
    steps = _steps_per_tag(logdir)
    assert steps["by_round/accuracy"][0] == 0
    resumed = results_log.RunWriter(str(tmp_path), run_name="run")
    resumed.write(_record(1))
    resumed.close()
    steps = _steps_per_tag(logdir)
    for tag, tag_steps in steps.items():
        assert len(tag_steps) == len(set(tag_steps)), tag
    assert steps["by_round/accuracy"] == [0, 1]
    assert steps["timing/compilations"] == [0, 1]  # the torn one written again


def test_run_writer_refuses_a_path_as_run_name(tmp_path):
    with pytest.raises(ValueError, match="run_name"):
        results_log.RunWriter(str(tmp_path), run_name="a/b")


def test_tensorboard_reads_the_run(tmp_path):
    """TensorBoard itself (when installed) sees the tags, steps and hyperparameters."""
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    first = results_log.RunWriter(str(tmp_path), run_name="run", hparams={"method": "m"})
    first.write(_record(0))
    first.write(_record(1))
    first.close()
    second = results_log.RunWriter(str(tmp_path), run_name="run", hparams={"method": "m"})
    for r in range(3):
        second.write(_record(r))
    second.close()
    accumulator = event_accumulator.EventAccumulator(
        str(tmp_path / "tensorboard" / "run"), size_guidance={"scalars": 0, "tensors": 0}
    )
    accumulator.Reload()
    tags = accumulator.Tags()
    assert "by_labels_paid/accuracy" in tags["scalars"]
    assert [e.step for e in accumulator.Scalars("by_round/accuracy")] == [0, 1, 2]
    assert [e.step for e in accumulator.Scalars("by_labels_paid/accuracy")] == [100, 115, 130]
    plugins = accumulator.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugins
    assert "custom_scalars__config__" in accumulator.PluginTagToContent("custom_scalars")


_REFUSED_EVENTS_SCRIPT = """
import json, os, resource, signal, sys
from alsa_jax import checkpoint
from alsa_jax import logging as results_log
from tests.test_logging import _record
workdir = sys.argv[1]
writer = results_log.RunWriter(workdir, run_name="run", hparams={"method": "m"})
writer.write(_record(0))
(path,) = results_log.event_files(writer.logdir)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path) + 100, resource.RLIM_INFINITY))
out = {}
try:
    writer.write(_record(1))
except checkpoint.WriteError as error:
    out["message"] = str(error)
writer.close()
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
again = results_log.RunWriter(workdir, run_name="run", hparams={"method": "m"})
again.write(_record(0))
again.write(_record(1))
again.close()
print(json.dumps(out))
"""


def test_a_refused_event_write_is_one_line_and_written_later(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", _REFUSED_EVENTS_SCRIPT, str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    message = json.loads(done.stdout.strip().splitlines()[-1])["message"]
    logdir = tmp_path / "tensorboard" / "run"
    assert message == f"could not write TensorBoard events in {logdir}: File too large"
    steps = _steps_per_tag(str(logdir))
    assert steps["by_round/accuracy"] == [0, 1]
    for tag, tag_steps in steps.items():
        assert len(tag_steps) == len(set(tag_steps)), tag
