"""Run one MALLS experiment end to end, resumable, watched in TensorBoard.

    python -m launch.replicate --config configs/digits.py --workdir runs/digits
    python -m launch.replicate --config configs/digits.py --workdir runs/d3 --config.seed=3

The algorithm, top to bottom (:func:`run`):

1. cut the dataset into warm start / holdout / pool / target / test splits under the
   configured label shift (``alsa_jax.shift``);
2. train the initial network h0 on the warm start, or load it from the h0 cache shared
   by every run with the same seed, data, shift and training settings;
3. estimate the importance weights w = Q(y)/P(y) (BBSE / RLLS / oracle / none);
4. for each of ``query.num_batches`` rounds: score the unlabeled pool, select a batch
   (class-allocated over predicted labels by w**lambda), reveal its labels, fine-tune
   on every labeled example with importance weights, re-estimate w, evaluate, and
   checkpoint the round state.

Re-running the same command with the same ``--workdir`` resumes after the last complete
round and finishes with the same results as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

import alsa_jax
from alsa_jax import (
    acquisition,
    checkpoint,
    data,
    label_shift,
    malls,
    models,
    parallel,
    pool,
    selection,
    shift,
    train,
    validation,
)
from alsa_jax import logging as results_log

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")


class ConfigError(ValueError):
    """A config field holds a value that cannot run."""


# ---------------------------------------------------------------------------------------
# Config checks: every choice field is validated before anything is computed or written.


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raise a one-line :class:`ConfigError` naming the first unusable field."""
    checks: list[Callable[[], Any]] = [
        lambda: validation.check_choice("dataset.name", config.dataset.name, data.DATASETS),
        lambda: validation.check_choice("model.name", config.model.name, models.MODELS),
        lambda: validation.check_choice(
            "model.conv_impl", config.model.conv_impl, models.CONV_IMPLS
        ),
        lambda: validation.check_choice(
            "model.inference_conv_impl", config.model.inference_conv_impl, models.CONV_IMPLS
        ),
        lambda: validation.check_choice("shift.strategy", config.shift.strategy, shift.STRATEGIES),
        lambda: validation.check_positive("shift.alpha", config.shift.alpha),
        lambda: validation.check_positive("shift.dataset_cap", config.shift.dataset_cap),
        lambda: validation.check_positive("shift.warmstart_ratio", config.shift.warmstart_ratio),
        lambda: validation.check_in_range(
            "shift.holdout_fraction", config.shift.holdout_fraction, 0, 0.9
        ),
        lambda: validation.check_in_range(
            "shift.target_fraction", config.shift.target_fraction, 0, 0.9
        ),
        lambda: validation.check_in_range("shift.initial_prop", config.shift.initial_prop, 0, 1),
        lambda: validation.check_choice(
            "label_shift.estimator", config.label_shift.estimator, label_shift.ESTIMATORS
        ),
        lambda: validation.check_positive(
            "label_shift.rlls_reg", config.label_shift.rlls_reg, strict=False
        ),
        lambda: validation.check_in_range(
            "label_shift.weight_lambda", config.label_shift.weight_lambda, 0, 1
        ),
        lambda: validation.check_choice(
            "query.strategy", config.query.strategy, acquisition.ACQUISITIONS
        ),
        lambda: validation.check_choice(
            "query.diversify", config.query.diversify, selection.DIVERSIFY
        ),
        lambda: validation.check_positive("query.num_batches", config.query.num_batches),
        lambda: validation.check_in_range("query.sample_prop", config.query.sample_prop, 0, 1),
        lambda: validation.check_positive("query.mc_samples", config.query.mc_samples),
        lambda: validation.check_positive("query.committee_size", config.query.committee_size),
        lambda: validation.check_in_range("query.iwal_p_min", config.query.iwal_p_min, 1e-12, 1),
        lambda: validation.check_choice(
            "train.optimizer", config.train.optimizer, train.OPTIMIZERS
        ),
        lambda: validation.check_choice("train.schedule", config.train.schedule, train.SCHEDULES),
        lambda: validation.check_positive("train.gamma", config.train.gamma),
        lambda: validation.check_in_range("train.momentum", config.train.momentum, 0, 0.999),
        lambda: validation.check_positive(
            "train.weight_decay", config.train.weight_decay, strict=False
        ),
        lambda: validation.check_positive(
            "train.warm_epochs", config.train.warm_epochs, strict=False
        ),
        lambda: validation.check_positive("train.eval_batch_size", config.train.eval_batch_size),
        lambda: parallel.check_batch_size("train.batch_size", config.train.batch_size),
        lambda: parallel.check_batch_size("train.eval_batch_size", config.train.eval_batch_size),
        lambda: validation.check_in_range("shift.tweak_rho", config.shift.tweak_rho, 0, 1),
        lambda: validation.check_positive("checkpoint_keep", config.checkpoint_keep),
        lambda: validation.check_positive("train.learning_rate", config.train.learning_rate),
        lambda: validation.check_positive(
            "train.finetune_learning_rate", config.train.finetune_learning_rate
        ),
        lambda: validation.check_positive("train.batch_size", config.train.batch_size),
        lambda: validation.check_positive(
            "train.initial_epochs", config.train.initial_epochs, strict=False
        ),
        lambda: validation.check_positive(
            "train.partial_epochs", config.train.partial_epochs, strict=False
        ),
    ]
    strategy = acquisition.ACQUISITIONS.get(config.query.strategy)
    if strategy is not None and strategy.needs_features:
        checks.append(
            _raise(
                f"query.strategy={config.query.strategy!r} reads penultimate features, which "
                "this driver does not pass; choose another strategy"
            )
        )
    if config.query.strategy == "iwal" and (
        config.query.diversify != "none" or config.query.medial_lambda is not None
    ):
        checks.append(
            _raise(
                "query.strategy='iwal' streams the pool by its own query probabilities and takes "
                "no class allocation; set --config.query.diversify=none"
            )
        )
    if config.query.medial_lambda is not None:
        checks.append(
            lambda: validation.check_in_range(
                "query.medial_lambda", config.query.medial_lambda, 0, 1
            )
        )
    for check in checks:
        try:
            check()
        except ValueError as error:
            raise ConfigError(str(error)) from None


