"""Data-parallel training over all devices through `jax.sharding`.

One mesh axis, 'data'. Each batch is split along its first (batch) axis over
the devices; weights and optimizer state are replicated, or, with
`weight_sharding='sharded'`, each array is split along its largest axis that
the device count divides (as ZeRO-3 / FSDP: XLA gathers a weight where it is
used). The step function is the same jitted function either way: XLA
inserts the gradient all-reduce (or the gathers) from the shardings of its
inputs.

Several hosts: call `jax.distributed.initialize()` in each process first;
the mesh then spans every host's devices, and each host feeds its own rows
of the global batch (`Placement.batch` transfers the rows this process's
devices hold). Arrays spread over processes cannot be read whole by one
process: `process_local` gathers a copy for work one process does alone.
"""

from typing import Callable, Optional, TypeVar

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

DATA_AXIS = 'data'
WEIGHT_SHARDINGS = ('replicated', 'sharded')
T = TypeVar('T')


class Placement:
  """Where arrays live: a 1-D device mesh, batches split, weights replicated or sharded.

  Args:
    n_devices: devices to use (default: all, `jax.device_count()`).
    weight_sharding: 'replicated' or 'sharded' (see the module docstring).
  """

  def __init__(self, n_devices: Optional[int] = None, weight_sharding: str = 'replicated'):
    if weight_sharding not in WEIGHT_SHARDINGS:
      raise ValueError(f'weight_sharding must be one of {WEIGHT_SHARDINGS}, '
                       f'got {weight_sharding!r}')
    available = jax.device_count()
    n_devices = available if n_devices is None else n_devices
    if not 1 <= n_devices <= available:
      raise ValueError(f'n_devices must be between 1 and the {available} devices '
                       f'available, got {n_devices}')
    self.n_devices = n_devices
    self.weight_sharding = weight_sharding
    # 'Auto' axes: XLA propagates the shardings (the layers need no annotations).
    self.mesh = jax.make_mesh((n_devices,), (DATA_AXIS,), devices=jax.devices()[:n_devices],
                              axis_types=(jax.sharding.AxisType.Auto,))
    self.replicated = NamedSharding(self.mesh, PartitionSpec())

  def __repr__(self):
    return f'Placement({self.n_devices} devices, weights {self.weight_sharding})'

  def _batch_sharding(self, shape) -> NamedSharding:
    if not shape or shape[0] % self.n_devices:
      return self.replicated
    return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

  def batch(self, batch):
    """A batch (a dict of [batch, ...] numpy arrays, the global batch) on the devices.

    Split along the batch axis when the device count divides it; otherwise
    (a ragged eval batch) every device gets all of it. With several
    processes, each passes the same global batch and transfers only the rows
    its own devices hold.
    """
    def place(x):
      x = np.asarray(x)
      sharding = self._batch_sharding(x.shape)
      return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.tree_util.tree_map(place, batch)

  def weight_sharding_of(self, x) -> NamedSharding:
    """Replicated, or split along the largest axis the device count divides."""
    if self.weight_sharding == 'replicated' or self.n_devices == 1 or not np.ndim(x):
      return self.replicated
    divisible = [axis for axis, size in enumerate(np.shape(x)) if size % self.n_devices == 0]
    if not divisible:
      return self.replicated
    axis = max(divisible, key=lambda a: np.shape(x)[a])
    spec = [None] * np.ndim(x)
    spec[axis] = DATA_AXIS
    return NamedSharding(self.mesh, PartitionSpec(*spec))

  def weights(self, tree):
    """Weights or optimizer state (any pytree of arrays) on the devices, replicated
    or sharded (`weight_sharding`)."""
    return jax.tree_util.tree_map(lambda x: _put(x, self.weight_sharding_of(x)), tree)

  def replicate(self, tree):
    """Any pytree of arrays (model state, an rng's key data) on every device."""
    return jax.tree_util.tree_map(lambda x: _put(x, self.replicated), tree)


def _put(x, sharding: NamedSharding):
  """`x` (the same value in every process) placed with `sharding`.

  With several processes a jax array on one local device goes through host
  memory first: `jax.device_put` of such an array onto a sharding that spans
  processes builds an array whose shards cannot be read (orbax fails on it).
  """
  if jax.process_count() > 1 and isinstance(x, jax.Array) and x.is_fully_addressable:
    x = np.asarray(x)
  return jax.device_put(x, sharding)


def process_local(tree):
  """A copy of a pytree of arrays that this process holds whole (on its first
  device), for work one process does alone (decoding a sample).

  Arrays already whole here are returned as they are. With several processes
  this is a collective for arrays sharded over processes (they are gathered):
  every process must call it.
  """
  device = jax.local_devices()[0]

  def local(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return x
    if x.sharding.is_fully_replicated:
      return jax.device_put(x.addressable_data(0), device)
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return jax.device_put(np.asarray(multihost_utils.process_allgather(x, tiled=True)), device)
  return jax.tree_util.tree_map(local, tree)


def barrier(name: str, timeout_s: int = 3600) -> None:
  """Waits until every process has reached the barrier `name` (one process: returns).

  Through the jax.distributed coordination service (orbax's helper), not a
  device collective: a collective gives up when the processes reach it more
  than about 30 s apart (gloo's context timeout), which data preparation
  easily exceeds.
  """
  if jax.process_count() > 1:
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    ocp.multihost.get_barrier_sync_fn()(key=f'sparse_trax: {name}', timeout_ms=timeout_s * 1000)


def main_process_first(work: Callable[[], T], what: str) -> T:
  """`work()` in process 0, then (once it is done) in the other processes.

  For work that fills a cache the processes share (preparing a dataset,
  training a tokenizer): the others then read what process 0 wrote instead
  of writing it at the same time. One process: just `work()`.
  """
  if jax.process_count() == 1:
    return work()
  result = work() if jax.process_index() == 0 else None
  barrier(what)
  return work() if jax.process_index() != 0 else result
