"""Simulated label shift: class distributions, per-class resampling and named split strategies.

The experiments of the paper simulate label shift on a labeled dataset: the training rows
are cut into a warm-start part and an online pool part, and each split (warm start, pool,
test) is resampled per class *with replacement* so that its class proportions follow a
chosen distribution p (uniform, a Dirichlet(alpha) draw, or "tweak-one"). A split of size
m gets max(1, ceil(m * p[c])) examples of class c.

Variable-size sets are kept as fixed-capacity index arrays with a boolean ``valid`` mask
(:class:`Split`), so everything downstream has static shapes. :func:`resample_per_class`
is jittable; :func:`make_splits` dispatches on the strategy name and runs eagerly.

The table of strategies (:data:`STRATEGIES`) is data: each name maps to a
:class:`SplitSpec` that says which distribution the warm start, pool and test splits get.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from alsa_jax import validation

# ---------------------------------------------------------------------------------------
# Class distributions
# ---------------------------------------------------------------------------------------


def _check_num_classes(num_classes: Any, *, minimum: int = 1) -> None:
    if not isinstance(num_classes, (int, np.integer)) or num_classes < minimum:
        raise ValueError(
            f"num_classes must be a Python int >= {minimum} (static), got {num_classes!r}"
        )


def _check_size(name: str, size: Any, *, minimum: int = 1) -> None:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < minimum:
        raise ValueError(f"{name} must be a Python int >= {minimum} (static), got {size!r}")


def uniform_distribution(num_classes: int) -> jax.Array:
    """The uniform class distribution: p[c] = 1 / k. Returns float32 [k]."""
    _check_num_classes(num_classes)
    return jax.device_put(np.full((num_classes,), 1.0 / num_classes, dtype=np.float32))


def dirichlet_distribution(key: jax.Array, num_classes: int, alpha: float) -> jax.Array:
    """One draw p ~ Dirichlet(alpha * 1_k) (symmetric). Returns float32 [k].

    Small ``alpha`` (e.g. 0.1) concentrates the mass on a few classes; large ``alpha``
    approaches the uniform distribution.
    """
    _check_num_classes(num_classes)
    validation.check_positive("alpha", alpha)
    return _dirichlet(key, np.float32(alpha), num_classes)


@partial(jax.jit, static_argnames=("num_classes",))
def _dirichlet(key: jax.Array, alpha: jax.Array, num_classes: int) -> jax.Array:
    concentration = jnp.full((num_classes,), alpha, dtype=jnp.float32)
    return jax.random.dirichlet(key, concentration).astype(jnp.float32)


def tweak_one_distribution(num_classes: int, label: int, rho: float) -> jax.Array:
    """Tweak-one: p[label] = rho, every other class (1 - rho) / (k - 1). Returns float32 [k]."""
    _check_num_classes(num_classes, minimum=2)
    if not isinstance(label, (int, np.integer)) or not 0 <= label < num_classes:
        raise ValueError(f"tweak_label must be a class in [0, {num_classes - 1}], got {label!r}")
    validation.check_in_range("tweak_rho", rho, 0.0, 1.0)
    rest = (1.0 - rho) / (num_classes - 1)
    return jnp.full((num_classes,), rest, dtype=jnp.float32).at[label].set(rho)


# ---------------------------------------------------------------------------------------
# Per-class resampling
# ---------------------------------------------------------------------------------------

# ceil(size * p[c]) is taken after subtracting CEIL_TOLERANCE * size: float32 products of
# exact fractions (0.1 * 3000, 1/3 * 300) can land a hair above the integer and would
# otherwise round up by a whole example. The float32 error of size * p is about
# size * 1.2e-7, so 1e-6 * size covers it with margin while moving no honest value
# farther than one part in a million of the split size.
CEIL_TOLERANCE = 1e-6


def class_counts(p: jax.Array, size: int) -> jax.Array:
    """Per-class sizes n[c] = max(1, ceil(size * p[c] - 1e-6 * size)). Returns int32 [k].

    ``p`` [k] is a class distribution (normalised to sum to one first, so float rounding
    in p cannot push the total past ``size + k``); ``size`` a static Python int >= 1.
    The sum of the counts lies in [size, size + k] (up to that tolerance). The tolerance (see
    :data:`CEIL_TOLERANCE`) keeps exact products such as 100 * 0.25 = 25 from rounding
    up to 26 in float32. Jittable with ``size`` static.
    """
    _check_size("size", size)
    validation.check_rank("p", p, 1)
    validation.check_distribution("p", p)
    p = jnp.asarray(p, dtype=jnp.float32)
    p = p / jnp.maximum(jnp.sum(p), jnp.finfo(jnp.float32).tiny)
    raw = jnp.ceil(size * p - CEIL_TOLERANCE * size)
    return jnp.maximum(1, raw).astype(jnp.int32)


@partial(jax.jit, static_argnames=("size", "num_classes"))
def _resample_core(
    key: jax.Array,
    labels: jax.Array,
    candidates: jax.Array,
    p: jax.Array,
    size: int,
    num_classes: int,
) -> tuple[jax.Array, jax.Array]:
    n = labels.shape[0]
    capacity = size + num_classes
    counts = class_counts(p, size)
    in_range = (labels >= 0) & (labels < num_classes)
    # Sort rows by (class, not-candidate): each class's candidate rows become one run
    # starting at start[c]; rows with labels out of range sink to the end.
    sort_key = jnp.where(in_range, 2 * labels + (~candidates).astype(labels.dtype), 2 * num_classes)
    sorted_rows = jnp.argsort(sort_key, stable=True)
    safe_labels = jnp.where(in_range, labels, 0)
    class_total = jnp.bincount(safe_labels, weights=in_range.astype(jnp.int32), length=num_classes)
    class_candidates = jnp.bincount(
        safe_labels, weights=(in_range & candidates).astype(jnp.int32), length=num_classes
    )
    start = jnp.cumsum(class_total) - class_total
    # Slot j belongs to class c with cum[c-1] <= j < cum[c].
    cum = jnp.cumsum(counts)
    slot = jnp.arange(capacity, dtype=jnp.int32)
    slot_class = jnp.minimum(jnp.searchsorted(cum, slot, side="right"), num_classes - 1)
    n_c = class_candidates[slot_class]
    u = jax.random.uniform(key, (capacity,))
    offset = jnp.minimum(jnp.floor(u * n_c).astype(jnp.int32), jnp.maximum(n_c - 1, 0))
    position = jnp.clip(start[slot_class] + offset, 0, n - 1)
    valid = (slot < cum[-1]) & (n_c > 0)
    indices = jnp.where(valid, sorted_rows[position], 0).astype(jnp.int32)
    return indices, valid


def resample_per_class(
    key: jax.Array,
    labels: jax.Array,
    candidates: jax.Array,
    p: jax.Array,
    size: int,
    num_classes: int,
) -> tuple[jax.Array, jax.Array]:
    """Draw n[c] = class_counts(p, size)[c] rows of every class c, uniformly with replacement.

    ``labels`` int [n] in [0, k); ``candidates`` bool [n] marks the rows that may be drawn;
    ``p`` [k] the asked class distribution; ``size`` and ``num_classes`` static ints.
    Returns ``(indices int32 [size + k], valid bool [size + k])``: ``indices`` are row
    numbers into ``labels``; the first sum(n) slots are valid, grouped by class (class 0
    first); the capacity size + k bounds sum(n). Padding slots hold index 0.

    Slot j belongs to class c with cum[c-1] <= j < cum[c] (cum = cumsum(n)); rows are
    sorted by (class, not-candidate) so class c's candidates are the run
    sorted_rows[start_c : start_c + m_c], and slot j takes sorted_rows[start_c + floor(u_j m_c)]
    with u_j ~ U[0, 1).

    A class with n[c] >= 1 (every class) but no candidate row cannot be resampled: with
    concrete inputs that raises ``ValueError``; under ``jax.jit`` its slots are marked
    invalid (so ``valid`` is then no longer a prefix). Deterministic given ``key``;
    jittable with ``size`` and ``num_classes`` static.
    """
    _check_num_classes(num_classes)
    _check_size("size", size)
    validation.check_labels("labels", labels, num_classes)
    validation.check_shape("candidates", candidates, (np.shape(labels)[0],))
    validation.check_shape("p", p, (num_classes,))
    validation.check_distribution("p", p)
    if np.shape(labels)[0] == 0:
        raise ValueError("labels is empty; pass at least one row to resample from")
    if all(validation.is_concrete(x) for x in (labels, candidates, p)):
        have = np.bincount(
            np.asarray(labels)[np.asarray(candidates, dtype=bool)], minlength=num_classes
        )
        missing = np.flatnonzero(have == 0)
        if missing.size:
            raise ValueError(
                f"class {missing[0]} has no candidate rows to resample from; "
                "every class needs at least one row where candidates is True"
            )
    return _resample_core(
        key,
        _as_array(labels, np.int32),
        _as_array(candidates, bool),
        _as_array(p, np.float32),
        size=int(size),
        num_classes=int(num_classes),
    )


# ---------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------


@struct.dataclass
class Split:
    """A variable-size set of rows at fixed capacity.

    ``indices`` int32 [capacity]: row numbers into the train or test arrays (padding
    slots hold 0); ``valid`` bool [capacity]: which slots are used.
    """

    indices: jax.Array
    valid: jax.Array

    @property
    def capacity(self) -> int:
        """Number of slots (static)."""
        return int(self.indices.shape[0])

    @property
    def size(self) -> jax.Array:
        """Number of valid slots (an int32 scalar; works under jit)."""
        return jnp.sum(self.valid, dtype=jnp.int32)


@struct.dataclass
class Splits:
    """The five splits of an experiment and the class distributions they were drawn with.

    ``warm``, ``holdout``, ``pool`` index the TRAIN arrays; ``target`` (the unlabeled
    target sample) and ``test`` (evaluation) index the TEST arrays. With
    ``target_fraction = 0`` the target split is the test split (the original's choice).
    ``warm_dist``, ``pool_dist``, ``test_dist`` float32 [k]: the asked proportions (for a
    "natural" split, the empirical proportions of its rows). The holdout follows the
    warm-start distribution and the target the test distribution.
    ``initially_labeled`` bool [pool capacity]: pool slots labeled before the first round.
    """

    warm: Split
    holdout: Split
    pool: Split
    target: Split
    test: Split
    warm_dist: jax.Array
    pool_dist: jax.Array
    test_dist: jax.Array
    initially_labeled: jax.Array


# Distribution names a SplitSpec may use. "p1", "p2", "p3" are Dirichlet draws: the same
# name within one strategy means the same draw ("same p").
UNIFORM, NATURAL, TWEAK = "uniform", "natural", "tweak"
DIRICHLET_DRAWS = ("p1", "p2", "p3")


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """Which class distribution the warm-start, pool and test splits get.

    Each entry is ``"uniform"``, ``"natural"`` (no resampling: the part's own rows),
    ``"tweak"`` (tweak-one with ``tweak_label`` / ``tweak_rho``) or a Dirichlet draw
    ``"p1"`` / ``"p2"`` / ``"p3"``. ``alphas`` gives the concentration of each draw
    (p1, p2, p3); ``None`` means the ``alpha`` argument of :func:`make_splits`, and
    ``uses_alpha_triple`` takes them from its ``alpha_triple`` argument.
    """

    warm: str
    pool: str
    test: str
    alphas: tuple[float, float, float] | None = None
    uses_alpha_triple: bool = False


def _preset_name(triple: tuple[float, float, float]) -> str:
    return "dirichlet_general_" + "_".join(f"{a:g}" for a in triple)


# The paper's fixed (warm, pool, test) concentration triples, each usable as a strategy.
DIRICHLET_GENERAL: dict[str, tuple[float, float, float]] = {
    _preset_name(t): t
    for t in (
        (3.0, 3.0, 0.7),
        (1.0, 1.0, 0.4),
        (2.0, 2.0, 0.4),
        (3.0, 3.0, 0.4),
        (3.0, 3.0, 1.5),
        (3.0, 3.0, 0.1),
    )
}

STRATEGIES: dict[str, SplitSpec] = {
    "none": SplitSpec(UNIFORM, UNIFORM, UNIFORM),
    "dirichlet": SplitSpec("p1", UNIFORM, UNIFORM),
    "tweak": SplitSpec(TWEAK, UNIFORM, UNIFORM),
    "dirichlet_target": SplitSpec(UNIFORM, "p1", "p1"),
    "dirichlet_online_target": SplitSpec(UNIFORM, UNIFORM, "p1"),
    "dirichlet_identical": SplitSpec("p1", "p1", "p1"),
    "dirichlet_mix": SplitSpec("p1", "p2", "p2"),
    "dirichlet_online": SplitSpec("p1", "p2", "p1"),
    "dirichlet_online_source": SplitSpec(UNIFORM, "p1", UNIFORM),
    "trulynone": SplitSpec(NATURAL, NATURAL, UNIFORM),
    "trulyregion": SplitSpec(NATURAL, "p1", "p1"),
    "dirichlet_general": SplitSpec("p1", "p2", "p3", uses_alpha_triple=True),
    **{name: SplitSpec("p1", "p2", "p3", alphas=t) for name, t in DIRICHLET_GENERAL.items()},
}


# The splits are cut on the host; their random draws run as one jitted program each (eager
# jax.random calls would compile several small programs apiece) with the same values.
@partial(jax.jit, static_argnums=1)
def _split_key(key: jax.Array, num: int) -> tuple[jax.Array, ...]:
    return tuple(jax.random.split(key, num))


_permutation = jax.jit(jax.random.permutation, static_argnums=1)
_uniform = jax.jit(jax.random.uniform, static_argnums=1)


def _as_array(x: Any, dtype: Any) -> Any:
    """``x`` as ``dtype``: host data stays NumPy (a jitted call takes it without compiling a
    conversion), device arrays and tracers go through ``jnp.asarray``."""
    if isinstance(x, jax.Array):
        return jnp.asarray(x, dtype=dtype)
    return np.asarray(x, dtype=dtype)


def _cut(rng_key: jax.Array, n: int, fractions: tuple[float, ...]) -> list[np.ndarray]:
    """Permute range(n) and cut it into consecutive parts; the last takes the rest."""
    perm = np.asarray(_permutation(rng_key, n))
    parts, start = [], 0
    for fraction in fractions:
        stop = start + int(round(fraction * (n - start)))
        parts.append(perm[start:stop])
        start = stop
    parts.append(perm[start:])
    return parts


def _mask(n: int, rows: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return mask


def _empty_split() -> Split:
    return Split(*jax.device_put((np.zeros((0,), np.int32), np.zeros((0,), bool))))


def _natural_split(rows: np.ndarray, size: int) -> Split:
    """The part's rows as they are (already in random order), at most ``size`` of them."""
    rows = rows[:size]
    return Split(*jax.device_put((np.asarray(rows, np.int32), np.ones(rows.shape[0], dtype=bool))))


def _empirical(labels: np.ndarray, split: Split, num_classes: int) -> jax.Array:
    rows = np.asarray(split.indices)[np.asarray(split.valid)]
    counts = np.bincount(labels[rows], minlength=num_classes).astype(np.float64)
    return jax.device_put((counts / max(counts.sum(), 1.0)).astype(np.float32))


def _resampled_split(
    key: jax.Array,
    labels: np.ndarray,
    rows: np.ndarray,
    p: jax.Array,
    size: int,
    num_classes: int,
    part: str,
) -> Split:
    have = np.bincount(labels[rows], minlength=num_classes)
    missing = np.flatnonzero(have == 0)
    if missing.size:
        raise ValueError(
            f"class {missing[0]} has no examples in the {part} part to resample from; "
            "lower holdout_fraction / target_fraction or use a dataset with more rows per class"
        )
    draw_key, order_key = _split_key(key, 2)
    indices, valid = resample_per_class(
        draw_key, labels, _mask(labels.shape[0], rows), p, size, num_classes
    )
    # resample_per_class groups the slots by class; a split's row order must not reveal
    # labels (selection breaks ties by row and IWAL streams rows in order), so the valid
    # slots are shuffled, staying a prefix.
    noise = np.asarray(_uniform(order_key, (indices.shape[0],)))
    order = np.lexsort((noise, ~np.asarray(valid)))
    return Split(*jax.device_put((np.asarray(indices)[order], np.asarray(valid)[order])))


def _check_fraction(name: str, value: float) -> None:
    validation.check_in_range(name, value, 0.0, 1.0)
    if value >= 1.0:
        raise ValueError(f"{name} must be < 1 so the other parts keep rows, got {value}")


def check_split_options(
    *,
    strategy: str,
    alpha: float,
    dataset_cap: int,
    warmstart_ratio: float,
    test_size: int | None,
    holdout_fraction: float,
    target_fraction: float,
    tweak_label: int,
    tweak_rho: float,
    initial_prop: float,
    alpha_triple: tuple[float, float, float] | None,
    num_classes: int | None = None,
) -> tuple[float, float, float]:
    """Check the options of :func:`make_splits`; returns the (warm, pool, test) Dirichlet alphas.

    Raises a one-line ``ValueError`` naming the first bad option. ``num_classes`` (when
    known) bounds ``tweak_label``; without it only its type and sign are checked.
    """
    validation.check_choice("strategy", strategy, STRATEGIES)
    spec = STRATEGIES[strategy]
    if num_classes is not None:
        _check_num_classes(num_classes)
    validation.check_positive("alpha", alpha)
    _check_size("dataset_cap", dataset_cap, minimum=2)
    validation.check_positive("warmstart_ratio", warmstart_ratio)
    if test_size is not None:
        _check_size("test_size", test_size)
    _check_fraction("holdout_fraction", holdout_fraction)
    _check_fraction("target_fraction", target_fraction)
    validation.check_in_range("initial_prop", initial_prop, 0.0, 1.0)
    upper = num_classes if num_classes is not None else np.iinfo(np.int32).max
    if not isinstance(tweak_label, (int, np.integer)) or not 0 <= tweak_label < upper:
        bound = f"[0, {num_classes - 1}]" if num_classes is not None else ">= 0"
        raise ValueError(f"tweak_label must be a class in {bound}, got {tweak_label!r}")
    validation.check_in_range("tweak_rho", tweak_rho, 0.0, 1.0)
    alphas = spec.alphas or (alpha, alpha, alpha)
    if spec.uses_alpha_triple:
        if alpha_triple is None or len(tuple(alpha_triple)) != 3:
            raise ValueError(
                f"alpha_triple must be (warm, pool, test) concentrations for strategy "
                f"{strategy!r}, got {alpha_triple!r}"
            )
        alphas = tuple(float(a) for a in alpha_triple)
        validation.check_positive("alpha_triple", np.asarray(alphas))
    return alphas


def make_splits(
    key: jax.Array,
    train_labels: Any,
    test_labels: Any,
    *,
    num_classes: int,
    strategy: str,
    alpha: float = 1.0,
    dataset_cap: int,
    warmstart_ratio: float = 1.0,
    test_size: int | None = None,
    holdout_fraction: float = 0.0,
    target_fraction: float = 0.0,
    tweak_label: int = 0,
    tweak_rho: float = 0.5,
    initial_prop: float = 0.0,
    alpha_triple: tuple[float, float, float] | None = None,
) -> Splits:
    """Cut and resample the warm-start, holdout, pool, target and test splits under a shift.

    Parts (disjoint in underlying rows). The N train rows are permuted and cut into a
    holdout part (round(holdout_fraction * N) rows; none when 0), then the rest into a
    warm-start part (fraction r / (1 + r), r = ``warmstart_ratio``) and an online pool
    part. The test rows are permuted and cut into a target part (``target_fraction``) and
    an evaluation part; with ``target_fraction = 0`` the target split *is* the test split.

    Splits. With m_w = round(cap * r / (1 + r)) and m_p = cap - m_w (cap = ``dataset_cap``):
    warm start m_w examples from the warm part, pool m_p from the pool part, test
    ``test_size`` (default m_p) from the evaluation part, holdout
    round(holdout_fraction * m_w) from the holdout part with the warm-start distribution,
    target the test size from the target part with the test distribution. Each is
    resampled per class with replacement (:func:`resample_per_class`, capacity m + k), so
    its valid size lies in [m, m + k]. A "natural" split is not resampled: it is the first
    min(part size, m) rows of the permuted part, all valid.

    Distributions per split come from ``STRATEGIES[strategy]``; each independent Dirichlet
    draw gets its own key, a shared draw ("same p") is reused. ``dirichlet_general`` takes
    the (warm, pool, test) concentrations from ``alpha_triple`` (ignored by the other
    strategies); the ``dirichlet_general_<a>_<b>_<c>`` presets carry their own.
    ``initial_prop`` of the valid pool slots (rounded) are marked ``initially_labeled``,
    chosen at random. Runs eagerly (it dispatches on ``strategy``); deterministic in ``key``.
    """
    alphas = check_split_options(
        strategy=strategy,
        alpha=alpha,
        dataset_cap=dataset_cap,
        warmstart_ratio=warmstart_ratio,
        test_size=test_size,
        holdout_fraction=holdout_fraction,
        target_fraction=target_fraction,
        tweak_label=tweak_label,
        tweak_rho=tweak_rho,
        initial_prop=initial_prop,
        alpha_triple=alpha_triple,
        num_classes=num_classes,
    )
    spec = STRATEGIES[strategy]

    validation.check_labels("train_labels", train_labels, num_classes)
    validation.check_labels("test_labels", test_labels, num_classes)
    train_y = np.asarray(train_labels, dtype=np.int32)
    test_y = np.asarray(test_labels, dtype=np.int32)

    r = float(warmstart_ratio)
    warm_size = int(round(dataset_cap * r / (1.0 + r)))
    pool_size = dataset_cap - warm_size
    if warm_size < 1 or pool_size < 1:
        raise ValueError(
            f"dataset_cap={dataset_cap} with warmstart_ratio={r} leaves an empty warm start "
            f"({warm_size}) or pool ({pool_size}); raise dataset_cap or change warmstart_ratio"
        )
    test_size = pool_size if test_size is None else int(test_size)
    holdout_size = int(round(holdout_fraction * warm_size))

    key_train, key_test, key_dists, key_resample, key_initial = _split_key(key, 5)
    holdout_rows, warm_rows, pool_rows = _cut(
        key_train, train_y.shape[0], (holdout_fraction, r / (1.0 + r))
    )
    target_rows, eval_rows = _cut(key_test, test_y.shape[0], (target_fraction,))
    for part, rows, needed in (
        ("warm-start", warm_rows, True),
        ("pool", pool_rows, True),
        ("holdout", holdout_rows, holdout_size > 0),
        ("target", target_rows, target_fraction > 0),
        ("evaluation", eval_rows, True),
    ):
        if needed and rows.size == 0:
            raise ValueError(
                f"the {part} part of the data is empty; lower holdout_fraction / "
                "target_fraction or change warmstart_ratio"
            )

    draw_keys = dict(zip(DIRICHLET_DRAWS, _split_key(key_dists, len(DIRICHLET_DRAWS)), strict=True))
    draw_alphas = dict(zip(DIRICHLET_DRAWS, alphas, strict=True))
    draws: dict[str, jax.Array] = {}

    def distribution(name: str) -> jax.Array | None:
        if name == UNIFORM:
            return uniform_distribution(num_classes)
        if name == TWEAK:
            return tweak_one_distribution(num_classes, int(tweak_label), tweak_rho)
        if name == NATURAL:
            return None
        if name not in draws:
            draws[name] = dirichlet_distribution(draw_keys[name], num_classes, draw_alphas[name])
        return draws[name]

    split_names = ("warm", "holdout", "pool", "target", "test")
    split_keys = dict(zip(split_names, _split_key(key_resample, 5), strict=True))

    def build(
        which: str, labels: np.ndarray, rows: np.ndarray, p: jax.Array | None, size: int, part: str
    ) -> Split:
        if size == 0:
            return _empty_split()
        if p is None:
            return _natural_split(rows, size)
        return _resampled_split(split_keys[which], labels, rows, p, size, num_classes, part)

    warm_p, pool_p, test_p = (distribution(n) for n in (spec.warm, spec.pool, spec.test))
    warm = build("warm", train_y, warm_rows, warm_p, warm_size, "warm-start")
    holdout = build("holdout", train_y, holdout_rows, warm_p, holdout_size, "holdout")
    pool = build("pool", train_y, pool_rows, pool_p, pool_size, "pool")
    test = build("test", test_y, eval_rows, test_p, test_size, "evaluation")
    if target_fraction > 0:
        target = build("target", test_y, target_rows, test_p, test_size, "target")
    else:
        target = test

    warm_dist = _empirical(train_y, warm, num_classes) if warm_p is None else warm_p
    pool_dist = _empirical(train_y, pool, num_classes) if pool_p is None else pool_p
    test_dist = _empirical(test_y, test, num_classes) if test_p is None else test_p

    pool_valid = np.asarray(pool.valid)
    num_initial = int(round(initial_prop * int(pool_valid.sum())))
    order = np.asarray(_permutation(key_initial, pool_valid.shape[0]))
    initially_labeled = np.zeros(pool_valid.shape[0], dtype=bool)
    initially_labeled[order[pool_valid[order]][:num_initial]] = True

    return Splits(
        warm=warm,
        holdout=holdout,
        pool=pool,
        target=target,
        test=test,
        warm_dist=warm_dist,
        pool_dist=pool_dist,
        test_dist=test_dist,
        initially_labeled=jax.device_put(initially_labeled),
    )
