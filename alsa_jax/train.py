"""The training state, optimizers, learning-rate schedules, the jitted step and prediction.

The round loop trains the same network again after every round on a labeled set that
grows, so everything here is built to compile once and run every round:

- :class:`TrainState` holds arrays only (step, params, batch_stats, opt_state); the model
  and the optimizer are passed alongside, never stored in it.
- The learning rate lives in the optimizer state (``optax.inject_hyperparams``) and is an
  argument of the step, so a schedule computed in Python (:func:`learning_rate_at`) can set
  it every step without recompiling.
- :func:`fit` runs each epoch's steps as one jitted loop (``lax.fori_loop`` with a traced
  step count): every step gathers its ``[batch_size]`` batch on the device from the fixed
  data arrays with a row mask, so labeled sets of any size, h0 and every round's
  fine-tuning share one compiled loop, and Python dispatches once per epoch instead of
  twice per step. :func:`fit_stacked` runs the same loop vmapped over a leading axis of
  independent runs (seeds), each with its own rows, weights and keys.
- :func:`predict_probs` and :func:`mc_dropout_probs` pad to whole batches and ``lax.map``
  over them: one compile per distinct number of rows.

With more than one device, batches are split over the ``"data"`` mesh axis
(:mod:`alsa_jax.parallel`) and everything else is replicated.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from alsa_jax import losses, parallel, validation

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("exponential", "step")


@flax.struct.dataclass
class TrainState:
    """Everything training changes, as arrays.

    ``step``: int32 scalar, optimizer steps taken; ``params``: the model's parameters;
    ``batch_stats``: batch-norm running statistics (``{}`` for models without batch norm);
    ``opt_state``: the optimizer state, learning rate included.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


# ---------------------------------------------------------------------------------------
# Optimizers and learning-rate schedules.


def _sgd_with_weight_decay(
    learning_rate: float, momentum: float, weight_decay: float, nesterov: bool
) -> optax.GradientTransformation:
    # PyTorch's SGD: g <- g + wd * p; buf <- momentum * buf + g; p <- p - lr * buf
    # (nesterov: p <- p - lr * (g + momentum * buf)); optax.sgd's trace is the same recursion.
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
    )


def make_optimizer(
    name: str,
    *,
    learning_rate: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """The optimizer ``name`` with its learning rate held in the optimizer state.

    ``"adam"``: Adam (default betas; ``momentum``, ``weight_decay`` and ``nesterov`` do not
    apply, as in the original's MNIST runs). ``"sgd"``: SGD with heavy-ball ``momentum``
    (Nesterov if ``nesterov``) and L2 ``weight_decay`` added to the gradient, as PyTorch's
    ``SGD(weight_decay=...)``. The learning rate is injected (``opt_state.hyperparams
    ["learning_rate"]``) so :func:`make_train_step`'s step can set it every call;
    ``learning_rate`` is only its initial value.
    """
    validation.check_choice("optimizer", name, OPTIMIZERS)
    validation.check_positive("learning_rate", learning_rate)
    if name == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)
    validation.check_in_range("momentum", momentum, 0.0, 1.0)
    validation.check_positive("weight_decay", weight_decay, strict=False)
    return optax.inject_hyperparams(_sgd_with_weight_decay, static_args=("nesterov",))(
        learning_rate=learning_rate,
        momentum=momentum,
        weight_decay=weight_decay,
        nesterov=nesterov,
    )


