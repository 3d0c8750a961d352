"""A MALLS experiment as library functions: its options, its setup and the steps of a round.

The launcher (``launch/replicate.py``) reads a config file once, turns it into
:class:`Options` (every field checked here, the one place that checks them) and runs::

    options = experiment.Options.from_config(config)
    exp = experiment.setup(options)                # data, shifted splits, model, steps
    state = experiment.initial_state(exp)          # fresh network, warm start labeled
    state = state.replace(train=experiment.train_initial(exp, state))  # h0
    state = experiment.train_committee(exp, state, initial=True)
    state, preds, record = experiment.initial_round(exp, state)        # estimate, evaluate
    for r in range(1, options.query.num_batches + 1):
        state, preds, record = experiment.run_round(exp, state, preds, r)

Nothing here reads a file or writes one: checkpoints, the cache of h0, results files and
printing stay in the launcher. Every function takes the :class:`Experiment` (what is fixed
during a run) and the :class:`~alsa_jax.malls.RoundState` (what a round changes), and the
round's predictions of the current network (:class:`Predictions`: one pass over the pool,
the target sample and the test split after each fine-tuning, reused by estimation,
evaluation and the next round's query). ``phase(name, fn)`` arguments let a caller time
or display each phase; by default they just call ``fn()``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import alsa_jax
from alsa_jax import (
    acquisition,
    augment,
    calibration,
    data,
    label_shift,
    malls,
    models,
    parallel,
    pool,
    progress,
    selection,
    shift,
    train,
    validation,
)

T = TypeVar("T")
Phase = Callable[[str, Callable[[], T]], T]


def _call(name: str, fn: Callable[[], T]) -> T:
    return fn()


class ConfigError(ValueError):
    """An option holds a value that cannot run (one line, naming the config field)."""


# ---------------------------------------------------------------------------------------
# Options: one frozen dataclass per config section, fields named as in configs/base.py.


def _checked(section: str, check: Callable[[], T]) -> T:
    """Run a library check; an error naming an argument that is a field of ``section`` is
    re-raised naming the config field (``momentum`` -> ``train.momentum``)."""
    try:
        return check()
    except ValueError as error:
        message = str(error)
        first = re.match(r"[A-Za-z_][A-Za-z0-9_]*", message)
        fields = {f.name for f in dataclasses.fields(_SECTIONS[section])}
        if first and first.group(0) in fields:
            message = f"{section}.{message}"
        raise ConfigError(message) from None


def _fail(message: str) -> None:
    raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class DatasetOptions:
    """``dataset.*``: which data (a name of :data:`alsa_jax.data.DATASETS`) and its loader's
    options (every other field is passed to the loader as a keyword)."""

    name: str
    path: str
    num_classes: int
    test_fraction: float
    split_seed: int
    data_dir: str
    manual_dir: str
    download: bool
    label_granularity: str
    image_size: int

    def __post_init__(self) -> None:
        _checked("dataset", lambda: validation.check_choice("name", self.name, data.DATASETS))

    def loader_options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "name"}


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """``model.*``: the network (:data:`alsa_jax.models.MODELS`) and its conv lowerings."""

    name: str
    conv_impl: str
    inference_conv_impl: str
    train_chunk: int

    def __post_init__(self) -> None:
        _checked("model", lambda: validation.check_choice("name", self.name, models.MODELS))
        for field in ("conv_impl", "inference_conv_impl"):
            value = getattr(self, field)
            _checked(
                "model", lambda f=field, v=value: validation.check_choice(f, v, models.CONV_IMPLS)
            )
        if (
            self.train_chunk > 0
            and "train_chunk" not in models.MODELS[self.name].__dataclass_fields__
        ):
            _fail(
                f"model.train_chunk={self.train_chunk} applies to the cnn only; "
                f"set it to 0 for model.name={self.name!r}"
            )
        _checked("model", lambda: models.CNN(2, train_chunk=self.train_chunk))


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
    """``augment.*``: the batch augmentation on the device (:data:`alsa_jax.augment.PIPELINES`);
    each pipeline reads the fields it takes (:func:`alsa_jax.augment.pipeline_options`)."""

    name: str
    crop_size: int
    padding: int
    rotation_degrees: float
    horizontal_flip: bool

    def __post_init__(self) -> None:
        _checked("augment", self.pipeline)

    def pipeline_options(self) -> tuple[tuple[str, Any], ...]:
        return tuple((k, getattr(self, k)) for k in augment.pipeline_options(self.name))

    def pipeline(self) -> augment.Pipeline:
        return augment.make_pipeline(self.name, **dict(self.pipeline_options()))


@dataclasses.dataclass(frozen=True)
class InputTransform:
    """Stored examples to network inputs on the device: the augmentation (for training) or
    its evaluation transform, then :func:`alsa_jax.data.normalize` with the dataset's
    per-channel ``mean`` and ``std``. Hashable by value, so jitted functions that take it as
    a static argument compile once per transform, not once per experiment."""

    augment: str
    options: tuple[tuple[str, Any], ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def pipeline(self) -> augment.Pipeline:
        return augment.make_pipeline(self.augment, **dict(self.options))

    def train(self, x: jax.Array, key: jax.Array) -> jax.Array:
        """A training batch: augmented with ``key``, then normalised."""
        return data.normalize(self.pipeline().train_fn(key, x), self.mean, self.std)

    def eval(self, x: jax.Array) -> jax.Array:
        """A prediction batch: the evaluation transform (e.g. the centre crop), normalised."""
        return data.normalize(self.pipeline().eval_fn(x), self.mean, self.std)


@dataclasses.dataclass(frozen=True)
class ShiftOptions:
    """``shift.*``: the simulated label shift, as :func:`alsa_jax.shift.make_splits` takes it."""

    strategy: str
    alpha: float
    alpha_triple: tuple[float, float, float] | None
    dataset_cap: int
    warmstart_ratio: float
    test_size: int
    holdout_fraction: float
    target_fraction: float
    tweak_label: int
    tweak_rho: float
    initial_prop: float

    def __post_init__(self) -> None:
        if self.alpha_triple is not None:
            object.__setattr__(self, "alpha_triple", tuple(self.alpha_triple))
        _checked("shift", lambda: shift.check_split_options(**self.split_options()))

    def split_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`alsa_jax.shift.make_splits` (0 test size = None)."""
        options = dataclasses.asdict(self)
        options["test_size"] = self.test_size or None
        return options


