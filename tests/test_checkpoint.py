import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from alsa_jax import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_claim_workdir_refuses_another_experiment(tmp_path):
    workdir = str(tmp_path / "run")
    checkpoint.claim_workdir(workdir, {"seed": 0, "query": {"strategy": "maxent"}})
    checkpoint.claim_workdir(workdir, {"seed": 0, "query": {"strategy": "maxent"}})  # same: fine
    with pytest.raises(checkpoint.ExperimentMismatchError, match="query.strategy"):
        checkpoint.claim_workdir(workdir, {"seed": 0, "query": {"strategy": "margin"}})
    with open(os.path.join(workdir, "experiment.json")) as f:
        assert json.load(f)["query"]["strategy"] == "maxent"  # untouched


def _state(r):
    return {
        "w": jnp.arange(300.0) + r,
        "mask": jnp.arange(7) % 2 == r % 2,
        "step": jnp.int32(r),
    }


def _history(r):
    return [{"round": i, "accuracy": 0.5 + i / 10, "labels_paid": 10 * i} for i in range(r + 1)]


def _saved(directory, rounds, keep=3):
    manager = checkpoint.RoundCheckpointer(str(directory), keep=keep)
    for r in rounds:
        manager.save(r, _state(r), _history(r))
    return manager


def test_round_checkpoint_round_trip(tmp_path):
    manager = checkpoint.RoundCheckpointer(str(tmp_path / "ckpt"), keep=2)
    assert manager.latest_round() is None
    assert manager.restore_latest(_state(0)) is None
    for r in range(3):
        manager.save(r, _state(r), _history(r))
    assert manager.latest_round() == 2
    restored, history = manager.restore(2, _state(0))
    np.testing.assert_array_equal(restored["w"], np.arange(300.0) + 2)
    assert restored["mask"].dtype == jnp.bool_ and int(restored["step"]) == 2
    assert history == _history(2)
    assert [list(r) for r in history] == [["round", "accuracy", "labels_paid"]] * 3  # key order
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["1", "2"]  # keep=2
    manager.close()


def _files(step_dir):
    return sorted(
        os.path.relpath(os.path.join(root, name), step_dir)
        for root, _, names in os.walk(step_dir)
        for name in names
    )


def _truncate(path, size=None):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2 if size is None else size)


def _largest_data_file(step_dir):
    data = [f for f in _files(step_dir) if f"{os.sep}d{os.sep}" in f]
    return max(data, key=lambda f: os.path.getsize(os.path.join(step_dir, f)))


@pytest.mark.parametrize("damage", ["every file", "history", "array data", "array metadata"])
def test_restore_latest_skips_a_truncated_newest_checkpoint(tmp_path, damage):
    directory = tmp_path / "ckpt"
    _saved(directory, range(3)).close()
    newest = str(directory / "2")
    targets = {
        "every file": _files(newest),
        "history": [os.path.join("history", "metadata")],
        "array data": [_largest_data_file(newest)],
        "array metadata": [os.path.join("state", "_METADATA")],
    }[damage]
    for name in targets:
        _truncate(os.path.join(newest, name))

    manager = checkpoint.RoundCheckpointer(str(directory), keep=3)
    assert manager.latest_round() == 2  # Orbax lists it: it is complete by name
    round_index, state, history, skipped = manager.restore_latest(_state(0))
    assert round_index == 1 and history == _history(1)
    np.testing.assert_array_equal(state["w"], np.arange(300.0) + 1)
    assert int(state["step"]) == 1
    assert [r for r, _ in skipped] == [2]
    reason = skipped[0][1]
    assert reason and "\n" not in reason and len(reason) <= 200
    # The skipped round is gone, so the resumed run saves it again.
    assert sorted(os.listdir(directory)) == ["0", "1"]
    manager.save(2, _state(2), _history(2))
    assert manager.restore_latest(_state(0))[:1] == (2,)
    manager.close()


