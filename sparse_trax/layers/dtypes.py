"""The dtype contract: what the layers accumulate in.

Weights are stored in float32 (or int8 / bfloat16, see `quantize`); a layer
computes in its input's dtype, and accumulates statistics (normalization),
softmax and recurrent carries in `accumulation_dtype`: at least float32, and
the input's dtype when it is wider (float64 under `jax_enable_x64`).
"""

import jax.numpy as jnp


def accumulation_dtype(*dtypes) -> jnp.dtype:
  """float32, or the widest floating dtype given when wider (float64).

  Args:
    *dtypes: the dtypes of the arrays being combined (integers count as
      float32).

  Returns:
    jnp.float32 for bfloat16 / float16 / float32 inputs, jnp.float64 when
    one is float64.
  """
  wide = jnp.dtype(jnp.float32)
  for dtype in dtypes:
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize > wide.itemsize:
      wide = dtype
  return wide
