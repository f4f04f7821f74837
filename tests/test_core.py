"""Core layers against plain numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl
from sparse_trax import kernels
from sparse_trax.layers.core import sinusoidal_table
from conftest import sig


def init_apply(layer, x, rng=None, signature=None):
  signature = signature or jax.ShapeDtypeStruct(x.shape, x.dtype)
  weights, state = layer.init(signature, rng=jax.random.key(0))
  return weights, layer.apply(weights, state, x, rng=rng)


def test_dense_shapes_and_values():
  x = jax.random.normal(jax.random.key(1), (2, 3, 4))
  weights, (y, _) = init_apply(tl.Dense(5), x)
  assert weights['w'].shape == (5, 4) and weights['b'].shape == (5,)
  np.testing.assert_allclose(y, x @ weights['w'].T + weights['b'], rtol=1e-5, atol=1e-6)
  weights, _ = init_apply(tl.Dense(5, use_bias=False), x)
  assert set(weights) == {'w'}


def test_embedding_looks_up_rows():
  ids = jnp.array([[1, 0, 3]], jnp.int32)
  weights, (y, _) = init_apply(tl.Embedding(4, 6), ids)
  assert y.shape == (1, 3, 6)
  np.testing.assert_array_equal(y[0, 2], weights['embedding'][3])


def test_layer_norm_normalizes():
  x = 3.0 + 5.0 * jax.random.normal(jax.random.key(1), (4, 16))
  _, (y, _) = init_apply(tl.LayerNorm(), x)
  np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.std(-1), 1.0, atol=1e-3)


def test_dropout_only_in_train():
  x = jnp.ones((100, 100))
  _, (y, _) = init_apply(tl.Dropout(0.5, mode='train'), x, rng=jax.random.key(3))
  zero_fraction = float(jnp.mean(y == 0))
  assert 0.4 < zero_fraction < 0.6
  np.testing.assert_allclose(jnp.mean(y), 1.0, atol=0.05)   # rescaled
  for mode in ('eval', 'predict'):
    _, (y, _) = init_apply(tl.Dropout(0.5, mode=mode), x, rng=jax.random.key(3))
    np.testing.assert_array_equal(y, x)


def test_dropout_in_train_needs_rng():
  with pytest.raises(tl.LayerError, match='needs an rng'):
    init_apply(tl.Dropout(0.5), jnp.ones((2, 2)))


def test_dropout_differs_per_rng_and_is_reproducible():
  layer = tl.Dropout(0.5)
  x = jnp.ones((10, 10))
  y1 = layer.apply({}, {}, x, rng=jax.random.key(1))[0]
  y2 = layer.apply({}, {}, x, rng=jax.random.key(2))[0]
  y1_again = layer.apply({}, {}, x, rng=jax.random.key(1))[0]
  assert not np.array_equal(y1, y2)
  np.testing.assert_array_equal(y1, y1_again)


def test_activations():
  x = jnp.linspace(-3, 3, 13)
  for layer, fn in [(tl.Relu(), lambda v: np.maximum(v, 0)),
                    (tl.Sigmoid(), lambda v: 1 / (1 + np.exp(-v))),
                    (tl.Tanh(), np.tanh),
                    (tl.Gelu(), lambda v: np.asarray(jax.nn.gelu(v))),
                    (tl.LogSoftmax(), lambda v: v - np.log(np.sum(np.exp(v))))]:
    _, (y, _) = init_apply(layer, x)
    np.testing.assert_allclose(y, fn(np.asarray(x)), rtol=1e-5, atol=1e-6)


def test_mean_and_argmax():
  x = jnp.array([[1.0, 5.0, 2.0], [7.0, 0.0, 1.0]])
  np.testing.assert_allclose(init_apply(tl.Mean(), x)[1][0], [8 / 3, 8 / 3], rtol=1e-6)
  np.testing.assert_allclose(init_apply(tl.Mean(axis=0), x)[1][0], [4.0, 2.5, 1.5])
  np.testing.assert_array_equal(init_apply(tl.ArgMax(), x)[1][0], [1, 0])


def test_positional_encoding_matches_table():
  x = jnp.zeros((2, 5, 8))
  _, (y, _) = init_apply(tl.PositionalEncoding(max_len=16), x)
  table = sinusoidal_table(16, 8)
  np.testing.assert_allclose(y[0], table[:5], atol=1e-6)
  np.testing.assert_allclose(table[3, 0], np.sin(3.0), atol=1e-6)
  np.testing.assert_allclose(table[3, 1], np.cos(3.0), atol=1e-6)


def test_positional_encoding_predict_counts_positions():
  layer = tl.PositionalEncoding(max_len=16, mode='predict')
  weights, state = layer.init(sig(2, 1, 8), rng=jax.random.key(0))
  full = tl.PositionalEncoding(max_len=16).apply({}, {}, jnp.zeros((2, 6, 8)))[0]
  outs = []
  for _ in range(6):
    y, state = layer.apply(weights, state, jnp.zeros((2, 1, 8)))
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-6)
  assert int(state.position) == 6


def test_positional_encoding_too_long():
  with pytest.raises(tl.LayerError, match='exceeds max_len'):
    init_apply(tl.PositionalEncoding(max_len=4), jnp.zeros((1, 5, 2)))


def test_shift_right():
  x = jnp.array([[1, 2, 3], [4, 5, 6]], jnp.int32)
  _, (y, _) = init_apply(tl.ShiftRight(), x)
  np.testing.assert_array_equal(y, [[0, 1, 2], [0, 4, 5]])
  _, (y, _) = init_apply(tl.ShiftRight(mode='predict'), x)
  np.testing.assert_array_equal(y, x)


def test_padding_mask():
  ids = jnp.array([[3, 4, 0]], jnp.int32)
  np.testing.assert_array_equal(init_apply(tl.PaddingMask(), ids)[1][0], [[True, True, False]])


@pytest.mark.skipif(not kernels.available(), reason='the fused CPU kernels were not built')
@pytest.mark.parametrize('shape', [(1, 1, 1024), (2, 2, 37), (4, 5), (1, 3, 8)])
def test_layer_norm_kernel_equals_xla_in_values_and_gradients(shape):
  layer = tl.LayerNorm()
  x = jax.random.normal(jax.random.key(0), shape) * 3.0 + 5.0
  d = shape[-1]
  weights = {'scale': jax.random.normal(jax.random.key(1), (d,)),
             'bias': jax.random.normal(jax.random.key(2), (d,))}
  apply = jax.jit(lambda w, x: layer.apply(w, {}, x)[0])
  assert 'sparse_trax_layer_norm' in apply.lower(weights, x).as_text()
  np.testing.assert_allclose(apply(weights, x), layer._normalize(weights, x),  # pylint: disable=protected-access
                             rtol=1e-5, atol=1e-5)

  def loss(normalize):
    return lambda w, x: jnp.sum(jnp.sin(normalize(w, x)) * jnp.arange(d))
  fused = jax.grad(loss(lambda w, x: layer.apply(w, {}, x)[0]), argnums=(0, 1))(weights, x)
  plain = jax.grad(loss(layer._normalize), argnums=(0, 1))(weights, x)  # pylint: disable=protected-access
  for a, b in zip(jax.tree_util.tree_leaves(fused), jax.tree_util.tree_leaves(plain)):
    # The forward passes differ by float32 rounding (~1e-6), which the gradient scales.
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_layer_norm_of_many_rows_or_bfloat16_stays_in_xla():
  layer = tl.LayerNorm()
  weights = layer.init(sig(1, 8), rng=jax.random.key(0))[0]
  for x in (jnp.ones((2, 3, 8)), jnp.ones((1, 1, 8), jnp.bfloat16)):
    text = jax.jit(lambda w, x: layer.apply(w, {}, x)[0]).lower(weights, x).as_text()
    assert 'sparse_trax_layer_norm' not in text
