"""Chunked and LSH attention against full-attention references; decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl
from conftest import sig

D, H = 16, 2


def projections(x, w, names):
  return [tl.attention.split_heads(x @ w[n].T, H) for n in names]


def reference(q, k, v, visible, self_logit=False):
  """Full attention with an explicit [length_q, length_k] visibility mask."""
  d_head = q.shape[-1]
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(jnp.float32(d_head))
  if self_logit:
    logits = jnp.where(jnp.eye(q.shape[1], dtype=bool), tl.attention.SELF_LOGIT, logits)
  logits = jnp.where(visible, logits, -1e9)
  return jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(logits, -1), v)


def output(w, heads):
  return tl.attention.merge_heads(heads) @ w['wo'].T + w['bo']


@pytest.mark.parametrize('chunk_len, n_before', [(16, 1), (4, 1), (3, 2)])
def test_chunked_attention_equals_windowed_reference(chunk_len, n_before):
  layer = tl.ChunkedCausalAttention(H, chunk_len=chunk_len, n_chunks_before=n_before, mode='eval')
  x = jax.random.normal(jax.random.key(1), (2, 10, D))
  w, state = layer.init(sig(2, 10, D), rng=jax.random.key(0))
  wq, wk, wv = jnp.split(w['wqkv'], 3, axis=0)
  q, k, v = projections(x, dict(wq=wq, wk=wk, wv=wv), ('wq', 'wk', 'wv'))
  pos = np.arange(10)
  first = (pos // chunk_len - n_before) * chunk_len
  visible = (pos[None, :] <= pos[:, None]) & (pos[None, :] >= first[:, None])
  want = output(w, reference(q, k, v, visible))
  np.testing.assert_allclose(layer.apply(w, state, x)[0], want, rtol=1e-4, atol=1e-5)


def test_chunked_attention_with_one_chunk_is_full_causal_attention():
  layer = tl.ChunkedCausalAttention(H, chunk_len=32, mode='eval')
  x = jax.random.normal(jax.random.key(1), (2, 10, D))
  w, state = layer.init(sig(2, 10, D), rng=jax.random.key(0))
  full = tl.CausalAttention(D, H, mode='eval')
  np.testing.assert_allclose(layer.apply(w, state, x)[0], full.apply(w, {}, x)[0],
                             rtol=1e-4, atol=1e-5)


def test_chunked_attention_predict_equals_eval():
  evaluate = tl.ChunkedCausalAttention(H, chunk_len=4, n_chunks_before=1, mode='eval')
  x = jax.random.normal(jax.random.key(1), (2, 11, D))
  w, state = evaluate.init(sig(2, 11, D), rng=jax.random.key(0))
  want = evaluate.apply(w, state, x)[0]
  predict = tl.ChunkedCausalAttention(H, chunk_len=4, n_chunks_before=1, max_len=16,
                                      mode='predict')
  _, cache = predict.init(sig(2, 1, D), rng=jax.random.key(0))
  outs = []
  for t in range(11):
    y, cache = predict.apply(w, cache, x[:, t:t + 1])
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), want, rtol=1e-4, atol=1e-5)


def lsh_reference(layer, w, x):
  """One bucket, one chunk: full causal attention with shared QK and the self rule."""
  qk, v = projections(x, w, ('wqk', 'wv'))
  keys = qk / jnp.linalg.norm(qk, axis=-1, keepdims=True)
  n = x.shape[1]
  return output(w, reference(qk, keys, v, np.tril(np.ones((n, n), bool)), self_logit=True))


def test_lsh_with_one_bucket_and_one_chunk_is_full_causal_attention():
  layer = tl.LSHSelfAttention(H, chunk_len=16, n_hashes=1, n_buckets=1, mode='eval')
  x = jax.random.normal(jax.random.key(1), (2, 12, D))
  w, state = layer.init(sig(2, 12, D), rng=jax.random.key(0))
  np.testing.assert_allclose(layer.apply(w, state, x)[0], lsh_reference(layer, w, x),
                             rtol=1e-4, atol=1e-5)


def test_lsh_rounds_combine_and_chunks_never_see_the_future():
  layer = tl.LSHSelfAttention(H, chunk_len=4, n_hashes=3, n_buckets=4, mode='eval')
  x = jax.random.normal(jax.random.key(1), (2, 16, D))
  w, state = layer.init(sig(2, 16, D), rng=jax.random.key(0))
  y = layer.apply(w, state, x)[0]
  assert y.shape == x.shape and np.isfinite(y).all()
  # With one chunk covering everything, LSH is exactly causal.
  one_chunk = tl.LSHSelfAttention(H, chunk_len=16, n_hashes=2, n_buckets=4, mode='eval')
  a = one_chunk.apply(w, state, x)[0]
  b = one_chunk.apply(w, state, x.at[:, 10:].set(5.0))[0]
  np.testing.assert_allclose(a[:, :10], b[:, :10], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(a, lsh_reference(one_chunk, w, x), rtol=1e-4, atol=1e-5)


def test_lsh_buckets_follow_the_rng_and_are_replayed():
  layer = tl.LSHSelfAttention(H, chunk_len=4, n_hashes=2, n_buckets=4)
  x = jax.random.normal(jax.random.key(1), (1, 16, D))
  w, state = layer.init(sig(1, 16, D), rng=jax.random.key(0))
  y, recorded = layer.apply(w, state, x, rng=jax.random.key(5))
  assert recorded.choices.shape == (1, H, 2, 16)
  y_again, _ = layer.apply(w, state, x, rng=jax.random.key(5))
  np.testing.assert_array_equal(y, y_again)
  replayed = layer.apply(w, tl.with_replay(recorded), x, rng=jax.random.key(6))[1]
  np.testing.assert_array_equal(replayed.choices, recorded.choices)


def test_lsh_predict_with_one_bucket_equals_eval():
  evaluate = tl.LSHSelfAttention(H, chunk_len=16, n_hashes=1, n_buckets=1, mode='eval')
  x = jax.random.normal(jax.random.key(1), (2, 9, D))
  w, state = evaluate.init(sig(2, 9, D), rng=jax.random.key(0))
  want = evaluate.apply(w, state, x)[0]
  predict = tl.LSHSelfAttention(H, chunk_len=16, n_hashes=1, n_buckets=1, max_len=16,
                                mode='predict')
  _, cache = predict.init(sig(2, 1, D), rng=jax.random.key(0))
  outs = []
  for t in range(9):
    y, cache = predict.apply(w, cache, x[:, t:t + 1])
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), want, rtol=1e-4, atol=1e-5)


def test_lsh_predict_with_buckets_decodes():
  predict = tl.LSHSelfAttention(H, chunk_len=4, n_hashes=2, n_buckets=4, max_len=16,
                                mode='predict')
  w, cache = predict.init(sig(1, 1, D), rng=jax.random.key(0))
  for t in range(6):
    y, cache = predict.apply(w, cache, jax.random.normal(jax.random.key(t), (1, 1, D)))
    assert np.isfinite(y).all()
  assert int(cache.position) == 6


def test_reversible_gradient_with_lsh_inside_equals_plain():
  def model(memory_saving):
    return tl.ReversibleSerial(
        *tl.ReversibleBlock(f=[tl.LayerNorm(), tl.LSHSelfAttention(H, chunk_len=4, n_buckets=4)],
                            g=[tl.LayerNorm(), tl.Dense(D)]),
        memory_saving=memory_saving)
  x = (jax.random.normal(jax.random.key(1), (1, 16, D)),) * 2
  reversible, plain = model(True), model(False)
  w, state = reversible.init((sig(1, 16, D), sig(1, 16, D)), rng=jax.random.key(0))
  loss = lambda m: lambda w: jnp.sum(m.apply(w, state, x, rng=jax.random.key(3))[0][0] ** 2)
  for a, b in zip(jax.tree_util.tree_leaves(jax.jit(jax.grad(loss(reversible)))(w)),
                  jax.tree_util.tree_leaves(jax.jit(jax.grad(loss(plain)))(w))):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)


def test_lsh_gradient_is_finite_with_zero_inputs():
  layer = tl.LSHSelfAttention(H, chunk_len=4, n_buckets=2, causal=False)
  x = jnp.zeros((1, 6, D)).at[:, :3].set(jax.random.normal(jax.random.key(1), (1, 3, D)))
  w, state = layer.init(sig(1, 6, D), rng=jax.random.key(0))
  grads = jax.jit(jax.grad(lambda w: jnp.sum(layer.apply(w, state, x, rng=jax.random.key(2))[0])))(w)
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
