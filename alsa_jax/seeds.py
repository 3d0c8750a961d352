"""Several seeds of one experiment run together (``num_parallel_seeds``).

Runs of one config that differ only in ``seed`` have the same shapes: as many source,
target and test rows, one model, one optimizer. :func:`setup` cuts every seed's splits and
stacks their arrays on a leading seed axis [S, ...] (the example stores are shared), and
the round state of all seeds is one stacked pytree that the functions here advance
together, mirroring :mod:`alsa_jax.experiment`::

    runs = seeds.setup(options, [0, 1, 2, 3])
    state = seeds.initial_state(runs)                    # stacked RoundState [S, ...]
    state = state.replace(train=seeds.train_initial(runs, state))
    state = seeds.train_committee(runs, state, initial=True)
    state, preds, record = seeds.initial_round(runs, state)
    for r in range(1, options.query.num_batches + 1):
        state, preds, record = seeds.run_round(runs, state, preds, r)
    seeds.take(record, 2)                                # the record of seed 2 (index 2)

Training, the dominant cost, runs as one vmapped epoch loop
(:func:`alsa_jax.train.fit_stacked`: each seed its own batches, learning rates and number
of steps), and the reveal as one vmapped program. Prediction, the weight estimate, the
query and the evaluation run seed by seed (:func:`each_seed`), each exactly as for that seed
alone: batched over seeds, XLA's CPU convolutions ran 7x slower than the seeds in turn (4
seeds of the MNIST CNN on 28x28 images); a vmapped estimate that iterates to a tolerance
(BCTS calibration by L-BFGS, then EM) rounds its way to weights a few percent away from the
seed's own; and a seed's budget (labels per round) is a static count that follows from its
own pool (``query.sample_prop`` of its distinct examples), which query strategies take as
such. Seed ``s`` computes what the same functions of :mod:`alsa_jax.experiment` compute
for that seed alone, up to the float rounding of the vmapped training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from alsa_jax import data, experiment, malls, models, pool, progress, train

T = TypeVar("T")

# The Experiment fields that differ between seeds (stacked [S, ...]); the example stores
# are shared and every other field is the same Python object for all seeds.
VARYING = (
    "source_rows",
    "source_y",
    "target_rows",
    "target_y",
    "target_valid",
    "test_rows",
    "test_y",
    "test_valid",
    "initial_pool",
)
_SHARED = ("train_images", "test_images")


@jax.jit
def _stack(trees: Sequence[Any]) -> Any:
    """Pytrees of one structure stacked leaf by leaf on a new leading axis, in one program."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


@jax.jit
def _take(tree: Any, index: jax.Array) -> Any:
    return jax.tree.map(lambda leaf: leaf[index], tree)


def take(tree: Any, index: int) -> Any:
    """The ``index``-th seed's slice of a stacked pytree (a state, predictions or a record):
    the position in ``Seeds.seeds``, not the seed itself."""
    leaves = jax.tree.leaves(tree)
    count = np.shape(leaves[0])[0] if leaves and np.ndim(leaves[0]) else 0
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"index must be an int (a position among the seeds), got {index!r}")
    if not 0 <= index < count:
        raise IndexError(f"index {index} is out of range for {count} stacked seeds")
    return _take(tree, jax.device_put(np.int32(index)))


def stack(trees: Sequence[Any]) -> Any:
    """Per-seed pytrees of one structure stacked on a leading seed axis."""
    return _stack(list(trees))