@dataclasses.dataclass(frozen=True)
class LabelShiftOptions:
    """``label_shift.*``: the weight estimator and how the weights are used.

    ``estimator`` is a name of :data:`alsa_jax.label_shift.ESTIMATORS` in a config; in
    Python it may also be an estimator function ``sample -> w`` (see
    :func:`alsa_jax.label_shift.estimate`), which then runs through the loop as it is.
    """

    estimator: str | label_shift.Estimator
    rlls_reg: float
    calibration: str
    weight_lambda: float
    iterative: bool
    importance_weighting: bool
    reweight_all_labeled: bool
    posterior_correction_scoring: bool
    posterior_correction_eval: bool
    calibrated_correction: bool
    correct_confusion_predictions: bool
    soft_confusion: bool

    def __post_init__(self) -> None:
        section = "label_shift"
        _checked(
            section,
            lambda: (
                callable(self.estimator)
                or validation.check_choice("estimator", self.estimator, label_shift.ESTIMATORS)
            ),
        )
        _checked(
            section, lambda: validation.check_positive("rlls_reg", self.rlls_reg, strict=False)
        )
        _checked(
            section,
            lambda: validation.check_choice(
                "calibration", self.calibration, calibration.CALIBRATIONS
            ),
        )
        _checked(
            section, lambda: validation.check_in_range("weight_lambda", self.weight_lambda, 0, 1)
        )

    def estimator_options(self) -> tuple[tuple[str, Any], ...]:
        """The estimator's keyword options from the config (hashable: static under jit)."""
        hard = not self.soft_confusion
        options = {
            "bbse": {"hard": hard},
            "rlls": {"hard": hard, "reg": float(self.rlls_reg)},
            "mlls": {"calibration": self.calibration},
        }
        if not isinstance(self.estimator, str):
            return ()
        return tuple(sorted(options.get(self.estimator, {}).items()))

    @property
    def weighted_training(self) -> bool:
        """Training uses importance weights (none are estimated by the "none" estimator)."""
        return self.importance_weighting and self.estimator != "none"

    @property
    def corrects_scores(self) -> bool:
        return self.posterior_correction_scoring and self.estimator != "none"

    @property
    def corrects_evaluation(self) -> bool:
        return self.posterior_correction_eval and self.estimator != "none"


