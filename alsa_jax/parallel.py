"""Data parallelism over a 1-D device mesh named ``"data"``, on one host or several.

With more than one device, the batch dimension of the jitted training step and of
prediction is split over every device of a :class:`jax.sharding.Mesh` with one axis,
``"data"``, while parameters, optimizer state and batch statistics are replicated. XLA
inserts the gradient all-reduce, and batch norm's statistics are taken over the whole
(global) batch, so the result equals the one-device computation up to float rounding.
With one device every helper here is the identity.

Several processes (one per host, joined by :func:`initialize`) run the same program: the
mesh spans every process's devices (``jax.devices()``), each process computes the same
host values (the same data, splits and seed), and :func:`place` puts them on the devices
as global arrays replicated over the mesh, each process filling its own devices' copies.
What the host reads back goes through :func:`to_host`, which gathers the shards that
other processes hold. With one process :func:`place` and :func:`to_host` are
``jax.device_put`` and ``jax.device_get``.
"""

from __future__ import annotations

import zlib
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize(
    coordinator_address: str = "",
    num_processes: int = 0,
    process_id: int = -1,
    initialization_timeout: int = 300,
) -> None:
    """Join the other processes of a run on several hosts (``jax.distributed.initialize``).

    Call it in every process before any other JAX call. ``coordinator_address``
    (``host:port`` of process 0), ``num_processes`` and ``process_id`` left at ``""``, 0
    and -1 are taken from the cluster's environment as JAX detects it (Slurm's
    ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS`` and ``SLURM_PROCID``; Open MPI; the address
    also from ``$JAX_COORDINATOR_ADDRESS``); JAX raises ``ValueError`` for one it cannot
    find. Each process waits up to ``initialization_timeout`` seconds for the others.
    Afterwards ``jax.devices()`` lists every process's devices and the ``"data"`` mesh
    spans them all.
    """
    jax.distributed.initialize(
        coordinator_address=coordinator_address or None,
        num_processes=num_processes or None,
        process_id=None if process_id < 0 else process_id,
        initialization_timeout=initialization_timeout,
    )


def process_count() -> int:
    """Number of processes running this program together (1 without :func:`initialize`)."""
    return jax.process_count()


def is_primary() -> bool:
    """True in process 0, the one that writes files and prints (always, with one process)."""
    return jax.process_index() == 0


def check_same_on_every_process(name: str, arrays: Any) -> None:
    """Raise ``ValueError`` unless every process holds the same ``arrays`` (a pytree of
    host arrays); nothing with one process.

    :func:`place` trusts each process's host values to be the same; this compares a
    checksum (CRC-32 of every array's bytes, shape and dtype) across the processes once,
    in one small gather, where ``jax.device_put`` would gather every value it places.
    """
    if process_count() == 1:
        return
    checksums = []
    for leaf in jax.tree.leaves(arrays):
        host = np.ascontiguousarray(leaf)
        header = f"{host.shape}{host.dtype}".encode()
        checksums.append(zlib.crc32(memoryview(host).cast("B"), zlib.crc32(header)))
    gathered = multihost_utils.process_allgather(np.asarray(checksums, np.uint32))
    differing = [i for i, row in enumerate(gathered) if not np.array_equal(row, gathered[0])]
    if differing:
        raise ValueError(
            f"{name} differs between processes (process {differing[0]} holds other values "
            "than process 0); every process must read the same data"
        )


def device_count() -> int:
    """Number of devices the data mesh spans (all devices of every process)."""
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


def _global_copy(leaf: Any) -> jax.Array:
    """``leaf`` as a global array replicated over every device of every process.

    A host value (or a process-local array) is copied by each process onto its own
    devices: ``jax.make_array_from_callback`` transfers nothing between processes, where
    ``jax.device_put`` onto a sharding that spans other processes would first compare the
    value across all of them (``multihost_utils.assert_equal``, a gather per call).
    """
    sharding = replicated_sharding()
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return jax.device_put(leaf, sharding)  # kept as it is when replicated already
    host = np.asarray(leaf)
    host = host.astype(jax.dtypes.canonicalize_dtype(host.dtype), copy=False)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any) -> Any:
    """Place a full copy of every leaf on each device; identity on one device."""
    if not is_parallel():
        return tree
    if process_count() == 1:
        return jax.device_put(tree, replicated_sharding())
    return jax.tree.map(_global_copy, tree)


def place(tree: Any) -> Any:
    """Host values (NumPy arrays, scalars) on the devices, for jitted code to take.

    One process: ``jax.device_put`` (the default device, uncommitted: a jitted function
    moves it where its other arguments are); jax arrays stay as they are. Several
    processes: every leaf a global array replicated over the mesh (:func:`replicate`),
    which is what a jitted function over the mesh takes and Orbax saves.
    """
    if process_count() == 1:
        return jax.device_put(tree)
    return jax.tree.map(_global_copy, tree)


def to_host(tree: Any) -> Any:
    """Every leaf as a NumPy array on this host (``jax.device_get``).

    With several processes, a leaf split over the mesh is gathered from every process
    (``multihost_utils.process_allgather``, a collective: every process makes the same
    call); a replicated leaf is read from this process's own copy.
    """
    if process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))

    def fetch(leaf: Any) -> np.ndarray:
        if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
            return np.asarray(jax.device_get(leaf))
        if leaf.is_fully_replicated:
            return np.asarray(leaf.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

    return jax.tree.map(fetch, tree)


def whole_on_every_process(x: jax.Array) -> jax.Array:
    """Inside ``jit``: with several processes, ask for ``x`` replicated over the mesh, so
    that each process holds all of it (what every later computation and read on the host
    of that process needs); identity with one process, where a read gathers locally."""
    if process_count() == 1:
        return x
    return jax.lax.with_sharding_constraint(x, replicated_sharding())


def constrain_batch(x: jax.Array) -> jax.Array:
    """Inside ``jit``: ask for ``x`` split over ``"data"`` along its leading dimension."""
    if not is_parallel():
        return x
    return jax.lax.with_sharding_constraint(x, batch_sharding())
