"""SparseFF and BlockSparseFF: gather decoding == masked dense, masks, gradients, counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl
from sparse_trax import kernels
from sparse_trax.layers.sparse_ff import _gumbel_one_hot_mask
from conftest import sig

D, D_FF, N = 12, 48, 8     # 6 blocks of 8


def make(layer_class, mode, **kwargs):
  layer = layer_class(D_FF, mode=mode, **kwargs)
  weights, state = layer.init(sig(2, 5, D), rng=jax.random.key(0))
  return layer, weights, state


def x_random(seed=1, shape=(2, 5, D)):
  return jax.random.normal(jax.random.key(seed), shape)


def test_sparse_ff_eval_equals_numpy_reference():
  layer, w, state = make(tl.SparseFF, 'eval', n_elements_in_block=N)
  x = x_random()
  y = layer.apply(w, state, x)[0]
  xn = np.asarray(x, np.float64)
  wn = {k: np.asarray(v, np.float64) for k, v in w.items()}
  logits = xn @ wn['controller_in'].T @ wn['controller_out'].T + wn['controller_bias']
  chosen = logits.reshape(2, 5, D_FF // N, N).argmax(-1)
  mask = np.eye(N)[chosen].reshape(2, 5, D_FF)
  want = (np.maximum(xn @ wn['w1'].T + wn['b1'], 0) * mask) @ wn['w2'] + wn['b2']
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


def test_sparse_ff_predict_gather_equals_eval_masked_dense():
  evaluate, w, state = make(tl.SparseFF, 'eval', n_elements_in_block=N)
  predict = tl.SparseFF(D_FF, n_elements_in_block=N, mode='predict')
  # (1, 1) and (1, 3) gather the chosen rows; (2, 5) (a prefill) takes the masked product.
  for shape in [(2, 5, D), (1, 1, D), (1, 3, D)]:
    x = x_random(3, shape)
    _, decode_state = predict.init(sig(*shape), rng=jax.random.key(0))
    np.testing.assert_allclose(predict.apply(w, decode_state, x)[0],
                               evaluate.apply(w, state, x)[0], rtol=1e-5, atol=1e-5)


def all_equations(jaxpr):
  """Every equation of a jaxpr, descending into sub-jaxprs (jit, custom rules)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (tuple, list)) else [value]):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from all_equations(inner)


def test_sparse_ff_predict_reads_only_chosen_columns():
  predict = tl.SparseFF(D_FF, n_elements_in_block=N, mode="predict", decode_kernel=False)
  w, decode_state = predict.init(sig(1, 1, D), rng=jax.random.key(0))
  jaxpr = jax.make_jaxpr(lambda w, x: predict.apply(w, decode_state, x)[0])(w, jnp.ones((1, 1, D)))
  equations = list(all_equations(jaxpr.jaxpr))
  dot_shapes = [tuple(v.aval.shape) for eqn in equations if eqn.primitive.name == 'dot_general'
                for v in eqn.invars]
  assert dot_shapes, 'expected matrix products'
  assert (D, D_FF) not in dot_shapes and (D_FF, D) not in dot_shapes   # no full W1 or W2 product
  gathered = [tuple(eqn.outvars[0].aval.shape) for eqn in equations
              if eqn.primitive.name == 'gather']
  n_blocks = D_FF // N
  assert gathered.count((1, 1, n_blocks, D)) == 2   # B rows of W1 and B rows of W2