@dataclasses.dataclass(frozen=True)
class QueryOptions:
    """``query.*``: the acquisition strategy, how the budget is spread, rounds and budget.

    ``strategy`` is a name of :data:`alsa_jax.acquisition.ACQUISITIONS` in a config; in
    Python it may also be an :class:`alsa_jax.acquisition.Acquisition` or a score function
    ``ctx -> scores [n]``, which then runs through the loop as it is.
    """

    strategy: str | acquisition.Acquisition | Callable[..., jax.Array]
    diversify: str
    medial_lambda: float | None
    num_batches: int
    sample_prop: float
    mc_samples: int
    committee_size: int
    iwal_p_min: float
    iwal_importance_weights: bool

    def __post_init__(self) -> None:
        section = "query"
        _checked(
            section,
            lambda: (
                isinstance(self.strategy, acquisition.Acquisition)
                or callable(self.strategy)
                or validation.check_choice("strategy", self.strategy, acquisition.ACQUISITIONS)
            ),
        )
        _checked(
            section,
            lambda: validation.check_choice("diversify", self.diversify, selection.DIVERSIFY),
        )
        if self.medial_lambda is not None:
            if self.diversify != "medial":
                _fail(
                    f"query.medial_lambda={self.medial_lambda} sets the medial distribution of "
                    f"query.diversify='medial', but query.diversify={self.diversify!r}; set "
                    "--config.query.diversify=medial or leave query.medial_lambda unset"
                )
            _checked(
                section,
                lambda: validation.check_in_range("medial_lambda", self.medial_lambda, 0, 1),
            )
        acq = self.acquisition
        spreads = ("none", "medial") if acq.medial else ("none",)
        if acq.select is not None and self.diversify not in spreads:
            _fail(
                f"query.strategy={self.strategy!r} chooses its batch itself and takes no class "
                f"spread query.diversify={self.diversify!r}; set --config.query.diversify="
                f"{' or '.join(spreads)}"
            )
        for field in ("num_batches", "mc_samples", "committee_size"):
            value = getattr(self, field)
            _checked(section, lambda f=field, v=value: _check_count(f, v, minimum=1))
        _checked(section, lambda: validation.check_in_range("sample_prop", self.sample_prop, 0, 1))
        if not 0 < self.iwal_p_min <= 1:
            _fail(f"query.iwal_p_min must lie in (0, 1], got {self.iwal_p_min}")

    @property
    def lambda_(self) -> float:
        """The medial lambda in use: the paper's 0.5 (sqrt(P Q)) unless set."""
        return 0.5 if self.medial_lambda is None else float(self.medial_lambda)

    def strategy_options(self) -> tuple[tuple[str, Any], ...]:
        """The strategy's own options from its config fields (IWAL's ``iwal_*``)."""
        if self.strategy == "iwal":
            return (
                ("importance_weights", bool(self.iwal_importance_weights)),
                ("p_min", float(self.iwal_p_min)),
            )
        return ()

    @property
    def acquisition(self) -> acquisition.Acquisition:
        """The strategy as an :class:`alsa_jax.acquisition.Acquisition`."""
        return acquisition.resolve(self.strategy)


def _check_count(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """``train.*``: optimiser, learning-rate schedules, batch sizes and epochs."""

    optimizer: str
    schedule: str
    learning_rate: float
    finetune_learning_rate: float
    gamma: float
    milestones: tuple[int, ...]
    finetune_milestones: tuple[int, ...]
    warm_epochs: float
    momentum: float
    weight_decay: float
    batch_size: int
    eval_batch_size: int
    initial_epochs: int
    partial_epochs: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(self.milestones))
        object.__setattr__(self, "finetune_milestones", tuple(self.finetune_milestones))
        section = "train"
        _checked(section, self.optimizer_transform)
        for lr in ("learning_rate", "finetune_learning_rate"):
            _checked(section, lambda f=lr: validation.check_positive(f, getattr(self, f)))
        _checked(
            section,
            lambda: train.learning_rate_at(
                0.0,
                base_lr=self.learning_rate,
                schedule=self.schedule,
                gamma=self.gamma,
                milestones=self.milestones,
                warm_epochs=self.warm_epochs,
                steps_per_epoch=1,
            ),
        )
        for field in ("batch_size", "eval_batch_size"):
            _checked(section, lambda f=field: _check_count(f, getattr(self, f), minimum=1))
            _checked(section, lambda f=field: parallel.check_batch_size(f, getattr(self, f)))
        for field in ("initial_epochs", "partial_epochs"):
            _checked(section, lambda f=field: _check_count(f, getattr(self, f), minimum=0))

    def optimizer_transform(self) -> optax.GradientTransformation:
        """The optimizer (:func:`alsa_jax.train.make_optimizer`), learning rate injected."""
        return train.make_optimizer(
            self.optimizer,
            learning_rate=self.learning_rate,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
        )

    def learning_rate_fn(self, *, finetune: bool, steps_per_epoch: int) -> Callable[[float], float]:
        """lr(epoch_progress) of h0 training or of a round's fine-tuning."""
        return lambda epoch: train.learning_rate_at(
            epoch,
            base_lr=self.finetune_learning_rate if finetune else self.learning_rate,
            schedule=self.schedule,
            gamma=self.gamma,
            milestones=self.finetune_milestones if finetune else self.milestones,
            warm_epochs=0 if finetune else self.warm_epochs,
            steps_per_epoch=steps_per_epoch,
        )


