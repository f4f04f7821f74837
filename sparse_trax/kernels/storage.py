"""How a weight matrix is stored: float32 arrays, or a `QuantizedArray` (int8 with
per-slice float32 scales, or bfloat16).

This is the kernel layer's record for stored weights: every product in
`sparse_trax.kernels` takes a weight as a plain float array or a
`QuantizedArray`, and `storage_of` names which of the three storages it is.
(`sparse_trax.layers.quantize` makes these records; they live here so that the
kernel layer depends on nothing above it.)
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

STORAGES = ('float32', 'bfloat16', 'int8')


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedArray:
  """A weight stored in low precision: int8 values with float32 scales, or bfloat16 values.

  w ~= values * scale (the scales broadcast along `axis`); bfloat16 storage
  has no scales. Layers compute with it in their activations' dtype (float32
  when decoding), dequantizing only what they read.

  Attributes:
    values: int8 or bfloat16 array, the weight's shape.
    scale: float32 [values.shape[axis]] for int8; None for bfloat16.
    axis: the axis the scales index (static).
  """
  values: jax.Array
  scale: Optional[jax.Array]
  axis: int = dataclasses.field(default=0, metadata={'static': True})

  @property
  def shape(self):
    return self.values.shape

  @property
  def ndim(self):
    return self.values.ndim

  @property
  def dtype(self):
    """The dtype the array stands for (what `as_float` returns)."""
    return jnp.dtype(jnp.float32)

  @property
  def nbytes(self) -> int:
    scale = 0 if self.scale is None else self.scale.size * self.scale.dtype.itemsize
    return int(self.values.size * self.values.dtype.itemsize + scale)

  def broadcast_scale(self, ndim: int):
    """The scales shaped to broadcast against an array of rank `ndim` ending like values."""
    shape = [1] * ndim
    shape[ndim - self.values.ndim + self.axis % self.values.ndim] = self.scale.shape[0]
    return self.scale.reshape(shape)

  def dequantize(self, dtype=jnp.float32) -> jax.Array:
    """values * scale as a `dtype` array of the full shape."""
    values = self.values.astype(dtype)
    if self.scale is None:
      return values
    return values * self.broadcast_scale(values.ndim).astype(dtype)


def storage_of(w) -> str:
  """'float32', 'bfloat16' or 'int8': how `w` (an array or QuantizedArray) is stored.

  Anything else (float64, float16 arrays) is named by its dtype.
  """
  values = w.values if isinstance(w, QuantizedArray) else w
  return jnp.dtype(values.dtype).name


def values_and_scales(w, scale_axis: int = 0):
  """(values, scales or None) of an array or QuantizedArray; int8 scales must run along
  `scale_axis` (raises ValueError naming the shape otherwise)."""
  if not isinstance(w, QuantizedArray):
    return w, None
  if w.scale is not None and w.axis % w.ndim != scale_axis % w.ndim:
    raise ValueError(f'a product with an int8 matrix needs scales along axis {scale_axis}, '
                     f'these run along axis {w.axis} of shape {tuple(w.shape)}')
  return w.values, w.scale


def kernel_operands(w, scale_axis: int = 0):
  """(values, scales) as a kernel takes them: scales float32 [values.shape[scale_axis]],
  or an empty float32 [0] where there are none (bfloat16 and float32 storage)."""
  values, scale = values_and_scales(w, scale_axis)
  return values, (jnp.zeros((0,), jnp.float32) if scale is None else scale.astype(jnp.float32))
