"""The operations the kernel layer runs, each as its C++ kernel or its pure-JAX reference.

Every function here asks `POLICY` whether its kernel runs (platform, storage,
positions, mode), and otherwise, or off CPU (`lax.platform_dependent`), runs
its reference: for the stored products that reference lives here (`*_reference`,
tiled so that int8 and bfloat16 weights are never widened whole); for the
fused layer steps the calling layer passes its own plain computation.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sparse_trax.kernels.policy import POLICY, KernelPolicy, TILE_VALUES, XLA_POSITIONS
from sparse_trax.kernels.records import SparseFFWeights, SparseQKVWeights
from sparse_trax.kernels.storage import (QuantizedArray, kernel_operands, storage_of,
                                         values_and_scales)

_TARGETS = {
    'matvec': 'sparse_trax_stored_matvec',
    'vecmat': 'sparse_trax_stored_vecmat',
    'sparse_ff': 'sparse_trax_sparse_ff',
    'sparse_qkv': 'sparse_trax_sparse_qkv',
    'layer_norm': 'sparse_trax_layer_norm',
    'cached_attention': 'sparse_trax_cached_attention',
}


def positions(x) -> int:
  """How many positions (all axes but the last) x [..., d] holds."""
  return int(np.prod(x.shape[:-1], dtype=np.int64))


def _on_cpu(operand, kernel: Callable, reference: Callable):
  """kernel(operand) when lowering for CPU, reference(operand) elsewhere."""
  return jax.lax.platform_dependent(operand, cpu=kernel, default=reference)


def _loop_view(values):
  """Stored values as the loop over tiles reads them. On CPU, bfloat16 as its bits
  (uint16): XLA:CPU widens a bfloat16 array that enters a loop to float32, whole (the
  bits cost one copy of the stored matrix, in its own width)."""
  if values.dtype == jnp.bfloat16 and jax.default_backend() == 'cpu':
    return jax.lax.bitcast_convert_type(values, jnp.uint16)
  return values


def _widen(values, dtype):
  """A tile of stored values (as `_loop_view` gives them) as `dtype`. The barrier keeps
  XLA from moving the conversion before the tile's slice, out of the loop."""
  values = jax.lax.optimization_barrier(values)
  if values.dtype == jnp.uint16:                       # bfloat16 bits: the top half of a float32
    values = jax.lax.bitcast_convert_type(values.astype(jnp.uint32) << 16, jnp.float32)
  return values.astype(dtype)


def _product_dtype(x, w):
  """Quantized weights compute in x's dtype; plain arrays in the wider of the two."""
  return x.dtype if isinstance(w, QuantizedArray) else jnp.result_type(x.dtype, w.dtype)


