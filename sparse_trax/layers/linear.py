"""The matrix product every weight matrix in the library uses.

Weight matrices are stored out-major, [d_out, d_in] (as PyTorch's Linear,
unlike Flax's [d_in, d_out]): each output's weights are one contiguous row.
Decoding one token is a matrix-vector product bound by reading the weights,
and on XLA:CPU a product that contracts the contiguous last axis of the
weights ran 1.3-1.5x faster than one that contracts the first (measured for
d 1024 -> 4096 -> 1024 and 1024 -> 32000; see benchmarks/decode_speed.py).
"""

import jax


def linear(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [..., d_in] times w [d_out, d_in] -> [..., d_out] (x @ w.T)."""
  return jax.lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())))