_SECTIONS: dict[str, type] = {
    "dataset": DatasetOptions,
    "model": ModelOptions,
    "augment": AugmentOptions,
    "shift": ShiftOptions,
    "label_shift": LabelShiftOptions,
    "query": QueryOptions,
    "train": TrainOptions,
}


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything that defines an experiment's computation, checked on construction.

    Built from a config (:meth:`from_config`); the launcher's own fields (where results and
    caches go) are not options of the computation.
    """

    seed: int
    dataset: DatasetOptions
    model: ModelOptions
    augment: AugmentOptions
    shift: ShiftOptions
    label_shift: LabelShiftOptions
    query: QueryOptions
    train: TrainOptions

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            _fail(f"seed must be an integer, got {self.seed!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, ignore: tuple[str, ...] = ()) -> Options:
        """Options from a config (an ``ml_collections.ConfigDict`` or nested dict).

        Every section of :class:`Options` must be there with exactly its fields; an unknown
        field (a typo) raises :class:`ConfigError` naming it and the closest known field.
        Top-level fields named in ``ignore`` belong to the caller (e.g. ``h0_cache_dir``).
        """
        top = {f.name for f in dataclasses.fields(cls)}
        for name in config.keys():
            if name not in top and name not in ignore:
                _unknown(name, top | set(ignore))
        missing = sorted(top - set(config.keys()))
        if missing:
            _fail(f"the config has no field {missing[0]!r}; start from configs/base.py")
        sections = {}
        for name, section_cls in _SECTIONS.items():
            values = dict(config[name])
            fields = {f.name for f in dataclasses.fields(section_cls)}
            for field in values:
                if field not in fields:
                    _unknown(f"{name}.{field}", {f"{name}.{f}" for f in fields})
            absent = sorted(fields - set(values))
            if absent:
                _fail(f"the config has no field '{name}.{absent[0]}'; start from configs/base.py")
            sections[name] = section_cls(**values)
        return cls(seed=config["seed"], **sections)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _unknown(name: str, known: set[str]) -> None:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    _fail(f"the config has no field {name!r}{hint}; see configs/base.py for the fields")


# Options that do not change the initial network h0: everything else is in its cache key,
# so an option added later retrains h0 rather than reusing a stale one.
H0_INDEPENDENT: tuple[str, ...] = (
    "label_shift",
    "query",
    "model.inference_conv_impl",
    "shift.initial_prop",
    "shift.target_fraction",
    "shift.test_size",
    "train.finetune_learning_rate",
    "train.finetune_milestones",
    "train.partial_epochs",
    "train.eval_batch_size",
)


def h0_key(options: Options) -> dict[str, Any]:
    """The cache key of h0: the options minus :data:`H0_INDEPENDENT`, plus the version."""
    key = options.to_dict()
    for dotted in H0_INDEPENDENT:
        *parents, leaf = dotted.split(".")
        node = key
        for name in parents:
            node = node[name]
        node.pop(leaf)
    return {"version": alsa_jax.__version__, **key}


# ---------------------------------------------------------------------------------------
# Setup: what stays fixed during a run.


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Arrays on the device, the model and its jitted steps, the budget.

    Examples are stored once, as the dataset holds them (uint8 images stay uint8:
    ``train_images`` and ``test_images``), and every split points into a store by row index,
    so a resampled example held in several slots is not copied; batches are gathered,
    augmented and normalised on the device (``transform``). ``source_rows`` [n]: the train
    rows of the warm start, holdout and pool slots of :func:`alsa_jax.pool.from_splits`
    (padding points at row 0, masked out everywhere); ``target_rows`` [m] with
    ``target_valid``: the test rows of the unlabeled target sample (its labels only for the
    oracle and the weight errors); ``test_rows`` [t] with ``test_valid``.
    """

    options: Options
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    model: nn.Module  # trains
    inference_model: nn.Module  # predicts: same parameters, possibly another conv lowering
    tx: optax.GradientTransformation
    train_step: Callable[..., Any]
    committee_step: Callable[..., Any] | None  # all committee members in one vmapped step
    transform: InputTransform | None  # None: the stored examples are the network's input
    train_images: jax.Array
    test_images: jax.Array
    source_rows: jax.Array
    source_y: jax.Array
    target_rows: jax.Array
    target_y: jax.Array
    target_valid: jax.Array
    test_rows: jax.Array
    test_y: jax.Array
    test_valid: jax.Array
    initial_pool: pool.PoolState
    budget: int
    use_holdout: bool

    @property
    def source_index(self) -> np.ndarray:
        """The dataset (train) row each source row holds, as NumPy."""
        return parallel.to_host(self.source_rows)

    def replace(self, **changes: Any) -> Experiment:
        return dataclasses.replace(self, **changes)


