import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from alsa_jax import checkpoint
from alsa_jax import logging as results_log


def test_claim_workdir_refuses_another_experiment(tmp_path):
    workdir = str(tmp_path / "run")
    checkpoint.claim_workdir(workdir, {"seed": 0, "query": {"strategy": "maxent"}})
    checkpoint.claim_workdir(workdir, {"seed": 0, "query": {"strategy": "maxent"}})  # same: fine
    with pytest.raises(checkpoint.ExperimentMismatchError, match="query.strategy"):
        checkpoint.claim_workdir(workdir, {"seed": 0, "query": {"strategy": "margin"}})
    with open(os.path.join(workdir, "experiment.json")) as f:
        assert json.load(f)["query"]["strategy"] == "maxent"  # untouched


def test_round_checkpoint_round_trip(tmp_path):
    manager = checkpoint.RoundCheckpointer(str(tmp_path / "ckpt"), keep=2)
    assert manager.latest_round() is None
    state = {"w": jnp.arange(3.0), "mask": jnp.array([True, False]), "step": jnp.int32(4)}
    for r in range(3):
        manager.save(r, {**state, "step": jnp.int32(r)}, [{"round": i} for i in range(r + 1)])
    assert manager.latest_round() == 2
    restored, history = manager.restore(2, state)
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert restored["mask"].dtype == jnp.bool_ and int(restored["step"]) == 2
    assert history == [{"round": 0}, {"round": 1}, {"round": 2}]
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["1", "2"]  # keep=2
    manager.close()


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