def _raise(message: str) -> Callable[[], None]:
    def fail() -> None:
        raise ValueError(message)

    return fail


def check_known_fields(config: ml_collections.ConfigDict) -> None:
    """Raise a :class:`ConfigError` for a field that the shared defaults do not have.

    A config file that sets ``config.query.stratgy`` (a typo) would otherwise run the
    default strategy silently.
    """
    from configs import base

    def walk(node: Any, reference: Any, prefix: str) -> None:
        for name in node.keys():
            path = f"{prefix}{name}"
            if name not in reference:
                raise ConfigError(
                    f"config field {path!r} is not known; see configs/base.py for the fields"
                )
            if isinstance(node[name], ml_collections.ConfigDict):
                walk(node[name], reference[name], f"{path}.")

    walk(config, base.get_config(), "")


# ---------------------------------------------------------------------------------------
# Setup: data, splits, model. Pure given the config; nothing is written.


@dataclasses.dataclass
class Experiment:
    """What stays fixed during a run: arrays on device, the model and its step functions."""

    config: ml_collections.ConfigDict
    workdir: str
    num_classes: int
    input_shape: tuple[int, ...]
    model: Any  # trains
    inference_model: Any  # predicts: same parameters, possibly another conv lowering
    tx: Any
    train_step: Callable
    committee_step: Callable | None  # all committee members in one vmapped step (qbc)
    source_x: jax.Array  # warm start, holdout and pool rows, padding included
    source_y: jax.Array
    target_x: jax.Array  # unlabeled target sample (labels only for the oracle and errors)
    target_y: jax.Array
    target_valid: jax.Array
    test_x: jax.Array
    test_y: jax.Array
    test_valid: jax.Array
    initial_pool: pool.PoolState
    budget: int
    medial_lambda: float | None
    use_holdout: bool
    h0_key: dict


