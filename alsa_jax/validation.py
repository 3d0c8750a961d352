"""Input checks that turn bad arguments into one-line ``ValueError``s.

Every public function of alsa_jax checks its arguments at the boundary with these
helpers, so a wrong shape or value fails with a message naming the argument and
what is allowed, instead of a traceback from deep inside JAX. Shape checks always
run (shapes are static under ``jax.jit``); value checks run only on concrete
arrays and are skipped silently for tracers, so every function stays jittable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values (not a tracer inside ``jit``/``vmap``)."""
    return not isinstance(x, jax.core.Tracer)


def check_choice(name: str, value: str, allowed: Iterable[str]) -> str:
    """Raise unless ``value`` is one of ``allowed``; returns ``value``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(
            f"{name}={value!r} is not known; use one of {', '.join(map(repr, allowed))}"
        )
    return value


def check_rank(name: str, x: Any, rank: int) -> None:
    """Raise unless ``x`` has exactly ``rank`` dimensions."""
    if np.ndim(x) != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {tuple(np.shape(x))}")


def check_shape(name: str, x: Any, shape: Sequence[int | None]) -> None:
    """Raise unless ``x.shape`` matches ``shape`` (``None`` matches any size)."""
    actual = tuple(np.shape(x))
    ok = len(actual) == len(shape) and all(
        s is None or s == a for s, a in zip(shape, actual, strict=True)
    )
    if not ok:
        want = tuple("?" if s is None else s for s in shape)
        raise ValueError(f"{name} must have shape {want}, got {actual}")


def check_same_leading(names: Sequence[str], *arrays: Any) -> None:
    """Raise unless all arrays share their first dimension."""
    sizes = [np.shape(a)[0] for a in arrays]
    if len(set(sizes)) > 1:
        pairs = ", ".join(f"{n}: {s}" for n, s in zip(names, sizes, strict=True))
        raise ValueError(f"{', '.join(names)} must have the same length, got {pairs}")


def check_labels(name: str, labels: Any, num_classes: int) -> None:
    """Raise unless ``labels`` is a rank-1 integer array with values in [0, num_classes).

    The range is checked on concrete arrays only (a tracer's values are unknown).
    """
    check_rank(name, labels, 1)
    dtype = getattr(labels, "dtype", None) or np.asarray(labels).dtype
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {dtype}")
    if is_concrete(labels) and np.size(labels):
        values = np.asarray(labels)
        low, high = values.min(), values.max()
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{name} must lie in [0, {num_classes}), got values in [{low}, {high}]"
            )


def check_positive(name: str, value: Any, *, strict: bool = True) -> None:
    """Raise unless every entry of a concrete ``value`` is > 0 (>= 0 if not strict)."""
    if not is_concrete(value):
        return
    v = np.asarray(value)
    bad = not np.all(v > 0) if strict else not np.all(v >= 0)  # NaN fails too
    if bad:
        relation = "> 0" if strict else ">= 0"
        raise ValueError(f"{name} must be {relation}, got {v.tolist() if v.ndim else v.item()}")


def check_in_range(name: str, value: Any, low: float, high: float) -> None:
    """Raise unless a concrete scalar ``value`` lies in the closed interval [low, high]."""
    if not is_concrete(value):
        return
    v = float(np.asarray(value))
    if not low <= v <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {v}")


# Arrays up to this many entries are checked on the host.
_HOST_CHECK_SIZE = 1 << 16


def check_distribution(name: str, p: Any, *, axis: int = -1, atol: float = 1e-3) -> None:
    """Raise unless a concrete ``p`` is non-negative and sums to one along ``axis``.

    The reductions of a large JAX array run on its device (only three scalars come back to
    the host, so checking a large [s, n, k] array stays cheap); a small one is read back and
    checked in NumPy, which compiles nothing.
    """
    if not is_concrete(p):
        return
    if np.size(p) == 0:
        raise ValueError(f"{name} is empty")
    xp = jnp if isinstance(p, jax.Array) and np.size(p) > _HOST_CHECK_SIZE else np
    arr = xp.asarray(p)
    sums = arr.sum(axis=axis)
    finite, smallest, worst = (
        bool(xp.all(xp.isfinite(arr))),
        float(arr.min()),
        float(sums.reshape(-1)[xp.argmax(xp.abs(sums - 1.0))]),
    )
    if not finite:
        raise ValueError(f"{name} has non-finite entries; pass probabilities")
    if smallest < -atol:
        raise ValueError(f"{name} has negative entries; pass probabilities (softmax outputs)")
    if abs(worst - 1.0) > atol:
        raise ValueError(
            f"{name} must sum to 1 along axis {axis} (found a sum of {worst:.4g}); "
            "pass probabilities, not logits"
        )


def check_budget(name: str, budget: int, available: Any) -> None:
    """Raise unless ``0 <= budget <= available`` (``available`` may be a concrete count)."""
    if not isinstance(budget, (int, np.integer)) or budget < 0:
        raise ValueError(f"{name} must be a non-negative Python int (static), got {budget!r}")
    if is_concrete(available):
        count = int(np.asarray(available))
        if budget > count:
            raise ValueError(
                f"{name}={budget} is larger than the {count} available points; lower it"
            )


# --- value checks computed with the result ---------------------------------------------
#
# A public function whose jitted core also returns a ValueReport checks the values of its
# arguments at the cost of one small transfer: the statistics are reduced on the device
# in the same computation as the result, and :func:`raise_if_invalid` reads them back
# once. Under jit or vmap the report holds tracers, is skipped, and XLA drops its
# unused reductions, so the checks cost nothing there.


@struct.dataclass
class ValueReport:
    """Value statistics of a function's arguments, reduced on the device.

    ``values`` float32 [m] concatenates the statistics of every check; ``checks`` (static)
    holds one ``(kind, name, size, params)`` entry per check, in order.
    """

    values: jax.Array
    checks: tuple = struct.field(pytree_node=False, default=())


def _scalars(*xs: Any) -> jax.Array:
    """Scalar statistics as one float32 vector. Only min / max / sum reductions are used:
    they propagate NaN and inf, so finiteness needs no reductions of its own, and XLA
    fuses them into few kernels (a check costs a few microseconds on CPU)."""
    return jnp.stack([jnp.asarray(x).astype(jnp.float32) for x in xs])


def distribution_stats(name: str, p: Any, *, axis: int = -1, atol: float = 1e-3) -> tuple:
    """Statistics for :func:`check_distribution`'s rule (jittable): an entry of a report."""
    arr = jnp.asarray(p)
    sums = arr.sum(axis=axis)
    return ("distribution", name, (axis, atol)), _scalars(arr.min(), sums.min(), sums.max())


def mass_stats(name: str, x: Any, *, atol: float = 1e-3) -> tuple:
    """Statistics for a non-negative array summing to 1, or all zeros (jittable)."""
    arr = jnp.asarray(x)
    return ("mass", name, (atol,)), _scalars(arr.min(), arr.sum())


def labels_stats(name: str, labels: Any, num_classes: int) -> tuple:
    """Statistics for :func:`check_labels`'s range rule (jittable; the dtype and rank are
    checked on the host by :func:`check_labels`)."""
    labels = jnp.asarray(labels)
    return ("labels", name, (int(num_classes),)), _scalars(labels.min(), labels.max())


def nonnegative_stats(name: str, x: Any, *, strict: bool = False) -> tuple:
    """Statistics for "every entry >= 0" (> 0 when ``strict``) and finite (jittable)."""
    arr = jnp.asarray(x)
    return ("nonnegative", name, (strict, arr.ndim == 0)), _scalars(arr.min(), arr.max())


def finite_stats(name: str, x: Any) -> tuple:
    """Statistics for "every entry finite" (jittable): sum(0 * x) is NaN iff one is not."""
    arr = jnp.asarray(x)
    return ("finite", name, ()), _scalars(jnp.sum(arr * 0))


def range_stats(name: str, x: Any, low: float, high: float) -> tuple:
    """Statistics for a scalar in the closed interval [low, high] (jittable)."""
    return ("range", name, (low, high)), _scalars(x)


def budget_stats(name: str, budget: Any, available: Any) -> tuple:
    """Statistics for "``budget`` <= the number of available rows" (jittable)."""
    return ("budget", name, ()), _scalars(budget, jnp.sum(jnp.asarray(available)))


def value_report(*entries: tuple) -> ValueReport:
    """Concatenate ``*_stats`` entries into one :class:`ValueReport` (jittable)."""
    if not entries:
        return ValueReport(values=jnp.zeros((0,), jnp.float32), checks=())
    checks = tuple((*spec[:2], int(v.shape[0]), spec[2]) for spec, v in entries)
    return ValueReport(values=jnp.concatenate([v for _, v in entries]), checks=checks)


def raise_if_invalid(report: ValueReport) -> None:
    """Raise the one-line ``ValueError`` of the first failed check of a concrete report.

    One transfer of ``report.values`` to the host; nothing at all for a traced report.
    """
    if not report.checks or not is_concrete(report.values):
        return
    values = np.asarray(report.values)
    start = 0
    for kind, name, size, params in report.checks:
        v = values[start : start + size]
        start += size
        _raise_for(kind, name, v, params)


def run_checked(core: Any, *args: Any, **kwargs: Any) -> Any:
    """``out, report = core(*args, **kwargs)``; raise for a failed check, else return ``out``."""
    out, report = core(*args, **kwargs)
    raise_if_invalid(report)
    return out


def check_integer_dtype(name: str, x: Any) -> None:
    """Raise unless ``x`` holds integers (class indices)."""
    dtype = getattr(x, "dtype", None) or np.asarray(x).dtype
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {dtype}")


def _raise_for(kind: str, name: str, v: np.ndarray, params: tuple) -> None:
    finite = bool(np.all(np.isfinite(v)))
    if kind == "distribution":
        axis, atol = params
        smallest, low_sum, high_sum = v
        if not finite:
            raise ValueError(f"{name} has non-finite entries; pass probabilities")
        if smallest < -atol:
            raise ValueError(f"{name} has negative entries; pass probabilities (softmax outputs)")
        worst = low_sum if abs(low_sum - 1.0) > abs(high_sum - 1.0) else high_sum
        if abs(worst - 1.0) > atol:
            raise ValueError(
                f"{name} must sum to 1 along axis {axis} (found a sum of {worst:.4g}); "
                "pass probabilities, not logits"
            )
    elif kind == "mass":
        (atol,) = params
        smallest, total = v
        if not finite:
            raise ValueError(f"{name} has non-finite entries; pass a probability distribution")
        if smallest < -atol:
            raise ValueError(f"{name} has negative entries; pass a probability distribution")
        all_zero = smallest >= 0 and total == 0
        if not (all_zero or abs(total - 1.0) <= atol):
            raise ValueError(f"{name} must sum to 1 (or be all zeros), found a sum of {total:.4g}")
    elif kind == "labels":
        (num_classes,) = params
        if v[0] < 0 or v[1] >= num_classes:
            raise ValueError(
                f"{name} must lie in [0, {num_classes}), got values in [{int(v[0])}, {int(v[1])}]"
            )
    elif kind == "nonnegative":
        strict, scalar = params
        relation = "> 0" if strict else ">= 0"
        if not (finite and (v[0] > 0 if strict else v[0] >= 0)):
            if scalar:
                got = f"{v[0]:.4g}"
            else:
                got = f"entries in [{v[0]:.4g}, {v[1]:.4g}]"
            raise ValueError(f"{name} must be finite and {relation}, got {got}")
    elif kind == "finite":
        if not finite:
            raise ValueError(f"{name} has non-finite entries (NaN or inf)")
    elif kind == "budget":
        if v[0] > v[1]:
            raise ValueError(
                f"{name}={int(v[0])} is larger than the {int(v[1])} available points; lower it"
            )
    elif kind == "range":
        low, high = params
        if not low <= v[0] <= high:
            raise ValueError(f"{name} must lie in [{low}, {high}], got {v[0]:.6g}")
    else:  # pragma: no cover - a programming error, not bad input
        raise AssertionError(f"unknown check kind {kind!r}")
