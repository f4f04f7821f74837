"""Fused CPU kernels for decoding, and their pure-JAX equivalents.

`pip install -e .` compiles `cpu_kernels.cc` with the system C++ compiler
against the XLA FFI headers that jaxlib ships, and this module registers its
handlers with XLA. Where it did not build (no compiler), `available()` is
False and the layers use their pure-JAX paths, which compute the same thing
(tested side by side). The kernels run on CPU only: on other platforms
`lax.platform_dependent` picks the pure-JAX path.
"""

import importlib.util
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

_SPARSE_FF_TARGET = 'sparse_trax_sparse_ff_decode'
_INT8_MATVEC_TARGET = 'sparse_trax_int8_matvec'
_BFLOAT16_MATVEC_TARGET = 'sparse_trax_bfloat16_matvec'
_INT8_VECMAT_TARGET = 'sparse_trax_int8_vecmat'
_BFLOAT16_VECMAT_TARGET = 'sparse_trax_bfloat16_vecmat'
_FLOAT32_VECMAT_TARGET = 'sparse_trax_float32_vecmat'
_CACHED_ATTENTION_TARGET = 'sparse_trax_cached_attention'
_LAYER_NORM_TARGET = 'sparse_trax_layer_norm'
_SPARSE_QKV_TARGET = 'sparse_trax_sparse_qkv_decode'


def _register() -> bool:
  if importlib.util.find_spec('sparse_trax.kernels._cpu_kernels') is None:
    return False
  from sparse_trax.kernels import _cpu_kernels  # pylint: disable=import-outside-toplevel,no-name-in-module
  for name, handler in _cpu_kernels.registrations().items():
    jax.ffi.register_ffi_target(name, handler, platform='cpu')
  return True


_AVAILABLE = _register()


def available() -> bool:
  """True when the compiled kernels were built and registered."""
  return _AVAILABLE


def sparse_ff_decode(x, weights: dict, n_per_block: int, reference: Callable):
  """One SparseFF decoding step in one fused kernel: x [..., d] -> (y [..., d], units [..., B]).

  Args:
    x: float32 [..., d_model] (a few positions).
    weights: SparseFF's float32 weights (w1, b1, w2, b2, controller_in,
      controller_out, controller_bias).
    n_per_block: N, the units per block.
    reference: x -> (y, units), the pure-JAX path, used off CPU.

  Returns:
    (y [..., d_model] float32, units [..., d_ff / N] int32: the chosen unit
    of each block).
  """
  leading, d_model = x.shape[:-1], x.shape[-1]
  n_blocks = weights['w1'].shape[0] // n_per_block
  flat = x.reshape(-1, d_model)

  def kernel(flat):
    call = jax.ffi.ffi_call(
        _SPARSE_FF_TARGET,
        (jax.ShapeDtypeStruct(flat.shape, jnp.float32),
         jax.ShapeDtypeStruct((flat.shape[0], n_blocks), jnp.int32)))
    return call(flat, weights['controller_in'], weights['controller_out'],
                weights['controller_bias'], weights['w1'], weights['b1'], weights['w2'],
                weights['b2'], n_per_block=np.int64(n_per_block))

  def fallback(flat):
    y, units = reference(flat)
    return y.astype(jnp.float32), units.astype(jnp.int32)

  y, units = jax.lax.platform_dependent(flat, cpu=kernel, default=fallback)
  return y.reshape(leading + (d_model,)), units.reshape(leading + (n_blocks,))


def _on_cpu(flat, kernel: Callable, reference: Callable):
  """kernel(flat) when lowering for CPU, reference(flat) as float32 elsewhere."""
  return jax.lax.platform_dependent(
      flat, cpu=kernel, default=lambda f: reference(f).astype(jnp.float32))


def _stored_product(x, values, scale, d_out: int, targets: dict, reference: Callable):
  """x [..., d_in] times stored weights through the kernel for values' dtype: [..., d_out]."""
  leading, d_in = x.shape[:-1], x.shape[-1]
  flat = x.reshape(-1, d_in).astype(jnp.float32)
  result = jax.ShapeDtypeStruct((flat.shape[0], d_out), jnp.float32)

  def kernel(flat):
    call = jax.ffi.ffi_call(targets[jnp.dtype(values.dtype).name], result)
    if scale is None:
      return call(flat, values)
    return call(flat, values, scale.astype(jnp.float32))

  return _on_cpu(flat, kernel, reference).reshape(leading + (d_out,))