def learning_rate_at(
    epoch_progress: float,
    *,
    base_lr: float,
    schedule: str,
    gamma: float,
    milestones: Sequence[int] = (),
    warm_epochs: float = 0,
    steps_per_epoch: int | None = None,
) -> float:
    """The learning rate at fractional epoch ``t = epoch + step / steps_per_epoch``.

    ``"exponential"``: ``base_lr * gamma ** floor(t)`` (per-epoch decay; the original's
    Adam runs). ``"step"``: ``base_lr * gamma ** #{m in milestones : m <= t}`` (decay by
    ``gamma`` at each milestone epoch). With ``warm_epochs > 0`` the result is multiplied by
    the linear warm-up factor ``min(1, (t + 1 / steps_per_epoch) / warm_epochs)``: the first
    step already gets one step's worth, so the rate is never 0, and the factor reaches 1
    at the last warm-up step; ``steps_per_epoch`` is needed for that and only for that.
    Pure Python, for use outside ``jit``.
    """
    validation.check_choice("schedule", schedule, SCHEDULES)
    validation.check_positive("gamma", gamma)
    validation.check_positive("epoch_progress", epoch_progress, strict=False)
    validation.check_positive("base_lr", base_lr, strict=False)
    validation.check_positive("warm_epochs", warm_epochs, strict=False)
    t = float(epoch_progress)
    if schedule == "exponential":
        lr = base_lr * gamma ** math.floor(t)
    else:
        lr = base_lr * gamma ** sum(1 for m in milestones if m <= t)
    if warm_epochs > 0:
        if not steps_per_epoch or steps_per_epoch < 1:
            raise ValueError(
                f"warm_epochs={warm_epochs} needs steps_per_epoch (a positive int) so the "
                f"warm-up starts at one step's worth; got {steps_per_epoch!r}"
            )
        lr *= min(1.0, (t + 1.0 / steps_per_epoch) / warm_epochs)
    return float(lr)


def _with_learning_rate(opt_state: Any, learning_rate: jax.Array) -> Any:
    hyperparams = getattr(opt_state, "hyperparams", None)
    if not isinstance(hyperparams, dict) or "learning_rate" not in hyperparams:
        raise ValueError(
            "the optimizer state has no injected learning rate; build the optimizer with "
            "make_optimizer (optax.inject_hyperparams)"
        )
    old = hyperparams["learning_rate"]
    new = dict(hyperparams, learning_rate=jnp.asarray(learning_rate, old.dtype))
    return opt_state._replace(hyperparams=new)


# ---------------------------------------------------------------------------------------
# State and step.


def _variables(state: TrainState) -> dict[str, Any]:
    if state.batch_stats:
        return {"params": state.params, "batch_stats": state.batch_stats}
    return {"params": state.params}


def create_train_state(
    key: jax.Array, model: nn.Module, tx: optax.GradientTransformation, input_shape: Sequence[int]
) -> TrainState:
    """Fresh parameters (and batch statistics) for ``model`` and ``tx``'s initial state.

    ``input_shape`` is the shape of one example, e.g. ``(28, 28, 1)``; the model is
    initialised on a zero batch of one. Replicated over the devices when there are several.
    """
    input_shape = tuple(int(s) for s in input_shape)
    return parallel.replicate(_initializer(model, tx, input_shape)(key))


@functools.cache
def _initializer(
    model: nn.Module, tx: optax.GradientTransformation, input_shape: tuple[int, ...]
) -> Callable[[jax.Array], TrainState]:
    """One jitted initialisation per (model, optimizer, input shape), shared by every call."""

    def init(key: jax.Array) -> TrainState:
        variables = model.init(
            {"params": key}, jnp.zeros((1, *input_shape), jnp.float32), train=False
        )
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
        )

    return jax.jit(init)


@functools.cache
def fresh_optimizer(
    tx: optax.GradientTransformation, *, stacked: int = 0
) -> Callable[[TrainState], TrainState]:
    """``state -> state`` with ``tx``'s initial optimizer state (jitted once per ``tx``).

    ``stacked``: how many leading axes of independent networks the state has (an ensemble,
    runs of several seeds, or both); each network gets its own fresh optimizer state.
    """

    def reset(state: TrainState) -> TrainState:
        return state.replace(opt_state=tx.init(state.params))

    for _ in range(int(stacked)):
        reset = jax.vmap(reset)
    return jax.jit(reset)