def test_restore_latest_skips_a_history_of_another_round(tmp_path):
    manager = _saved(tmp_path / "ckpt", range(2))
    manager.save(2, _state(2), _history(1))  # a history that ends one round early
    round_index, _, history, skipped = manager.restore_latest(_state(0))
    assert round_index == 1 and history == _history(1)
    assert skipped == [(2, "its history does not end with round 2")]
    manager.close()


def test_restore_latest_when_no_checkpoint_restores(tmp_path):
    directory = tmp_path / "ckpt"
    _saved(directory, range(2)).close()
    for r in ("0", "1"):
        _truncate(str(directory / r / "history" / "metadata"), 0)
    manager = checkpoint.RoundCheckpointer(str(directory), keep=3)
    with pytest.raises(checkpoint.CorruptCheckpointError) as raised:
        manager.restore_latest(_state(0))
    message = str(raised.value)
    assert "\n" not in message and "round 1:" in message and "round 0:" in message
    assert str(directory) in message and "start over" in message
    assert isinstance(raised.value, ValueError)
    assert sorted(os.listdir(directory)) == ["0", "1"]  # nothing deleted
    manager.close()


# A full disk, or a file-size limit, while saving: the process limits its own file size
# (RLIMIT_FSIZE, SIGXFSZ ignored, so writes fail with EFBIG) between two saves.
_FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    import jax.numpy as jnp
    from alsa_jax import checkpoint
    directory = sys.argv[1]
    state = lambda r: {"w": jnp.arange(20000.0) * (r + 1), "step": jnp.int32(r)}
    manager = checkpoint.RoundCheckpointer(directory, keep=2)
    manager.save(0, state(0), [{"round": 0}])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    out = {}
    try:
        manager.save(1, state(1), [{"round": 0}, {"round": 1}])
    except checkpoint.WriteError as error:
        out.update(message=str(error), errno=error.errno, is_os_error=isinstance(error, OSError))
    out["after_failure"] = sorted(n for n in os.listdir(directory) if n.isdigit())
    try:
        checkpoint.atomic_write_text(os.path.join(directory, "big.txt"), "x" * 10000)
    except checkpoint.WriteError as error:
        out["text_message"] = str(error)
    out["after_text"] = sorted(os.listdir(directory))
    restored = checkpoint.RoundCheckpointer(directory, keep=2).restore_latest(state(0))
    out["restored_round"], out["skipped"] = restored[0], restored[3]
    out["restored_ok"] = bool((restored[1]["w"] == state(0)["w"]).all())
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    manager.save(1, state(1), [{"round": 0}, {"round": 1}])  # room again: the same call works
    out["after_retry"] = sorted(os.listdir(directory))
    print(json.dumps(out))
    """
)


def test_a_refused_write_keeps_the_previous_checkpoint(tmp_path):
    directory = tmp_path / "ckpt"
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_SCRIPT, str(directory)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    message = out["message"]
    assert "\n" not in message
    assert message.startswith(f"could not write the checkpoint of round 1 in {directory}")
    assert "File too large" in message and "resume after round 0" in message
    assert out["errno"] == 27 and out["is_os_error"]  # EFBIG
    assert out["after_failure"] == ["0"]  # round 1 not listed: round 0 is the newest
    assert out["text_message"] == f"could not write {directory}/big.txt: File too large"
    assert out["after_text"] == ["0"]  # no temporary file left
    assert out["restored_round"] == 0 and out["skipped"] == [] and out["restored_ok"]
    assert out["after_retry"] == ["0", "1"]
    # Orbax's own tracebacks stay off stderr: the caller reports the failure in one line.
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
    """A real ENOSPC on a small tmpfs; needs the right to mount (root in most containers)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        manager = checkpoint.RoundCheckpointer(str(mount / "ckpt"), keep=2)
        state = {"w": jnp.arange(2000.0)}
        manager.save(0, state, [{"round": 0}])
        with open(mount / "filler", "wb") as f:  # fill the disk
            with pytest.raises(OSError):
                while True:
                    f.write(os.urandom(16384))
                    f.flush()
        with pytest.raises(checkpoint.WriteError, match="No space left on device") as raised:
            manager.save(1, {"w": state["w"] + 1}, [{"round": 0}, {"round": 1}])
        assert "\n" not in str(raised.value) and raised.value.errno == 28
        assert sorted(os.listdir(mount / "ckpt")) == ["0"]
        with pytest.raises(checkpoint.WriteError, match="No space left on device"):
            checkpoint.atomic_write_text(str(mount / "results.json"), "x" * 100_000)
        assert not [n for n in os.listdir(mount) if n.startswith(".tmp-")]
        os.remove(mount / "filler")
        round_index, restored, _, _ = manager.restore_latest(state)
        assert round_index == 0
        np.testing.assert_array_equal(restored["w"], state["w"])
        manager.save(1, {"w": state["w"] + 1}, [{"round": 0}, {"round": 1}])
        assert manager.restore_latest(state)[0] == 1
        manager.close()
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_atomic_write_text_respects_the_umask(tmp_path):
    path = str(tmp_path / "results.json")
    previous = os.umask(0o022)
    try:
        checkpoint.atomic_write_text(path, "{}")
        assert os.stat(path).st_mode & 0o777 == 0o644
        os.umask(0o077)
        checkpoint.atomic_write_text(path, "[]")  # replaced: the new file's mode
        assert os.stat(path).st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)
    with open(path) as f:
        assert f.read() == "[]"
    assert os.listdir(tmp_path) == ["results.json"]
    missing = str(tmp_path / "no" / "such" / "folder" / "x.json")
    with pytest.raises(checkpoint.WriteError, match="No such file or directory") as raised:
        checkpoint.atomic_write_text(missing, "{}")
    assert isinstance(raised.value, OSError) and isinstance(raised.value, ValueError)