def stored_matvec(x, values, scale, reference: Callable):
  """x [..., d_in] float32 times stored weight rows values [d_out, d_in] -> [..., d_out].

  values int8 (with float32 scales [d_out]) or bfloat16 (scale None). One
  fused kernel on CPU (the rows converted in registers, four rows per pass
  over x, rows split over the intra-op thread pool); `reference` (x -> y,
  the pure-JAX path) elsewhere.
  """
  return _stored_product(x, values, scale, values.shape[0],
                         {'int8': _INT8_MATVEC_TARGET, 'bfloat16': _BFLOAT16_MATVEC_TARGET},
                         reference)


def stored_vecmat(a, values, scale, reference: Callable):
  """a [..., d_in] float32 times stored weights values [d_in, d_out] -> [..., d_out].

  For matrices whose rows are indexed by the contracted axis (in-major, as
  MultiplicativeDense's `units`): values int8 with float32 scales [d_in]
  (per row), or bfloat16 or float32 (scale None). One kernel on CPU, which
  reads the weights once per group of up to 8 rows of `a`; `reference`
  (a -> y, pure JAX) elsewhere.
  """
  return _stored_product(a, values, scale, values.shape[1],
                         {'int8': _INT8_VECMAT_TARGET, 'bfloat16': _BFLOAT16_VECMAT_TARGET,
                          'float32': _FLOAT32_VECMAT_TARGET},
                         reference)


def cached_attention(query, keys, values, first, position, reference: Callable):
  """One query per row against a KV cache, in one kernel: softmax(q . k) v per head.

  Args:
    query: float32 [batch, heads, d_head], already scaled by 1 / sqrt(d_head).
    keys, values: float32 [batch, slots, heads, d_head], the cache.
    first, position: int32 scalars; slots first..position (clipped to the
      cache) are visible. None visible gives zeros.
    reference: query -> [batch, heads, d_head], the pure-JAX path, used off CPU.

  Returns:
    float32 [batch, heads, d_head].
  """
  bounds = jnp.stack([jnp.asarray(first, jnp.int32), jnp.asarray(position, jnp.int32)])

  def kernel(query):
    call = jax.ffi.ffi_call(_CACHED_ATTENTION_TARGET,
                            jax.ShapeDtypeStruct(query.shape, jnp.float32))
    return call(query, keys, values, bounds)

  return _on_cpu(query, kernel, reference)


def layer_norm(x, scale, bias, epsilon: float, reference: Callable):
  """LayerNorm of float32 x [..., d] (a few rows) in one kernel: [..., d].

  scale, bias: float32 [d]. `reference` (x -> y, pure JAX) runs off CPU.
  """
  leading, d = x.shape[:-1], x.shape[-1]
  flat = x.reshape(-1, d)

  def kernel(flat):
    call = jax.ffi.ffi_call(_LAYER_NORM_TARGET, jax.ShapeDtypeStruct(flat.shape, jnp.float32))
    return call(flat, scale, bias, epsilon=np.float32(epsilon))

  return _on_cpu(flat, kernel, lambda f: reference(f.reshape(x.shape)).reshape(f.shape)
                 ).reshape(leading + (d,))


def sparse_qkv_decode(x, history, multiplicative: dict, convolutions, reference: Callable):
  """Sparse QKV's multiplicative layer and three convolutions for a few positions, one call.

  Args:
    x: float32 [batch, length, d] (length a few decoded positions).
    history: float32 [batch, K - 1, S, C], the convolutions' carried inputs.
    multiplicative: MultiplicativeDense's float32 weights (`modules` [d, S],
      `units` [d, C], `b` [S * C]).
    convolutions: three dicts (Q, K, V) of float32 `kernel` [K, size, C, O]
      and `b` [O], as LocallyConvQKV's.
    reference: (x, history) -> (q, k, v, m), the pure-JAX path, used off CPU.

  Returns:
    (q, k, v) each float32 [batch, length, S * O], and m [batch, length, S * C],
    the multiplicative layer's output (the next history's source).
  """
  batch, length, _ = x.shape
  n_modules, c_in = history.shape[2], history.shape[3]
  c_out = convolutions[0]['kernel'].shape[-1]
  qkv = jax.ShapeDtypeStruct((batch, length, n_modules * c_out), jnp.float32)

  def kernel(x):
    call = jax.ffi.ffi_call(
        _SPARSE_QKV_TARGET,
        (qkv, qkv, qkv, jax.ShapeDtypeStruct((batch, length, n_modules * c_in), jnp.float32)))
    return call(x, history, multiplicative['modules'], multiplicative['units'],
                multiplicative['b'], *[part[name] for part in convolutions
                                        for name in ('kernel', 'b')])

  def fallback(x):
    return tuple(out.astype(jnp.float32) for out in reference(x, history))

  return jax.lax.platform_dependent(x, cpu=kernel, default=fallback)
