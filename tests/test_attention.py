"""Attention: masks, a numpy reference, the predict-mode cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl
from sparse_trax import kernels
from conftest import sig


def reference_attention(x_q, x_kv, weights, n_heads, mask):
  """Plain numpy multi-head attention; mask [length_q, length_k] or [b, q, k]."""
  x_q, x_kv = np.asarray(x_q, np.float64), np.asarray(x_kv, np.float64)
  # Matrices are stored out-major [d_out, d_in]; transpose to x @ w form.
  w = {k: np.asarray(v, np.float64).T for k, v in weights.items()}
  if 'wqkv' in w:   # self-attention stacks the q, k, v rows
    w['wq'], w['wk'], w['wv'] = np.split(w.pop('wqkv'), 3, axis=1)
  batch, lq, d = x_q.shape
  dh = d // n_heads
  q = (x_q @ w['wq']).reshape(batch, lq, n_heads, dh)
  k = (x_kv @ w['wk']).reshape(batch, -1, n_heads, dh)
  v = (x_kv @ w['wv']).reshape(batch, -1, n_heads, dh)
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(dh)
  mask = np.broadcast_to(mask if mask.ndim == 3 else mask[None], (batch,) + logits.shape[2:])
  logits = np.where(mask[:, None], logits, -1e30)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.einsum('bhqk,bkhd->bqhd', probs, v).reshape(batch, lq, d)
  return out @ w['wo'] + w['bo']


def test_causal_attention_matches_reference():
  layer = tl.CausalAttention(8, n_heads=2, mode='eval')
  x = jax.random.normal(jax.random.key(1), (2, 5, 8))
  weights, state = layer.init(sig(2, 5, 8), rng=jax.random.key(0))
  y = layer.apply(weights, state, x)[0]
  want = reference_attention(x, x, weights, 2, np.tril(np.ones((5, 5), bool)))
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


def test_causal_attention_does_not_look_ahead():
  layer = tl.CausalAttention(8, n_heads=2)
  x = jax.random.normal(jax.random.key(1), (1, 6, 8))
  weights, state = layer.init(sig(1, 6, 8), rng=jax.random.key(0))
  y1 = layer.apply(weights, state, x)[0]
  y2 = layer.apply(weights, state, x.at[:, 4:].set(9.0))[0]
  np.testing.assert_allclose(y1[:, :4], y2[:, :4], rtol=1e-6)
  assert not np.allclose(y1[:, 4:], y2[:, 4:])


def test_attention_padding_mask():
  layer = tl.Attention(8, n_heads=4, mode='eval')
  x = jax.random.normal(jax.random.key(1), (2, 5, 8))
  mask = jnp.array([[True] * 5, [True, True, True, False, False]])
  weights, state = layer.init((sig(2, 5, 8), sig(2, 5, dtype=jnp.bool_)), rng=jax.random.key(0))
  (y, mask_out), _ = layer.apply(weights, state, (x, mask))
  np.testing.assert_array_equal(mask_out, mask)
  want = reference_attention(x, x, weights, 4, np.asarray(mask)[:, None, :].repeat(5, 1))
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
  # Changing padded positions leaves the real ones unchanged.
  (y2, _), _ = layer.apply(weights, state, (x.at[1, 3:].set(7.0), mask))
  np.testing.assert_allclose(y[1, :3], y2[1, :3], rtol=1e-5)


def test_enc_dec_attention_matches_reference():
  layer = tl.EncDecAttention(8, n_heads=2, mode='eval')
  x = jax.random.normal(jax.random.key(1), (2, 3, 8))
  enc = jax.random.normal(jax.random.key(2), (2, 6, 8))
  mask = jnp.array([[True] * 6, [True] * 4 + [False] * 2])
  signature = (sig(2, 3, 8), sig(2, 6, 8), sig(2, 6, dtype=jnp.bool_))
  weights, state = layer.init(signature, rng=jax.random.key(0))
  (y, enc_out, _), _ = layer.apply(weights, state, (x, enc, mask))
  np.testing.assert_array_equal(enc_out, enc)
  want = reference_attention(x, enc, weights, 2, np.asarray(mask)[:, None, :].repeat(3, 1))
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('chunk', [1, 2])
def test_causal_attention_predict_equals_eval(chunk):
  x = jax.random.normal(jax.random.key(1), (2, 6, 8))
  eval_layer = tl.CausalAttention(8, n_heads=2, mode='eval')
  weights, state = eval_layer.init(sig(2, 6, 8), rng=jax.random.key(0))
  full = eval_layer.apply(weights, state, x)[0]
  predict = tl.CausalAttention(8, n_heads=2, max_len=10, mode='predict')
  _, cache = predict.init(sig(2, chunk, 8), rng=jax.random.key(0))
  assert cache.layers.keys.shape == (2, 10, 2, 4) and cache.layers.max_len == 10
  outs = []
  step = jax.jit(predict.apply)
  for t in range(0, 6, chunk):
    y, cache = step(weights, cache, x[:, t:t + chunk])
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-5, atol=1e-5)
  assert int(cache.position) == 6


def test_enc_dec_attention_predict_caches_keys():
  layer = tl.EncDecAttention(8, n_heads=2, mode='predict')
  enc = jax.random.normal(jax.random.key(2), (1, 4, 8))
  mask = jnp.ones((1, 4), bool)
  x = jax.random.normal(jax.random.key(1), (1, 1, 8))
  weights, state = layer.init((sig(1, 1, 8), sig(1, 4, 8), sig(1, 4, dtype=jnp.bool_)),
                              rng=jax.random.key(0))
  (y1, _, _), state = layer.apply(weights, state, (x, enc, mask))
  assert bool(state.layers.filled)
  (y2, _, _), state = layer.apply(weights, state, (x, enc * 0, mask))  # cached keys used
  np.testing.assert_allclose(y1, y2, rtol=1e-6)


def test_attention_dropout_only_in_train():
  x = jax.random.normal(jax.random.key(1), (1, 6, 8))
  train = tl.CausalAttention(8, 2, dropout=0.5, mode='train')
  weights, state = train.init(sig(1, 6, 8), rng=jax.random.key(0))
  y1 = train.apply(weights, state, x, rng=jax.random.key(1))[0]
  y2 = train.apply(weights, state, x, rng=jax.random.key(2))[0]
  assert not np.allclose(y1, y2)
  evaluate = tl.CausalAttention(8, 2, dropout=0.5, mode='eval')
  np.testing.assert_array_equal(evaluate.apply(weights, state, x, rng=jax.random.key(1))[0],
                                evaluate.apply(weights, state, x, rng=jax.random.key(2))[0])


def test_heads_must_divide_width():
  with pytest.raises(ValueError, match='divisible'):
    tl.CausalAttention(10, n_heads=3)


def test_cached_attention_over_several_blocks_equals_full_attention():
  batch, heads, d_head, slots = 2, 2, 4, 384      # three blocks of 128
  keys = jax.random.normal(jax.random.key(1), (batch, slots, heads, d_head))
  values = jax.random.normal(jax.random.key(2), (batch, slots, heads, d_head))
  # One query takes a window of 32, 64, ... slots (no loop); several loop over blocks.
  for position, length in [(0, 1), (31, 1), (32, 1), (127, 1), (128, 1), (200, 5), (250, 10),
                           (255, 1), (256, 1), (383, 1)]:
    q = jax.random.normal(jax.random.key(position), (batch, length, heads, d_head))
    got = jax.jit(tl.attention.cached_attention)(q, keys, values, jnp.int32(position))
    filled = position + length
    mask = tl.causal_mask(length, filled, offset=position)[None, None]
    want = tl.dot_product_attention(q, keys[:, :filled], values[:, :filled], mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_one_query_window_equals_the_block_loop_with_local_and_bucket_masks():
  batch, heads, d_head, slots, rounds = 1, 2, 4, 512, 2
  keys = jax.random.normal(jax.random.key(1), (batch, slots, heads, d_head))
  values = jax.random.normal(jax.random.key(2), (batch, slots, heads, d_head))
  key_buckets = jax.random.randint(jax.random.key(3), (batch, slots, heads, rounds), 0, 3)
  for position in (5, 40, 130, 300, 511):
    q = jax.random.normal(jax.random.key(position), (batch, 2, heads, d_head))
    first = jnp.array([max(0, position - 70)] * 2, jnp.int32)
    query_buckets = key_buckets[:, position - 1:position + 1]
    # The block loop answers both queries; the last one alone takes the window path.
    both = tl.attention.cached_attention(q, keys, values, jnp.int32(position - 1),
                                         first_visible=first, query_buckets=query_buckets,
                                         key_buckets=key_buckets, mask_self=True)
    last = tl.attention.cached_attention(q[:, 1:], keys, values, jnp.int32(position),
                                         first_visible=first[1:],
                                         query_buckets=query_buckets[:, 1:],
                                         key_buckets=key_buckets, mask_self=True)
    np.testing.assert_allclose(last, both[:, 1:], rtol=1e-5, atol=1e-5)


def test_cache_rounds_up_to_whole_blocks():
  cache = tl.attention.empty_kv_cache(1, 300, 2, 4)
  assert cache.keys.shape == (1, 384, 2, 4) and cache.max_len == 300
  assert tl.attention.empty_kv_cache(1, 10, 2, 4).keys.shape == (1, 10, 2, 4)


@pytest.mark.skipif(not kernels.available(), reason='the fused CPU kernels were not built')
@pytest.mark.parametrize('batch, slots, heads, d_head', [(1, 64, 4, 16), (2, 300, 3, 5),
                                                         (1, 2048, 16, 64)])
def test_cached_attention_kernel_equals_the_windowed_softmax(batch, slots, heads, d_head):
  keys_rng, values_rng, q_rng = jax.random.split(jax.random.key(0), 3)
  keys = jax.random.normal(keys_rng, (batch, slots, heads, d_head))
  values = jax.random.normal(values_rng, (batch, slots, heads, d_head))
  query = jax.random.normal(q_rng, (batch, heads, d_head)) * 2.0

  def reference(query, first, position):
    """softmax over slots first..position by numpy, in float64."""
    q, k, v = (np.asarray(a, np.float64) for a in (query, keys, values))
    out = np.zeros(q.shape)
    if position < first:
      return out
    logits = np.einsum('bhd,bkhd->bkh', q, k[:, first:position + 1])
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return np.einsum('bkh,bkhd->bhd', probs, v[:, first:position + 1])

  fused = jax.jit(lambda q, f, p: kernels.cached_attention(q, keys, values, f, p, reference=jnp.zeros_like))
  for first, position in [(0, 0), (0, 31), (0, 32), (3, slots // 2), (0, slots - 1),
                          (slots - 5, slots - 1), (7, 6), (0, slots + 10)]:
    got = fused(query, jnp.int32(first), jnp.int32(position))
    np.testing.assert_allclose(got, reference(query, first, min(position, slots - 1)),
                               rtol=2e-5, atol=2e-5, err_msg=f'{first}..{position}')


@pytest.mark.skipif(not kernels.available(), reason='the fused CPU kernels were not built')
def test_decoding_attention_runs_the_kernel_and_equals_the_switch():
  from sparse_trax.layers import attention  # pylint: disable=import-outside-toplevel
  keys, values = (jax.random.normal(jax.random.key(i), (2, 100, 2, 8)) for i in (1, 2))
  q = jax.random.normal(jax.random.key(3), (2, 1, 2, 8))
  one_query = jax.jit(lambda q, p: attention._one_query_attention(q, keys, values, p))  # pylint: disable=protected-access
  assert 'sparse_trax_cached_attention' in one_query.lower(q, jnp.int32(5)).as_text()
  # Buckets (LSH) keep the switch; its result is the kernel's where no bucket masks.
  buckets = jnp.zeros((2, 100, 2, 1), jnp.int32)
  switch = jax.jit(lambda q, p: attention._one_query_attention(  # pylint: disable=protected-access
      q, keys, values, p, query_buckets=buckets[:, :1], key_buckets=buckets))
  assert 'sparse_trax_cached_attention' not in switch.lower(q, jnp.int32(5)).as_text()
  for position in (0, 31, 40, 99):
    np.testing.assert_allclose(one_query(q, jnp.int32(position)),
                               switch(q, jnp.int32(position)), rtol=1e-5, atol=1e-6)