def test_claim_workdir_file_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        checkpoint.claim_workdir(str(tmp_path / "run"), {"seed": 0})
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "run" / "experiment.json").st_mode & 0o777 == 0o644


def test_h0_cache_is_keyed(tmp_path):
    like = {"params": jnp.zeros(4)}
    key = {"seed": 1, "shift": {"alpha": 0.5}}
    assert checkpoint.load_h0(str(tmp_path), key, like) is None
    checkpoint.save_h0(str(tmp_path), key, {"params": jnp.arange(4.0)})
    checkpoint.save_h0(str(tmp_path), key, {"params": jnp.ones(4)})  # already cached: kept
    np.testing.assert_array_equal(
        checkpoint.load_h0(str(tmp_path), key, like)["params"], np.arange(4.0)
    )
    assert checkpoint.load_h0(str(tmp_path), {**key, "seed": 2}, like) is None


@pytest.mark.parametrize("damage", ["array data", "array metadata", "key.json"])
def test_a_corrupt_cached_h0_is_replaced(tmp_path, damage):
    like = {"params": jnp.zeros(500)}
    key = {"seed": 1}
    path = checkpoint.save_h0(str(tmp_path), key, {"params": jnp.arange(500.0)})
    target = {
        "array data": os.path.join("state", _largest_data_file(os.path.join(path, "state"))),
        "array metadata": os.path.join("state", "_METADATA"),
        "key.json": "key.json",
    }[damage]
    _truncate(os.path.join(path, target))
    said = []
    assert checkpoint.load_h0(str(tmp_path), key, like, on_corrupt=said.append) is None
    assert len(said) == 1 and "\n" not in said[0]
    assert said[0].startswith(f"h0: the cached copy in {path} does not restore")
    assert said[0].endswith("training it again")
    assert not os.path.exists(path)  # removed, so the retrained h0 replaces it
    assert checkpoint.save_h0(str(tmp_path), key, {"params": jnp.ones(500)}) == path
    np.testing.assert_array_equal(checkpoint.load_h0(str(tmp_path), key, like)["params"], 1.0)
    assert [n for n in os.listdir(tmp_path) if not n.startswith(".")] == [os.path.basename(path)]
