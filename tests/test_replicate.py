"""End-to-end tests of the replicate loop on the embedded digits data."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alsa_jax import acquisition, label_shift, pool, selection, train
from configs import digits
from launch import replicate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("seconds_", "compilations", "h0_cache_hit")


# The small experiment of these tests, as config overrides of configs/digits.py.
SMALL = {
    "model.name": "mlp",
    "shift.dataset_cap": 300,
    "query.num_batches": 3,
    "query.sample_prop": 0.3,
    "query.mc_samples": 4,
    "query.committee_size": 3,
    "train.initial_epochs": 10,
    "train.learning_rate": 1e-2,
    "train.partial_epochs": 1,
    "train.batch_size": 32,
}


def small_config(**overrides):
    config = digits.get_config()
    for dotted, value in {**SMALL, **overrides}.items():
        node = config
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def cli(workdir, *extra):
    """The replicate command line for ``workdir``: configs/digits.py plus ``extra`` flags."""
    return [
        sys.executable,
        "-m",
        "launch.replicate",
        "--config",
        "configs/digits.py",
        "--workdir",
        str(workdir),
        *extra,
    ]


def comparable(history):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in history]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("runs") / "reference")
    history = replicate.run(small_config(), workdir, verbose=False)
    return workdir, history


def test_end_to_end_three_rounds(reference_run):
    workdir, history = reference_run
    assert [r["round"] for r in history] == [0, 1, 2, 3]
    # Pool of 150 rows, 30% bought over 3 rounds: 15 labels a round, exactly.
    assert [r["labels_bought"] for r in history] == [0, 15, 30, 45]
    assert history[0]["labels_total"] == 150
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in history)
    assert history[-1]["accuracy"] > 0.5  # digits are easy; far above chance (0.1)
    assert len(history[-1]["weights"]) == 10
    with open(os.path.join(workdir, "results.json")) as f:
        stored = json.load(f)
    assert stored["config"]["query"]["strategy"] == "maxent"
    assert comparable(stored["rounds"]) == comparable(history)
    with open(os.path.join(workdir, "results.csv")) as f:
        lines = f.read().splitlines()
    assert len(lines) == 5 and "per_class_accuracy_9" in lines[0]
    assert any(
        name.startswith("events") for name in os.listdir(os.path.join(workdir, "tensorboard"))
    )


def test_resume_after_exception_matches_uninterrupted(reference_run, tmp_path, monkeypatch):
    _, reference = reference_run
    workdir = str(tmp_path / "interrupted")
    real_finetune = replicate.finetune

    def failing(exp, state, key, *, epochs, initial):
        if int(state.round) == 2:
            raise RuntimeError("simulated crash in round 2")
        return real_finetune(exp, state, key, epochs=epochs, initial=initial)

    monkeypatch.setattr(replicate, "finetune", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        replicate.run(small_config(), workdir, verbose=False)
    monkeypatch.setattr(replicate, "finetune", real_finetune)
    resumed = replicate.run(small_config(), workdir, verbose=False)
    assert comparable(resumed) == comparable(reference)


def test_resume_after_sigkill_matches_uninterrupted(reference_run, tmp_path):
    _, reference = reference_run
    workdir = tmp_path / "killed"
    args = cli(
        workdir,
        *(f"--config.{name}={value}" for name, value in SMALL.items()),
        f"--config.h0_cache_dir={tmp_path / 'cache'}",
    )

    def kill_when(ready, *, delay=0.0):
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and not ready() and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert ready(), proc.stderr.read().decode()[-2000:]

    # 1. Mid-h0: the workdir is claimed, nothing trained or checkpointed yet.
    kill_when(lambda: (workdir / "experiment.json").exists())
    assert not (workdir / "checkpoints" / "0").exists()
    # 2. Right after round 1's checkpoint; 3. a moment into round 3 (or its save).
    kill_when(lambda: (workdir / "checkpoints" / "1").exists())
    kill_when(lambda: (workdir / "checkpoints" / "2").exists(), delay=0.1)
    config = small_config(h0_cache_dir=str(tmp_path / "cache"))
    resumed = replicate.run(config, str(workdir), verbose=False)
    assert comparable(resumed) == comparable(reference)


def test_h0_cache_hit_skips_training(reference_run, tmp_path, monkeypatch):
    _, reference = reference_run
    cache = str(tmp_path / "cache")
    first = replicate.run(small_config(h0_cache_dir=cache), str(tmp_path / "a"), verbose=False)
    assert first[0]["h0_cache_hit"] is False and first[0]["seconds_h0"] > 0
    real_finetune = replicate.finetune

    def no_h0_training(exp, state, key, *, epochs, initial, committee=False):
        assert not initial, "h0 was trained despite the cache"
        return real_finetune(exp, state, key, epochs=epochs, initial=initial, committee=committee)

    monkeypatch.setattr(replicate, "finetune", no_h0_training)
    second = replicate.run(small_config(h0_cache_dir=cache), str(tmp_path / "b"), verbose=False)
    assert second[0]["h0_cache_hit"] is True and second[0]["seconds_h0"] == 0.0
    assert comparable(second) == comparable(first) == comparable(reference)
    # Another query strategy shares h0 (its cache key has no query fields).
    other = small_config(h0_cache_dir=cache, **{"query.strategy": "margin"})
    third = replicate.run(other, str(tmp_path / "c"), verbose=False)
    assert third[0]["h0_cache_hit"] is True


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    config = small_config()
    exp = replicate.build_experiment(config, str(tmp_path_factory.mktemp("combo")))
    state = replicate.initial_state(exp)
    return exp, state


@pytest.mark.parametrize("estimator", ["none", "bbse", "rlls", "oracle"])
def test_every_strategy_diversify_correction_runs_a_round(built, estimator):
    exp, state = built
    # Strategies that read penultimate features are refused by this driver's config check.
    strategies = tuple(n for n, a in acquisition.ACQUISITIONS.items() if not a.needs_features)
    assert "qbc" in strategies and "iwal" in strategies and "bald_vote" in strategies
    committee_size = 3
    committee_step = train.make_ensemble_train_step(exp.model, exp.tx, committee_size)
    committee = train.create_ensemble_state(
        jax.random.PRNGKey(1), exp.model, exp.tx, exp.input_shape, committee_size
    )
    for strategy, diversify in itertools.product(strategies, selection.DIVERSIFY):
        config = small_config(
            **{
                "label_shift.estimator": estimator,
                "query.strategy": strategy,
                "query.diversify": diversify,
                "train.partial_epochs": 1,
            }
        )
        if strategy == "iwal" and diversify != "none":
            with pytest.raises(replicate.ConfigError, match="query.diversify"):
                replicate.check_config(config)
            continue
        replicate.check_config(config)
        qbc = strategy == "qbc"
        combo = replicate.Experiment(
            **{
                **exp.__dict__,
                "config": config,
                "medial_lambda": selection.DIVERSIFY[diversify],
                "committee_step": committee_step if qbc else None,
            }
        )
        start = state.replace(committee=committee if qbc else None)
        new_state, record = replicate.run_round(combo, start, 1)
        chosen = new_state.pool.labeled & ~state.pool.labeled
        assert int(chosen.sum()) == exp.budget, (strategy, diversify)
        assert not bool(jnp.any(chosen & ~state.pool.pool))
        assert record["labels_bought"] == exp.budget
        weights = np.asarray(new_state.weights)
        assert np.all(np.isfinite(weights)) and np.all(weights >= 0)
        if estimator == "none":
            np.testing.assert_array_equal(weights, 1.0)
        if estimator == "oracle":
            np.testing.assert_allclose(weights, record["true_weights"], rtol=1e-5)


def test_class_balanced_selection_spreads_over_predicted_classes(built):
    exp, state = built
    state = state.replace(weights=jnp.linspace(0.2, 3.0, 10))  # correction changes predictions
    config = small_config(
        **{
            "query.diversify": "guess",
            "train.partial_epochs": 0,
            "label_shift.posterior_correction_scoring": True,
        }
    )
    combo = replicate.Experiment(**{**exp.__dict__, "config": config, "medial_lambda": 0.0})
    probs = replicate.predict(combo, state.train, combo.source_x)
    chosen, _ = replicate.query_round(combo, state, probs, jax.random.PRNGKey(0))
    corrected = label_shift.posterior_correction(probs, state.weights)
    predicted = np.asarray(jnp.argmax(corrected, -1))[np.asarray(chosen)]
    available = np.asarray(pool.unlabeled_pool(state.pool))
    candidates = np.bincount(np.asarray(jnp.argmax(corrected, -1))[available], minlength=10)
    expected = selection.class_allocation(jnp.asarray(candidates), state.weights, exp.budget, 0.0)
    np.testing.assert_array_equal(np.bincount(predicted, minlength=10), np.asarray(expected))


def test_bad_config_value_is_one_line(tmp_path):
    with pytest.raises(replicate.ConfigError, match="query.strategy"):
        replicate.run(small_config(**{"query.strategy": "maxentt"}), str(tmp_path / "x"))
    with pytest.raises(replicate.ConfigError, match="label_shift.estimator"):
        replicate.run(small_config(**{"label_shift.estimator": "em"}), str(tmp_path / "x"))
    typo = small_config()
    with typo.unlocked():
        typo.query.stratgy = "margin"
    with pytest.raises(replicate.ConfigError, match="query.stratgy"):
        replicate.run(typo, str(tmp_path / "x"))
    with pytest.raises(replicate.ConfigError, match="query.diversify"):
        replicate.run(small_config(**{"query.strategy": "iwal"}), str(tmp_path / "x"))
    with pytest.raises(replicate.ConfigError, match="checkpoint_keep"):
        replicate.run(small_config(checkpoint_keep=0), str(tmp_path / "x"))
    with pytest.raises(replicate.ConfigError, match="shift.alpha"):
        replicate.run(small_config(**{"shift.alpha": float("nan")}), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()  # nothing written
    (tmp_path / "file").write_text("")
    with pytest.raises(replicate.ConfigError, match="--workdir"):
        replicate.run(small_config(), str(tmp_path / "file"))


def test_workdir_of_another_experiment_is_refused(reference_run):
    workdir, _ = reference_run
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    with pytest.raises(replicate.checkpoint.ExperimentMismatchError, match="seed"):
        replicate.run(small_config(seed=7), workdir, verbose=False)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config.query.strategy=maxentt"], "query.strategy"),
        (["--config.no_such_field=1"], "no_such_field"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, extra, message):
    args = cli(tmp_path / "w", *extra)
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_eight_devices_match_one_device(reference_run, tmp_path):
    """The data-parallel path (batches sharded over 8 CPU devices) gives the same run."""
    _, reference = reference_run
    script = (
        "import json, sys\n"
        "import jax\n"
        "from tests.test_replicate import small_config, comparable\n"
        "from launch import replicate\n"
        "assert len(jax.devices()) == 8, jax.devices()\n"
        f"history = replicate.run(small_config(), {str(tmp_path / 'run')!r}, verbose=False)\n"
        "print(json.dumps(comparable(history)))\n"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = json.loads(done.stdout.strip().splitlines()[-1])
    expected = comparable(reference)
    assert [r["labels_bought"] for r in sharded] == [r["labels_bought"] for r in expected]
    for got, want in zip(sharded, expected, strict=True):
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


def test_every_correction_flag_combination_runs_a_round(built):
    exp, state = built
    state = state.replace(weights=jnp.linspace(0.5, 2.0, 10))
    flags = (
        "importance_weighting",
        "reweight_all_labeled",
        "posterior_correction_scoring",
        "posterior_correction_eval",
        "iterative",
    )
    accuracies = set()
    for values in itertools.product((False, True), repeat=len(flags)):
        overrides = {
            f"label_shift.{flag}": value for flag, value in zip(flags, values, strict=True)
        }
        config = small_config(**overrides)
        replicate.check_config(config)
        combo = replicate.Experiment(**{**exp.__dict__, "config": config})
        new_state, record = replicate.run_round(combo, state, 1)
        assert record["labels_bought"] == exp.budget, overrides
        weights = np.asarray(new_state.weights)
        assert np.all(np.isfinite(weights)) and np.all(weights >= 0), overrides
        if not config.label_shift.iterative and not config.label_shift.reweight_all_labeled:
            np.testing.assert_allclose(weights, np.asarray(state.weights), rtol=1e-6)
        accuracies.add(round(record["accuracy"], 6))
    assert len(accuracies) > 1  # the flags change what is trained and evaluated