InputFn = Callable[[jax.Array, jax.Array], jax.Array]
"""``input_fn(x, key) -> x``: a batch as stored (e.g. uint8 images) to the model's float input,
with the training augmentation drawn from ``key``; jittable, static output shape."""


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    input_fn: InputFn | None = None,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """A jitted training step.

    ``train_step(state, x, labels, example_weight, mask, learning_rate, key)
    -> (state, metrics)``.

    One optimizer step on the importance-weighted cross-entropy
    ``sum_i m_i w_i CE_i / max(1, sum_i m_i)`` (:func:`losses.weighted_cross_entropy`) of
    the batch ``x [B, ...]``, ``labels [B]``, ``example_weight [B]``, ``mask [B]`` (0 for
    padding rows), with the optimizer's learning rate set to ``learning_rate`` (a traced
    scalar: changing it does not recompile) and dropout drawn from ``key``. With
    ``input_fn`` the batch first goes through ``input_fn(x, key')`` inside the step (turning
    stored images into normalised, augmented floats on the device), ``key'`` folded from
    ``key``. Batch-norm
    models update their running statistics. ``metrics``: ``loss``, ``accuracy`` over the
    masked rows and ``count`` (their number). With several devices, B must be divisible by
    the device count and the batch is split over them; the state must then be replicated
    (as :func:`create_train_state` and :func:`fit` leave it) and the batch arrays either
    uncommitted or split over ``"data"`` (as :func:`fit` gathers them).
    """

    def train_step(state, x, labels, example_weight, mask, learning_rate, key):
        parallel.check_batch_size("batch size", x.shape[0])
        validation.check_rank("labels", labels, 1)
        validation.check_same_leading(
            ("x", "labels", "example_weight", "mask"), x, labels, example_weight, mask
        )
        x = parallel.constrain_batch(x)
        if input_fn is not None:
            x = input_fn(x, jax.random.fold_in(key, 1))
        has_batch_norm = bool(state.batch_stats)

        def loss_fn(params):
            variables = {"params": params}
            if has_batch_norm:
                variables["batch_stats"] = state.batch_stats
                logits, updates = model.apply(
                    variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
                )
                batch_stats = updates["batch_stats"]
            else:
                logits = model.apply(variables, x, train=True, rngs={"dropout": key})
                batch_stats = state.batch_stats
            loss = losses.weighted_cross_entropy(logits, labels, example_weight, mask)
            return loss, (logits, batch_stats)

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        opt_state = _with_learning_rate(state.opt_state, learning_rate)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        m = mask.astype(jnp.float32)
        count = jnp.sum(m)
        correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
        metrics = {
            "loss": loss,
            "accuracy": jnp.sum(m * correct) / jnp.maximum(count, 1.0),
            "count": count,
        }
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, metrics

    if not parallel.is_parallel():
        return jax.jit(train_step)
    rep, bat = parallel.replicated_sharding(), parallel.batch_sharding()
    return jax.jit(
        train_step,
        in_shardings=(rep, bat, bat, bat, bat, rep, rep),
        out_shardings=(rep, rep),
    )


def create_ensemble_state(
    key: jax.Array,
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: Sequence[int],
    ensemble_size: int,
) -> TrainState:
    """``ensemble_size`` independently initialised states stacked on a leading axis [S, ...].

    Member ``i`` is :func:`create_train_state` with ``fold_in(key, i)``; the stacked
    state trains with :func:`make_ensemble_train_step` (all members in one vmapped step).
    """
    validation.check_positive("ensemble_size", ensemble_size)
    input_shape = tuple(int(s) for s in input_shape)
    return parallel.replicate(
        _ensemble_initializer(model, tx, input_shape, int(ensemble_size))(key)
    )


@functools.cache
def _ensemble_initializer(
    model: nn.Module, tx: optax.GradientTransformation, input_shape: tuple[int, ...], size: int
) -> Callable[[jax.Array], TrainState]:
    init = _initializer(model, tx, input_shape)
    return jax.jit(
        lambda key: jax.vmap(lambda i: init(jax.random.fold_in(key, i)))(jnp.arange(size))
    )


def make_ensemble_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    ensemble_size: int,
    *,
    input_fn: InputFn | None = None,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """The :func:`make_train_step` step vmapped over a stacked ensemble state.

    Same signature and batch as the single step: every member sees the same batch with
    its own dropout key (``split(key, S)``); the returned metrics are member means, so
    :func:`fit` trains an ensemble exactly as it trains one network.
    """
    step = make_train_step(model, tx, input_fn=input_fn)

    def ensemble_step(state, x, labels, example_weight, mask, learning_rate, key):
        keys = jax.random.split(key, ensemble_size)
        new_state, metrics = jax.vmap(step, in_axes=(0, None, None, None, None, None, 0))(
            state, x, labels, example_weight, mask, learning_rate, keys
        )
        return new_state, jax.tree.map(jnp.mean, metrics)

    return jax.jit(ensemble_step)


