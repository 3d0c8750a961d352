"""Data parallelism across processes: two processes joined by jax.distributed against one."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alsa_jax import checkpoint, data, experiment, models, parallel, train
from launch import replicate
from tests.test_replicate import small_config
from tests.test_train import TinyBatchNormNet  # dense, batch norm, dropout: batch statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    """A TCP port on localhost that nothing listens on (for a coordinator)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_processes(commands, *, timeout):
    """Start every ``(args, env)`` at once; wait for all of them, at most ``timeout`` seconds
    in all (then every one still running is killed and the test fails). Returns their
    ``(returncode, stdout, stderr)`` in order."""
    processes = [
        subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args, env in commands
    ]
    deadline = time.monotonic() + timeout
    try:
        outputs = [p.communicate(timeout=max(0.1, deadline - time.monotonic())) for p in processes]
    except subprocess.TimeoutExpired:
        outputs = None
    finally:
        for p in processes:  # SIGKILL: JAX catches SIGTERM (its preemption notifier)
            if p.poll() is None:
                p.kill()
                p.communicate()
    if outputs is None:
        tails = [(p.args[-1], p.returncode) for p in processes]
        pytest.fail(f"the processes did not finish within {timeout} s: {tails}")
    return [(p.returncode, out, err) for p, (out, err) in zip(processes, outputs, strict=True)]


def process_env(devices):
    """The environment of a test process with ``devices`` CPU devices and no cluster
    (Slurm, Open MPI) in sight."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR"))
    }
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT,
    )
    return env


def _fresh_state(key):
    tx = train.make_optimizer("sgd", learning_rate=0.1)
    return train.create_train_state(key, TinyBatchNormNet(), tx, (4, 4, 1))


def _core_case(folder):
    """Two epochs of fit on a batch-norm net, prediction, MC dropout and a committee of two
    trained and predicted together; the state through the h0 cache and a round checkpoint
    in ``folder``. Everything read back as host values (JSON-able)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 64).astype(np.int32)
    centers = rng.normal(size=(3, 4, 4, 1)).astype(np.float32) * 3
    x = centers[labels] + 0.3 * rng.normal(size=(64, 4, 4, 1)).astype(np.float32)
    weights = np.linspace(0.5, 2.0, 64).astype(np.float32)
    rows = np.arange(64) < 50
    model = TinyBatchNormNet()
    tx = train.make_optimizer("sgd", learning_rate=0.1)
    state = train.create_train_state(jax.random.PRNGKey(0), model, tx, (4, 4, 1))
    step = train.make_train_step(model, tx)
    trained, history = train.fit(
        state,
        step,
        x,
        labels,
        weights,
        rows,
        key=jax.random.PRNGKey(2),
        epochs=2,
        batch_size=16,
        lr_fn=lambda t: 0.05,
    )

    def leaves(tree):
        return [v.ravel().tolist() for v in jax.tree_util.tree_leaves(parallel.to_host(tree))]

    committee_model = models.create_model("mlp", 3, hidden=8)
    committee = train.create_ensemble_state(jax.random.PRNGKey(4), committee_model, tx, (16,), 2)
    committee, _ = train.fit(
        committee,
        train.make_ensemble_train_step(committee_model, tx, 2),
        x.reshape(64, 16),
        labels,
        weights,
        rows,
        key=jax.random.PRNGKey(5),
        epochs=1,
        batch_size=16,
        lr_fn=lambda t: 0.05,
    )
    key = {"case": "core"}
    checkpoint.save_h0(os.path.join(folder, "h0_cache"), key, trained)
    cached = checkpoint.load_h0(os.path.join(folder, "h0_cache"), key, state)
    manager = checkpoint.RoundCheckpointer(os.path.join(folder, "checkpoints"))
    manager.save(1, {"train": trained, "round": parallel.place(np.int32(1))}, [{"round": 1}])
    restored = manager.restore_latest({"train": state, "round": parallel.place(np.int32(0))})
    manager.close()
    return {
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "loss": history["loss"],
        "params": leaves(trained.params),
        "stats": leaves(trained.batch_stats),
        "probs": parallel.to_host(train.predict_probs(model, trained, x[:37], batch_size=16)),
        "mc": parallel.to_host(
            train.mc_dropout_probs(
                model, trained, x[:21], jax.random.PRNGKey(3), num_samples=2, batch_size=8
            )
        ),
        "committee": leaves(committee.params),
        "committee_probs": parallel.to_host(
            train.ensemble_probs(committee_model, committee, x[:37].reshape(37, 16), batch_size=16)
        ),
        "h0_cached": leaves(cached.params),
        "restored": [restored[0], restored[2], leaves(restored[1]["train"].params)],
    }


def _to_json(case):
    return json.loads(json.dumps(case, default=lambda a: np.asarray(a).tolist()))


