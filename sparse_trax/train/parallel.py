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
of the global batch (`Placement.batch` takes the rows this process holds).
"""

from typing import Optional

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

DATA_AXIS = 'data'
WEIGHT_SHARDINGS = ('replicated', 'sharded')


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
    processes, each passes the same global batch and contributes its rows.
    """
    def place(x):
      x = np.asarray(x)
      sharding = self._batch_sharding(x.shape)
      if jax.process_count() == 1 or sharding is self.replicated:
        return jax.device_put(x, sharding)
      rows = x.shape[0] // jax.process_count()
      local = x[jax.process_index() * rows:(jax.process_index() + 1) * rows]
      return jax.make_array_from_process_local_data(sharding, local, x.shape)
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
    """Weights, optimizer or model state (any pytree of arrays) on the devices."""
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, self.weight_sharding_of(x)), tree)
