"""Faults a long run must survive, through the command line: SIGKILL at random moments,
a corrupted newest checkpoint, a disk that fills while a checkpoint is written.

Every run here is ``python -m launch.replicate`` on the small digits experiment of
tests/test_replicate.py. The runs share one JAX compilation cache (a process killed
and started again then spends its time running, not compiling; the cached programs are
the ones a cold start compiles, so the results are the same).
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from alsa_jax import logging as results_log
from tests.test_replicate import ROOT, SMALL, cli, comparable


@pytest.fixture(scope="module")
def env():
    return {
        **os.environ,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }


def command(workdir, cache_dir):
    return cli(
        workdir,
        *(f"--config.{name}={value}" for name, value in SMALL.items()),
        f"--config.h0_cache_dir={cache_dir}",
    )


def run_to_end(workdir, cache_dir, env, launcher=None):
    """Run the command to its end; ``launcher`` replaces ``python -m launch.replicate``."""
    args = command(workdir, cache_dir)
    if launcher is not None:
        args = [*launcher, *args[3:]]
    done = subprocess.run(
        args,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done


def rounds_of(workdir):
    return comparable(results_log.read_results(str(workdir))["rounds"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    """An uninterrupted run: its workdir and its rounds (timing fields left out)."""
    base = tmp_path_factory.mktemp("reference")
    done = run_to_end(base / "run", base / "h0_cache", env)
    assert done.returncode == 0, done.stderr[-3000:]
    rounds = rounds_of(base / "run")
    assert len(rounds) == SMALL["query.num_batches"] + 1
    return base / "run", rounds


def assert_no_repeated_step(workdir):
    """Every TensorBoard event directory of the run holds each (tag, step) once."""
    logdirs = [
        root for root, _, _ in os.walk(workdir / "tensorboard") if results_log.event_files(root)
    ]
    assert logdirs
    for logdir in logdirs:
        for tag, points in results_log.read_scalars(logdir).items():
            steps = [s for s, _ in points]
            assert len(steps) == len(set(steps)), (logdir, tag, steps)


# ---------------------------------------------------------------------------------------
# SIGKILL at random moments.


class KilledRun:
    """One workdir (with its own h0 cache) killed again and again, then run to the end."""

    POLL = 0.002

    def __init__(self, base, env):
        self.workdir = base / "run"
        self.cache_dir = base / "h0_cache"
        self.env = env
        self.kills: list[str] = []

    def _writes(self):
        """Checkpoint and h0 writes under way: (name, inode) of their temporary folders."""
        found = set()
        for folder, marker in (
            (self.workdir / "checkpoints", "orbax-checkpoint-tmp"),
            (self.cache_dir, ".h0-"),
        ):
            try:
                with os.scandir(folder) as entries:
                    found |= {(e.name, e.inode()) for e in entries if marker in e.name}
            except FileNotFoundError:
                pass
        return found

    def _latest(self):
        try:
            return max(int(n) for n in os.listdir(self.workdir / "checkpoints") if n.isdigit())
        except (FileNotFoundError, ValueError):
            return -1

    def kill(self, moment: str, rng: random.Random) -> str:
        """Start the run and SIGKILL it at ``moment``; returns where it struck.

        ``h0``: a random time into the initial phase (h0 training, round 0's estimate and
        evaluation, the h0 cache and round 0 checkpoint writes); ``round``: a random time
        after the next round's checkpoint appears; ``write``: as soon as a checkpoint or
        h0 cache write starts.
        """
        before_writes, latest = self._writes(), self._latest()
        if moment == "h0":
            trigger, delay = (lambda: (self.workdir / "experiment.json").exists()), 0.3
        elif moment == "round":
            trigger = lambda: self._latest() > latest  # noqa: E731
            delay = 0.5
        else:
            trigger, delay = (lambda: bool(self._writes() - before_writes)), 0.01
        proc = subprocess.Popen(
            command(self.workdir, self.cache_dir),
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not trigger():
            time.sleep(self.POLL)
        writes = sorted(name for name, _ in self._writes() - before_writes)
        time.sleep(rng.uniform(0, delay))
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stderr = proc.stderr.read().decode()
        if finished:
            assert proc.returncode == 0, stderr[-3000:]
            where = "finished before the kill"
        elif moment == "write":
            where = "in the write of " + ", ".join(
                "h0 to the cache" if n.startswith(".h0-") else f"checkpoint {n.split('.')[0]}"
                for n in writes
            )
        else:
            last = self._latest()
            where = f"in {moment}, " + (
                "before checkpoint 0" if last < 0 else f"after checkpoint {last}"
            )
        self.kills.append(where)
        return where

    def finish(self):
        done = run_to_end(self.workdir, self.cache_dir, self.env)
        assert done.returncode == 0, done.stderr[-3000:]
        return rounds_of(self.workdir)


def test_three_kills_then_identical_results(reference, tmp_path, env):
    _, expected = reference
    run = KilledRun(tmp_path, env)
    rng = random.Random(0)
    for moment in ("h0", "write", "round"):
        run.kill(moment, rng)
    assert not any(k.startswith("finished") for k in run.kills), run.kills
    assert run.finish() == expected, run.kills
    assert_no_repeated_step(run.workdir)


@pytest.mark.slow
def test_soak_twenty_kills(reference, tmp_path, env):
    """20 kills over 4 runs (h0 first, then rounds and writes at random); all end identical."""
    _, expected = reference
    rng = random.Random(2024)
    report = []
    for chain in range(4):
        run = KilledRun(tmp_path / f"chain{chain}", env)
        moments = ["h0"] + [rng.choice(["round", "write"]) for _ in range(4)]
        for moment in moments:
            run.kill(moment, rng)
        survived = run.finish() == expected
        assert_no_repeated_step(run.workdir)
        report.append((run.kills, survived))
    kills = sum(1 for kills, _ in report for k in kills if not k.startswith("finished"))
    print(f"\nsoak: {kills} kills in 20 attempts; runs identical: {[s for _, s in report]}")
    for kills_of_chain, _ in report:
        print("  " + "; ".join(kills_of_chain))
    assert all(survived for _, survived in report), report


# ---------------------------------------------------------------------------------------
# A corrupted newest checkpoint.


def _results_one_round_behind(workdir):
    """results.json as a crash during the last checkpoint's write leaves it (a complete
    run's results would make a re-run only report that the run is complete)."""
    with open(workdir / "results.json") as f:
        behind = json.load(f)
    behind["rounds"] = behind["rounds"][:-1]
    with open(workdir / "results.json", "w") as f:
        json.dump(behind, f)