def _core_process(port, process_id, folder):
    """One of two processes: join the other at ``localhost:port``, run the case, and
    (process 0) print it as JSON."""
    parallel.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    case = _to_json(_core_case(folder))
    # An h0 that one process stored (jax arrays) restores in two (as host arrays, then sent).
    like = _fresh_state(jax.random.PRNGKey(1))
    stored = checkpoint.load_h0(os.path.join(folder, "h0_cache"), {"stored_by": "one"}, like)
    case["stored_by_one"] = [v.ravel().tolist() for v in jax.tree.leaves(parallel.to_host(stored))]
    parallel.check_same_on_every_process("equal", {"a": np.arange(5), "b": np.ones((2, 2))})
    try:
        parallel.check_same_on_every_process("labels", [np.arange(5) + (process_id == 1)])
    except ValueError as error:
        case["differs"] = str(error)
    # A host that read other data stops the run before anything is placed or trained.
    config = small_config()
    dataset = data.load_dataset("digits")
    if process_id == 1:
        test_y = dataset.test_y.copy()
        test_y[0] = (test_y[0] + 1) % dataset.num_classes
        dataset = dataclasses.replace(dataset, test_y=test_y)
    try:
        experiment.setup(replicate.options_of(config), dataset=dataset)
    except experiment.ConfigError as error:
        case["setup"] = str(error)
    if parallel.is_primary():
        print(json.dumps(case))


def test_two_processes_fit_predict_and_checkpoint_as_one(tmp_path):
    """Two processes of 2 CPU devices each (a mesh of 4 over both, batches split across
    them, gradients all-reduced through gloo) train, predict and checkpoint as one device."""
    if jax.device_count() != 1 or jax.process_count() != 1:
        pytest.skip("compares against this process, which must see exactly one device")
    port = free_port()
    folder = str(tmp_path / "shared")
    stored = _fresh_state(jax.random.PRNGKey(7))
    checkpoint.save_h0(os.path.join(folder, "h0_cache"), {"stored_by": "one"}, stored)
    commands = [
        (
            [
                sys.executable,
                "-c",
                f"from tests import test_parallel; test_parallel._core_process({port}, {i}, "
                f"{folder!r})",
            ],
            process_env(devices=2),
        )
        for i in range(2)
    ]
    results = run_processes(commands, timeout=240)
    one = _to_json(_core_case(str(tmp_path / "alone")))  # meanwhile, on this process's device
    for code, _, err in results:
        assert code == 0, err[-3000:]
    lines = [line for line in results[0][1].splitlines() if line.startswith("{")]
    assert len(lines) == 1 and not any(line.startswith("{") for line in results[1][1].splitlines())
    two = json.loads(lines[0])
    assert (one["devices"], one["processes"]) == (1, 1)
    assert (two["devices"], two["processes"]) == (4, 2)
    for name in ("loss", "params", "stats", "probs", "mc", "committee", "committee_probs"):
        np.testing.assert_allclose(
            np.concatenate([np.ravel(v) for v in two[name]]),
            np.concatenate([np.ravel(v) for v in one[name]]),
            rtol=1e-4,
            atol=1e-5,
            err_msg=name,
        )
    # What was saved is what comes back, exactly, in the processes that saved it.
    assert two["h0_cached"] == two["params"]
    assert two["restored"] == [1, [{"round": 1}], two["params"]]
    assert two["differs"] == (
        "labels differs between processes (process 1 holds other values than process 0); "
        "every process must read the same data"
    )
    assert two["setup"] == (
        "dataset.name=digits differs between processes (process 1 holds other values than "
        "process 0); every process must read the same data"
    )
    assert two["stored_by_one"] == [v.ravel().tolist() for v in jax.tree.leaves(stored)]
    # And the h0 the two processes stored restores in one.
    theirs = checkpoint.load_h0(
        os.path.join(folder, "h0_cache"), {"case": "core"}, _fresh_state(jax.random.PRNGKey(1))
    )
    assert [v.ravel().tolist() for v in jax.tree.leaves(theirs.params)] == two["params"]
    # Process 0 alone wrote the h0 cache: its entry beside this process's, no staging folder
    # of another process.
    assert len(os.listdir(os.path.join(folder, "h0_cache"))) == 2


def test_one_process_helpers_are_device_put_and_device_get():
    host = {"a": np.arange(3, dtype=np.int32), "b": np.float32(2.0)}
    placed = parallel.place(host)
    assert all(isinstance(v, jax.Array) for v in placed.values())
    back = parallel.to_host(placed)
    assert back["a"].tolist() == [0, 1, 2] and back["b"] == 2.0
    assert isinstance(back["a"], np.ndarray)
    already = jnp.ones(2)
    assert parallel.place(already) is already
