"""The matrix product every weight matrix in the library uses.

Weight matrices are stored out-major, [d_out, d_in] (as PyTorch's Linear,
unlike Flax's [d_in, d_out]): each output's weights are one contiguous row.
Decoding one token is a matrix-vector product bound by reading the weights,
and on XLA:CPU a product that contracts the contiguous last axis of the
weights ran 1.3-1.5x faster than one that contracts the first (measured for
d 1024 -> 4096 -> 1024 and 1024 -> 32000; see benchmarks/decode_speed.py).
"""

import jax

from sparse_trax import kernels
from sparse_trax.kernels import positions  # pylint: disable=unused-import


def linear(x: jax.Array, w) -> jax.Array:
  """x [..., d_in] times w [d_out, d_in] -> [..., d_out] (x @ w.T).

  `w` may be stored in another dtype than x (bfloat16) or int8 (a
  `QuantizedArray` with per-row scales): the product is computed in the
  wider of the two dtypes (x's dtype for int8). The kernel layer
  (`kernels.matvec`) decides how: on CPU, int8 or bfloat16 rows times float32
  positions run in a C++ kernel that converts each row in registers; in XLA
  a stored matrix is widened one tile of rows at a time, never whole.
  """
  return kernels.matvec(x, w)