@dataclasses.dataclass(frozen=True, eq=False)
class Seeds:
    """S experiments of one config, one per seed, and their stacked arrays.

    ``experiments[s]`` is :func:`alsa_jax.experiment.setup` of seed ``seeds[s]`` (its
    budget included; a CNN's automatic training chunks S times smaller, see
    :func:`setup`); ``stacked`` holds the :data:`VARYING` fields as [S, ...].
    """

    seeds: tuple[int, ...]
    experiments: tuple[experiment.Experiment, ...]
    stacked: dict[str, Any]

    def __len__(self) -> int:
        return len(self.seeds)

    @property
    def template(self) -> experiment.Experiment:
        """The first seed's experiment: the model, steps and options every seed shares."""
        return self.experiments[0]

    @property
    def options(self) -> experiment.Options:
        return self.template.options

    def vmapped(self, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn(exp, *args)`` for every seed at once, jitted: ``(*args) -> out``, where
        ``args`` and ``out`` carry the leading seed axis and ``exp`` is each seed's
        experiment: its :data:`VARYING` arrays are that seed's, everything else the first
        seed's, ``budget`` and ``options.seed`` included (a function that reads those runs
        seed by seed, as :func:`query` does). One compile per ``fn`` (cached here)."""
        cache = self.__dict__.setdefault("_vmapped", {})
        if fn not in cache:
            template = self.template

            def one(varying, shared, args):
                return fn(template.replace(**varying, **shared), *args)

            # The example stores go in as arguments, not as constants of the program.
            cache[fn] = jax.jit(jax.vmap(one, in_axes=(0, None, 0)))
        batched = cache[fn]
        shared = {name: getattr(self.template, name) for name in _SHARED}
        return lambda *args: batched(self.stacked, shared, args)


def setup(
    options: experiment.Options, seeds: Sequence[int], *, dataset: data.Dataset | None = None
) -> Seeds:
    """:func:`alsa_jax.experiment.setup` for each of ``seeds`` (``options.seed`` is
    replaced), the dataset loaded once; the seeds' splits must have the same sizes (they do
    when only the seed differs).

    A CNN whose automatic chunks (``model.train_chunk=-1``) hold a given number of images
    trains here in chunks S times smaller, so that a chunk of all seeds keeps its size (in
    chunks of 16 images per seed, 4 seeds of the MNIST CNN trained at 879 images/s on 2 CPU
    cores; in chunks of 4, at 1,097; one seed alone at 1,264). Chunks change the float
    rounding only."""
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in seeds):
        raise experiment.ConfigError(f"seeds must be integers, got {list(seeds)!r}")
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise experiment.ConfigError("num_parallel_seeds must be >= 1")
    if len(set(seeds)) != len(seeds):
        raise experiment.ConfigError(f"the seeds {list(seeds)} repeat one; give distinct seeds")
    if dataset is None:
        try:
            dataset = data.load_dataset(options.dataset.name, **options.dataset.loader_options())
        except ValueError as error:
            raise experiment.ConfigError(str(error)) from None
    first = experiment.setup(dataclasses.replace(options, seed=seeds[0]), dataset=dataset)
    experiments = [first]
    for seed in seeds[1:]:
        exp = experiment.setup(dataclasses.replace(options, seed=seed), dataset=dataset)
        # Share the first seed's model and steps: one compiled program serves every seed.
        exp = exp.replace(
            **{
                name: getattr(first, name)
                for name in ("model", "inference_model", "tx", "train_step", "committee_step")
            },
            **{name: getattr(first, name) for name in _SHARED},
        )
        for name in VARYING:
            shapes = jax.tree.map(np.shape, (getattr(first, name), getattr(exp, name)))
            if shapes[0] != shapes[1]:
                raise experiment.ConfigError(
                    f"seed {seed}'s {name} has shape {shapes[1]} against {shapes[0]} for seed "
                    f"{seeds[0]}; stacked seeds need splits of one size (run them separately)"
                )
        if exp.use_holdout != first.use_holdout:
            raise experiment.ConfigError(
                f"seed {seed} has a held-out sample and seed {seeds[0]} not (or the other way "
                "round); run them separately"
            )
        experiments.append(exp)
    experiments = _stacked_steps(experiments, options)
    stacked = stack([{name: getattr(e, name) for name in VARYING} for e in experiments])
    return Seeds(seeds=seeds, experiments=tuple(experiments), stacked=stacked)


def _stacked_steps(
    experiments: list[experiment.Experiment], options: experiment.Options
) -> list[experiment.Experiment]:
    """The training steps for the seeds vmapped together (see :func:`setup`)."""
    first = experiments[0]
    chunk = models.automatic_train_chunk(first.model, first.input_shape)
    if options.model.train_chunk != -1 or not chunk:
        return experiments
    model = first.model.clone(train_chunk=max(1, round(chunk / len(experiments))))
    input_fn = None if first.transform is None else first.transform.train
    steps = {
        "model": model,
        "train_step": train.make_train_step(model, first.tx, input_fn=input_fn),
        "committee_step": (
            None
            if first.committee_step is None
            else train.make_ensemble_train_step(
                model, first.tx, options.query.committee_size, input_fn=input_fn
            )
        ),
    }
    return [exp.replace(**steps) for exp in experiments]


def initial_state(runs: Seeds) -> malls.RoundState:
    """Every seed's :func:`alsa_jax.experiment.initial_state`, stacked [S, ...]."""
    return stack([experiment.initial_state(exp) for exp in runs.experiments])


