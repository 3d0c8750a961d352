"""The round logic as library functions: options, setup, and the steps of a round."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alsa_jax import acquisition, experiment, label_shift, malls, pool, selection, train
from configs import base
from launch import replicate
from tests.test_replicate import small_config


def options(**overrides):
    return experiment.Options.from_config(
        small_config(**overrides),
        ignore=replicate.LAUNCHER_FIELDS,
    )


@pytest.fixture(scope="module")
def built():
    exp = experiment.setup(options())
    state = experiment.initial_state(exp)
    return exp, state, experiment.predict(exp, state.train)


# --- options ---------------------------------------------------------------------------


def test_options_mirror_the_base_config():
    config = base.get_config()
    for section, cls in experiment._SECTIONS.items():
        assert {f.name for f in dataclasses.fields(cls)} == set(config[section].keys()), section
    top = {f.name for f in dataclasses.fields(experiment.Options)}
    assert top | set(replicate.LAUNCHER_FIELDS) == set(config.keys())


def test_unknown_and_missing_fields_are_named():
    typo = small_config()
    with typo.unlocked():
        typo.query.stratgy = "margin"
    with pytest.raises(
        experiment.ConfigError, match="'query.stratgy'.*did you mean 'query.strategy'"
    ):
        experiment.Options.from_config(typo, ignore=replicate.LAUNCHER_FIELDS)
    missing = small_config().to_dict()
    del missing["train"]["momentum"]
    with pytest.raises(experiment.ConfigError, match="train.momentum"):
        experiment.Options.from_config(missing, ignore=replicate.LAUNCHER_FIELDS)


def _split_options(**changes):
    shift_options = dict(small_config().shift)
    shift_options.update(changes)
    shift_options["test_size"] = shift_options["test_size"] or None
    return shift_options


@pytest.mark.parametrize(
    "field, value, library_call",
    [
        (
            "train.momentum",
            1.5,
            lambda: train.make_optimizer("sgd", learning_rate=0.1, momentum=1.5),
        ),
        (
            "train.gamma",
            0.0,
            lambda: train.learning_rate_at(0.0, base_lr=1.0, schedule="exponential", gamma=0.0),
        ),
        (
            "shift.holdout_fraction",
            1.0,
            lambda: experiment.shift.check_split_options(**_split_options(holdout_fraction=1.0)),
        ),
    ],
)
def test_option_checks_are_the_library_checks(field, value, library_call):
    # One source of truth: the option's error is the library's own, naming the config field.
    overrides = {field: value}
    if field == "train.momentum":
        overrides["train.optimizer"] = "sgd"
    with pytest.raises(experiment.ConfigError) as caught:
        options(**overrides)
    with pytest.raises(ValueError) as library:
        library_call()
    section = field.split(".")[0]
    assert str(caught.value) == f"{section}.{library.value}"


def test_h0_key_ignores_what_h0_does_not_depend_on():
    key = experiment.h0_key(options())
    assert "query" not in key and "label_shift" not in key
    assert experiment.h0_key(options(**{"query.strategy": "margin"})) == key
    assert experiment.h0_key(options(**{"train.partial_epochs": 7})) == key
    assert experiment.h0_key(options(**{"train.initial_epochs": 7})) != key
    assert experiment.h0_key(options(**{"shift.alpha": 0.9})) != key
    assert experiment.h0_key(options(seed=3)) != key


# --- setup and predictions -------------------------------------------------------------


def test_examples_are_stored_once_and_rows_point_into_them(built):
    exp, _, _ = built
    from alsa_jax import data

    dataset = data.load_dataset("digits")
    np.testing.assert_array_equal(exp.train_images, dataset.train_x)
    np.testing.assert_array_equal(exp.test_images, dataset.test_x)
    np.testing.assert_array_equal(exp.source_y, dataset.train_y[exp.source_index])
    # The target sample and the test split are test rows, disjoint from each other.
    target = set(np.asarray(exp.target_rows)[np.asarray(exp.target_valid)].tolist())
    test = set(np.asarray(exp.test_rows)[np.asarray(exp.test_valid)].tolist())
    assert target and test and not target & test
    np.testing.assert_array_equal(exp.test_y, dataset.test_y[np.asarray(exp.test_rows)])
    assert exp.transform is None  # digits are float, unaugmented: used as stored


def test_one_prediction_pass_equals_separate_predictions(built):
    exp, state, preds = built
    for store, rows, probs in (
        (exp.train_images, exp.source_rows, preds.source),
        (exp.test_images, exp.target_rows, preds.target),
        (exp.test_images, exp.test_rows, preds.test),
    ):
        separate = train.predict_probs(
            exp.inference_model, state.train, np.asarray(store)[np.asarray(rows)]
        )
        np.testing.assert_allclose(probs, separate, rtol=1e-5, atol=1e-6)


def test_committee_probabilities_in_one_pass_equal_each_member(built):
    exp, _, _ = built
    committee = train.create_ensemble_state(
        jax.random.PRNGKey(1), exp.model, exp.tx, exp.input_shape, 3
    )
    together = train.ensemble_probs(
        exp.inference_model, committee, exp.train_images, index=exp.source_rows[:50]
    )
    for i in range(3):
        alone = train.predict_probs(
            exp.inference_model,
            train.member(committee, i),
            exp.train_images,
            index=exp.source_rows[:50],
        )
        np.testing.assert_allclose(together[i], alone, rtol=1e-5, atol=1e-6)


# --- rounds ----------------------------------------------------------------------------


def test_a_round_is_deterministic_and_buys_the_budget(built):
    exp, state, preds = built
    first = experiment.run_round(exp, state, preds, 1)
    again = experiment.run_round(exp, state, preds, 1)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    new_state, new_preds, record = first
    assert int(record["labels_bought"]) == exp.budget == int(pool.num_bought(new_state.pool))
    assert int(new_state.round) == 1
    # The new predictions are the fine-tuned network's.
    fresh = experiment.predict(exp, new_state.train)
    np.testing.assert_allclose(new_preds.test, fresh.test, rtol=1e-6)


@pytest.mark.parametrize("estimator", ["none", "bbse", "rlls", "oracle"])
def test_every_strategy_diversify_correction_runs_a_round(estimator):
    exp = experiment.setup(options(**{"label_shift.estimator": estimator}))
    state = experiment.initial_state(exp)
    preds = experiment.predict(exp, state.train)
    # No holdout is paid for when nothing is estimated.
    assert exp.use_holdout == (estimator != "none")
    strategies = tuple(acquisition.ACQUISITIONS)
    assert {"qbc", "iwal", "bald_vote", "badge"} <= set(strategies)
    committee_size = 3
    committee_step = train.make_ensemble_train_step(exp.model, exp.tx, committee_size)
    committee = train.create_ensemble_state(
        jax.random.PRNGKey(1), exp.model, exp.tx, exp.input_shape, committee_size
    )
    for strategy, diversify in itertools.product(strategies, selection.DIVERSIFY):
        overrides = {
            "label_shift.estimator": estimator,
            "query.strategy": strategy,
            "query.diversify": diversify,
            "query.committee_size": committee_size,
            "train.partial_epochs": 1,
        }
        acq = acquisition.ACQUISITIONS[strategy]
        spreads = ("none", "medial") if acq.medial else ("none",)
        if acq.select is not None and diversify not in spreads:
            # IWAL streams by its own probabilities; BADGE scales only by the medial weights.
            with pytest.raises(experiment.ConfigError, match="query.diversify"):
                options(**overrides)
            continue
        qbc = strategy == "qbc"
        combo = exp.replace(
            options=options(**overrides), committee_step=committee_step if qbc else None
        )
        start = state.replace(committee=committee if qbc else None)
        # BADGE reads penultimate features: the prediction pass gives them when needed.
        current = experiment.predict(combo, state.train) if acq.needs_features else preds
        assert (current.source_features is not None) == acq.needs_features
        new_state, _, record = experiment.run_round(combo, start, current, 1)
        chosen = new_state.pool.labeled & ~state.pool.labeled
        bought = int(pool.num_bought(new_state.pool))
        if strategy == "iwal":  # a stream may run out of rows before the budget
            assert 0 < bought <= exp.budget
        else:
            assert bought == exp.budget, (strategy, diversify)
        assert not bool(jnp.any(chosen & ~state.pool.pool))
        assert int(record["labels_bought"]) == bought
        weights = np.asarray(experiment.class_weights(combo, new_state))
        assert np.all(np.isfinite(weights)) and np.all(weights >= 0)
        if estimator == "none":
            np.testing.assert_array_equal(weights, 1.0)
        if estimator == "oracle":
            np.testing.assert_allclose(weights, record["true_weights"], rtol=1e-5)


def _with_weights(exp, state, weights):
    """The state whose estimate gives exactly ``weights`` as training weights."""
    estimate = malls.WeightEstimate(
        weights=jnp.asarray(weights, jnp.float32),
        sample_dist=experiment.train_distribution(exp, state.pool),
    )
    return state.replace(estimate=estimate)


def test_class_balanced_selection_spreads_over_predicted_classes(built):
    exp, state, preds = built
    state = _with_weights(exp, state, jnp.linspace(0.2, 3.0, 10))  # correction moves predictions
    combo = exp.replace(
        options=options(
            **{
                "query.diversify": "guess",
                "train.partial_epochs": 0,
                "label_shift.posterior_correction_scoring": True,
                "label_shift.calibrated_correction": False,  # by the training weights
            }
        )
    )
    weights = experiment.class_weights(combo, state)
    np.testing.assert_allclose(weights, np.linspace(0.2, 3.0, 10), rtol=1e-5)
    chosen, _, _ = experiment.query(combo, state, preds, jax.random.PRNGKey(0))
    corrected = label_shift.posterior_correction(preds.source, weights)
    predicted = np.asarray(jnp.argmax(corrected, -1))[np.asarray(chosen)]
    available = np.asarray(pool.unlabeled_pool(state.pool))
    candidates = np.bincount(np.asarray(jnp.argmax(corrected, -1))[available], minlength=10)
    shares = selection.class_shares(jnp.asarray(candidates), weights, diversify="guess")
    expected = selection.class_allocation(jnp.asarray(candidates), shares, exp.budget)
    np.testing.assert_array_equal(np.bincount(predicted, minlength=10), np.asarray(expected))


def test_every_correction_flag_combination_runs_a_round(built):
    exp, state, preds = built
    state = _with_weights(exp, state, jnp.linspace(0.5, 2.0, 10))
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
        combo = exp.replace(options=options(**overrides))
        new_state, _, record = experiment.run_round(combo, state, preds, 1)
        assert int(record["labels_bought"]) == exp.budget, overrides
        weights = np.asarray(experiment.class_weights(combo, new_state))
        assert np.all(np.isfinite(weights)) and np.all(weights >= 0), overrides
        if (
            not combo.options.label_shift.iterative
            and not combo.options.label_shift.reweight_all_labeled
        ):
            # Relative to the warm start, which no reveal changes.
            np.testing.assert_allclose(weights, np.linspace(0.5, 2.0, 10), rtol=1e-5)
        accuracies.add(round(float(record["accuracy"]), 6))
    assert len(accuracies) > 1  # the flags change what is trained and evaluated


def test_a_user_acquisition_and_estimator_run_through_the_loop(built):
    exp, state, preds = built
    seen = {}

    def least_likely_first(ctx):
        """A new score: 1 - the largest probability, doubled for classes with w > 1."""
        seen["ctx"] = ctx
        boost = jnp.where(ctx.weights[ctx.predicted()] > 1, 2.0, 1.0)
        return (1.0 - ctx.probs.max(-1)) * boost

    def uniform_target(sample):
        """A new estimator: Q assumed uniform, relative to the source rows it sees."""
        p = label_shift.label_distribution(
            sample.source_labels, sample.num_classes, sample.source_mask
        )
        return jnp.where(p > 0, (1.0 / sample.num_classes) / jnp.where(p > 0, p, 1.0), 1.0)

    opts = options(**{"query.diversify": "medial"})
    opts = dataclasses.replace(
        opts,
        query=dataclasses.replace(opts.query, strategy=least_likely_first),
        label_shift=dataclasses.replace(opts.label_shift, estimator=uniform_target),
    )
    combo = exp.replace(options=opts)
    state = state.replace(estimate=experiment.estimate(combo, state, preds))
    new_state, _, record = experiment.run_round(combo, state, preds, 1)
    assert int(record["labels_bought"]) == exp.budget
    assert isinstance(seen["ctx"], acquisition.QueryContext)
    # The estimate is the user's: Q uniform, so the training weights are 1 / (k P_train).
    p_train = np.asarray(experiment.train_distribution(combo, new_state.pool))
    weights = np.asarray(experiment.class_weights(combo, new_state))
    np.testing.assert_allclose(weights, np.where(p_train > 0, 0.1 / p_train, 1.0), rtol=1e-4)
    # Nothing was registered: the names in the registries are as before.
    assert "least_likely_first" not in acquisition.ACQUISITIONS
    assert "uniform_target" not in label_shift.ESTIMATORS


def test_calibrated_correction_is_q_over_the_calibration_sample(built):
    exp, state, preds = built
    estimate = malls.WeightEstimate(
        weights=jnp.linspace(0.5, 2.0, 10), sample_dist=jnp.full(10, 0.1, jnp.float32)
    )
    state = state.replace(estimate=estimate)
    rows = state.pool.holdout
    p_holdout = label_shift.label_distribution(exp.source_y, 10, rows)
    w_holdout = np.linspace(0.5, 2.0, 10) * 0.1 / np.asarray(p_holdout)
    # With the identity calibration, the correction is p(y|x) Q/P_holdout, renormalised.
    plain = exp.replace(
        options=options(
            **{"label_shift.calibration": "none", "label_shift.posterior_correction_eval": True}
        )
    )
    corrected = experiment.posterior_corrector(plain, state, preds)(preds.test)
    expected = np.asarray(preds.test) * w_holdout
    np.testing.assert_allclose(corrected, expected / expected.sum(-1, keepdims=True), rtol=1e-4)
    # BCTS first fits a temperature and biases on the holdout (the NLL there can only drop).
    bcts = exp.replace(options=options(**{"label_shift.posterior_correction_eval": True}))
    calibrated = experiment.posterior_corrector(bcts, state, preds)(preds.test)
    assert not np.allclose(calibrated, corrected, atol=1e-3)
    # The original's correction: raw probabilities times the training weights.
    original = exp.replace(options=options(**{"label_shift.calibrated_correction": False}))
    raw = experiment.posterior_corrector(original, state, preds)(preds.test)
    w_train = np.asarray(experiment.class_weights(original, state))
    expected = np.asarray(preds.test) * w_train
    np.testing.assert_allclose(raw, expected / expected.sum(-1, keepdims=True), rtol=1e-4)


def test_train_chunk_is_checked_and_reaches_the_cnn():
    with pytest.raises(experiment.ConfigError, match=r"^model.train_chunk=4 applies to the cnn"):
        options(**{"model.name": "mlp", "model.train_chunk": 4})
    with pytest.raises(
        experiment.ConfigError, match=r"^model.train_chunk must be -1 \(automatic\), 0"
    ):
        options(**{"model.name": "cnn", "model.train_chunk": -2})
    exp = experiment.setup(options(**{"model.name": "cnn", "model.train_chunk": 8}))
    assert exp.model.train_chunk == 8 and exp.inference_model.train_chunk == 8


def test_setting_up_compiles_a_few_programs_in_a_fresh_process():
    # Cutting the splits and laying out the pool run on the host; only the random draws, the
    # resampling and the network's initialisation are XLA programs (78 before they were).
    import subprocess
    import sys

    code = (
        "from alsa_jax import compilation, experiment\n"
        "from tests.test_experiment import options\n"
        "with compilation.CompileCounter() as c:\n"
        "    experiment.initial_state(experiment.setup(options()))\n"
        "print(c.compiled)\n"
    )
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    compiled = int(out.stdout.split()[-1])
    assert 0 < compiled <= 20, out.stdout