@jax.jit
def _seed_key(seed: jax.Array, stream: jax.Array) -> jax.Array:
    """``fold_in(PRNGKey(seed), stream)`` as one program (eagerly it compiles four)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), stream)


_fold_in = jax.jit(jax.random.fold_in)


@functools.partial(jax.jit, static_argnums=1)
def _split_rows(rows: jax.Array, m: int) -> tuple[jax.Array, jax.Array]:
    return rows[:m], rows[m:]


@jax.jit
def _split_pair(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    first, second = jax.random.split(key)
    return first, second


def setup(options: Options, *, dataset: data.Dataset | None = None) -> Experiment:
    """Load the data, cut the shifted splits and build the model and steps (no training).

    ``dataset`` overrides loading ``options.dataset`` (for data already in memory). With
    several processes each loads the data itself; a process whose examples differ from
    process 0's (compared by checksum) is a :class:`ConfigError`.
    """
    if dataset is None:
        try:
            dataset = data.load_dataset(options.dataset.name, **options.dataset.loader_options())
        except ValueError as error:
            raise ConfigError(str(error)) from None
    try:  # with several processes: each host loaded the same examples (placed unchecked)
        parallel.check_same_on_every_process(
            f"dataset.name={options.dataset.name}",
            (dataset.train_x, dataset.train_y, dataset.test_x, dataset.test_y),
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    k = dataset.num_classes
    split_key = _seed_key(options.seed, 0)
    splits = _checked(
        "shift",
        lambda: shift.make_splits(
            split_key,
            dataset.train_y,
            dataset.test_y,
            num_classes=k,
            **options.shift.split_options(),
        ),
    )
    source_index, _, pool_state = pool.from_splits(splits)
    if options.label_shift.estimator == "none":
        # A method that needs no weight estimate pays for no held-out confusion sample.
        pool_state = pool_state.replace(holdout=jnp.zeros_like(pool_state.holdout))

    q = options.query
    # Budgets count distinct examples: a resampled pool holds some examples in several rows.
    host = parallel.to_host(pool_state)
    pool_size = int(np.sum(host.pool & host.representative))
    buyable = int(np.sum(host.pool & ~host.labeled & host.representative))  # unlabeled_pool
    budget = int(q.sample_prop * pool_size / q.num_batches)
    if budget * q.num_batches > buyable:
        _fail(
            f"query.sample_prop={q.sample_prop} asks for {budget * q.num_batches} labels but "
            f"only {buyable} pool examples are unlabeled (shift.initial_prop labels the rest); "
            "lower one of them"
        )
    if budget < 1:
        _fail(
            f"query.sample_prop={q.sample_prop} buys no label per round from a pool of "
            f"{pool_size} examples over {q.num_batches} rounds; raise it or lower "
            "query.num_batches"
        )

    model = models.create_model(options.model.name, k, **_model_kwargs(options.model))
    inference_model = model
    if "conv_impl" in models.MODELS[options.model.name].__dataclass_fields__:
        inference_model = model.clone(conv_impl=options.model.inference_conv_impl)
    tx = options.train.optimizer_transform()
    transform = input_transform(options.augment, dataset)
    input_fn = None if transform is None else transform.train
    input_shape = options.augment.pipeline().output_shape(dataset.input_shape)
    target_rows = np.asarray(splits.target.indices, np.int32)
    test_rows = np.asarray(splits.test.indices, np.int32)
    test_y = np.asarray(dataset.test_y, np.int32)
    return Experiment(
        options=options,
        num_classes=k,
        class_names=tuple(dataset.class_names),
        input_shape=input_shape,
        model=model,
        inference_model=inference_model,
        tx=tx,
        train_step=train.make_train_step(model, tx, input_fn=input_fn),
        committee_step=(
            train.make_ensemble_train_step(model, tx, q.committee_size, input_fn=input_fn)
            if q.acquisition.needs_committee
            else None
        ),
        transform=transform,
        # Host arrays go over by parallel.place (jax.device_put with one process), which
        # compiles nothing (jnp.asarray of a NumPy array compiles a small program per shape).
        **parallel.place(
            dict(
                train_images=np.asarray(dataset.train_x),
                test_images=np.asarray(dataset.test_x),
                source_rows=np.asarray(source_index, np.int32),
                source_y=np.asarray(dataset.train_y, np.int32)[np.asarray(source_index)],
                target_rows=target_rows,
                target_y=test_y[target_rows],
                target_valid=np.asarray(splits.target.valid),
                test_rows=test_rows,
                test_y=test_y[test_rows],
                test_valid=np.asarray(splits.test.valid),
            )
        ),
        initial_pool=parallel.place(pool_state),
        budget=budget,
        use_holdout=bool(np.any(np.asarray(pool_state.holdout))),
    )


def input_transform(
    augment_options: AugmentOptions, dataset: data.Dataset
) -> InputTransform | None:
    """The device-side transform of ``dataset``'s stored examples, or None where the stored
    floats are the network's input already (no augmentation, mean 0, std 1)."""
    if (
        augment_options.name == "none"
        and np.issubdtype(dataset.train_x.dtype, np.floating)
        and all(m == 0 for m in dataset.mean)
        and all(s == 1 for s in dataset.std)
    ):
        return None
    return InputTransform(
        augment=augment_options.name,
        options=augment_options.pipeline_options(),
        mean=tuple(float(m) for m in dataset.mean),
        std=tuple(float(s) for s in dataset.std),
    )


