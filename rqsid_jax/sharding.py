"""Device mesh and batch placement for data parallelism (jit + NamedSharding, no pmap)."""
from __future__ import annotations

from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def data_mesh(num_devices: Optional[int] = None) -> Mesh:
    """1-D mesh over the first `num_devices` devices (all by default), axis 'data'.

    Auto axis types: the compiler propagates shardings from the placed inputs.
    """
    devices = jax.devices()[: num_devices or jax.device_count()]
    return jax.make_mesh((len(devices),), (DATA,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that places a full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the mesh."""
    return NamedSharding(mesh, P(DATA))


def replicate(tree, mesh: Mesh):
    """The tree placed replicated on the mesh."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(tree, mesh: Mesh):
    """Places arrays whose leading dim is divisible by the mesh size, split along 'data'."""
    return jax.device_put(tree, batch_sharding(mesh))


def pad_to_multiple(x: np.ndarray, multiple: int) -> tuple[np.ndarray, int]:
    """Pads the leading dim with copies of the last row; returns (padded, original length)."""
    n = x.shape[0]
    pad = (-n) % multiple
    if pad:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)], axis=0)
    return x, n


def to_host(x) -> np.ndarray:
    """A (possibly batch-sharded) array as one numpy array on every process: across hosts its
    shards live on other processes, so they are gathered first."""
    if jax.process_count() > 1 and not getattr(x, "is_fully_addressable", True):
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
