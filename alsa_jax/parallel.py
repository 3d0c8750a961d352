"""Data parallelism over a 1-D device mesh named ``"data"``.

With more than one device, the batch dimension of the jitted training step and of
prediction is split over every device of a :class:`jax.sharding.Mesh` with one axis,
``"data"``, while parameters, optimizer state and batch statistics are replicated. XLA
inserts the gradient all-reduce, and batch norm's statistics are taken over the whole
(global) batch, so the result equals the one-device computation up to float rounding.
With one device every helper here is the identity.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def device_count() -> int:
    """Number of devices the data mesh spans (all devices of the default backend)."""
    return jax.device_count()


def data_mesh() -> Mesh:
    """A 1-D mesh over all devices with the axis ``"data"``."""
    return Mesh(jax.devices(), (DATA_AXIS,))


def is_parallel() -> bool:
    """True when more than one device is present (then batches are sharded)."""
    return device_count() > 1


def batch_sharding(mesh: Mesh | None = None) -> NamedSharding:
    """Sharding that splits the leading (batch) dimension over ``"data"``."""
    return NamedSharding(mesh or data_mesh(), PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh | None = None) -> NamedSharding:
    """Sharding that keeps a full copy on every device."""
    return NamedSharding(mesh or data_mesh(), PartitionSpec())


def check_batch_size(name: str, batch_size: int) -> None:
    """Raise unless ``batch_size`` splits evenly over the devices."""
    count = device_count()
    if batch_size % count:
        raise ValueError(
            f"{name}={batch_size} must be divisible by the {count} devices that share each batch"
        )


def replicate(tree: Any) -> Any:
    """Place a full copy of every leaf on each device; identity on one device."""
    if not is_parallel():
        return tree
    return jax.device_put(tree, replicated_sharding())


def constrain_batch(x: jax.Array) -> jax.Array:
    """Inside ``jit``: ask for ``x`` split over ``"data"`` along its leading dimension."""
    if not is_parallel():
        return x
    return jax.lax.with_sharding_constraint(x, batch_sharding())