def build_experiment(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
    """Load the data, cut the shifted splits and build the model (no training yet)."""
    check_known_fields(config)
    check_config(config)
    options = {k: v for k, v in config.dataset.items() if k != "name"}
    dataset = data.load_dataset(config.dataset.name, **options)
    k = dataset.num_classes
    split_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
    s = config.shift
    splits = shift.make_splits(
        split_key,
        dataset.train_y,
        dataset.test_y,
        num_classes=k,
        strategy=s.strategy,
        alpha=s.alpha,
        dataset_cap=s.dataset_cap,
        warmstart_ratio=s.warmstart_ratio,
        test_size=s.test_size or None,
        holdout_fraction=s.holdout_fraction,
        target_fraction=s.target_fraction,
        tweak_label=s.tweak_label,
        tweak_rho=s.tweak_rho,
        initial_prop=s.initial_prop,
        alpha_triple=tuple(s.alpha_triple) if s.alpha_triple else None,
    )
    source_indices, _, pool_state = pool.from_splits(splits)
    source_indices = np.asarray(source_indices)
    target_idx, test_idx = np.asarray(splits.target.indices), np.asarray(splits.test.indices)

    q = config.query
    pool_size = int(np.sum(np.asarray(pool_state.pool)))
    buyable = int(np.sum(np.asarray(pool.unlabeled_pool(pool_state))))
    budget = int(q.sample_prop * pool_size / q.num_batches)
    if budget * q.num_batches > buyable:
        raise ConfigError(
            f"query.sample_prop={q.sample_prop} asks for {budget * q.num_batches} labels but "
            f"only {buyable} pool rows are unlabeled (shift.initial_prop labels the rest); "
            "lower one of them"
        )
    if budget < 1:
        raise ConfigError(
            f"query.sample_prop={q.sample_prop} buys no label per round from a pool of "
            f"{pool_size} over {q.num_batches} rounds; raise it or lower query.num_batches"
        )
    medial_lambda = q.medial_lambda
    if medial_lambda is None:
        medial_lambda = selection.DIVERSIFY[q.diversify]

    fields = models.MODELS[config.model.name].__dataclass_fields__
    model_kwargs = {
        name: value
        for name, value in config.model.items()
        if name in fields and name not in ("name", "parent")
    }
    model = models.create_model(config.model.name, k, **model_kwargs)
    inference_model = model
    if "conv_impl" in fields and config.model.inference_conv_impl:
        inference_model = model.clone(conv_impl=config.model.inference_conv_impl)
    t = config.train
    tx = train.make_optimizer(
        t.optimizer,
        learning_rate=t.learning_rate,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
    )
    h0_key = {
        "version": alsa_jax.__version__,
        "seed": config.seed,
        "dataset": config.dataset.to_dict(),
        "shift": config.shift.to_dict(),
        "model": config.model.to_dict(),
        "train": {
            name: t[name]
            for name in (
                "optimizer",
                "schedule",
                "learning_rate",
                "gamma",
                "milestones",
                "warm_epochs",
                "momentum",
                "weight_decay",
                "batch_size",
                "initial_epochs",
            )
        },
    }
    return Experiment(
        config=config,
        workdir=workdir,
        num_classes=k,
        input_shape=dataset.input_shape,
        model=model,
        inference_model=inference_model,
        tx=tx,
        train_step=train.make_train_step(model, tx),
        committee_step=(
            train.make_ensemble_train_step(model, tx, q.committee_size)
            if q.strategy == "qbc"
            else None
        ),
        source_x=jnp.asarray(dataset.train_x[source_indices]),
        source_y=jnp.asarray(dataset.train_y[source_indices]),
        target_x=jnp.asarray(dataset.test_x[target_idx]),
        target_y=jnp.asarray(dataset.test_y[target_idx]),
        target_valid=jnp.asarray(splits.target.valid),
        test_x=jnp.asarray(dataset.test_x[test_idx]),
        test_y=jnp.asarray(dataset.test_y[test_idx]),
        test_valid=jnp.asarray(splits.test.valid),
        initial_pool=pool_state,
        budget=budget,
        medial_lambda=medial_lambda,
        use_holdout=bool(np.any(np.asarray(pool_state.holdout))),
        h0_key=h0_key,
    )


# ---------------------------------------------------------------------------------------
# The steps of a round.


def _lr_fn(
    config: ml_collections.ConfigDict, *, finetune: bool, steps_per_epoch: int
) -> Callable[[float], float]:
    t = config.train
    return lambda epoch: train.learning_rate_at(
        epoch,
        base_lr=t.finetune_learning_rate if finetune else t.learning_rate,
        schedule=t.schedule,
        gamma=t.gamma,
        milestones=tuple(t.finetune_milestones if finetune else t.milestones),
        warm_epochs=0 if finetune else t.warm_epochs,
        steps_per_epoch=steps_per_epoch,
    )


def predict(exp: Experiment, state: train.TrainState, x: jax.Array) -> jax.Array:
    return train.predict_probs(
        exp.inference_model, state, x, batch_size=exp.config.train.eval_batch_size
    )


def estimate(exp: Experiment, state: malls.RoundState) -> jax.Array:
    """Re-estimate w from fresh predictions on the labeled source and the target sample."""
    ls = exp.config.label_shift
    source_probs = predict(exp, state.train, exp.source_x)
    if ls.correct_confusion_predictions:  # the original's posterior-corrected confusion
        source_probs = label_shift.posterior_correction(source_probs, state.weights)
    target_probs = predict(exp, state.train, exp.target_x)
    if ls.correct_confusion_predictions:
        target_probs = label_shift.posterior_correction(target_probs, state.weights)
    return malls.estimate_weights(
        source_probs,
        exp.source_y,
        malls.confusion_rows(
            state.pool, use_holdout=exp.use_holdout, all_labeled=ls.reweight_all_labeled
        ),
        malls.source_rows(state.pool, all_labeled=ls.reweight_all_labeled),
        target_probs,
        exp.target_valid,
        exp.target_y,
        method=ls.estimator,
        reg=float(ls.rlls_reg),
        lam=float(ls.weight_lambda),
        soft=bool(ls.soft_confusion),
        num_classes=exp.num_classes,
    )


def finetune(
    exp: Experiment,
    state: malls.RoundState,
    key: jax.Array,
    *,
    epochs: int,
    initial: bool,
    committee: bool = False,
) -> train.TrainState:
    """Train on every labeled row (h0: the warm start only) with importance weights.

    With ``committee`` the query-by-committee networks train instead, all in one
    vmapped step on the same batches.
    """
    ls = exp.config.label_shift
    if initial:
        rows = state.pool.warm
        example_weight = jnp.ones(rows.shape, jnp.float32)
    else:
        rows = pool.training_mask(state.pool)
        example_weight = malls.training_weights(
            state.pool,
            exp.source_y,
            state.weights,
            importance_weighting=ls.importance_weighting and ls.estimator != "none",
            all_labeled=ls.reweight_all_labeled,
        )
    network = state.committee if committee else state.train
    init = jax.vmap(exp.tx.init) if committee else exp.tx.init
    fresh = network.replace(opt_state=init(network.params))
    trained, _ = train.fit(
        fresh,
        exp.committee_step if committee else exp.train_step,
        exp.source_x,
        exp.source_y,
        example_weight,
        rows,
        key=key,
        epochs=epochs,
        batch_size=exp.config.train.batch_size,
        lr_fn=_lr_fn(
            exp.config,
            finetune=not initial,
            steps_per_epoch=max(1, -(-int(jnp.sum(rows)) // exp.config.train.batch_size)),
        ),
    )
    return trained


def evaluate(exp: Experiment, state: malls.RoundState) -> dict[str, Any]:
    """The round's record: accuracy family, labels, source shift, weight errors."""
    ls = exp.config.label_shift
    probs = predict(exp, state.train, exp.test_x)
    if ls.posterior_correction_eval and ls.estimator != "none":
        probs = label_shift.posterior_correction(probs, state.weights)
    source = malls.source_rows(state.pool, all_labeled=ls.reweight_all_labeled)
    true_weights = label_shift.oracle_weights(
        label_shift.label_distribution(exp.source_y, exp.num_classes, source),
        label_shift.label_distribution(exp.target_y, exp.num_classes, exp.target_valid),
    )
    out = malls.round_metrics(
        probs,
        exp.test_y,
        exp.test_valid,
        state.pool,
        exp.source_y,
        state.weights,
        true_weights,
        num_classes=exp.num_classes,
    )
    record = {name: np.asarray(v).tolist() for name, v in out.items()}
    record["weights"] = np.asarray(state.weights).tolist()
    record["true_weights"] = np.asarray(true_weights).tolist()
    return record


def query_round(
    exp: Experiment, state: malls.RoundState, source_probs: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Score the unlabeled pool and choose this round's batch."""
    q, ls = exp.config.query, exp.config.label_shift
    correct = ls.posterior_correction_scoring and ls.estimator != "none"
    probs = (
        label_shift.posterior_correction(source_probs, state.weights) if correct else source_probs
    )
    mc_probs = None
    if q.strategy == "qbc":
        mc_probs = jnp.stack(
            [
                predict(exp, train.member(state.committee, i), exp.source_x)
                for i in range(q.committee_size)
            ]
        )
    elif acquisition.ACQUISITIONS[q.strategy].needs_mc:
        mc_key, key = jax.random.split(key)
        mc_probs = train.mc_dropout_probs(
            exp.inference_model,
            state.train,
            exp.source_x,
            mc_key,
            num_samples=q.mc_samples,
            batch_size=exp.config.train.eval_batch_size,
        )
    if correct and mc_probs is not None:  # every pass / member: [s, n, k]
        mc_probs = label_shift.posterior_correction(mc_probs, state.weights)
    return malls.query(
        key,
        probs,
        mc_probs,
        pool.unlabeled_pool(state.pool),
        state.weights,
        strategy=q.strategy,
        budget=exp.budget,
        medial_lambda=exp.medial_lambda,
        p_min=float(q.iwal_p_min),
        use_query_weights=bool(q.iwal_importance_weights),
    )


# ---------------------------------------------------------------------------------------
# The loop.


class _Timer:
    """Wall seconds per phase (after device work finishes) and XLA compilations."""

    compilations = 0

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        self.seconds[f"seconds_{name}"] = time.perf_counter() - start
        return out


def _count_compilation(event: str, duration: float, **_: Any) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _Timer.compilations += 1


jax.monitoring.register_event_duration_secs_listener(_count_compilation)


_PHASE_NAMES = {
    "h0": "h0",
    "committee": "committee",
    "prediction": "predict",
    "selection": "select",
    "finetune": "fit",
    "estimation": "estimate",
    "evaluation": "eval",
}


def _summary(record: dict[str, Any]) -> str:
    phases = " ".join(
        f"{short} {record[f'seconds_{name}']:.2f}s"
        for name, short in _PHASE_NAMES.items()
        if f"seconds_{name}" in record
    )
    return (
        f"round {record['round']:3d} | labels {record['labels_total']:5d} "
        f"(+{record['labels_bought']:4d}) | acc {record['accuracy']:.4f} "
        f"| class-avg {record['average_class_accuracy']:.4f} "
        f"| f1 {record['f1_macro']:.4f} | w-err {record['weight_l2_error']:.3f} "
        f"| shift {record['source_shift']:.3f} | {phases}"
    )


def initial_state(exp: Experiment) -> malls.RoundState:
    """The round state before h0: fresh network, warm start labeled, weights 1."""
    init_key, loop_key = jax.random.split(
        jax.random.fold_in(jax.random.PRNGKey(exp.config.seed), 1)
    )
    committee = None
    if exp.committee_step is not None:
        committee = train.create_ensemble_state(
            jax.random.fold_in(init_key, 1),
            exp.model,
            exp.tx,
            exp.input_shape,
            exp.config.query.committee_size,
        )
    return malls.RoundState(
        round=jnp.int32(0),
        key=loop_key,
        train=train.create_train_state(init_key, exp.model, exp.tx, exp.input_shape),
        pool=exp.initial_pool,
        weights=jnp.ones(exp.num_classes, jnp.float32),
        committee=committee,
    )


def train_committee(
    exp: Experiment, state: malls.RoundState, timer: _Timer, key: jax.Array, *, initial: bool
) -> malls.RoundState:
    """Train the query-by-committee networks (if any) as the main network was trained."""
    if state.committee is None:
        return state
    t = exp.config.train
    committee = timer.phase(
        "committee",
        lambda: finetune(
            exp,
            state,
            jax.random.fold_in(key, 1),
            epochs=t.initial_epochs if initial else t.partial_epochs,
            initial=initial,
            committee=True,
        ),
    )
    return state.replace(committee=committee)


def run_round(
    exp: Experiment, state: malls.RoundState, r: int
) -> tuple[malls.RoundState, dict[str, Any]]:
    """Round ``r``: score, select, reveal, fine-tune, re-estimate, evaluate."""
    config = exp.config
    timer, before = _Timer(), _Timer.compilations
    round_key = jax.random.fold_in(state.key, r)
    query_key, fit_key = jax.random.split(round_key)
    source_probs = timer.phase("prediction", lambda: predict(exp, state.train, exp.source_x))
    chosen, query_weight = timer.phase(
        "selection", lambda: query_round(exp, state, source_probs, query_key)
    )
    revealed = pool.reveal(state.pool, chosen, r, query_weight)
    ls = config.label_shift
    if ls.estimator != "none" and ls.reweight_all_labeled:
        # w = Q/P_train: the training rows just changed, and their labels are known.
        dist = lambda p: pool.label_distribution(
            exp.source_y,
            pool.training_mask(p),  # noqa: E731
            exp.num_classes,
        )
        state = state.replace(
            weights=malls.rebase_weights(state.weights, dist(state.pool), dist(revealed))
        )
    state = state.replace(round=jnp.int32(r), pool=revealed)
    state = state.replace(
        train=timer.phase(
            "finetune",
            lambda: finetune(
                exp, state, fit_key, epochs=config.train.partial_epochs, initial=False
            ),
        )
    )
    state = train_committee(exp, state, timer, fit_key, initial=False)
    if config.label_shift.iterative:
        state = state.replace(weights=timer.phase("estimation", lambda: estimate(exp, state)))
    record = {"round": r, **timer.phase("evaluation", lambda: evaluate(exp, state))}
    record.update(timer.seconds, compilations=_Timer.compilations - before)
    return state, record


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    verbose: bool = True,
    stop_after_round: int | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) the experiment of ``config`` in ``workdir``; returns the round records.

    ``stop_after_round`` ends the run early after that round's checkpoint (the next
    call resumes from it).
    """
    say = print if verbose else (lambda *a, **k: None)
    try:
        exp = build_experiment(config, workdir)
    except ValueError as error:  # bad config values surface as one line, before any write
        raise ConfigError(str(error)) from None
    config_dict = config.to_dict()
    try:
        checkpoint.claim_workdir(workdir, config_dict)
    except checkpoint.ExperimentMismatchError:
        raise
    except OSError as error:  # e.g. --workdir names a file
        raise ConfigError(f"--workdir={workdir} cannot hold a run: {error.strerror}") from None
    manager = checkpoint.RoundCheckpointer(
        os.path.join(workdir, "checkpoints"), keep=config.checkpoint_keep
    )
    state = initial_state(exp)

    latest = manager.latest_round()
    if latest is not None:
        state, history = manager.restore(latest, state)
        # A run killed between its checkpoint and its results files left them one behind.
        results_log.write_results(workdir, config_dict, history)
        say(f"resuming {workdir} after round {latest}")
    else:
        history = []
        timer = _Timer()
        before = _Timer.compilations
        cache_dir = config.h0_cache_dir or os.path.join(
            os.path.dirname(os.path.abspath(workdir)), "h0_cache"
        )
        h0_key = jax.random.fold_in(state.key, 0)
        cached = checkpoint.load_h0(cache_dir, exp.h0_key, state.train)
        if cached is not None:
            say(f"h0: loaded from {checkpoint.h0_path(cache_dir, exp.h0_key)}")
            state = state.replace(train=cached)
            timer.seconds["seconds_h0"] = 0.0
        else:
            say(
                f"h0: training {config.train.initial_epochs} epochs on "
                f"{int(jnp.sum(state.pool.warm))} warm-start examples"
            )
            trained = timer.phase(
                "h0",
                lambda: finetune(
                    exp, state, h0_key, epochs=config.train.initial_epochs, initial=True
                ),
            )
            state = state.replace(train=trained)
            checkpoint.save_h0(cache_dir, exp.h0_key, state.train)
        if state.committee is not None:
            say(f"committee: training {config.query.committee_size} networks")
        state = train_committee(exp, state, timer, h0_key, initial=True)
        state = state.replace(weights=timer.phase("estimation", lambda: estimate(exp, state)))
        record = {"round": 0, **timer.phase("evaluation", lambda: evaluate(exp, state))}
        record.update(
            timer.seconds,
            h0_cache_hit=cached is not None,
            compilations=_Timer.compilations - before,
        )
        history.append(record)
        manager.save(0, state, history)
        results_log.write_results(workdir, config_dict, history)
        say(_summary(record))
        latest = 0

    # Events of rounds after the checkpoint (a crashed run's) are purged; the newest
    # checkpointed round is written again in case the crash came before its events.
    writer = results_log.ScalarWriter(workdir, resume_round=latest)
    writer.write(history[-1])
    budget_note = f"{exp.budget} labels a round, diversify lambda={exp.medial_lambda}"
    if latest < config.query.num_batches:
        rounds = f"{latest + 1}..{config.query.num_batches}"
        say(f"rounds {rounds}: {config.query.strategy}, {budget_note}")

    for r in range(latest + 1, config.query.num_batches + 1):
        if stop_after_round is not None and r > stop_after_round:
            break
        state, record = run_round(exp, state, r)
        history.append(record)
        manager.save(r, state, history)
        results_log.write_results(workdir, config_dict, history)
        writer.write(record)
        say(_summary(record))
    writer.close()
    manager.close()
    return history


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None or not _WORKDIR.value:
        print("error: pass --config=configs/<name>.py and --workdir=<dir>", file=sys.stderr)
        sys.exit(2)
    try:
        _CONFIG.value.to_dict()  # config files load lazily: surface a bad path here
    except Exception as error:  # noqa: BLE001 - any failure to load the file, as one line
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        print(
            f"error: --config could not be loaded: {lines[-1] if lines else error!r}",
            file=sys.stderr,
        )
        sys.exit(2)
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file it writes at INFO
    try:
        run(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, checkpoint.ExperimentMismatchError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with bad flags (an unknown config field, say) as one line, exit 2."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as error:  # ml_collections: an override of no field
        field = str(error).strip("\"'")
        print(
            f"error: the config has no field {field!r}; see configs/base.py for the fields",
            file=sys.stderr,
        )
    except (flags.Error, ValueError, TypeError) as error:
        print(f"error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
