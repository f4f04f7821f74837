"""Multi-head dot-product attention: causal, padding-masked, encoder-decoder.

Activations are [batch, length, d_model]; heads split d_model into
`n_heads` of `d_model // n_heads`. Masks are boolean, True where attending
is allowed. Softmax runs in float32 (float64 for float64 inputs: `dtypes`).
"""

import jax
import jax.numpy as jnp

from sparse_trax import arguments
from sparse_trax import kernels
from sparse_trax.layers.base import Layer
from sparse_trax.layers.dtypes import accumulation_dtype
from sparse_trax.layers.linear import linear
from sparse_trax.layers.state import KVCache, RunOnce, poison_if, run_once


def dot_product_attention(q, k, v, mask, *, dropout_rate=0.0, rng=None):
  """Scaled dot-product attention over heads.

  Args:
    q: [batch, length_q, n_heads, d_head] queries.
    k: [batch, length_k, n_heads, d_head] keys.
    v: [batch, length_k, n_heads, d_head] values.
    mask: boolean, broadcastable to [batch, n_heads, length_q, length_k];
      True where query i may attend to key j.
    dropout_rate: dropout on the attention weights (needs `rng` when > 0).
    rng: key for the dropout.

  Returns:
    [batch, length_q, n_heads, d_head].
  """
  d_head = q.shape[-1]
  wide = accumulation_dtype(q.dtype, k.dtype)
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(jnp.asarray(d_head, wide))
  logits = jnp.where(mask, logits.astype(wide), jnp.finfo(wide).min)
  probs = jax.nn.softmax(logits, axis=-1)
  if dropout_rate > 0.0 and rng is not None:
    keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  return jnp.einsum('bhqk,bkhd->bqhd', probs.astype(v.dtype), v)


def causal_mask(length_q: int, length_k: int, offset=0):
  """[length_q, length_k] bool: query i (at absolute position offset + i) sees keys <= it."""
  query_positions = offset + jnp.arange(length_q)[:, None]
  return jnp.arange(length_k)[None, :] <= query_positions