def _model_kwargs(model_options: ModelOptions) -> dict[str, Any]:
    fields = models.MODELS[model_options.name].__dataclass_fields__
    return {
        name: value
        for name, value in dataclasses.asdict(model_options).items()
        if name in fields and name not in ("name", "parent")
    }


def initial_state(exp: Experiment) -> malls.RoundState:
    """The round state before h0: fresh network (and committee), warm start labeled, no
    estimate yet (weights 1)."""
    init_key, loop_key = _split_pair(_seed_key(exp.options.seed, 1))
    committee = None
    if exp.committee_step is not None:
        committee = train.create_ensemble_state(
            jax.random.fold_in(init_key, 1),
            exp.model,
            exp.tx,
            exp.input_shape,
            exp.options.query.committee_size,
        )
    # With several processes every leaf becomes a global array (what Orbax saves).
    return parallel.place(
        malls.RoundState(
            round=np.int32(0),
            key=loop_key,
            train=train.create_train_state(init_key, exp.model, exp.tx, exp.input_shape),
            pool=exp.initial_pool,
            estimate=malls.no_estimate(exp.num_classes),
            committee=committee,
        )
    )


# ---------------------------------------------------------------------------------------
# The steps of a round.


@flax.struct.dataclass
class Predictions:
    """The current network's class probabilities in one pass: source [n, k] (warm start,
    holdout and pool rows), target [m, k], test [t, k]; ``source_features`` [n, d] the
    penultimate features of the source rows when the query strategy reads them (BADGE)."""

    source: jax.Array
    target: jax.Array
    test: jax.Array
    source_features: jax.Array | None = None


def train_distribution(exp: Experiment, pool_state: pool.PoolState) -> jax.Array:
    """P_train [k]: the labeled rows' label mix that the training weights are relative to."""
    return malls.source_distribution(
        pool_state,
        exp.source_y,
        all_labeled=exp.options.label_shift.reweight_all_labeled,
        num_classes=exp.num_classes,
    )


def class_weights(exp: Experiment, state: malls.RoundState) -> jax.Array:
    """The current training weights w(y) = Q/P_train, mixed with ``weight_lambda``, [k]."""
    return malls.class_weights(
        state.estimate,
        train_distribution(exp, state.pool),
        lam=float(exp.options.label_shift.weight_lambda),
    )


def _eval_input(exp: Experiment) -> Callable[[jax.Array], jax.Array] | None:
    return None if exp.transform is None else exp.transform.eval


def _concatenate(*rows: jax.Array) -> jax.Array:
    """Row indices end to end: on the host for concrete arrays (no program compiled), traced
    under a transformation (the stacked seeds of :mod:`alsa_jax.seeds`)."""
    if all(validation.is_concrete(r) for r in rows):
        return np.concatenate([np.asarray(r) for r in rows])
    return jnp.concatenate(rows)


def predict(exp: Experiment, network: train.TrainState) -> Predictions:
    """One prediction pass over the source rows, the target sample and the test split."""
    batch_size = exp.options.train.eval_batch_size
    features = None
    if exp.options.query.acquisition.needs_features:
        source, features = train.predict_features(
            exp.inference_model,
            network,
            exp.train_images,
            index=exp.source_rows,
            batch_size=batch_size,
            input_fn=_eval_input(exp),
        )
    else:
        source = train.predict_probs(
            exp.inference_model,
            network,
            exp.train_images,
            index=exp.source_rows,
            batch_size=batch_size,
            input_fn=_eval_input(exp),
        )
    held = train.predict_probs(
        exp.inference_model,
        network,
        exp.test_images,
        index=_concatenate(exp.target_rows, exp.test_rows),
        batch_size=batch_size,
        input_fn=_eval_input(exp),
    )
    target, test = _split_rows(held, exp.target_rows.shape[0])
    return Predictions(source=source, target=target, test=test, source_features=features)


def estimate(exp: Experiment, state: malls.RoundState, preds: Predictions) -> malls.WeightEstimate:
    """A raw weight estimate from the predictions on the labeled source and target rows."""
    ls = exp.options.label_shift
    source_probs, target_probs = preds.source, preds.target
    if ls.correct_confusion_predictions:  # the original's posterior-corrected confusion
        weights = class_weights(exp, state)
        source_probs = label_shift.posterior_correction(source_probs, weights)
        target_probs = label_shift.posterior_correction(target_probs, weights)
    return malls.estimate_weights(
        source_probs,
        exp.source_y,
        malls.confusion_rows(
            state.pool, use_holdout=exp.use_holdout, all_labeled=ls.reweight_all_labeled
        ),
        train_distribution(exp, state.pool),
        target_probs,
        exp.target_valid,
        exp.target_y,
        method=ls.estimator,
        num_classes=exp.num_classes,
        options=ls.estimator_options(),
    )


