"""Attention for long inputs: chunked (local) causal attention and LSH attention (Reformer).

Both map [batch, length, d_model] -> [batch, length, d_model] with their own
projections, cost O(length * chunk_len) instead of O(length^2), and decode
in 'predict' mode from a cache of keys and values.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from sparse_trax import arguments
from sparse_trax.layers import attention
from sparse_trax.layers.base import Layer
from sparse_trax.layers.dtypes import accumulation_dtype
from sparse_trax.layers.linear import linear
from sparse_trax.layers.state import Decisions, poison_if, replayed_choices

_glorot = jax.nn.initializers.glorot_uniform()
_INVALID = -1e9


def _unit_norm(x):
  """x / |x| over the last axis, with a finite gradient at x = 0 (padding)."""
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def _look_back(chunks, n_chunks_before: int, fill):
  """[..., n, c, ...] chunks -> [..., n, (n_chunks_before + 1) * c, ...] windows.

  Window i holds chunks i - n_chunks_before .. i (missing ones filled with `fill`).
  The chunk axis is -4 for arrays [..., n, c, h, d] and given by the caller.
  """
  parts = []
  for shift in range(n_chunks_before, 0, -1):
    pad = [(0, 0)] * chunks.ndim
    pad[1] = (shift, 0)
    parts.append(jnp.pad(chunks, pad, constant_values=fill)[:, :chunks.shape[1]])
  parts.append(chunks)
  return jnp.concatenate(parts, axis=2)


class _LongAttention(Layer):
  """Shared projections and predict-mode cache of the two layers below."""

  def __init__(self, n_heads: int, chunk_len: int, n_chunks_before: int, dropout: float,
               max_len: int, mode: str):
    arguments.check_layer_arguments(self, _LongAttention.__init__, locals())
    super().__init__(1, 1, mode=mode)
    self.n_heads = n_heads
    self.chunk_len = chunk_len
    self.n_chunks_before = n_chunks_before
    self.dropout = dropout
    self.max_len = max_len

  takes_position = True

  def decode_capacity(self, input_length: int = 0):
    return self.max_len if self.mode == 'predict' else None

  def _check(self, x):
    if x.ndim != 3 or x.shape[-1] % self.n_heads:
      raise ValueError(f'input must be [batch, length, d_model] with d_model divisible by '
                       f'n_heads={self.n_heads}, got shape {tuple(x.shape)}')

  def _projections(self, names, d_model, rng):
    keys = jax.random.split(rng, len(names) + 1)
    weights = {name: _glorot(key, (d_model, d_model), jnp.float32)
               for name, key in zip(names, keys)}
    weights['wo'] = _glorot(keys[-1], (d_model, d_model), jnp.float32)
    weights['bo'] = jnp.zeros((d_model,), jnp.float32)
    return weights

  def _heads(self, x, w):
    return attention.split_heads(linear(x, w), self.n_heads)

  def _output(self, weights, heads):
    return linear(attention.merge_heads(heads), weights['wo']) + weights['bo'].astype(heads.dtype)

  def _dropout(self, probs, rng):
    if self.mode != 'train' or self.dropout == 0.0:
      return probs
    if rng is None:
      raise ValueError("attention dropout in 'train' mode needs an rng")
    keep = jax.random.bernoulli(rng, 1.0 - self.dropout, probs.shape)
    return jnp.where(keep, probs / (1.0 - self.dropout), 0.0)


class ChunkedCausalAttention(_LongAttention):
  """Local causal attention: a query sees its own chunk and n_chunks_before earlier ones.

  [batch, length, d_model] -> same. With one chunk covering the sequence it
  is full causal attention. In 'predict' mode a key/value cache of max_len
  is kept and only the visible window of it is read.

  Weights: as CausalAttention's (interchangeable): wqkv [3 * d_model, d_model],
  wo [d_model, d_model] (out-major), bo [d_model].
  """

  def __init__(self, n_heads: int = 1, chunk_len: int = 128, n_chunks_before: int = 1,
               dropout: float = 0.0, max_len: int = 2048, mode: str = 'train'):
    arguments.check_layer_arguments(self, ChunkedCausalAttention.__init__, locals())
    super().__init__(n_heads, chunk_len, n_chunks_before, dropout, max_len, mode)

  def init_weights_and_state(self, input_signature, rng):
    self._check(input_signature)
    batch, _, d_model = input_signature.shape
    state = {}
    if self.mode == 'predict':
      state = attention.empty_kv_cache(batch, self.max_len, self.n_heads,
                                       d_model // self.n_heads)
    # Stacked as in CausalAttention, so the two share weights.
    return attention.stack_qkv(self._projections(('wq', 'wk', 'wv'), d_model, rng)), state

  def forward(self, weights, state, x, rng, position):
    self._check(x)
    q, k, v = attention.self_attention_heads(x, weights['wqkv'], self.n_heads)
    if self.mode == 'predict':
      return self._decode(weights, state, q, k, v, position.start)
    batch, length, n_heads, d_head = q.shape
    c = self.chunk_len
    n = -(-length // c)
    pad = [(0, 0), (0, n * c - length), (0, 0), (0, 0)]
    chunked = [jnp.pad(t, pad).reshape(batch, n, c, n_heads, d_head) for t in (q, k, v)]
    q_chunks, k_windows, v_windows = (chunked[0],
                                      _look_back(chunked[1], self.n_chunks_before, 0.0),
                                      _look_back(chunked[2], self.n_chunks_before, 0.0))
    positions = jnp.arange(n * c).reshape(n, c)
    key_positions = _look_back(positions[None, :, :, None, None], self.n_chunks_before,
                               -1)[0, :, :, 0, 0]                             # [n, window]
    visible = ((key_positions[:, None, :] <= positions[:, :, None]) &
               (key_positions[:, None, :] >= 0))                              # [n, c, window]
    logits = jnp.einsum('bnqhd,bnkhd->bnhqk', q_chunks, k_windows) / jnp.sqrt(
        jnp.asarray(d_head, accumulation_dtype(q_chunks.dtype)))
    logits = jnp.where(visible[None, :, None], logits, _INVALID)
    probs = self._dropout(jax.nn.softmax(logits, axis=-1), rng)
    out = jnp.einsum('bnhqk,bnkhd->bnqhd', probs.astype(v_windows.dtype),
                     v_windows).reshape(batch, n * c, n_heads, d_head)
    return self._output(weights, out[:, :length]), state

  def _decode(self, weights, state, q, k, v, position):
    cache, overflow = state.append(position, k, v)
    query_positions = position + jnp.arange(q.shape[1])
    first_visible = jnp.maximum(
        0, (query_positions // self.chunk_len - self.n_chunks_before) * self.chunk_len)
    out = attention.cached_attention(q, cache.keys, cache.values, position,
                                     first_visible=first_visible)
    return self._output(weights, poison_if(overflow, out)), cache


class LSHSelfAttention(_LongAttention):
  """Reformer's LSH attention: shared QK, hashing by random rotations, sorted chunks.

  [batch, length, d_model] -> same. Each hash round assigns every position a
  bucket (argmax over [xR, -xR] for a random rotation R), sorts positions by
  (bucket, position), cuts the sorted sequence into chunks of chunk_len, and
  lets each chunk attend to itself and n_chunks_before earlier chunks (keys
  are the unit-normalized shared QK). A query does not attend to itself
  unless nothing else is visible. The rounds are combined by their
  logsumexp weights.

  Rotations come from the rng in 'train' (fresh per call, the same when a
  reversible layer recomputes the call) and from `hash_seed` otherwise. The
  buckets chosen in 'train' are kept in state and replayed by reversible
  layers. 'predict' mode caches normalized keys, values and buckets, and a
  new token attends to the earlier tokens sharing a bucket with it in some
  round: for n_buckets=1 that is the eval result exactly; otherwise it
  approximates it (eval's chunks depend on later tokens, decoding cannot).

  Weights: wqk, wv, wo [d_model, d_model] (out-major), bo [d_model].

  Args:
    n_heads: heads.
    chunk_len: positions per chunk of the sorted sequence.
    n_hashes: hash rounds.
    n_buckets: buckets per round (even, or 1; default: about length / chunk_len,
      fixed at the first call's length).
    n_chunks_before: earlier chunks each chunk sees.
    causal: only earlier positions are visible.
    dropout, max_len, mode: as for attention.
    hash_seed: rotations outside 'train'.
  """

  def __init__(self, n_heads: int = 1, chunk_len: int = 128, n_hashes: int = 2,
               n_buckets: Optional[int] = None, n_chunks_before: int = 1, causal: bool = True,
               dropout: float = 0.0, max_len: int = 2048, mode: str = 'train',
               hash_seed: int = 0):
    arguments.check_layer_arguments(self, LSHSelfAttention.__init__, locals())
    super().__init__(n_heads, chunk_len, n_chunks_before, dropout, max_len, mode)
    if n_buckets is not None and n_buckets != 1 and n_buckets % 2:
      raise ValueError(f'n_buckets must be 1 or even, got {n_buckets}')
    if mode == 'predict' and not causal:
      raise ValueError("LSHSelfAttention decodes ('predict') only when causal")
    self.n_hashes = n_hashes
    self.n_buckets = n_buckets
    self.causal = causal
    self.hash_seed = hash_seed

  def _buckets_for(self, length):
    if self.n_buckets is not None:
      return self.n_buckets
    return max(2, 2 * ((length // self.chunk_len + 1) // 2))

  def init_weights_and_state(self, input_signature, rng):
    self._check(input_signature)
    batch, length, d_model = input_signature.shape
    d_head = d_model // self.n_heads
    state = {}
    if self.mode == 'train':
      state = Decisions.empty((batch, self.n_heads, self.n_hashes, length))
    elif self.mode == 'predict':
      state = attention.empty_kv_cache(batch, self.max_len, self.n_heads, d_head,
                                       n_hashes=self.n_hashes)
    return self._projections(('wqk', 'wv'), d_model, rng), state

  def hash(self, qk, rng, n_buckets):
    """Buckets [batch, n_heads, n_hashes, length] of qk [batch, length, n_heads, d_head]."""
    batch, length, n_heads, d_head = qk.shape
    if n_buckets == 1:
      return jnp.zeros((batch, n_heads, self.n_hashes, length), jnp.int32)
    rotations = jax.random.normal(rng, (n_heads, d_head, self.n_hashes, n_buckets // 2))
    rotated = jnp.einsum('blhd,hdrk->bhrlk', qk, rotations)
    return jnp.argmax(jnp.concatenate([rotated, -rotated], -1), axis=-1).astype(jnp.int32)

  def _rotation_rng(self, rng):
    if self.mode == 'train':
      if rng is None:
        raise ValueError("LSHSelfAttention in 'train' mode needs an rng (hash rotations)")
      return jax.random.split(rng)[0]
    return jax.random.key(self.hash_seed)

  def forward(self, weights, state, x, rng, position):
    self._check(x)
    qk = self._heads(x, weights['wqk'])
    v = self._heads(x, weights['wv'])
    n_buckets = self._buckets_for(self.max_len if self.mode == 'predict' else x.shape[1])
    buckets = self.hash(qk, self._rotation_rng(rng), n_buckets)
    if self.mode == 'predict':
      return self._decode(weights, state, qk, v, buckets, position.start)
    if self.mode == 'train':
      buckets = replayed_choices(state, buckets)
      state = Decisions.made(buckets)
    dropout_rng = None if rng is None else jax.random.split(rng)[1]
    out = self._attend(qk, v, buckets, dropout_rng)
    return self._output(weights, out), state

  def _attend(self, qk, v, buckets, rng):
    batch, length, n_heads, d_head = qk.shape
    c = self.chunk_len
    n = -(-length // c)
    padded = n * c
    pad = [(0, 0), (0, padded - length), (0, 0), (0, 0)]
    qk = jnp.transpose(jnp.pad(qk, pad), (0, 2, 1, 3))                 # [b, h, Lp, d]
    v = jnp.transpose(jnp.pad(v, pad), (0, 2, 1, 3))
    positions = jnp.arange(padded)
    buckets = jnp.pad(buckets, [(0, 0), (0, 0), (0, 0), (0, padded - length)],
                      constant_values=jnp.iinfo(jnp.int32).max // (2 * padded))
    order = jnp.argsort(buckets * padded + positions, axis=-1)          # [b, h, r, Lp]
    gather = lambda t: jnp.take_along_axis(t[:, :, None], order[..., None], axis=3)
    sorted_qk, sorted_v = gather(qk), gather(v)                         # [b, h, r, Lp, d]
    sorted_pos = order
    shape = (batch, n_heads, self.n_hashes, n, c)
    queries = sorted_qk.reshape(shape + (d_head,)) / jnp.sqrt(
        jnp.asarray(d_head, accumulation_dtype(sorted_qk.dtype)))
    keys = _unit_norm(sorted_qk)
    flat = lambda t, fill: _look_back(t.reshape((-1, n, c) + t.shape[4:]), self.n_chunks_before,
                                      fill).reshape(shape[:3] + (n, -1) + t.shape[4:])
    key_windows = flat(keys, 0.0)
    value_windows = flat(sorted_v, 0.0)
    query_pos = sorted_pos.reshape(shape)
    key_pos = flat(sorted_pos[..., None], -1)[..., 0]                   # [b, h, r, n, w]
    logits = jnp.einsum('bhrnqd,bhrnkd->bhrnqk', queries, key_windows)
    visible = (key_pos[..., None, :] >= 0) & (key_pos[..., None, :] < length)
    if self.causal:
      visible = visible & (key_pos[..., None, :] <= query_pos[..., None])
    is_self = key_pos[..., None, :] == query_pos[..., None]
    logits = jnp.where(is_self, attention.SELF_LOGIT, logits)
    logits = jnp.where(visible, logits, _INVALID)
    lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    probs = self._dropout(jnp.exp(logits - lse), rng)
    out = jnp.einsum('bhrnqk,bhrnkd->bhrnqd', probs.astype(value_windows.dtype), value_windows)
    out = out.reshape(batch, n_heads, self.n_hashes, padded, d_head)
    lse = lse.reshape(batch, n_heads, self.n_hashes, padded)
    undo = jnp.argsort(order, axis=-1)
    out = jnp.take_along_axis(out, undo[..., None], axis=3)
    lse = jnp.take_along_axis(lse, undo, axis=3)
    round_weights = jax.nn.softmax(lse, axis=2)[..., None].astype(out.dtype)  # combine rounds
    out = jnp.sum(out * round_weights, axis=2)                           # [b, h, Lp, d]
    return jnp.transpose(out, (0, 2, 1, 3))[:, :length]

  def _decode(self, weights, state, qk, v, buckets, position):
    query_buckets = jnp.transpose(buckets, (0, 3, 1, 2))                 # [b, l, h, r]
    cache, overflow = state.append(position, _unit_norm(qk), v, query_buckets)
    out = attention.cached_attention(qk, cache.keys, cache.values, position,
                                     query_buckets=query_buckets, key_buckets=cache.buckets,
                                     mask_self=True)
    return self._output(weights, poison_if(overflow, out)), cache
