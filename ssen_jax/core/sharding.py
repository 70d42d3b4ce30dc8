"""The device mesh and the placement of arrays on it (docs/architecture.md, "Distribution").

One Mesh with a single `data` axis spans every device of every host. Parameters and optimiser state
are replicated; batches are sharded on their leading dimension, and each host contributes its own
slice of the global batch.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def create_mesh(devices=None) -> Mesh:
  """A 1-D ('data',) mesh over all devices of all processes."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles this host's slice of the batch into global arrays sharded over the mesh."""
  sharding = batch_sharded(mesh)
  out = {}
  for key, value in local.items():
    global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
    out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
  return out


def local_value(x: jax.Array) -> np.ndarray:
  """A replicated (possibly multi-host) array as numpy, read from this host's first replica."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_shards[0].data)
  return np.asarray(x)
