"""The matrix product every weight matrix in the library uses.

Weight matrices are stored out-major, [d_out, d_in] (as PyTorch's Linear,
unlike Flax's [d_in, d_out]): each output's weights are one contiguous row.
Decoding one token is a matrix-vector product bound by reading the weights,
and on XLA:CPU a product that contracts the contiguous last axis of the
weights ran 1.3-1.5x faster than one that contracts the first (measured for
d 1024 -> 4096 -> 1024 and 1024 -> 32000; see benchmarks/decode_speed.py).
"""

import jax
import jax.numpy as jnp

from sparse_trax import kernels
from sparse_trax.layers.quantize import QuantizedArray

# Up to this many positions a product with low-precision weights is written as one
# multiply-and-sum loop (XLA:CPU fuses the conversion into it); above it, as a matrix product.
FUSED_UP_TO = 4


def positions(x) -> int:
  """How many positions (all axes but the last) x [..., d] holds."""
  n = 1
  for size in x.shape[:-1]:
    n *= size
  return n


def linear(x: jax.Array, w) -> jax.Array:
  """x [..., d_in] times w [d_out, d_in] -> [..., d_out] (x @ w.T).

  `w` may be stored in another dtype than x (bfloat16) or int8 (a
  `QuantizedArray` with per-row scales): the product is computed in the
  wider of the two dtypes (x's dtype for int8), and for a few positions (a
  decoded token) as one fused multiply-and-sum, since XLA:CPU does not fuse a
  conversion into a matrix-vector product (measured 13-26x slower). On CPU,
  int8 or bfloat16 rows times a few float32 positions run in a C++ kernel
  (`kernels.stored_matvec`) where it was built.
  """
  quantized = isinstance(w, QuantizedArray)
  if (quantized and w.axis % w.ndim == 0 and w.ndim == 2 and x.dtype == jnp.float32 and
      w.values.dtype in (jnp.int8, jnp.bfloat16) and positions(x) <= FUSED_UP_TO and
      kernels.available()):
    return kernels.stored_matvec(x, w.values, w.scale,
                                 lambda flat: _linear_reference(flat, w))
  return _linear_reference(x, w)


def _linear_reference(x, w):
  """`linear` in plain XLA operations (the kernel's reference)."""
  quantized = isinstance(w, QuantizedArray)
  values = w.values if quantized else w
  dtype = x.dtype if quantized else jnp.result_type(x.dtype, w.dtype)
  x = x.astype(dtype)
  # bfloat16 rows: one multiply-and-sum loop (XLA fuses the conversion into it). int8
  # rows: XLA did not fuse that loop (it built the whole float32 product, 180x slower than
  # float32 at 16384 x 16384), so they are converted, then multiplied.
  if values.dtype == jnp.bfloat16 != dtype and positions(x) <= FUSED_UP_TO:
    y = jnp.sum(values.astype(dtype) * x[..., None, :], axis=-1)
  else:
    y = jax.lax.dot_general(x, values.astype(dtype), (((x.ndim - 1,), (1,)), ((), ())))
  if quantized and w.scale is not None:
    if w.axis % w.ndim != 0:
      raise ValueError('linear needs per-row (axis 0) scales of an int8 matrix')
    y = y * w.scale.astype(dtype)
  return y