def member(state: TrainState, index: int) -> TrainState:
    """Member ``index`` of a stacked ensemble state."""
    return jax.tree.map(lambda leaf: leaf[index], state)


# ---------------------------------------------------------------------------------------
# The epoch loop.


def _order(key: jax.Array, rows: jax.Array) -> jax.Array:
    """A random permutation of [0, n) with the selected rows first (in random order). [n]."""
    perm = jax.random.permutation(key, rows.shape[0])
    return perm[jnp.argsort(~rows[perm], stable=True)]


_epoch_order = jax.jit(_order)
_stacked_epoch_order = jax.jit(jax.vmap(_order))


def _pure_step(train_step: Callable[..., Any]) -> Callable[..., Any]:
    """The traceable step behind a jitted one (``jax.jit`` keeps it as ``__wrapped__``)."""
    return getattr(train_step, "__wrapped__", train_step)


@functools.cache
def _step_loop(step_fn: Callable[..., Any], batch_size: int, stacked: bool) -> Callable[..., Any]:
    """Steps ``[start, stop)`` of an epoch as one jitted ``lax.fori_loop``.

    ``loop(state, data_x, index, data_y, example_weight, order, count, lrs, dropout_key,
    start, stop) -> (state, per_step)``: step ``s`` trains on the rows ``order[s * B + i]``
    (i < B), the last batch wrapping around to the epoch's first rows, which the mask keeps
    out of the loss (real examples, so batch norm sees real data), at learning rate
    ``lrs[s]`` with dropout from ``fold_in(dropout_key, s)``; ``per_step`` [len(lrs), 3]
    holds each step's (loss, accuracy, count) in row s, zeros for the steps not run.
    ``start``/``stop`` are traced, so one compile serves every labeled-set size. With
    ``stacked`` every argument but ``data_x`` has a leading axis of independent runs,
    vmapped: runs with fewer steps keep their state once their own ``stop`` is reached.
    """

    def loop(
        state, data_x, index, data_y, example_weight, order, count, lrs, dropout_key, start, stop
    ):
        def body(step, carry):
            state, per_step = carry
            position = step * batch_size + jnp.arange(batch_size)
            rows = order[position % jnp.maximum(count, 1)]
            mask = position < count
            x = data_x[index[rows]]
            state, metrics = step_fn(
                state,
                x,
                data_y[rows],
                example_weight[rows],
                mask,
                lrs[step],
                jax.random.fold_in(dropout_key, step),
            )
            values = jnp.stack([metrics["loss"], metrics["accuracy"], metrics["count"]])
            return state, per_step.at[step].set(values.astype(jnp.float32))

        per_step = jnp.zeros((lrs.shape[0], 3), jnp.float32)
        return jax.lax.fori_loop(start, stop, body, (state, per_step))

    if stacked:
        loop = jax.vmap(loop, in_axes=(0, None, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    return jax.jit(loop)


def _on_device(x: Any, dtype: Any = None) -> jax.Array:
    """``jnp.asarray(x, dtype)`` that compiles nothing for host data: NumPy arrays go over
    with :func:`alsa_jax.parallel.place` (``jax.device_put`` with one process; ``jnp.asarray``
    compiles a small copy program per shape)."""
    if isinstance(x, jax.Array):  # tracers included
        return jnp.asarray(x, dtype)
    return parallel.place(np.asarray(x, dtype))


@functools.partial(jax.jit, static_argnames="stacked")
def _epoch_keys(keys: jax.Array, epoch: int, *, stacked: bool) -> tuple[jax.Array, jax.Array]:
    """The epoch's (order, dropout) keys: ``split(fold_in(key, epoch))`` (per run if stacked)."""
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None)) if stacked else jax.random.fold_in
    split = jax.vmap(jax.random.split) if stacked else jax.random.split
    pair = split(fold(keys, epoch))
    return (pair[:, 0], pair[:, 1]) if stacked else (pair[0], pair[1])