def _tiled(n: int, per_index: int, tile_product: Callable, activations, out_shape):
  """Fills out [..., n] tile by tile in a loop: tile_product(start, size) gives
  out[..., start:start + size]. Tiles hold at most TILE_VALUES widened weights (size x
  per_index); the last one starts early enough to end at n (it recomputes a few
  entries, the same values). Even a matrix that fits one tile is done in two: only a
  loop keeps XLA:CPU from converting it early (it drops optimization barriers), and
  a scheduler free to convert every matrix first held a float32 copy of every matrix
  of a model at once (63 GB for the 16B model's prefill).
  """
  size = max(1, min(-(-n // 2), TILE_VALUES // max(per_index, 1)))
  n_tiles = -(-n // size)

  def fill(index, out):
    start = jnp.minimum(index * size, n - size)
    return jax.lax.dynamic_update_slice_in_dim(out, tile_product(start, size), start, axis=-1)

  # Every entry is written by a tile, so the start values do not matter: made from the
  # activations rather than zeros, they are no constant that XLA copies into the loop
  # (the copy doubled the memory of a vocabulary's logits).
  start_values = jnp.broadcast_to(activations.reshape(-1)[0] * 0, out_shape)
  return jax.lax.fori_loop(0, n_tiles, fill, start_values)


def matvec_reference(x, w):
  """x [..., d_in] times w [d_out, d_in] (an array, or a QuantizedArray with per-row
  scales) -> [..., d_out], in plain XLA operations.

  Weights stored narrower than the product's dtype are widened one tile of rows
  at a time (at most TILE_VALUES values) inside a loop, never whole; for a few
  positions, bfloat16 rows are multiplied and summed in one loop,
  into which XLA fuses the conversion.
  """
  dtype = _product_dtype(x, w)
  values, scale = values_and_scales(w)
  x = x.astype(dtype)
  if values.dtype == dtype:
    y = jax.lax.dot_general(x, values, (((x.ndim - 1,), (1,)), ((), ())))
    return y if scale is None else y * scale.astype(dtype)
  if values.dtype == jnp.bfloat16 and positions(x) <= XLA_POSITIONS['multiply_sum']:
    y = jnp.sum(values.astype(dtype) * x[..., None, :], axis=-1)
    return y if scale is None else y * scale.astype(dtype)
  d_out, d_in = values.shape
  view = _loop_view(values)

  def rows(start, size):                                         # -> [..., size]
    tile = jax.lax.dynamic_slice_in_dim(view, start, size, axis=0)
    y = jax.lax.dot_general(x, _widen(tile, dtype), (((x.ndim - 1,), (1,)), ((), ())))
    if scale is None:
      return y
    return y * jax.lax.dynamic_slice_in_dim(scale, start, size).astype(dtype)

  return _tiled(d_out, d_in, rows, x, x.shape[:-1] + (d_out,))


def vecmat_reference(a, w):
  """a [..., d_in] times w [d_in, d_out] (an array, or a QuantizedArray with per-row
  scales: rows index the contracted axis) -> [..., d_out], in plain XLA operations.

  Weights stored narrower than the product's dtype are widened one tile of
  columns at a time inside a loop, never the whole matrix.
  """
  dtype = _product_dtype(a, w)
  values, scale = values_and_scales(w)
  a = a.astype(dtype)
  if scale is not None:
    a = a * scale.astype(dtype)                                   # the row scales, on a
  if values.dtype == dtype:
    return jnp.dot(a, values)
  d_in, d_out = values.shape
  view = _loop_view(values)

  def columns(start, size):                                      # -> [..., size]
    tile = jax.lax.dynamic_slice_in_dim(view, start, size, axis=1)
    return jnp.dot(a, _widen(tile, dtype))

  return _tiled(d_out, d_in, columns, a, a.shape[:-1] + (d_out,))


def _stored_kernel(op: str, x, w, d_out: int, reference: Callable):
  """The stored-product kernel `op` on x [..., d_in] (float32), reference elsewhere."""
  leading, d_in = x.shape[:-1], x.shape[-1]
  flat = x.reshape(-1, d_in)
  values, scales = kernel_operands(w)
  call = jax.ffi.ffi_call(_TARGETS[op], jax.ShapeDtypeStruct((flat.shape[0], d_out), jnp.float32))
  y = _on_cpu(flat, lambda f: call(f, values, scales),
              lambda f: reference(f, w).astype(jnp.float32))
  return y.reshape(leading + (d_out,))


def _kernel_takes(w, x) -> bool:
  """A stored product's kernel takes float32 activations and per-row scales."""
  return (x.dtype == jnp.float32 and
          (not isinstance(w, QuantizedArray) or w.scale is None or w.axis % w.ndim == 0))


def matvec(x, w, *, mode: Optional[str] = None, policy: Optional[KernelPolicy] = None):
  """x [..., d_in] times stored rows w [d_out, d_in] -> [..., d_out] (x @ w.T).

  w: a float array, or a `QuantizedArray` (int8 with per-row scales, or
  bfloat16). The kernel (int8 / bfloat16 rows, float32 x, any number of
  positions) converts each row in registers and reads every row once for all
  positions; `matvec_reference` elsewhere.
  """
  policy = policy or POLICY
  if _kernel_takes(w, x) and policy.runs_kernel('matvec', storage=storage_of(w),
                                                positions=positions(x), mode=mode):
    return _stored_kernel('matvec', x, w, w.shape[0], matvec_reference)
  return matvec_reference(x, w)


def vecmat(a, w, *, mode: Optional[str] = None, policy: Optional[KernelPolicy] = None):
  """a [..., d_in] times w [d_in, d_out] -> [..., d_out] (a @ w), w's rows indexing the
  contracted axis (scales per row for int8).

  The kernel walks w in blocks of 16 rows, summing tiles of columns in
  registers for up to 8 rows of a at a time; `vecmat_reference` elsewhere.
  """
  policy = policy or POLICY
  if _kernel_takes(w, a) and policy.runs_kernel('vecmat', storage=storage_of(w),
                                                positions=positions(a), mode=mode):
    return _stored_kernel('vecmat', a, w, w.shape[1], vecmat_reference)
  return vecmat_reference(a, w)


def sparse_ff(x, weights: SparseFFWeights, n_per_block: int, *, mode: Optional[str],
              reference: Callable, policy: Optional[KernelPolicy] = None):
  """SparseFF's argmax step, x [..., d_model] -> (y [..., d_model], units [..., B] int32).

  One kernel call for the controller, each block's argmax and the chosen rows
  of W1 and W2, from float32, bfloat16 or int8 storage (`SparseFFWeights`, all
  four matrices stored alike), for any number of positions; `reference` (x ->
  (y, units), the layer's own pure-JAX path) otherwise.
  """
  policy = policy or POLICY
  storages = {storage_of(w) for w in (weights.w1, weights.w2, weights.controller_in,
                                      weights.controller_out)}
  if (x.dtype != jnp.float32 or len(storages) != 1 or not all(
      _kernel_takes(w, x) for w in (weights.w1, weights.w2, weights.controller_in,
                                    weights.controller_out)) or
      not policy.runs_kernel('sparse_ff', storage=storages.pop(), positions=positions(x),
                             mode=mode)):
    return reference(x)
  leading, d_model = x.shape[:-1], x.shape[-1]
  n_blocks = weights.w1.shape[0] // n_per_block
  flat = x.reshape(-1, d_model)
  call = jax.ffi.ffi_call(
      _TARGETS['sparse_ff'],
      (jax.ShapeDtypeStruct(flat.shape, jnp.float32),
       jax.ShapeDtypeStruct((flat.shape[0], n_blocks), jnp.int32)))

  def kernel(flat):
    return call(flat, *kernel_operands(weights.controller_in),
                *kernel_operands(weights.controller_out),
                weights.controller_bias.astype(jnp.float32),
                *kernel_operands(weights.w1), weights.b1.astype(jnp.float32),
                *kernel_operands(weights.w2), weights.b2.astype(jnp.float32),
                n_per_block=np.int64(n_per_block))

  def fallback(flat):
    y, units = reference(flat)
    return y.astype(jnp.float32), units.astype(jnp.int32)

  y, units = _on_cpu(flat, kernel, fallback)
  return y.reshape(leading + (d_model,)), units.reshape(leading + (n_blocks,))


def sparse_qkv(x, history, weights: SparseQKVWeights, *, mode: Optional[str],
               reference: Callable, policy: Optional[KernelPolicy] = None):
  """Sparse QKV's multiplicative layer and three convolutions in 'predict' mode.

  Args:
    x: float32 [batch, length, d]: a few decoded positions, or (int8 weights, where
      `registry.INTEGER_QKV`) a prompt's prefill.
    history: float32 [batch, K - 1, S, C], the convolutions' carried inputs.
    weights: `SparseQKVWeights` (multiplicative modules [d, S] and units [d, C]
      with per-row int8 scales, the three convolution kernels [K, size, C, O]
      with per-output-channel int8 scales), stored alike.
    mode: the calling layer's mode (the kernel decodes: 'predict').
    reference: (x, history) -> (q, k, v, m), the plain computation.

  Returns:
    (q, k, v) each float32 [batch, length, S * O], and m [batch, length, S * C],
    the multiplicative layer's output (the next history's source).
  """
  policy = policy or POLICY
  mult = weights.multiplicative
  matrices = (mult.modules, mult.units) + tuple(c.kernel for c in weights.convolutions)
  storages = {storage_of(w) for w in matrices}
  scale_axes_fit = all(not isinstance(w, QuantizedArray) or w.scale is None or
                       w.axis % w.ndim == (w.ndim - 1 if w.ndim == 4 else 0) for w in matrices)
  if (x.dtype != jnp.float32 or history.dtype != jnp.float32 or len(storages) != 1 or
      not scale_axes_fit or
      not policy.runs_kernel('sparse_qkv', storage=storages.pop(),
                             positions=x.shape[0] * x.shape[1], mode=mode)):
    return reference(x, history)
  batch, length, _ = x.shape
  n_modules, c_in = history.shape[2], history.shape[3]
  c_out = weights.convolutions[0].kernel.shape[-1]
  qkv = jax.ShapeDtypeStruct((batch, length, n_modules * c_out), jnp.float32)
  call = jax.ffi.ffi_call(
      _TARGETS['sparse_qkv'],
      (qkv, qkv, qkv, jax.ShapeDtypeStruct((batch, length, n_modules * c_in), jnp.float32)))

  def kernel(x):
    convolutions = []
    for part in weights.convolutions:
      convolutions += [*kernel_operands(part.kernel, scale_axis=-1), part.b.astype(jnp.float32)]
    return call(x, history, *kernel_operands(mult.modules), *kernel_operands(mult.units),
                mult.b.astype(jnp.float32), *convolutions)

  def fallback(x):
    return tuple(out.astype(jnp.float32) for out in reference(x, history))

  return _on_cpu(x, kernel, fallback)


def layer_norm(x, scale, bias, epsilon: float, *, reference: Callable,
               policy: Optional[KernelPolicy] = None):
  """LayerNorm of float32 x [..., d] (a few rows) in one kernel: [..., d].

  scale, bias: float32 [d]. `reference` (x -> y, pure JAX) runs otherwise.
  """
  policy = policy or POLICY
  if (x.dtype != jnp.float32 or scale.dtype != jnp.float32 or bias.dtype != jnp.float32 or
      not policy.runs_kernel('layer_norm', storage='float32', positions=positions(x),
                             mode=None)):
    return reference(x)
  leading, d = x.shape[:-1], x.shape[-1]
  flat = x.reshape(-1, d)
  call = jax.ffi.ffi_call(_TARGETS['layer_norm'], jax.ShapeDtypeStruct(flat.shape, jnp.float32))
  return _on_cpu(flat, lambda f: call(f, scale, bias, epsilon=np.float32(epsilon)),
                 lambda f: reference(f.reshape(x.shape)).reshape(f.shape)
                 ).reshape(leading + (d,))


def cached_attention(query, keys, values, first, position, *, reference: Callable,
                     policy: Optional[KernelPolicy] = None):
  """One query per row against a KV cache, in one kernel: softmax(q . k) v per head.

  Args:
    query: float32 [batch, heads, d_head], already scaled by 1 / sqrt(d_head).
    keys, values: [batch, slots, heads, d_head], the cache (the kernel takes
      float32 caches).
    first, position: int32 scalars; slots first..position (clipped to the
      cache) are visible. None visible gives zeros.
    reference: query -> [batch, heads, d_head], the pure-JAX path.

  Returns:
    float32 [batch, heads, d_head].
  """
  policy = policy or POLICY
  if (keys.dtype != jnp.float32 or values.dtype != jnp.float32 or
      not policy.runs_kernel('cached_attention', storage='float32', positions=1,
                             mode='predict')):
    return reference(query)
  bounds = jnp.stack([jnp.asarray(first, jnp.int32), jnp.asarray(position, jnp.int32)])
  call = jax.ffi.ffi_call(_TARGETS['cached_attention'],
                          jax.ShapeDtypeStruct(query.shape, jnp.float32))
  return _on_cpu(query, lambda q: call(q, keys, values, bounds),
                 lambda q: reference(q).astype(jnp.float32))