def split_heads(x, n_heads: int):
  """[batch, length, d] -> [batch, length, n_heads, d // n_heads]."""
  return x.reshape(x.shape[:2] + (n_heads, x.shape[-1] // n_heads))


def merge_heads(x):
  """[batch, length, n_heads, d_head] -> [batch, length, n_heads * d_head]."""
  return x.reshape(x.shape[:2] + (-1,))


def stack_qkv(weights: dict) -> dict:
  """Weights with `wq`, `wk`, `wv` [d, d] replaced by their rows stacked, `wqkv` [3d, d]."""
  weights = dict(weights)
  weights['wqkv'] = jnp.concatenate([weights.pop(n) for n in ('wq', 'wk', 'wv')], axis=0)
  return weights


def self_attention_heads(x, wqkv, n_heads: int, bqkv=None):
  """x [batch, length, d], wqkv [3d, d] (and bqkv [3d]) -> q, k, v, each
  [batch, length, n_heads, d / n_heads]."""
  qkv = linear(x, wqkv)
  if bqkv is not None:
    qkv = qkv + bqkv.astype(qkv.dtype)
  return tuple(split_heads(t, n_heads) for t in jnp.split(qkv, 3, axis=-1))


CACHE_BLOCK = 128


def cache_block_size(max_len: int) -> int:
  """Slots per block of the decoding cache (attention reads whole blocks)."""
  return min(CACHE_BLOCK, max_len)


def empty_kv_cache(batch: int, max_len: int, n_heads: int, d_head: int,
                   n_hashes=None) -> KVCache:
  """The predict-mode state of causal attention: a KVCache of max_len positions.

  The cache has max_len slots rounded up to whole blocks of `cache_block_size`;
  `n_hashes` adds LSH buckets.
  """
  return KVCache.empty(batch, max_len, n_heads, d_head, cache_block_size(max_len),
                       n_hashes=n_hashes)


SELF_LOGIT = -1e5   # Reformer's rule: attend to yourself only when nothing else is visible


def cached_attention(q, keys, values, position, *, first_visible=None, query_buckets=None,
                     key_buckets=None, mask_self=False):
  """Causal attention of new queries over the filled blocks of a cache only.

  Queries sit at absolute positions position .. position + length - 1; the
  keys and values of those positions are already in the cache. Blocks past
  the last filled slot (and before the earliest visible one) are never read,
  so the cost grows with the position, not with the cache size. Softmax is
  accumulated block by block (online, in float32).

  Args:
    q: [batch, length, n_heads, d_head].
    keys, values: [batch, slots, n_heads, d_head], slots a multiple of the block.
    position: int32 scalar, the position of the first query.
    first_visible: optional [length] int32, the first key position each query
      may see (local attention); default 0.
    query_buckets, key_buckets: optional [batch, length, n_heads, rounds] and
      [batch, slots, n_heads, rounds] int32 (LSH): a query sees only keys that
      share a bucket with it in some round.
    mask_self: give a query's own key the logit SELF_LOGIT.

  Returns:
    [batch, length, n_heads, d_head].
  """
  batch, length, n_heads, d_head = q.shape
  if length == 1:
    return _one_query_attention(q, keys, values, position, first_visible=first_visible,
                                query_buckets=query_buckets, key_buckets=key_buckets,
                                mask_self=mask_self)
  block = cache_block_size(keys.shape[1])
  wide = accumulation_dtype(q.dtype, keys.dtype)
  q = q.astype(wide) / jnp.sqrt(jnp.asarray(d_head, wide))
  query_positions = position + jnp.arange(length)
  if first_visible is None:
    first_visible = jnp.zeros((length,), jnp.int32)
  first_block = jnp.min(first_visible) // block
  last_block = (position + length + block - 1) // block

  # Layouts are chosen for XLA:CPU: logits are [batch, (query,) key, head],
  # with d_head contracted and heads a batch dimension; a single query (the
  # decoding step) drops its query axis. Both run several times faster per
  # decoded token than a [batch, head, query, key] layout.
  single = length == 1
  queries = q[:, 0] if single else q                        # [b, (q,) h, d]
  key_axis = 1 if single else 2
  logits_spec, values_spec = (('bhd,bkhd->bkh', 'bkh,bkhd->bhd') if single else
                              ('bqhd,bkhd->bqkh', 'bqkh,bkhd->bqhd'))

  def query_key(mask):
    """[length, block] -> broadcastable to the logits."""
    return mask[0][None, :, None] if single else mask[None, :, :, None]

  def one_block(i, carry):
    running_max, normalizer, accumulated = carry
    k = jax.lax.dynamic_slice_in_dim(keys, i * block, block, axis=1)
    v = jax.lax.dynamic_slice_in_dim(values, i * block, block, axis=1)
    logits = jnp.einsum(logits_spec, queries, k)
    key_positions = i * block + jnp.arange(block)
    visible = query_key((key_positions[None, :] <= query_positions[:, None]) &
                        (key_positions[None, :] >= first_visible[:, None]))
    if query_buckets is not None:
      kb = jax.lax.dynamic_slice_in_dim(key_buckets, i * block, block, axis=1)
      qb = query_buckets[:, 0] if single else query_buckets[:, :, None]
      visible = visible & jnp.any(qb[:, None] == kb if single else qb == kb[:, None], axis=-1)
    if mask_self:
      logits = jnp.where(query_key(key_positions[None, :] == query_positions[:, None]),
                         SELF_LOGIT, logits)
    logits = jnp.where(visible, logits, -jnp.inf)
    new_max = jnp.maximum(running_max, logits.max(key_axis))
    safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
    probs = jnp.exp(logits - jnp.expand_dims(safe_max, key_axis))
    rescale = jnp.where(jnp.isfinite(running_max), jnp.exp(running_max - safe_max), 0.0)
    normalizer = normalizer * rescale + probs.sum(key_axis)
    accumulated = accumulated * rescale[..., None] + jnp.einsum(values_spec, probs, v)
    return new_max, normalizer, accumulated

  rows = queries.shape[:-1]                                 # [b, (q,) h]
  init = (jnp.full(rows, -jnp.inf, wide), jnp.zeros(rows, wide),
          jnp.zeros(queries.shape, wide))
  _, normalizer, accumulated = jax.lax.fori_loop(first_block, last_block, one_block, init)
  out = accumulated / jnp.maximum(normalizer, 1e-30)[..., None]
  return out.reshape(q.shape).astype(values.dtype)


SMALLEST_WINDOW = 32


def _window_sizes(slots: int):
  """Static key-window sizes for one query: 32, 64, ... doubling, and finally all slots."""
  sizes, size = [], min(SMALLEST_WINDOW, slots)
  while size < slots:
    sizes.append(size)
    size *= 2
  return sizes + [slots]


def _one_query_attention(q, keys, values, position, *, first_visible=None, query_buckets=None,
                         key_buckets=None, mask_self=False):
  """`cached_attention` for one query (a decoding step), with no loop.

  The visible keys, from first_visible to the query's position, lie in one
  window of static size (the smallest of 32, 64, ... slots that holds them);
  `lax.switch` picks the branch of that size, which reads only its window
  and takes one softmax over it. A loop over 128-slot blocks with an online
  softmax computed the same but cost several times more per token on
  XLA:CPU (per-iteration and bookkeeping costs dwarf the arithmetic).
  With a float32 cache, no buckets and no self-masking, on CPU where the
  kernels were built, one fused kernel (`kernels.cached_attention`) does it:
  the switch and its operations cost more than the arithmetic.
  """
  slots, d_head = keys.shape[1], q.shape[-1]
  wide = accumulation_dtype(q.dtype, keys.dtype)
  query = q[:, 0].astype(wide) / jnp.sqrt(jnp.asarray(d_head, wide))   # [b, h, d]
  first = jnp.int32(0) if first_visible is None else first_visible[0]
  sizes = _window_sizes(slots)
  span = position + 1 - first
  # The first window that holds the span: how many are too small. (jnp.searchsorted
  # compiles to a while loop, which on XLA:CPU cost more than the attention.)
  choice = jnp.minimum(jnp.sum(jnp.asarray(sizes) < span), len(sizes) - 1)

  def window(size):
    def attend(query):
      start = jnp.clip(first, 0, slots - size)
      k = jax.lax.dynamic_slice_in_dim(keys, start, size, axis=1)
      v = jax.lax.dynamic_slice_in_dim(values, start, size, axis=1)
      key_positions = start + jnp.arange(size)
      visible = ((key_positions <= position) & (key_positions >= first))[None, :, None]
      if query_buckets is not None:
        kb = jax.lax.dynamic_slice_in_dim(key_buckets, start, size, axis=1)   # [b, k, h, r]
        visible = visible & jnp.any(query_buckets[:, 0][:, None] == kb, axis=-1)
      logits = jnp.einsum('bhd,bkhd->bkh', query, k.astype(wide))
      if mask_self:
        logits = jnp.where((key_positions == position)[None, :, None], SELF_LOGIT, logits)
      logits = jnp.where(visible, logits, -jnp.inf)
      top = jnp.max(logits, axis=1, keepdims=True)
      probs = jnp.exp(logits - jnp.where(jnp.isfinite(top), top, 0.0))
      normalizer = jnp.sum(probs, axis=1)                                    # [b, h]
      out = jnp.einsum('bkh,bkhd->bhd', probs, v.astype(wide))
      return out / jnp.maximum(normalizer, 1e-30)[..., None]
    return attend

  def switch(query):
    return jax.lax.switch(choice, [window(size) for size in sizes], query)

  if query_buckets is None and not mask_self:
    out = kernels.cached_attention(query, keys, values, first, position, reference=switch)
  else:
    out = switch(query)
  return out[:, None].astype(values.dtype)


def causal_attention(q, k, v, state, *, mode: str, dropout_rate: float, rng, position=None):
  """Causal attention over heads, with the predict-mode cache.

  Args:
    q, k, v: [batch, length, n_heads, d_head].
    state: {} outside 'predict'; else the KVCache from `empty_kv_cache`, to
      which these `length` positions are appended at `position`.
    mode: the layer's mode.
    dropout_rate: dropout on the attention weights (0 outside 'train').
    rng: key for that dropout.
    position: int32 scalar, the decode position of the first query ('predict').

  Returns:
    ([batch, length, n_heads, d_head], new state). Past the cache's end the
    output is NaN (under `jit`; on the host it raises).
  """
  length = q.shape[1]
  if mode != 'predict':
    mask = causal_mask(length, length)[None, None]
    return dot_product_attention(q, k, v, mask, dropout_rate=dropout_rate, rng=rng), state
  cache, overflow = state.append(position, k, v)
  out = cached_attention(q, cache.keys, cache.values, position)
  return poison_if(overflow, out), cache


class _MultiHeadAttention(Layer):
  """Shared weights and projections of the attention layers below.

  Self-attention (`fused_qkv=True`) weights: `wqkv` [3 * d_model, d_model]
  (query, key and value rows stacked, so one token reads them in one matrix
  product), `wo` [d_model, d_model], `bo` [d_model]; with `qkv_bias` also
  `bqkv` [3 * d_model] (Trax's attention has biases on its Q, K and V
  projections). Matrices are out-major ([d_out, d_in], see
  `layers/linear.py`). Encoder-decoder attention keeps `wq`, `wk`, `wv`
  apart (and `bq`, `bk`, `bv`), since its keys and values come from another
  input.
  """

  def __init__(self, d_model: int, n_heads: int, dropout: float, mode: str,
               n_in: int, n_out: int, qkv_bias: bool = False):
    arguments.check_layer_arguments(self, _MultiHeadAttention.__init__, locals())
    if d_model % n_heads:
      raise ValueError(f'd_model {d_model} is not divisible by n_heads {n_heads}')
    super().__init__(n_in, n_out, mode=mode)
    self.d_model = d_model
    self.n_heads = n_heads
    self.dropout = dropout
    self.qkv_bias = qkv_bias

  def _init_weights(self, rng, fused_qkv: bool):
    keys = jax.random.split(rng, 4)
    init = jax.nn.initializers.glorot_uniform()
    shape = (self.d_model, self.d_model)
    weights = {name: init(key, shape, jnp.float32)
               for name, key in zip(('wq', 'wk', 'wv', 'wo'), keys)}
    if fused_qkv:   # each third initialized as its own [d_model, d_model] matrix
      weights = stack_qkv(weights)
    weights['bo'] = jnp.zeros((self.d_model,), jnp.float32)
    if self.qkv_bias and fused_qkv:
      weights['bqkv'] = jnp.zeros((3 * self.d_model,), jnp.float32)
    elif self.qkv_bias:
      weights.update({name: jnp.zeros((self.d_model,), jnp.float32)
                      for name in ('bq', 'bk', 'bv')})
    return weights

  def _self_heads(self, weights, x):
    """q, k, v [batch, length, n_heads, d_head] of self-attention on x."""
    return self_attention_heads(x, weights['wqkv'], self.n_heads, weights.get('bqkv'))

  def _check_input(self, x, what='input'):
    if x.ndim != 3 or x.shape[-1] != self.d_model:
      raise ValueError(f'{what} must be [batch, length, {self.d_model}], '
                       f'got shape {tuple(x.shape)}')

  def _heads(self, x, w, b=None):
    """[batch, length, d_model] times w [d_model, d_model] (plus b [d_model])
    -> [batch, length, n_heads, d_head]."""
    y = linear(x, w)
    return split_heads(y if b is None else y + b.astype(y.dtype), self.n_heads)

  def _dropout_rate(self, rng):
    rate = self.dropout if self.mode == 'train' else 0.0
    if rate > 0.0 and rng is None:
      raise ValueError("attention dropout in 'train' mode needs an rng")
    return rate

  def _output(self, weights, heads):
    return linear(merge_heads(heads), weights['wo']) + weights['bo'].astype(heads.dtype)

  def _attend(self, weights, q, k, v, mask, rng):
    out = dot_product_attention(q, k, v, mask, dropout_rate=self._dropout_rate(rng), rng=rng)
    return self._output(weights, out)


class CausalAttention(_MultiHeadAttention):
  """Causal self-attention: [batch, length, d_model] -> [batch, length, d_model].

  In 'predict' mode the state holds a key/value cache of `max_len` positions
  and the next position; each call appends its tokens (usually one) and
  attends over the filled part.

  Args:
    d_model: model width.
    n_heads: number of heads (dividing d_model).
    dropout: dropout rate on attention weights in 'train'.
    max_len: cache length in 'predict' mode.
    mode: 'train', 'eval' or 'predict'.
    qkv_bias: biases on the query, key and value projections (as Trax's).
  """

  def __init__(self, d_model: int, n_heads: int = 1, dropout: float = 0.0,
               max_len: int = 2048, mode: str = 'train', qkv_bias: bool = False):
    arguments.check_layer_arguments(self, CausalAttention.__init__, locals())
    super().__init__(d_model, n_heads, dropout, mode, n_in=1, n_out=1, qkv_bias=qkv_bias)
    self.max_len = max_len

  takes_position = True

  def decode_capacity(self, input_length: int = 0):
    return self.max_len

  def init_weights_and_state(self, input_signature, rng):
    self._check_input(input_signature)
    state = {}
    if self.mode == 'predict':
      state = empty_kv_cache(input_signature.shape[0], self.max_len, self.n_heads,
                             self.d_model // self.n_heads)
    return self._init_weights(rng, fused_qkv=True), state

  def forward(self, weights, state, x, rng, position):
    self._check_input(x)
    q, k, v = self._self_heads(weights, x)
    out, state = causal_attention(q, k, v, state, mode=self.mode,
                                  dropout_rate=self._dropout_rate(rng), rng=rng,
                                  position=position and position.start)
    return self._output(weights, out), state


class Attention(_MultiHeadAttention):
  """Self-attention with a padding mask: (x, mask) -> (y, mask).

  x: [batch, length, d_model]; mask: [batch, length] bool, True on real
  tokens. Every query attends to every unmasked key (no causality).
  """

  def __init__(self, d_model: int, n_heads: int = 1, dropout: float = 0.0,
               mode: str = 'train', qkv_bias: bool = False):
    arguments.check_layer_arguments(self, Attention.__init__, locals())
    super().__init__(d_model, n_heads, dropout, mode, n_in=2, n_out=2, qkv_bias=qkv_bias)

  def init_weights_and_state(self, input_signature, rng):
    self._check_input(input_signature[0])
    return self._init_weights(rng, fused_qkv=True), {}

  def forward(self, weights, state, inputs, rng):
    x, mask = inputs
    self._check_input(x)
    if mask.shape != x.shape[:2]:
      raise ValueError(f'mask must be [batch, length] = {tuple(x.shape[:2])}, '
                       f'got {tuple(mask.shape)}')
    q, k, v = self._self_heads(weights, x)
    y = self._attend(weights, q, k, v, mask[:, None, None, :], rng)
    return (y, mask), state


class EncDecAttention(_MultiHeadAttention):
  """Decoder-to-encoder attention: (x, encoded, mask) -> (y, encoded, mask).

  x: [batch, length_dec, d_model] queries; encoded: [batch, length_enc,
  d_model] keys and values; mask: [batch, length_enc] bool padding mask. In
  'predict' mode the encoder's keys and values are computed on the first
  call and kept in state (a `RunOnce` record).
  """

  decode_stream = 0

  def __init__(self, d_model: int, n_heads: int = 1, dropout: float = 0.0,
               mode: str = 'train', qkv_bias: bool = False):
    arguments.check_layer_arguments(self, EncDecAttention.__init__, locals())
    super().__init__(d_model, n_heads, dropout, mode, n_in=3, n_out=3, qkv_bias=qkv_bias)

  def init_weights_and_state(self, input_signature, rng):
    x, encoded, _ = input_signature
    self._check_input(x)
    self._check_input(encoded, 'encoded')
    state = {}
    if self.mode == 'predict':
      heads = jax.ShapeDtypeStruct(encoded.shape[:2] + (self.n_heads, self.d_model // self.n_heads),
                                   jnp.float32)
      state = RunOnce.empty((heads, heads))
    return self._init_weights(rng, fused_qkv=False), state

  def forward(self, weights, state, inputs, rng):
    x, encoded, mask = inputs
    self._check_input(x)
    self._check_input(encoded, 'encoded')
    if mask.shape != encoded.shape[:2]:
      raise ValueError(f'mask must be [batch, length_enc] = {tuple(encoded.shape[:2])}, '
                       f'got {tuple(mask.shape)}')

    def project(_):
      return (self._heads(encoded, weights['wk'], weights.get('bk')),
              self._heads(encoded, weights['wv'], weights.get('bv'))), None

    if self.mode == 'predict':
      (k, v), _, state = run_once(state, project)
    else:
      (k, v), _ = project(None)
    q = self._heads(x, weights['wq'], weights.get('bq'))
    y = self._attend(weights, q, k, v, mask[:, None, None, :], rng)
    return (y, encoded, mask), state


class DotProductCausalAttention(Layer):
  """Causal attention on given projections: (q, k, v) -> y, all [batch, length, d].

  No weights: the projections come from the layers before it (e.g. the
  sparse QKV of MultiplicativeConvCausalAttention). In 'predict' mode the
  state is a key/value cache of max_len positions.
  """

  def __init__(self, n_heads: int = 1, dropout: float = 0.0, max_len: int = 2048,
               mode: str = 'train'):
    arguments.check_layer_arguments(self, DotProductCausalAttention.__init__, locals())
    super().__init__(3, 1, mode=mode)
    self.n_heads = n_heads
    self.dropout = dropout
    self.max_len = max_len

  takes_position = True

  def decode_capacity(self, input_length: int = 0):
    return self.max_len

  def _check(self, inputs):
    q, k, v = inputs
    if q.ndim != 3 or q.shape != k.shape or q.shape != v.shape or q.shape[-1] % self.n_heads:
      raise ValueError(f'q, k, v must be [batch, length, d] with d divisible by '
                       f'n_heads={self.n_heads}; got {q.shape}, {k.shape}, {v.shape}')

  def init_weights_and_state(self, input_signature, rng):
    self._check(input_signature)
    if self.mode != 'predict':
      return {}, {}
    batch, _, d = input_signature[0].shape
    return {}, empty_kv_cache(batch, self.max_len, self.n_heads, d // self.n_heads)

  def forward(self, weights, state, inputs, rng, position):
    self._check(inputs)
    rate = self.dropout if self.mode == 'train' else 0.0
    if rate > 0.0 and rng is None:
      raise ValueError("attention dropout in 'train' mode needs an rng")
    q, k, v = (split_heads(t, self.n_heads) for t in inputs)
    out, state = causal_attention(q, k, v, state, mode=self.mode, dropout_rate=rate, rng=rng,
                                  position=position and position.start)
    return merge_heads(out), state


class DotProductAttention(Layer):
  """Padding-masked attention on given projections: (q, k, v, mask) -> (y, mask).

  q, k, v: [batch, length, d]; mask: [batch, length] bool, True on real tokens.
  """

  def __init__(self, n_heads: int = 1, dropout: float = 0.0, mode: str = 'train'):
    arguments.check_layer_arguments(self, DotProductAttention.__init__, locals())
    super().__init__(4, 2, mode=mode)
    self.n_heads = n_heads
    self.dropout = dropout

  def forward(self, weights, state, inputs, rng):
    q, k, v, mask = inputs
    if q.ndim != 3 or q.shape[-1] % self.n_heads or mask.shape != q.shape[:2]:
      raise ValueError(f'need q, k, v [batch, length, d] (d divisible by {self.n_heads}) '
                       f'and mask [batch, length]; got {q.shape}, mask {mask.shape}')
    rate = self.dropout if self.mode == 'train' else 0.0
    if rate > 0.0 and rng is None:
      raise ValueError("attention dropout in 'train' mode needs an rng")
    heads = [split_heads(t, self.n_heads) for t in (q, k, v)]
    out = dot_product_attention(*heads, mask[:, None, None, :], dropout_rate=rate, rng=rng)
    return (merge_heads(out), mask), state