def _check_fit_arguments(data_x, data_y, example_weight, rows, index, batch_size, epochs, *, lead):
    """Shapes and values of :func:`fit`'s arguments; ``lead`` leading axes of runs."""
    validation.check_rank("rows", rows, 1 + lead)
    if index is None:
        if lead:
            raise ValueError("fit_stacked needs index (each run's rows into the shared data_x)")
        validation.check_same_leading(
            ("data_x", "data_y", "example_weight", "rows"), data_x, data_y, example_weight, rows
        )
    else:
        names = ("index", "data_y", "example_weight", "rows")
        for name, value in zip(names, (index, data_y, example_weight, rows), strict=True):
            validation.check_shape(name, value, np.shape(rows))
    validation.check_positive("batch_size", batch_size)
    validation.check_positive("epochs", epochs, strict=False)
    parallel.check_batch_size("batch_size", batch_size)


def _learning_rates(lr_fn: Callable[[float], float], epoch: int, steps: int, length: int):
    """``lr_fn(epoch + s / steps)`` for the epoch's steps, padded to ``length``: float32."""
    lrs = np.zeros(length, np.float32)
    lrs[:steps] = [float(lr_fn(epoch + s / steps)) for s in range(steps)]
    return lrs


def _run_epochs(
    state,
    train_step,
    data_x,
    data_y,
    example_weight,
    rows,
    index,
    keys,
    counts,
    *,
    epochs,
    start_epoch,
    batch_size,
    lr_fns,
    on_step,
    stacked,
):
    """The shared epoch walk of :func:`fit` and :func:`fit_stacked` (``counts`` int [R])."""
    history: dict[str, list[Any]] = {"loss": [], "accuracy": []}
    steps = [-(-int(c) // batch_size) for c in counts]
    length = max(1, -(-int(np.shape(rows)[-1]) // batch_size))
    loop = _step_loop(_pure_step(train_step), int(batch_size), stacked)
    order_fn = _stacked_epoch_order if stacked else _epoch_order
    count_arg = parallel.place(np.asarray(counts if stacked else counts[0], np.int32))
    # A chunk of steps per dispatch: the whole epoch, or a few steps when a display counts.
    chunk = max(steps) if on_step is None else max(1, max(steps) // 4)
    for epoch in range(start_epoch, start_epoch + epochs):
        order_key, dropout_key = _epoch_keys(keys, epoch, stacked=stacked)
        order = order_fn(order_key, rows)
        lrs = np.stack(
            [_learning_rates(f, epoch, n, length) for f, n in zip(lr_fns, steps, strict=True)]
        )
        lrs = parallel.place(lrs if stacked else lrs[0])
        totals = []
        for first in range(0, max(steps), chunk):
            last = min(first + chunk, max(steps))
            bounds = [np.minimum(first, steps), np.minimum(last, steps)]
            if not stacked:
                bounds = [b[0] for b in bounds]
            state, total = loop(
                state,
                data_x,
                index,
                data_y,
                example_weight,
                order,
                count_arg,
                lrs,
                dropout_key,
                _on_device(bounds[0], np.int32),
                _on_device(bounds[1], np.int32),
            )
            totals.append(total)
            if on_step is not None:
                for s in range(first, last):
                    seen = sum(
                        min(batch_size, int(c) - s * batch_size)
                        for c, n in zip(counts, steps, strict=True)
                        if s < n
                    )
                    on_step(seen)
        # One transfer per epoch; the chunks above are dispatched without waiting. Each
        # step's row is written by one chunk only, so the sums do not depend on chunking.
        per_step = np.sum(np.asarray(parallel.to_host(totals), np.float64), axis=0)
        loss, accuracy, seen = per_step[..., 0], per_step[..., 1], per_step[..., 2]
        total = np.maximum(seen.sum(-1), 1.0)
        history["loss"].append((loss * seen).sum(-1) / total)
        history["accuracy"].append((accuracy * seen).sum(-1) / total)
    if not stacked:
        history = {name: [float(v) for v in values] for name, values in history.items()}
    return state, history


def fit(
    state: TrainState,
    train_step: Callable[..., tuple[TrainState, dict[str, jax.Array]]],
    data_x: jax.Array,
    data_y: jax.Array,
    example_weight: jax.Array,
    rows: jax.Array,
    *,
    key: jax.Array,
    epochs: int,
    batch_size: int,
    lr_fn: Callable[[float], float],
    start_epoch: int = 0,
    index: jax.Array | None = None,
    on_step: Callable[[int], None] | None = None,
) -> tuple[TrainState, dict[str, list[float]]]:
    """Train for ``epochs`` epochs on the rows of the fixed arrays where ``rows`` is True.

    Each epoch ``e`` (counted from ``start_epoch``) draws a permutation of the selected rows
    from ``fold_in(key, e)``, cuts it into ``ceil(count / batch_size)`` batches (the last
    one padded with mask 0) and runs ``train_step`` (from :func:`make_train_step`) on each
    with learning rate ``lr_fn(e + s / steps_per_epoch)``. The epoch's steps run as one
    jitted loop (:func:`_step_loop`) that gathers each batch on the device from
    ``data_x [n, ...]``, ``data_y [n]`` and ``example_weight [n]``; the step always sees
    ``[batch_size]`` shapes and the step count is traced, so any number of rows reuses one
    compile. Deterministic given ``key``. With ``index`` (int [n]), row i's input is
    ``data_x[index[i]]``: ``data_x`` is then a store of examples ``[N, ...]`` (each stored
    once, e.g. uint8 images) that the rows point into.

    ``on_step(examples)``, when given, is called once per step with the number of real
    (unmasked) examples in its batch, as the steps are dispatched (a few per dispatch), a
    host-side count that never waits for the device (e.g.
    :meth:`alsa_jax.progress.Phase.step`).

    Returns the trained state and per-epoch history ``{"loss": [...], "accuracy": [...]}``
    (means over the epoch's real rows).
    """
    _check_fit_arguments(data_x, data_y, example_weight, rows, index, batch_size, epochs, lead=0)
    rows = np.asarray(rows, bool)
    count = int(rows.sum())
    if epochs == 0:
        return state, {"loss": [], "accuracy": []}
    if count == 0:
        raise ValueError("rows selects no example; there is nothing to train on")
    if index is None:
        index = np.arange(rows.shape[0], dtype=np.int32)
    # With several devices: a state or data committed elsewhere (say restored onto one
    # device) is copied to every device once here, not on every step.
    state, data_x, index, data_y, example_weight, rows = parallel.replicate(
        (
            state,
            _on_device(data_x),
            _on_device(index, jnp.int32),
            _on_device(data_y),
            _on_device(example_weight, jnp.float32),
            _on_device(rows),
        )
    )
    return _run_epochs(
        state,
        train_step,
        data_x,
        data_y,
        example_weight,
        rows,
        index,
        key,
        [count],
        epochs=epochs,
        start_epoch=start_epoch,
        batch_size=int(batch_size),
        lr_fns=[lr_fn],
        on_step=on_step,
        stacked=False,
    )


def fit_stacked(
    state: TrainState,
    train_step: Callable[..., tuple[TrainState, dict[str, jax.Array]]],
    data_x: jax.Array,
    data_y: jax.Array,
    example_weight: jax.Array,
    rows: jax.Array,
    *,
    index: jax.Array,
    keys: jax.Array,
    epochs: int,
    batch_size: int,
    lr_fns: Sequence[Callable[[float], float]],
    start_epoch: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> tuple[TrainState, dict[str, list[np.ndarray]]]:
    """:func:`fit` for R independent runs at once, vmapped in one jitted loop per epoch.

    ``state`` has a leading axis [R, ...] (e.g. R seeds); ``index``, ``data_y``,
    ``example_weight`` and ``rows`` are [R, n] (each run's rows into the shared store
    ``data_x [N, ...]``), ``keys`` [R, 2] and ``lr_fns`` one schedule per run. Run r
    computes what :func:`fit` computes for its own arguments (to float rounding): its own
    permutations, batches, learning rates and dropout, with ``ceil(count_r / batch_size)``
    steps per epoch; a run with fewer steps waits, unchanged, while the others finish the
    epoch. History values are arrays [R] per epoch.
    """
    _check_fit_arguments(data_x, data_y, example_weight, rows, index, batch_size, epochs, lead=1)
    rows_np = np.asarray(rows, bool)
    counts = rows_np.sum(axis=1)
    if len(lr_fns) != rows_np.shape[0]:
        raise ValueError(
            f"lr_fns needs one schedule per run ({rows_np.shape[0]}), got {len(lr_fns)}"
        )
    if epochs == 0:
        return state, {"loss": [], "accuracy": []}
    if np.any(counts == 0):
        raise ValueError(f"rows selects no example for run {int(np.argmin(counts))}")
    return _run_epochs(
        state,
        train_step,
        _on_device(data_x),
        _on_device(data_y),
        _on_device(example_weight, jnp.float32),
        _on_device(rows_np),
        _on_device(index, jnp.int32),
        _on_device(keys),
        [int(c) for c in counts],
        epochs=epochs,
        start_epoch=start_epoch,
        batch_size=int(batch_size),
        lr_fns=list(lr_fns),
        on_step=on_step,
        stacked=True,
    )


# ---------------------------------------------------------------------------------------
# Prediction.


EvalInputFn = Callable[[jax.Array], jax.Array]
"""``input_fn(x) -> x``: stored examples to the model's float input at prediction time."""


@functools.partial(
    jax.jit,
    static_argnames=("model", "batch_size", "num_samples", "input_fn", "members", "features"),
)
def _predict(
    model, variables, x, index, key, *, batch_size, num_samples, input_fn, members, features=False
):
    n = index.shape[0]
    num_batches = max(1, -(-n // batch_size))
    pad = num_batches * batch_size - n
    batches = jnp.pad(index, (0, pad)).reshape(num_batches, batch_size)

    def apply(v, xb, rng):
        if features:  # probabilities and penultimate features side by side: [B, k + d]
            logits, feats = model.apply(v, xb, train=False, return_features=True)
            probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
            return jnp.concatenate([probs, feats.astype(jnp.float32)], axis=-1)
        if rng is None:
            logits = model.apply(v, xb, train=False)
        else:
            logits = model.apply(v, xb, train=False, mc_dropout=True, rngs={"dropout": rng})
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    def probs(ib, rng):
        ib = parallel.constrain_batch(ib)
        xb = x[ib]
        if input_fn is not None:
            xb = input_fn(xb)
        if members:  # a stacked committee: every member on the same batch, [S, B, k]
            return jax.vmap(lambda v: apply(v, xb, rng))(variables)
        return apply(variables, xb, rng)

    def unbatch(p):  # [num_batches, (S,) batch_size, k] -> [(S,) n, k]
        if members:
            p = jnp.moveaxis(p, 1, 0)
            return p.reshape(p.shape[0], num_batches * batch_size, -1)[:, :n]
        return p.reshape(num_batches * batch_size, -1)[:n]

    if num_samples == 0:
        return parallel.whole_on_every_process(
            unbatch(jax.lax.map(lambda ib: probs(ib, None), batches))
        )

    def one_pass(pass_key):
        batch_ids = jnp.arange(num_batches)
        return unbatch(
            jax.lax.map(
                lambda a: probs(a[0], jax.random.fold_in(pass_key, a[1])), (batches, batch_ids)
            )
        )

    # Passes outer, batches inner: memory stays at one batch's activations.
    return parallel.whole_on_every_process(
        jax.lax.map(one_pass, jax.random.split(key, num_samples))
    )


def _effective_batch_size(n: int, batch_size: int) -> int:
    # No point padding a small set up to a large batch; keep it a multiple of the devices.
    devices = parallel.device_count()
    return min(batch_size, max(devices, -(-n // devices) * devices))


def _prediction_inputs(
    x: jax.Array, index: jax.Array | None, batch_size: int
) -> tuple[jax.Array, jax.Array]:
    if np.ndim(x) < 2:
        raise ValueError(
            f"x must have a leading row dimension and features, got shape {np.shape(x)}"
        )
    validation.check_positive("batch_size", batch_size)
    parallel.check_batch_size("batch_size", batch_size)
    if index is None:
        index = np.arange(np.shape(x)[0], dtype=np.int32)
    else:
        validation.check_rank("index", index, 1)
    return _on_device(x), _on_device(index, jnp.int32)


def _predict_rows(
    model: nn.Module,
    state: TrainState,
    x: jax.Array,
    index: jax.Array | None,
    key: jax.Array | None,
    *,
    batch_size: int,
    input_fn: EvalInputFn | None,
    num_samples: int = 0,
    members: bool = False,
    features: bool = False,
) -> jax.Array:
    """The shared body of the prediction entry points: checked inputs, placed on the
    devices, one :func:`_predict` pass in whole batches."""
    x, index = _prediction_inputs(x, index, batch_size)
    variables, x, index, key = parallel.replicate((_variables(state), x, index, key))
    return _predict(
        model,
        variables,
        x,
        index,
        key,
        batch_size=_effective_batch_size(index.shape[0], batch_size),
        num_samples=int(num_samples),
        input_fn=input_fn,
        members=members,
        features=features,
    )


def predict_probs(
    model: nn.Module,
    state: TrainState,
    x: jax.Array,
    *,
    batch_size: int = 512,
    index: jax.Array | None = None,
    input_fn: EvalInputFn | None = None,
) -> jax.Array:
    """Class probabilities ``softmax(f(x))`` in inference mode (no dropout, running BN). [n, k].

    ``x``: ``[n, ...]``, padded to whole batches of ``batch_size`` (split over the devices
    when there are several); one compile per distinct ``n``. With ``index`` (int [n]) the
    rows predicted are ``x[index]``, gathered batch by batch from the store ``x``; with
    ``input_fn`` each gathered batch goes through it first (e.g. uint8 images to
    normalised floats).
    """
    return _predict_rows(model, state, x, index, None, batch_size=batch_size, input_fn=input_fn)


def predict_features(
    model: nn.Module,
    state: TrainState,
    x: jax.Array,
    *,
    batch_size: int = 512,
    index: jax.Array | None = None,
    input_fn: EvalInputFn | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Class probabilities [n, k] and penultimate features [n, d] in one inference pass.

    The features are what the model returns with ``return_features=True`` (the input of
    its output layer). Arguments as in :func:`predict_probs`.
    """
    joint = _predict_rows(
        model, state, x, index, None, batch_size=batch_size, input_fn=input_fn, features=True
    )
    k = model.num_classes
    return joint[:, :k], joint[:, k:]


def ensemble_probs(
    model: nn.Module,
    state: TrainState,
    x: jax.Array,
    *,
    batch_size: int = 512,
    index: jax.Array | None = None,
    input_fn: EvalInputFn | None = None,
) -> jax.Array:
    """Every member's probabilities for a stacked ensemble state (:func:`create_ensemble_state`).

    One pass over the data with all members vmapped on each batch: ``[S, n, k]``, member
    ``i`` equal to :func:`predict_probs` of ``member(state, i)``. Arguments as there.
    """
    return _predict_rows(
        model, state, x, index, None, batch_size=batch_size, input_fn=input_fn, members=True
    )


def mc_dropout_probs(
    model: nn.Module,
    state: TrainState,
    x: jax.Array,
    key: jax.Array,
    *,
    num_samples: int,
    batch_size: int = 512,
    index: jax.Array | None = None,
    input_fn: EvalInputFn | None = None,
) -> jax.Array:
    """``num_samples`` Monte-Carlo dropout passes ``p_s(y | x)``. [s, n, k].

    Dropout is on, batch norm stays in inference mode (running averages; statistics are
    not updated). Pass ``s`` uses ``split(key, num_samples)[s]``, folded with the batch
    index; deterministic given ``key`` (and ``batch_size``). ``index`` and ``input_fn`` as
    in :func:`predict_probs`.
    """
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    return _predict_rows(
        model,
        state,
        x,
        index,
        key,
        batch_size=batch_size,
        input_fn=input_fn,
        num_samples=int(num_samples),
    )