def test_hard_mask_has_one_unit_per_block():
  log_probs = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (3, 4, 6, N)))
  mask, index = _gumbel_one_hot_mask(log_probs, jax.random.key(1), 0.1, quant_prob=1.0)
  np.testing.assert_allclose(mask.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(mask.max(-1), 1.0, atol=1e-6)
  assert ((np.asarray(mask) > 1e-6).sum(-1) == 1).all()
  np.testing.assert_array_equal(np.asarray(mask).argmax(-1), index)
  soft, _ = _gumbel_one_hot_mask(log_probs, jax.random.key(1), 0.1, quant_prob=0.0)
  np.testing.assert_allclose(soft, jnp.exp(log_probs), rtol=1e-6)


def test_eval_units_are_one_per_block():
  layer, w, _ = make(tl.SparseFF, 'eval', n_elements_in_block=N)
  _, units = layer.forward_with_units(w, x_random(), None)
  assert units.shape == (2, 5, D_FF // N)
  assert units.min() >= 0 and units.max() < N


def test_controller_gets_gradient_in_training():
  layer, w, state = make(tl.SparseFF, 'train', n_elements_in_block=N)
  x = x_random()
  for seed in range(4):   # both the soft and the straight-through hard mask
    grads = jax.grad(lambda w_: jnp.sum(layer.apply(w_, state, x, rng=jax.random.key(seed))[0] ** 2))(w)
    assert float(jnp.abs(grads['controller_in']).sum()) > 0
    assert float(jnp.abs(grads['controller_out']).sum()) > 0


def test_reusing_units_reproduces_the_forward_pass():
  layer, w, _ = make(tl.SparseFF, 'train', n_elements_in_block=N, dropout=0.2)
  x = x_random()
  y, units = layer.forward_with_units(w, x, jax.random.key(5))
  y_again, units_again = layer.forward_with_units(w, x + 1e-3, jax.random.key(5), units=units)
  np.testing.assert_array_equal(units, units_again)
  y_same_input, _ = layer.forward_with_units(w, x, jax.random.key(5), units=units)
  np.testing.assert_allclose(y_same_input, y, rtol=1e-6)
  assert y_again.shape == y.shape


def test_train_mode_needs_rng():
  layer, w, state = make(tl.SparseFF, 'train', n_elements_in_block=N)
  with pytest.raises(tl.LayerError, match='rng'):
    layer.apply(w, state, x_random())


def test_d_lowrank_default_and_parameter_count():
  layer, w, _ = make(tl.SparseFF, 'eval', n_elements_in_block=N)
  r = D_FF // N
  assert layer.d_lowrank == r and w['controller_in'].shape == (r, D)
  assert tl.count_parameters(w) == 2 * D * D_FF + D_FF + D + D * r + r * D_FF + D_FF
  custom = tl.SparseFF(D_FF, n_elements_in_block=N, d_lowrank=5)
  w5, _ = custom.init(sig(1, D), rng=jax.random.key(0))
  assert w5['controller_out'].shape == (D_FF, 5)


def test_block_size_must_divide_d_ff():
  with pytest.raises(ValueError, match='multiple'):
    tl.SparseFF(50, n_elements_in_block=8)


def test_block_sparse_ff_predict_equals_eval_and_reference():
  evaluate, w, state = make(tl.BlockSparseFF, 'eval', n_experts=4)
  predict = tl.BlockSparseFF(D_FF, n_experts=4, mode='predict')
  x = x_random()
  y = evaluate.apply(w, state, x)[0]
  for positions in (x, x[:1, :1]):   # a prefill (masked product) and a token (gathered expert)
    _, decode_state = predict.init(sig(*positions.shape), rng=jax.random.key(0))
    np.testing.assert_allclose(predict.apply(w, decode_state, positions)[0],
                               y[:positions.shape[0], :positions.shape[1]], rtol=1e-5, atol=1e-5)
  xn = np.asarray(x, np.float64)
  wn = {k: np.asarray(v, np.float64) for k, v in w.items()}
  expert = (xn @ wn['router'].T + wn['router_bias']).argmax(-1)
  mask = np.repeat(np.eye(4)[expert], D_FF // 4, axis=-1)
  want = (np.maximum(xn @ wn['w1'].T + wn['b1'], 0) * mask) @ wn['w2'] + wn['b2']
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


def test_block_sparse_ff_router_gradient_and_count():
  layer, w, state = make(tl.BlockSparseFF, 'train', n_experts=4)
  grads = jax.grad(lambda w_: jnp.sum(layer.apply(w_, state, x_random(), rng=jax.random.key(2))[0] ** 2))(w)
  assert float(jnp.abs(grads['router']).sum()) > 0
  assert tl.count_parameters(w) == 2 * D * D_FF + D_FF + D + D * 4 + 4


@pytest.mark.skipif(not kernels.available(), reason='the fused CPU kernel was not built')
@pytest.mark.parametrize('shape, d_ff, n', [((1, 1, 24), 96, 8), ((2, 2, 33), 64, 4),
                                            ((1, 3, 64), 1024, 32),
                                            # split over two threads (controller rank 85: a tail)
                                            ((1, 2, 64), 1360, 16)])
def test_sparse_ff_kernel_equals_the_pure_jax_gather(shape, d_ff, n):
  fused = tl.SparseFF(d_ff, n_elements_in_block=n, mode='predict')
  pure = tl.SparseFF(d_ff, n_elements_in_block=n, mode='predict', decode_kernel=False)
  x = jax.random.normal(jax.random.key(1), shape)
  w, state = fused.init(x, rng=jax.random.key(0))
  w = dict(w, controller_bias=jax.random.normal(jax.random.key(2), (d_ff,)),
           b1=jax.random.normal(jax.random.key(3), (d_ff,)) * 0.1)
  y_fused, units_fused = jax.jit(lambda w, x: fused.forward_with_units(w, x, None))(w, x)
  y_pure, units_pure = jax.jit(lambda w, x: pure.forward_with_units(w, x, None))(w, x)
  np.testing.assert_array_equal(units_fused, units_pure)
  np.testing.assert_allclose(y_fused, y_pure, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fused.apply(w, state, x)[0], y_pure, rtol=1e-5, atol=1e-5)
  # The kernel is one custom call: no gathers or products left in the program.
  text = jax.jit(lambda w, x: fused.apply(w, state, x)[0]).lower(w, x).as_text()
  assert 'sparse_trax_sparse_ff' in text and 'gather' not in text


def test_gathered_ff_fused_loop_equals_the_einsums():
  from sparse_trax.layers import sparse_ff  # pylint: disable=import-outside-toplevel
  keys = jax.random.split(jax.random.key(0), 5)
  x = jax.random.normal(keys[0], (2, 3, 16))
  w1, w2 = jax.random.normal(keys[1], (2, 3, 5, 16)), jax.random.normal(keys[2], (2, 3, 5, 16))
  b1, b2 = jax.random.normal(keys[3], (2, 3, 5)), jax.random.normal(keys[4], (16,))
  np.testing.assert_allclose(sparse_ff._gathered_ff(x, w1, b1, w2, b2, fused_loop=True),  # pylint: disable=protected-access
                             sparse_ff._gathered_ff(x, w1, b1, w2, b2, fused_loop=False),  # pylint: disable=protected-access
                             rtol=1e-5, atol=1e-5)
  big = tl.quantize_weights({'w': jnp.ones((4096, 1024))}, 'int8')['w']
  assert sparse_ff._fused_loop_pays(big, 4096) and not sparse_ff._fused_loop_pays(big, 64)  # pylint: disable=protected-access
  assert not sparse_ff._fused_loop_pays(jnp.ones((4096, 1024)), 4096)  # pylint: disable=protected-access


def test_mask_before_activation_stops_gradient_from_units_left_out():
  """relu(h * mask) sends no gradient to the mask of a unit the hard mask leaves
  out; relu(h) * mask sends relu(h). Both give the same values."""
  from sparse_trax.layers.sparse_ff import masked_relu  # pylint: disable=import-outside-toplevel
  pre = jnp.array([[1.5, -0.5, 2.0, 0.7]])
  hard = jnp.array([[[0.0, 1.0], [1.0, 0.0]]])      # two blocks of two units
  for before in (True, False):
    np.testing.assert_allclose(masked_relu(pre, hard, before), [[0.0, 0.0, 2.0, 0.0]])
  def through_mask(mask, before):
    return jnp.sum(masked_relu(pre, mask, before) * jnp.array([[1.0, 2.0, 3.0, 4.0]]))
  before = jax.grad(through_mask)(hard, True).reshape(-1)
  after = jax.grad(through_mask)(hard, False).reshape(-1)
  np.testing.assert_allclose(before, [0.0, 0.0, 6.0, 0.0])      # only the chosen, active unit
  np.testing.assert_allclose(after, [1.5, 0.0, 6.0, 2.8])       # relu(h) * upstream


def test_mask_before_activation_changes_training_gradients_not_eval():
  x = x_random()
  outputs, controller_grads = [], []
  for before in (True, False):
    train = tl.SparseFF(D_FF, n_elements_in_block=N, quant_prob=1.0, mode='train',
                        mask_before_activation=before)
    weights, state = train.init(sig(2, 5, D), rng=jax.random.key(0))
    loss = jax.jit(lambda w, layer=train, s=state: jnp.sum(
        layer.apply(w, s, x, rng=jax.random.key(3))[0] ** 2))
    controller_grads.append(jax.grad(loss)(weights)['controller_out'])
    evaluate = tl.SparseFF(D_FF, n_elements_in_block=N, mode='eval',
                           mask_before_activation=before)
    outputs.append(evaluate.apply(weights, {}, x)[0])
  np.testing.assert_array_equal(outputs[0], outputs[1])
  assert not np.allclose(controller_grads[0], controller_grads[1])
  assert np.abs(controller_grads[0]).sum() > 0
