"""Typed weight records that layers hand to the kernel layer, one per weight family.

A layer builds its record from its own weights (`SparseFFWeights(**weights)`);
the kernels read fields by name, never another layer's dict keys. Each field
is a float array or, for matrices, a `QuantizedArray` (int8 with per-row
scales, or bfloat16).
"""

from typing import Any, NamedTuple, Tuple


class SparseFFWeights(NamedTuple):
  """SparseFF's weights (out-major matrices, one row per hidden unit).

  controller_in [d_lowrank, d_model], controller_out [d_ff, d_lowrank],
  controller_bias [d_ff], w1 [d_ff, d_model], b1 [d_ff], w2 [d_ff, d_model],
  b2 [d_model].
  """
  w1: Any
  b1: Any
  w2: Any
  b2: Any
  controller_in: Any
  controller_out: Any
  controller_bias: Any


class MultiplicativeWeights(NamedTuple):
  """MultiplicativeDense's weights: modules D [d_in, S], units E [d_in, M], b [S * M]."""
  modules: Any
  units: Any
  b: Any


class ConvolutionWeights(NamedTuple):
  """One convolution over (length, module): kernel [K, size, C_in, C_out] (int8 scales per
  output channel, the last axis), b [C_out]."""
  kernel: Any
  b: Any


class SparseQKVWeights(NamedTuple):
  """Sparse QKV: the multiplicative layer, then the query, key and value convolutions."""
  multiplicative: MultiplicativeWeights
  convolutions: Tuple[ConvolutionWeights, ConvolutionWeights, ConvolutionWeights]
