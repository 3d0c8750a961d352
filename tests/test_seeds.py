"""Several seeds run together (alsa_jax.seeds, num_parallel_seeds) equal separate runs."""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

from alsa_jax import data, experiment, models, seeds
from launch import replicate, report
from tests.test_replicate import TIMING, _one_line_error, cli, on_eight_devices, small_config


def _options(**overrides):
    return replicate.options_of(small_config(**overrides))


def _alone(options, seed):
    """Every round of ``seed`` run by itself: (records, final state)."""
    exp = experiment.setup(dataclasses.replace(options, seed=seed))
    state = experiment.initial_state(exp)
    state = state.replace(train=experiment.train_initial(exp, state))
    state = experiment.train_committee(exp, state, initial=True)
    state, preds, record = experiment.initial_round(exp, state)
    records = [record]
    for r in range(1, options.query.num_batches + 1):
        state, preds, record = experiment.run_round(exp, state, preds, r)
        records.append(record)
    return records, state


def _together(options, seed_list):
    runs = seeds.setup(options, seed_list)
    state = seeds.initial_state(runs)
    state = state.replace(train=seeds.train_initial(runs, state))
    state = seeds.train_committee(runs, state, initial=True)
    state, preds, record = seeds.initial_round(runs, state)
    records = [record]
    for r in range(1, options.query.num_batches + 1):
        state, preds, record = seeds.run_round(runs, state, preds, r)
        records.append(record)
    return runs, records, state


def _assert_records_close(alone, together):
    """Same labels bought, metrics equal to float rounding (batched products round apart)."""
    assert len(alone) == len(together)
    for a, b in zip(alone, together, strict=True):
        assert set(a) == set(b)
        for name in a:
            if name.startswith(TIMING):
                continue
            x, y = np.asarray(a[name], np.float64), np.asarray(b[name], np.float64)
            if name.startswith(("labels_", "training_rows", "round")):
                np.testing.assert_array_equal(x, y, err_msg=name)
            else:
                np.testing.assert_allclose(x, y, rtol=2e-3, atol=2e-4, err_msg=name)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # MALLS: RLLS, max-entropy on the medial distribution, importance weighting
        # Stacked committees, and a reveal with IWAL's offered rows and 1/p weights; the
        # other phases are each seed's own functions.
        {"query.strategy": "qbc", "label_shift.estimator": "mlls"},
        {"query.strategy": "iwal", "query.diversify": "none", "label_shift.estimator": "oracle"},
    ],
    ids=["malls", "qbc-mlls", "iwal-oracle"],
)
def test_seeds_together_equal_each_seed_alone(overrides):
    options = _options(**overrides)
    seed_list = [4, 7]
    runs, together, final = _together(options, seed_list)
    assert [exp.options.seed for exp in runs.experiments] == seed_list
    for i, seed in enumerate(seed_list):
        alone, alone_final = _alone(options, seed)
        _assert_records_close(alone, [seeds.take(record, i) for record in together])
        # The same labels bought in the same rounds (masks equal), with the same weights.
        mine = seeds.take(final.pool, i)
        for x, y in zip(jax.tree.leaves(alone_final.pool), jax.tree.leaves(mine), strict=True):
            if np.issubdtype(np.asarray(x).dtype, np.floating):
                np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5)
            else:
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_stacked_arrays_are_each_seeds_own():
    options = _options()
    runs = seeds.setup(options, [0, 3])
    alone = experiment.setup(dataclasses.replace(options, seed=3))
    for name in seeds.VARYING:
        for x, y in zip(
            jax.tree.leaves(getattr(alone, name)),
            jax.tree.leaves(seeds.take(runs.stacked[name], 1)),
            strict=True,
        ):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
    assert runs.experiments[1].budget == alone.budget
    with pytest.raises(experiment.ConfigError, match="repeat"):
        seeds.setup(options, [2, 2])


# --- the launcher -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    # Laid out as a sweep's <method>/<shift>, so that launch.report reads the seeds.
    workdir = str(tmp_path_factory.mktemp("sweep") / "malls" / "dirichlet")
    histories = replicate.run_seeds(small_config(num_parallel_seeds=2), workdir, verbose=False)
    return workdir, histories


def test_run_seeds_leaves_each_seed_as_a_run_of_its_own(two_seeds, tmp_path, capsys):
    workdir, histories = two_seeds
    assert sorted(histories) == [0, 1]
    for seed in (0, 1):
        alone_dir = str(tmp_path / f"alone{seed}")
        alone = replicate.run(small_config(seed=seed), alone_dir, verbose=False)
        _assert_records_close(alone, histories[seed])
        seed_dir = replicate.seed_workdir(workdir, seed)
        # The seed's folder is what a run of that seed alone leaves: same experiment.json,
        # results and TensorBoard run, so the single run recognises it as complete.
        for name in ("experiment.json",):
            with open(os.path.join(seed_dir, name)) as f, open(os.path.join(alone_dir, name)) as g:
                assert json.load(f) == json.load(g)
        with open(os.path.join(seed_dir, "results.json")) as f:
            stored = json.load(f)
        assert stored["rounds"] == histories[seed]
        assert os.listdir(os.path.join(seed_dir, "tensorboard")) == os.listdir(
            os.path.join(alone_dir, "tensorboard")
        )
        capsys.readouterr()
        again = replicate.run(small_config(seed=seed), seed_dir)
        assert "the run is complete" in capsys.readouterr().out
        assert again == histories[seed]
    # h0 and compiled programs are cached beside the workdir, as for a single run; nothing
    # compiles after round 1.
    assert len(os.listdir(os.path.join(os.path.dirname(workdir), "h0_cache"))) == 2
    assert os.path.isdir(os.path.join(os.path.dirname(workdir), "compilation_cache"))
    assert all(r["compilations"] == 0 for r in histories[0][2:])
    reported = report.load_runs(os.path.dirname(os.path.dirname(workdir)))
    assert [(r.method, r.shift, r.seed) for r in reported] == [
        ("malls", "dirichlet", 0),
        ("malls", "dirichlet", 1),
    ]
    assert [r.rounds for r in reported] == [histories[0], histories[1]]