def training_rows(
    exp: Experiment, state: malls.RoundState, *, initial: bool
) -> tuple[jax.Array, jax.Array]:
    """The rows :func:`fit` trains on and their example weights, bool [n] and float [n]:
    h0 the warm start at weight 1; a round every labeled row with its importance weight."""
    ls = exp.options.label_shift
    if initial:
        rows = state.pool.warm
        return rows, np.ones(np.shape(rows), np.float32)
    example_weight = malls.training_weights(
        state.pool,
        exp.source_y,
        class_weights(exp, state),
        importance_weighting=ls.weighted_training,
        all_labeled=ls.reweight_all_labeled,
    )
    return pool.training_mask(state.pool), example_weight


def fit(
    exp: Experiment,
    state: malls.RoundState,
    key: jax.Array,
    *,
    initial: bool,
    committee: bool = False,
    display: progress.Progress | None = None,
) -> train.TrainState:
    """Train on every labeled row (h0: the warm start only) with importance weights.

    h0 trains ``initial_epochs`` at ``learning_rate``; a round fine-tunes ``partial_epochs``
    at ``finetune_learning_rate`` from a fresh optimizer state. With ``committee`` the
    query-by-committee networks train instead, all in one vmapped step on the same batches.
    ``display`` shows the training live (epoch, examples per second, time left).
    """
    t = exp.options.train
    rows, example_weight = training_rows(exp, state, initial=initial)
    network = state.committee if committee else state.train
    fresh = train.fresh_optimizer(exp.tx, stacked=1 if committee else 0)(network)
    count = int(np.sum(parallel.to_host(rows)))
    steps_per_epoch = max(1, -(-count // t.batch_size))
    epochs = t.initial_epochs if initial else t.partial_epochs
    name = "h0" if initial else f"fine-tune round {int(parallel.to_host(state.round))}"
    if committee:
        name = f"committee {name}"
    with (display or _SILENT).phase(
        name, epochs=epochs, examples_per_epoch=count, steps_per_epoch=steps_per_epoch
    ) as shown:
        trained, _ = train.fit(
            fresh,
            exp.committee_step if committee else exp.train_step,
            exp.train_images,
            exp.source_y,
            example_weight,
            rows,
            index=exp.source_rows,
            key=key,
            epochs=epochs,
            batch_size=t.batch_size,
            lr_fn=t.learning_rate_fn(finetune=not initial, steps_per_epoch=steps_per_epoch),
            on_step=shown.step if display is not None else None,
        )
    return trained


_SILENT = progress.Progress("never")


def h0_key_of(state: malls.RoundState) -> jax.Array:
    """The PRNG key of h0's training (and of the committee's initial training)."""
    return _fold_in(state.key, 0)


def train_initial(
    exp: Experiment, state: malls.RoundState, *, display: progress.Progress | None = None
) -> train.TrainState:
    """The initial network h0: ``initial_epochs`` on the warm start."""
    return fit(exp, state, h0_key_of(state), initial=True, display=display)


def train_committee(
    exp: Experiment,
    state: malls.RoundState,
    *,
    initial: bool,
    key: jax.Array | None = None,
    display: progress.Progress | None = None,
) -> malls.RoundState:
    """Train the query-by-committee networks (if any) as the main network was trained."""
    if state.committee is None:
        return state
    key = h0_key_of(state) if key is None else key
    committee = fit(
        exp, state, jax.random.fold_in(key, 1), initial=initial, committee=True, display=display
    )
    return state.replace(committee=committee)


def posterior_corrector(
    exp: Experiment, state: malls.RoundState, preds: Predictions
) -> Callable[[jax.Array], jax.Array]:
    """The posterior correction p(y|x) -> p(y|x) w(y) / sum_y' p(y'|x) w(y') of this round's
    network (``preds`` its predictions), for probabilities of any leading shape [..., k].

    With ``label_shift.calibrated_correction`` (the default) the network's probabilities are
    first calibrated (``label_shift.calibration``, e.g. BCTS) on the labeled confusion rows
    (the held-out sample), which makes them the posteriors under that sample's label
    distribution P_conf; they are then corrected by w = Q / P_conf, the estimate rebased
    onto P_conf: the Bayes posterior under Q for a calibrated network, whatever prior it was
    trained on (Alexandari et al., 2020). Without it, the raw probabilities are corrected by
    the training weights Q / P_train (the original's correction).
    """
    ls = exp.options.label_shift
    if not ls.calibrated_correction:
        weights = class_weights(exp, state)
        return lambda probs: label_shift.posterior_correction(probs, weights)
    rows = malls.confusion_rows(
        state.pool, use_holdout=exp.use_holdout, all_labeled=ls.reweight_all_labeled
    )
    fitted = calibration.fit_calibration(
        ls.calibration, calibration.logits_from_probs(preds.source), exp.source_y, rows
    )
    weights = label_shift.rebase_weights(
        state.estimate.weights,
        from_dist=state.estimate.sample_dist,
        to_dist=label_shift.label_distribution(exp.source_y, exp.num_classes, rows),
        lam=float(ls.weight_lambda),
    )
    return lambda probs: label_shift.posterior_correction(
        fitted.probs(calibration.logits_from_probs(probs)), weights
    )


def evaluate(exp: Experiment, state: malls.RoundState, preds: Predictions) -> dict[str, jax.Array]:
    """The round's record as arrays: accuracy family, labels, source shift, weight errors."""
    weights = class_weights(exp, state)
    probs = preds.test
    if exp.options.label_shift.corrects_evaluation:
        probs = posterior_corrector(exp, state, preds)(probs)
    true_weights = label_shift.oracle_weights(
        train_distribution(exp, state.pool),
        label_shift.label_distribution(exp.target_y, exp.num_classes, exp.target_valid),
    )
    record = malls.round_metrics(
        probs,
        exp.test_y,
        exp.test_valid,
        state.pool,
        exp.source_y,
        weights,
        true_weights,
        num_classes=exp.num_classes,
    )
    return {**record, "weights": weights, "true_weights": true_weights}


def query(
    exp: Experiment, state: malls.RoundState, preds: Predictions, key: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Score the unlabeled pool and choose this round's batch: (chosen, query_weight,
    offered), each [n] (see :func:`alsa_jax.malls.query`)."""
    q, ls = exp.options.query, exp.options.label_shift
    weights = class_weights(exp, state)
    probs = preds.source
    correct = posterior_corrector(exp, state, preds) if ls.corrects_scores else None
    if correct is not None:
        probs = correct(probs)
    acq = q.acquisition
    mc_probs = committee_probs = None
    eval_batch = exp.options.train.eval_batch_size
    if acq.needs_committee:
        committee_probs = train.ensemble_probs(
            exp.inference_model,
            state.committee,
            exp.train_images,
            index=exp.source_rows,
            batch_size=eval_batch,
            input_fn=_eval_input(exp),
        )
        if correct is not None:  # every member: [S, n, k]
            committee_probs = correct(committee_probs)
    if acq.needs_mc:
        mc_key, key = jax.random.split(key)
        mc_probs = train.mc_dropout_probs(
            exp.inference_model,
            state.train,
            exp.train_images,
            mc_key,
            index=exp.source_rows,
            num_samples=q.mc_samples,
            batch_size=eval_batch,
            input_fn=_eval_input(exp),
        )
        if correct is not None:  # every pass: [s, n, k]
            mc_probs = correct(mc_probs)
    return malls.query(
        key,
        probs,
        mc_probs,
        state.pool,
        state.estimate,
        weights,
        strategy=q.strategy,
        budget=exp.budget,
        diversify=q.diversify,
        medial_lambda=q.lambda_,
        lam=float(ls.weight_lambda),
        strategy_options=q.strategy_options(),
        committee_probs=committee_probs,
        features=preds.source_features,
    )


def initial_round(
    exp: Experiment, state: malls.RoundState, *, phase: Phase = _call
) -> tuple[malls.RoundState, Predictions, dict[str, jax.Array]]:
    """Round 0, after h0: predict, estimate the weights, evaluate."""
    preds = phase("prediction", lambda: predict(exp, state.train))
    state = state.replace(estimate=phase("estimation", lambda: estimate(exp, state, preds)))
    record = phase("evaluation", lambda: evaluate(exp, state, preds))
    return state, preds, record


def run_round(
    exp: Experiment,
    state: malls.RoundState,
    preds: Predictions,
    r: int,
    *,
    phase: Phase = _call,
    display: progress.Progress | None = None,
) -> tuple[malls.RoundState, Predictions, dict[str, jax.Array]]:
    """Round ``r`` >= 1: query, reveal, fine-tune, predict, re-estimate, evaluate.

    ``preds`` are the current network's predictions (from the previous round, or
    :func:`predict` after a resume); returns the new state, the new network's predictions
    and the round's record. Deterministic in ``state.key`` and ``r``. ``display`` shows
    the fine-tuning live.
    """
    query_key, fit_key = _split_pair(_fold_in(state.key, r))
    chosen, query_weight, offered = phase("selection", lambda: query(exp, state, preds, query_key))
    # The training weights follow from the raw estimate and the new labeled set's mix.
    revealed = pool.reveal(state.pool, chosen, r, query_weight, offered=offered)
    state = state.replace(round=parallel.place(np.int32(r)), pool=revealed)
    state = state.replace(
        train=phase("finetune", lambda: fit(exp, state, fit_key, initial=False, display=display))
    )
    if state.committee is not None:
        state = phase(
            "committee",
            lambda: train_committee(exp, state, initial=False, key=fit_key, display=display),
        )
    preds = phase("prediction", lambda: predict(exp, state.train))
    if exp.options.label_shift.iterative:
        state = state.replace(estimate=phase("estimation", lambda: estimate(exp, state, preds)))
    record = phase("evaluation", lambda: evaluate(exp, state, preds))
    return state, preds, record
