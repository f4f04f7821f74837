"""SRU: the scan equals a Python loop; predict step by step equals the full sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl
from conftest import sig


def python_loop_sru(weights, x, highway_scale=1.0, candidate_bias=False):
  x = np.asarray(x, np.float64)
  w, b = np.asarray(weights['w'], np.float64), np.asarray(weights['b'], np.float64)
  n = x.shape[-1]
  b_y, b = (b[:n], b[n:]) if candidate_bias else (0.0, b)
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  c = np.zeros((x.shape[0], n))
  out = []
  for t in range(x.shape[1]):
    u = x[:, t] @ w.T
    y, f, r = u[:, :n] + b_y, sigmoid(u[:, n:2 * n] + b[:n]), sigmoid(u[:, 2 * n:] + b[n:])
    c = f * c + (1 - f) * y
    out.append(r * c + (1 - r) * x[:, t] * highway_scale)
  return np.stack(out, 1)


@pytest.mark.parametrize('highway_scale, candidate_bias', [(1.0, False), (3 ** 0.5, True)])
def test_sru_scan_equals_python_loop(highway_scale, candidate_bias):
  layer = tl.SRU(8, highway_scale=highway_scale, candidate_bias=candidate_bias)
  x = jax.random.normal(jax.random.key(1), (3, 17, 8))
  weights, state = layer.init(sig(3, 17, 8), rng=jax.random.key(0))
  assert weights['b'].shape == ((24,) if candidate_bias else (16,))
  # Non-zero biases everywhere, so that each one's place is checked.
  weights = dict(weights, b=jax.random.normal(jax.random.key(2), weights['b'].shape))
  np.testing.assert_allclose(layer.apply(weights, state, x)[0],
                             python_loop_sru(weights, x, highway_scale, candidate_bias),
                             rtol=1e-5, atol=1e-5)


def test_sru_predict_step_by_step_equals_full_sequence():
  full = tl.SRU(8, mode='eval')
  x = jax.random.normal(jax.random.key(1), (2, 9, 8))
  weights, state = full.init(sig(2, 9, 8), rng=jax.random.key(0))
  want = full.apply(weights, state, x)[0]
  predict = tl.SRU(8, mode='predict')
  _, carry = predict.init(sig(2, 1, 8), rng=jax.random.key(0))
  outs = []
  for t in range(9):
    y, carry = predict.apply(weights, carry, x[:, t:t + 1])
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), want, rtol=1e-5, atol=1e-6)


def test_sru_is_causal_and_differentiable():
  layer = tl.SRU(4)
  x = jax.random.normal(jax.random.key(1), (1, 10, 4))
  weights, state = layer.init(sig(1, 10, 4), rng=jax.random.key(0))
  y = layer.apply(weights, state, x)[0]
  y2 = layer.apply(weights, state, x.at[:, 6:].set(1.0))[0]
  np.testing.assert_allclose(y[:, :6], y2[:, :6], rtol=1e-6)
  grads = jax.jit(jax.grad(lambda w: jnp.sum(layer.apply(w, state, x)[0] ** 2)))(weights)
  assert float(jnp.abs(grads['w']).sum()) > 0
  assert tl.count_parameters(weights) == 4 * 12 + 8
