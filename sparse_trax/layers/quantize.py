"""Low-precision weight storage for decoding: int8 with per-row scales, or bfloat16.

`quantize_weights(weights, 'int8')` replaces every weight matrix (every
floating array of rank >= 2: dense and attention matrices, SparseFF rows and
controller, MoE experts, multiplicative and convolution kernels, embeddings,
the vocabulary projection) by a `QuantizedArray`: int8 values and one float32
scale per slice along its `axis` (axis 0, a row, for matrices; the last axis,
an output channel, for convolution kernels), kept together in one pytree
node. Vectors (biases, normalization scales) stay as they are.
`quantize_weights(weights, 'bfloat16')` casts the same matrices to bfloat16.

The arithmetic is symmetric per-slice quantization, as in qwix's and AQT's
"int8 weight-only" modes: scale = max |w| / 127 over the slice, values =
round(w / scale) clipped to [-127, 127], so |w - values * scale| <= scale / 2.
Layers read such weights through `as_float`, `take_rows` and `linear`
(`layers/linear.py`), and the kernel layer (`sparse_trax.kernels`, where the
`QuantizedArray` record lives), which dequantize only what they read: a
product never widens a stored matrix whole.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp

from sparse_trax.kernels.storage import QuantizedArray  # pylint: disable=unused-import

STORAGE_DTYPES = ('int8', 'bfloat16')


def _scale_axis(w) -> int:
  return 0 if w.ndim == 2 else w.ndim - 1


def quantize_int8(w, axis: Optional[int] = None) -> QuantizedArray:
  """Symmetric int8 quantization of `w` with one float32 scale per slice along `axis`."""
  axis = _scale_axis(w) if axis is None else axis % w.ndim
  reduce = tuple(a for a in range(w.ndim) if a != axis)
  w = jnp.asarray(w, jnp.float32)
  largest = jnp.max(jnp.abs(w), axis=reduce)
  scale = jnp.where(largest > 0, largest / 127.0, 1.0).astype(jnp.float32)
  shape = [1] * w.ndim
  shape[axis] = scale.shape[0]
  values = jnp.clip(jnp.round(w / scale.reshape(shape)), -127, 127).astype(jnp.int8)
  return QuantizedArray(values, scale, axis)


def is_weight_matrix(x) -> bool:
  """A floating array of rank >= 2 (what quantization converts)."""
  return (hasattr(x, 'dtype') and not isinstance(x, QuantizedArray) and x.ndim >= 2 and
          jnp.issubdtype(x.dtype, jnp.floating))


def _check_storage(storage: str) -> None:
  if storage not in STORAGE_DTYPES:
    raise ValueError(f'storage must be one of {STORAGE_DTYPES}, got {storage!r}')


def convert_leaf(x, storage: str):
  """One weight leaf in `storage` ('int8' | 'bfloat16'); non-matrices unchanged."""
  _check_storage(storage)
  if not is_weight_matrix(x):
    return x
  if storage == 'int8':
    return quantize_int8(x)
  return QuantizedArray(jnp.asarray(x, jnp.bfloat16), None, _scale_axis(x))


def quantize_weights(weights, dtype: str):
  """Converts every weight matrix of a weights pytree to int8 or bfloat16 storage.

  Args:
    weights: a model's weights (from `init` or training), float32.
    dtype: 'int8' (a `QuantizedArray` per matrix, per-row float32 scales) or
      'bfloat16'.

  Returns:
    The same tree with every floating array of rank >= 2 converted to a
    `QuantizedArray` (int8 values and scales, or bfloat16 values); vectors
    kept. Every layer's `apply` takes it in every mode.
  """
  _check_storage(dtype)     # here too: a tree without matrices never calls convert_leaf
  return jax.tree_util.tree_map(
      lambda x: convert_leaf_compiled(x, dtype) if is_weight_matrix(x) else x, weights)


# One compiled program per (shape, dtype, storage) in place of the six small ones
# (abs, max, divide, round, clip, cast) that running convert_leaf op by op compiles.
convert_leaf_compiled = jax.jit(convert_leaf, static_argnums=1)
_as_float32_compiled = jax.jit(lambda w: w.dequantize(jnp.float32))


def dequantize_weights(weights):
  """The float32 weights that a (possibly quantized) weights pytree stands for."""
  return jax.tree_util.tree_map(
      lambda x: _as_float32_compiled(x) if isinstance(x, QuantizedArray) else x, weights,
      is_leaf=lambda x: isinstance(x, QuantizedArray))


def as_float(w, dtype=None) -> Any:
  """A weight as a floating array: dequantized if int8; cast to `dtype` if given."""
  if isinstance(w, QuantizedArray):
    return w.dequantize(jnp.float32 if dtype is None else dtype)
  return w if dtype is None else w.astype(dtype)


def take_rows(w, indices, dtype=None):
  """w[indices] along axis 0 ([*indices.shape, *row shape]), dequantizing only the rows taken.

  The result is in `dtype`, by default w's own (float32 for a QuantizedArray).
  """
  if not isinstance(w, QuantizedArray):
    rows = jnp.take(w, indices, axis=0)
    return rows if dtype is None else rows.astype(dtype)
  dtype = jnp.float32 if dtype is None else dtype
  rows = jnp.take(w.values, indices, axis=0).astype(dtype)
  if w.scale is None:
    return rows
  if w.axis % w.ndim == 0:
    scale = jnp.take(w.scale, indices).astype(dtype)
    return rows * scale.reshape(scale.shape + (1,) * (w.ndim - 1))
  return rows * w.broadcast_scale(w.ndim - 1 + jnp.ndim(indices)).astype(dtype)


def weight_nbytes(w) -> int:
  """Bytes a weight leaf occupies (values and scales for a QuantizedArray)."""
  if isinstance(w, QuantizedArray):
    return w.nbytes
  return int(w.size * w.dtype.itemsize)


def row_nbytes(w) -> int:
  """Bytes of one row (axis 0) of a weight, with its scale."""
  if isinstance(w, QuantizedArray):
    per_row = w.values[0].size * w.values.dtype.itemsize
    with_scale = w.scale is not None and w.axis % w.ndim == 0
    return int(per_row + (w.scale.dtype.itemsize if with_scale else 0))
  return int(w[0].size * w.dtype.itemsize)