def _initial_rows(exp: experiment.Experiment, state: malls.RoundState):
    return experiment.training_rows(exp, state, initial=True)


def _round_rows(exp: experiment.Experiment, state: malls.RoundState):
    return experiment.training_rows(exp, state, initial=False)


def fit(
    runs: Seeds,
    state: malls.RoundState,
    keys: jax.Array,
    *,
    initial: bool,
    committee: bool = False,
    display: progress.Progress | None = None,
) -> train.TrainState:
    """:func:`alsa_jax.experiment.fit` for every seed, as one vmapped training loop
    (``keys`` [S, 2]: each seed's key); returns the stacked networks."""
    t = runs.options.train
    rows, example_weight = runs.vmapped(_initial_rows if initial else _round_rows)(state)
    counts = np.asarray(rows).sum(axis=1)
    network = state.committee if committee else state.train
    template = runs.template
    fresh = train.fresh_optimizer(template.tx, stacked=2 if committee else 1)(network)
    steps = [max(1, -(-int(c) // t.batch_size)) for c in counts]
    epochs = t.initial_epochs if initial else t.partial_epochs
    name = "h0" if initial else f"fine-tune round {int(np.asarray(state.round)[0])}"
    if committee:
        name = f"committee {name}"
    with (display or experiment._SILENT).phase(
        f"{name} ({len(runs)} seeds)",
        epochs=epochs,
        examples_per_epoch=int(counts.sum()),
        steps_per_epoch=max(steps),
    ) as shown:
        trained, _ = train.fit_stacked(
            fresh,
            template.committee_step if committee else template.train_step,
            template.train_images,
            runs.stacked["source_y"],
            example_weight,
            rows,
            index=runs.stacked["source_rows"],
            keys=keys,
            epochs=epochs,
            batch_size=t.batch_size,
            lr_fns=[t.learning_rate_fn(finetune=not initial, steps_per_epoch=n) for n in steps],
            on_step=shown.step if display is not None else None,
        )
    return trained


_h0_keys_of = jax.jit(jax.vmap(experiment.h0_key_of))
_committee_keys = jax.jit(jax.vmap(lambda key: jax.random.fold_in(key, 1)))


def train_initial(
    runs: Seeds, state: malls.RoundState, *, display: progress.Progress | None = None
) -> train.TrainState:
    """Every seed's h0 (:func:`alsa_jax.experiment.train_initial`), trained together."""
    return fit(runs, state, _h0_keys_of(state), initial=True, display=display)


def train_committee(
    runs: Seeds,
    state: malls.RoundState,
    *,
    initial: bool,
    keys: jax.Array | None = None,
    display: progress.Progress | None = None,
) -> malls.RoundState:
    """:func:`alsa_jax.experiment.train_committee` for every seed (``keys`` [S, 2])."""
    if state.committee is None:
        return state
    keys = _h0_keys_of(state) if keys is None else keys
    committee = fit(
        runs, state, _committee_keys(keys), initial=initial, committee=True, display=display
    )
    return state.replace(committee=committee)


def each_seed(runs: Seeds, fn: Callable[..., T], *args: Any) -> T:
    """``fn(exp, *args)`` for each seed in turn on its own slice of ``args`` (stacked pytrees,
    [S, ...]), the results stacked: each seed's result is exactly what ``fn`` gives for that
    seed alone."""
    return stack([fn(exp, *take(args, s)) for s, exp in enumerate(runs.experiments)])


def predict(runs: Seeds, networks: train.TrainState) -> experiment.Predictions:
    """Every seed's :func:`alsa_jax.experiment.predict` (networks [S, ...]), stacked."""
    return each_seed(runs, experiment.predict, networks)


def estimate(
    runs: Seeds, state: malls.RoundState, preds: experiment.Predictions
) -> malls.WeightEstimate:
    """Every seed's :func:`alsa_jax.experiment.estimate`, stacked."""
    return each_seed(runs, experiment.estimate, state, preds)


def evaluate(
    runs: Seeds, state: malls.RoundState, preds: experiment.Predictions
) -> dict[str, jax.Array]:
    """Every seed's :func:`alsa_jax.experiment.evaluate` (each value [S, ...]), stacked."""
    return each_seed(runs, experiment.evaluate, state, preds)


def query(
    runs: Seeds, state: malls.RoundState, preds: experiment.Predictions, keys: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Every seed's :func:`alsa_jax.experiment.query` with its own budget:
    (chosen, query_weight, offered), each [S, n]."""
    return each_seed(runs, experiment.query, state, preds, keys)


def _reveal(exp, pool_state, chosen, round_index, query_weight, offered):
    return pool.reveal(pool_state, chosen, round_index, query_weight, offered=offered)


@jax.jit
def _round_keys(keys: jax.Array, r: jax.Array) -> tuple[jax.Array, jax.Array]:
    pairs = jax.vmap(lambda key: jax.random.split(jax.random.fold_in(key, r)))(keys)
    return pairs[:, 0], pairs[:, 1]


def initial_round(
    runs: Seeds, state: malls.RoundState, *, phase: experiment.Phase = experiment._call
) -> tuple[malls.RoundState, experiment.Predictions, dict[str, jax.Array]]:
    """Round 0 of every seed, after h0: predict, estimate, evaluate (each one program)."""
    preds = phase("prediction", lambda: predict(runs, state.train))
    state = state.replace(estimate=phase("estimation", lambda: estimate(runs, state, preds)))
    record = phase("evaluation", lambda: evaluate(runs, state, preds))
    return state, preds, record


def run_round(
    runs: Seeds,
    state: malls.RoundState,
    preds: experiment.Predictions,
    r: int,
    *,
    phase: experiment.Phase = experiment._call,
    display: progress.Progress | None = None,
) -> tuple[malls.RoundState, experiment.Predictions, dict[str, jax.Array]]:
    """Round ``r`` >= 1 of every seed (:func:`alsa_jax.experiment.run_round`): the query
    seed by seed, the rest one program per phase for all seeds."""
    query_keys, fit_keys = _round_keys(state.key, jax.device_put(np.int32(r)))
    chosen, query_weight, offered = phase(
        "selection", lambda: query(runs, state, preds, query_keys)
    )
    rounds = jax.device_put(np.full(len(runs), r, np.int32))
    revealed = runs.vmapped(_reveal)(state.pool, chosen, rounds, query_weight, offered)
    state = state.replace(round=rounds, pool=revealed)
    state = state.replace(
        train=phase("finetune", lambda: fit(runs, state, fit_keys, initial=False, display=display))
    )
    if state.committee is not None:
        state = phase(
            "committee",
            lambda: train_committee(runs, state, initial=False, keys=fit_keys, display=display),
        )
    preds = phase("prediction", lambda: predict(runs, state.train))
    if runs.options.label_shift.iterative:
        state = state.replace(estimate=phase("estimation", lambda: estimate(runs, state, preds)))
    record = phase("evaluation", lambda: evaluate(runs, state, preds))
    return state, preds, record
