"""Stack semantics of every combinator, nesting, and weight sharing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl
from conftest import sig


def run(layer, inputs, rng=None):
  signature = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), inputs)
  weights, state = layer.init(signature, rng=jax.random.key(0))
  return layer.apply(weights, state, inputs, rng=rng)[0]


a = jnp.arange(6.0).reshape(2, 3)
b = 10.0 + jnp.arange(6.0).reshape(2, 3)


def test_serial_dup_add_doubles():
  layer = tl.Serial(tl.Dup(), tl.Add())
  assert (layer.n_in, layer.n_out) == (1, 1)
  np.testing.assert_allclose(run(layer, a), 2 * a)


def test_select_copies_and_reorders():
  layer = tl.Select([0, 0, 1])
  assert (layer.n_in, layer.n_out) == (2, 3)
  out = run(layer, (a, b))
  for got, want in zip(out, (a, a, b)):
    np.testing.assert_array_equal(got, want)


def test_select_with_larger_n_in_drops_the_rest():
  layer = tl.Select([1], n_in=3)
  assert (layer.n_in, layer.n_out) == (3, 1)
  np.testing.assert_array_equal(run(layer, (a, b, a)), b)


def test_branch_gives_each_branch_the_input():
  square = tl.Fn('Square', lambda x: x * x)
  layer = tl.Branch(square, tl.Relu())
  out = run(layer, a - 2.0)
  np.testing.assert_allclose(out[0], (a - 2.0) ** 2)
  np.testing.assert_allclose(out[1], jnp.maximum(a - 2.0, 0))


def test_branch_none_is_identity_and_arity_is_max():
  layer = tl.Branch(None, tl.Add())
  assert (layer.n_in, layer.n_out) == (2, 2)
  out = run(layer, (a, b))
  np.testing.assert_array_equal(out[0], a)
  np.testing.assert_array_equal(out[1], a + b)


def test_parallel_runs_side_by_side():
  layer = tl.Parallel(tl.Fn('Neg', lambda x: -x), None)
  out = run(layer, (a, b))
  np.testing.assert_array_equal(out[0], -a)
  np.testing.assert_array_equal(out[1], b)


def test_residual_adds_input():
  layer = tl.Residual(tl.Fn('Triple', lambda x: 3 * x))
  np.testing.assert_allclose(run(layer, a), 4 * a)


def test_residual_with_shortcut_layer():
  layer = tl.Residual(tl.Fn('Triple', lambda x: 3 * x),
                      shortcut=tl.Fn('Neg', lambda x: -x))
  np.testing.assert_allclose(run(layer, a), 2 * a)


def test_residual_passes_extra_outputs_through():
  # (x, m) -> (x + x*m, m)
  layer = tl.Residual(tl.Fn('MulKeep', lambda x, m: (x * m, m), n_out=2))
  assert (layer.n_in, layer.n_out) == (2, 2)
  out = run(layer, (a, b))
  np.testing.assert_allclose(out[0], a + a * b)
  np.testing.assert_array_equal(out[1], b)


def test_swap_drop_concatenate():
  out = run(tl.Swap(), (a, b))
  np.testing.assert_array_equal(out[0], b)
  np.testing.assert_array_equal(out[1], a)
  np.testing.assert_array_equal(run(tl.Serial(tl.Drop(), tl.Fn('Id', lambda x: x)), (a, b)), b)
  np.testing.assert_array_equal(run(tl.Concatenate(), (a, b)), jnp.concatenate([a, b], -1))
  cat3 = tl.Concatenate(n_items=3, axis=0)
  assert cat3.n_in == 3
  assert run(cat3, (a, b, a)).shape == (6, 3)


def test_serial_arity_from_stack_depth():
  layer = tl.Serial(tl.Add(), tl.Add())  # a b c -> a+b+c
  assert (layer.n_in, layer.n_out) == (3, 1)
  np.testing.assert_allclose(run(layer, (a, b, a)), 2 * a + b)
  assert tl.Serial(tl.Dup(), tl.Dup()).n_out == 3


def test_nested_combinators():
  double = tl.Serial(tl.Dup(), tl.Add())
  layer = tl.Serial(
      tl.Branch(double, tl.Serial(double, double)),   # x -> 2x 4x
      tl.Parallel(tl.Residual(double), None),         # -> 6x 4x
      tl.Add())                                       # -> 10x
  np.testing.assert_allclose(run(layer, a), 10 * a)


def test_fn_arity_and_multiple_outputs():
  layer = tl.Fn('SumDiff', lambda x, y: (x + y, x - y), n_out=2)
  assert (layer.n_in, layer.n_out) == (2, 2)
  s, d = run(layer, (a, b))
  np.testing.assert_array_equal(s, a + b)
  np.testing.assert_array_equal(d, a - b)


def test_weight_sharing_stores_once_and_sums_gradient():
  dense = tl.Dense(3, use_bias=False)
  model = tl.Serial(dense, dense)
  weights, state = model.init(sig(2, 3), rng=jax.random.key(0))
  assert weights[1] == ()
  assert len(jax.tree_util.tree_leaves(weights)) == 1
  w = weights[0]['w']
  x = jax.random.normal(jax.random.key(1), (2, 3))
  np.testing.assert_allclose(model.apply(weights, state, x)[0], x @ w.T @ w.T, rtol=1e-5)

  def loss(ws):
    return jnp.sum(model.apply(ws, state, x)[0])
  grad = jax.grad(loss)(weights)[0]['w']
  want = jax.grad(lambda m: jnp.sum(x @ m.T @ m.T))(w)
  np.testing.assert_allclose(grad, want, rtol=1e-5)


def test_weight_sharing_across_nesting_levels():
  dense = tl.Dense(3)
  model = tl.Serial(dense, tl.Serial(tl.Relu(), dense))
  weights, state = model.init(sig(2, 3), rng=jax.random.key(0))
  assert weights[1][1] == ()
  w, bias = weights[0]['w'], weights[0]['b']
  x = jax.random.normal(jax.random.key(1), (2, 3))
  want = jax.nn.relu(x @ w.T + bias) @ w.T + bias
  np.testing.assert_allclose(model.apply(weights, state, x)[0], want, rtol=1e-5)


def test_scan_cumulative_sum_and_final_carry():
  step = tl.Fn('CumSum', lambda x, c: (x + c, x + c), n_out=2)
  layer = tl.Scan(step, axis=1, n_carry=1)
  xs = jnp.arange(12.0).reshape(2, 6)
  ys, carry = run(layer, (xs, jnp.zeros((2,))))
  np.testing.assert_allclose(ys, jnp.cumsum(xs, axis=1))
  np.testing.assert_allclose(carry, xs.sum(1))


def test_scan_predict_keeps_carry_across_calls():
  step = tl.Fn('CumSum', lambda x, c: (x + c, x + c), n_out=2)
  layer = tl.Scan(step, axis=1, n_carry=1, mode='predict')
  xs = jnp.arange(12.0).reshape(2, 6)
  weights, state = layer.init((sig(2, 3), sig(2)), rng=jax.random.key(0))
  outs = []
  for t in range(0, 6, 3):
    (ys, _), state = layer.apply(weights, state, (xs[:, t:t + 3], jnp.zeros((2,))))
    outs.append(ys)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), jnp.cumsum(xs, axis=1))


def test_chunk_equals_unchunked():
  ff = tl.Serial(tl.Dense(7), tl.Relu(), tl.Dense(4))
  x = jax.random.normal(jax.random.key(3), (3, 5, 4))
  weights, state = ff.init(sig(3, 5, 4), rng=jax.random.key(0))
  chunked = tl.Chunk(ff, size=4)   # 15 positions: padded to 16
  chunk_weights, chunk_state = chunked.init(sig(3, 5, 4), rng=jax.random.key(0))
  assert jax.tree_util.tree_structure(chunk_weights[0]) == jax.tree_util.tree_structure(weights)
  out = chunked.apply((weights,), chunk_state, x)[0]
  np.testing.assert_allclose(out, ff.apply(weights, state, x)[0], rtol=1e-5, atol=1e-6)


def test_cond_runs_the_chosen_branch():
  positive = tl.Fn('AllPositive', lambda x: jnp.all(x > 0))
  layer = tl.Cond(positive, tl.Fn('Double', lambda x: 2 * x), tl.Fn('Neg', lambda x: -x))
  np.testing.assert_allclose(run(layer, a + 1), 2 * (a + 1))
  np.testing.assert_allclose(run(layer, a - 1), -(a - 1))
  jitted = jax.jit(lambda x: layer.apply(((), (), ()), ((), (), ()), x)[0])
  np.testing.assert_allclose(jitted(a + 1), 2 * (a + 1))


def test_cache_replays_in_predict_mode():
  counter = tl.Fn('AddOne', lambda x: x + 1)
  layer = tl.Cache(counter, mode='predict')
  weights, state = layer.init(sig(2, 3), rng=jax.random.key(0))
  out, state = layer.apply(weights, state, a)
  np.testing.assert_allclose(out, a + 1)
  out, state = layer.apply(weights, state, b)   # replays the first result
  np.testing.assert_allclose(out, a + 1)
  train = tl.Cache(counter)
  np.testing.assert_allclose(run(train, b), b + 1)