def test_run_seeds_resumes_and_a_seed_behind_catches_up(two_seeds, tmp_path, capsys):
    _, reference = two_seeds
    workdir = str(tmp_path / "stopped")
    config = small_config(num_parallel_seeds=2, h0_cache_dir=str(tmp_path / "cache"))
    first = replicate.run_seeds(config, workdir, verbose=False, stop_after_round=2)
    assert [r["round"] for r in first[1]] == [0, 1, 2]
    # Stopped between the two seeds' saves of round 2: seed 1 is a round behind.
    shutil.rmtree(os.path.join(replicate.seed_workdir(workdir, 1), "checkpoints", "2"))
    capsys.readouterr()
    resumed = replicate.run_seeds(config, workdir)
    out = capsys.readouterr().out
    assert "seed 1: catching up to round 2 alone" in out
    assert "resuming" in out
    for seed in (0, 1):
        _assert_records_close(reference[seed], resumed[seed])


def test_a_workdir_of_the_other_layout_is_refused(two_seeds):
    workdir, _ = two_seeds
    with pytest.raises(experiment.ConfigError, match="holds seeds run together"):
        replicate.run(small_config(), workdir, verbose=False)
    with pytest.raises(experiment.ConfigError, match="holds a run of one seed"):
        replicate.run_seeds(
            small_config(num_parallel_seeds=2), replicate.seed_workdir(workdir, 0), verbose=False
        )


def test_take_is_by_position_and_checked():
    stacked = {"a": np.arange(6).reshape(3, 2)}
    np.testing.assert_array_equal(seeds.take(stacked, 2)["a"], [4, 5])
    with pytest.raises(IndexError, match="index 3 is out of range for 3 stacked seeds"):
        seeds.take(stacked, 3)
    with pytest.raises(experiment.ConfigError, match="seeds must be integers"):
        seeds.setup(_options(), [0, 1.5])


def test_num_parallel_seeds_is_checked(tmp_path):
    with pytest.raises(experiment.ConfigError, match="num_parallel_seeds must be an integer >= 1"):
        replicate.options_of(small_config(num_parallel_seeds=0))
    with pytest.raises(experiment.ConfigError, match="call run_seeds"):
        replicate.run(small_config(num_parallel_seeds=2), str(tmp_path / "w"), verbose=False)
    assert not (tmp_path / "w").exists()
    line = _one_line_error(cli(tmp_path / "w", "--config.num_parallel_seeds=-1"))
    assert "num_parallel_seeds must be an integer >= 1" in line
    line = _one_line_error(
        cli(tmp_path / "w", "--config.num_parallel_seeds=2", "--config.distributed.enabled=True")
    )
    assert "num_parallel_seeds > 1 runs its seeds on one host" in line
    assert not (tmp_path / "w").exists()


def test_seeds_together_on_eight_devices_match_one_device(two_seeds, tmp_path):
    """Stacked seeds with every batch sharded over 8 CPU devices: the same runs."""
    _, reference = two_seeds
    script = (
        "import json\n"
        "import jax\n"
        "from tests.test_replicate import small_config\n"
        "from launch import replicate\n"
        "assert len(jax.devices()) == 8, jax.devices()\n"
        "histories = replicate.run_seeds(small_config(num_parallel_seeds=2), "
        f"{str(tmp_path / 'run')!r}, verbose=False)\n"
        "print(json.dumps(histories))\n"
    )
    sharded = on_eight_devices(script)
    for seed in (0, 1):
        _assert_records_close(reference[seed], sharded[str(seed)])


def _images28(seed=0, n=600):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    x = rng.random((n, 28, 28, 1), np.float32)
    return data.Dataset("npz", x, y.astype(np.int32), x[: n // 2], y[: n // 2], 10)


@pytest.mark.parametrize("train_chunk, expected", [(-1, 4), (0, 0), (8, 8)])
def test_a_cnns_automatic_chunks_shrink_with_the_seeds_trained_together(train_chunk, expected):
    # Alone, automatic chunks of 28x28 images hold 16 (on CPU); 4 seeds vmapped together
    # train in chunks of 4 images per seed, 16 in all. A chunk set by hand is kept.
    options = _options(**{"model.name": "cnn", "model.train_chunk": train_chunk})
    alone = experiment.setup(options, dataset=_images28())
    assert models.automatic_train_chunk(alone.model, alone.input_shape) == 16
    runs = seeds.setup(options, [0, 1, 2, 3], dataset=_images28())
    assert {exp.model.train_chunk for exp in runs.experiments} == {expected}