def _truncate_all(step_dir):
    for root, _, names in os.walk(step_dir):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)


def test_corrupt_newest_checkpoint_resumes_from_the_one_before(reference, tmp_path, env):
    workdir, expected = reference
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    last = SMALL["query.num_batches"]
    assert sorted(os.listdir(copy / "checkpoints")) == [str(last - 1), str(last)]
    # As a crash in the middle of the last checkpoint's write leaves it: the checkpoint cut
    # short, and the results files (written after the checkpoint) one round behind.
    _truncate_all(copy / "checkpoints" / str(last))
    _results_one_round_behind(copy)
    done = run_to_end(copy, workdir.parent / "h0_cache", env)  # the same config
    assert done.returncode == 0, done.stderr[-3000:]
    said = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if "skip" in line.lower() and f"round {last}" in line
    ]
    assert len(said) == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert rounds_of(copy) == expected
    assert_no_repeated_step(copy)


def test_no_checkpoint_restores_is_one_line(reference, tmp_path, env):
    workdir, _ = reference
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    for name in os.listdir(copy / "checkpoints"):
        _truncate_all(copy / "checkpoints" / name)
    _results_one_round_behind(copy)  # not finished: the run must restore a checkpoint
    before = sorted(os.listdir(copy / "checkpoints"))
    done = run_to_end(copy, workdir.parent / "h0_cache", env)  # the same config
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no checkpoint" in lines[0], done.stderr[-3000:]
    assert sorted(os.listdir(copy / "checkpoints")) == before


# ---------------------------------------------------------------------------------------
# The disk fills while round 2's checkpoint is written.

# The command line, with a file-size limit (RLIMIT_FSIZE; SIGXFSZ ignored, so writes
# fail with EFBIG as they fail with ENOSPC on a full disk) from round 2's save on.
_DISK_FULLS_AT_ROUND_2 = textwrap.dedent(
    """
    import resource, runpy, signal, sys
    from alsa_jax import checkpoint
    save = checkpoint.RoundCheckpointer.save
    def limited(self, round_index, state, history):
        if round_index == 2:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
        return save(self, round_index, state, history)
    checkpoint.RoundCheckpointer.save = limited
    sys.argv = ["replicate", *sys.argv[1:]]
    runpy.run_module("launch.replicate", run_name="__main__", alter_sys=True)
    """
)


@pytest.fixture(scope="module")
def disk_full_at_round_2(tmp_path_factory, env):
    base = tmp_path_factory.mktemp("disk_full")
    launcher = [sys.executable, "-c", _DISK_FULLS_AT_ROUND_2]
    done = run_to_end(base / "run", base / "h0_cache", env, launcher=launcher)
    return base, done


def test_a_full_disk_keeps_round_1_and_the_run_resumes(reference, disk_full_at_round_2, env):
    _, expected = reference
    base, failed = disk_full_at_round_2
    assert failed.returncode != 0
    checkpoints = base / "run" / "checkpoints"
    assert sorted(n for n in os.listdir(checkpoints) if n.isdigit()) == ["0", "1"]
    assert len(rounds_of(base / "run")) == 2  # results up to round 1
    done = run_to_end(base / "run", base / "h0_cache", env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert rounds_of(base / "run") == expected
    assert sorted(os.listdir(checkpoints)) == ["2", "3"]  # nothing of the failed save left
    assert_no_repeated_step(base / "run")


def test_a_full_disk_stops_with_one_line(disk_full_at_round_2):
    base, failed = disk_full_at_round_2
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert len(lines) == 1, failed.stderr[-3000:]
    assert lines[0].startswith("error: could not write the checkpoint of round 2")
    assert "File too large" in lines[0] and "resume after round 1" in lines[0]
