"""MultiplicativeDense, LocallyConvDense and sparse-QKV attention against references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl
from sparse_trax import kernels
from sparse_trax.kernels import registry
from conftest import sig


def test_multiplicative_dense_equals_einsum_reference():
  layer = tl.MultiplicativeDense(4, 24)
  x = jax.random.normal(jax.random.key(1), (2, 3, 10))
  w, state = layer.init(sig(2, 3, 10), rng=jax.random.key(0))
  y = layer.apply(w, state, x)[0]
  want = np.einsum('bli,is,im->blsm', np.asarray(x, np.float64), np.asarray(w['modules'], np.float64),
                   np.asarray(w['units'], np.float64)).reshape(2, 3, 24) + np.asarray(w['b'])
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  assert tl.count_parameters(w) == 10 * 4 + 10 * 6 + 24


def test_multiplicative_dense_can_express_a_permutation():
  # D = all ones (one module), E = a permutation matrix: y = x permuted.
  layer = tl.MultiplicativeDense(1, 5)
  permutation = np.array([3, 0, 4, 1, 2])
  weights = {'modules': jnp.ones((5, 1)), 'units': jnp.eye(5)[:, permutation], 'b': jnp.zeros(5)}
  x = jnp.arange(5.0)
  np.testing.assert_allclose(layer.apply(weights, {}, x)[0], x[permutation])


@pytest.mark.skipif(not kernels.available(), reason='the fused CPU kernels were not built')
@pytest.mark.parametrize('n_modules, d_out, positions, d_in', [
    (1, 70, 1, 33),      # one row of a; a 64-column tile, then single columns
    (3, 150, 1, 40),     # rows in groups of 2 and 1; tiles of 16 columns, then single ones
    (4, 256, 2, 16),     # one group of 8 rows
    (3, 1248, 4, 300),   # groups of 8 and 4; two parts; row blocks with a tail (300 = 18 x 16 + 12)
])
def test_predict_mode_multiplicative_dense_runs_the_float32_kernel(n_modules, d_out, positions,
                                                                   d_in):
  predict = tl.MultiplicativeDense(n_modules, d_out, mode='predict')
  weights, state = predict.init(sig(1, positions, d_in), rng=jax.random.key(0))
  weights['b'] = jax.random.normal(jax.random.key(2), (d_out,))
  x = jax.random.normal(jax.random.key(1), (1, positions, d_in))
  apply = jax.jit(lambda w, x: predict.apply(w, state, x)[0])
  want = np.einsum('bli,is,im->blsm', np.asarray(x, np.float64),
                   np.asarray(weights['modules'], np.float64),
                   np.asarray(weights['units'], np.float64)).reshape(1, positions, d_out)
  np.testing.assert_allclose(apply(weights, x), want + np.asarray(weights['b']),
                             rtol=1e-5, atol=1e-5)
  assert 'sparse_trax_stored_vecmat' in apply.lower(weights, x).as_text()
  # Outside 'predict' mode XLA computes it (and it has a gradient).
  train = tl.MultiplicativeDense(n_modules, d_out)
  assert 'sparse_trax_stored_vecmat' not in jax.jit(
      lambda w, x: train.apply(w, {}, x)[0]).lower(weights, x).as_text()
  grads = jax.grad(lambda w: jnp.sum(train.apply(w, {}, x)[0] ** 2))(weights)
  assert np.all(np.isfinite(grads['units']))


def reference_conv(x, kernel, bias, n_modules, causal=True):
  """Explicit loops: out[b, t, s, o] = sum over the (length, module) window."""
  x = np.asarray(x, np.float64)
  kernel = np.asarray(kernel, np.float64)
  batch, length, d = x.shape
  k_len, k_mod, c_in, c_out = kernel.shape
  xv = x.reshape(batch, length, n_modules, c_in)
  out = np.zeros((batch, length, n_modules, c_out))
  first_t = -(k_len - 1) if causal else -((k_len - 1) // 2)
  first_s = -((k_mod - 1) // 2)
  for t in range(length):
    for s in range(n_modules):
      for i in range(k_len):
        for j in range(k_mod):
          tt, ss = t + first_t + i, s + first_s + j
          if 0 <= tt < length and 0 <= ss < n_modules:
            out[:, t, s] += xv[:, tt, ss] @ kernel[i, j]
  return (out + np.asarray(bias)).reshape(batch, length, -1)


@pytest.mark.parametrize('causal', [True, False])
def test_locally_conv_dense_equals_loop_reference(causal):
  layer = tl.LocallyConvDense(4, 3, kernel_size=3, length_kernel_size=3, causal=causal)
  x = jax.random.normal(jax.random.key(1), (2, 7, 8))
  w, state = layer.init(sig(2, 7, 8), rng=jax.random.key(0))
  want = reference_conv(x, w['kernel'], w['b'], 4, causal)
  np.testing.assert_allclose(layer.apply(w, state, x)[0], want, rtol=1e-5, atol=1e-5)
  assert tl.count_parameters(w) == 3 * 3 * 2 * 3 + 3


def test_locally_conv_dense_is_causal():
  layer = tl.LocallyConvDense(4, 3, kernel_size=3, length_kernel_size=3)
  x = jax.random.normal(jax.random.key(1), (1, 8, 8))
  w, state = layer.init(sig(1, 8, 8), rng=jax.random.key(0))
  y = layer.apply(w, state, x)[0]
  changed = layer.apply(w, state, x.at[:, 5:].set(3.0))[0]
  np.testing.assert_allclose(y[:, :5], changed[:, :5], rtol=1e-6)
  assert not np.allclose(y[:, 5:], changed[:, 5:])


def test_locally_conv_dense_predict_step_by_step_equals_full():
  full = tl.LocallyConvDense(4, 3, kernel_size=3, length_kernel_size=3, mode='eval')
  x = jax.random.normal(jax.random.key(1), (2, 6, 8))
  w, state = full.init(sig(2, 6, 8), rng=jax.random.key(0))
  want = full.apply(w, state, x)[0]
  predict = tl.LocallyConvDense(4, 3, kernel_size=3, length_kernel_size=3, mode='predict')
  _, history = predict.init(sig(2, 1, 8), rng=jax.random.key(0))
  assert history.layers.value.shape == (2, 2, 4, 2)
  outs = []
  for t in range(6):
    y, history = predict.apply(w, history, x[:, t:t + 1])
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), want, rtol=1e-5, atol=1e-5)


def attention_parameter_count(d, s, length_kernel_size=3):
  m = d // s
  mult = d * s + d * m + d
  conv = lambda k: length_kernel_size * k * m * m + m
  return mult + 2 * conv(3) + conv(1)


@pytest.mark.parametrize('output_layer_type', ['none', 'mult', 'dense'])
def test_mult_conv_attention_predict_equals_eval(output_layer_type):
  d, s, heads = 16, 4, 2
  evaluate = tl.MultiplicativeConvCausalAttention(d, heads, sparsity=s, max_len=12,
                                                  output_layer_type=output_layer_type, mode='eval')
  x = jax.random.normal(jax.random.key(1), (2, 7, d))
  w, state = evaluate.init(sig(2, 7, d), rng=jax.random.key(0))
  want = evaluate.apply(w, state, x)[0]
  predict = tl.MultiplicativeConvCausalAttention(d, heads, sparsity=s, max_len=12,
                                                 output_layer_type=output_layer_type, mode='predict')
  _, cache = predict.init(sig(2, 1, d), rng=jax.random.key(0))
  step = jax.jit(predict.apply)
  outs = []
  for t in range(7):
    y, cache = step(w, cache, x[:, t:t + 1])
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), want, rtol=1e-4, atol=1e-5)
  extra = {'none': 0, 'mult': d * s + d * (d // s) + d, 'dense': d * d + d}[output_layer_type]
  assert tl.count_parameters(w) == attention_parameter_count(d, s) + extra


def test_mult_conv_attention_is_causal_and_has_no_output_projection_by_default():
  d = 16
  layer = tl.MultiplicativeConvCausalAttention(d, 2, sparsity=4, mode='eval')
  x = jax.random.normal(jax.random.key(1), (1, 8, d))
  w, state = layer.init(sig(1, 8, d), rng=jax.random.key(0))
  y = layer.apply(w, state, x)[0]
  changed = layer.apply(w, state, x.at[:, 6:].set(2.0))[0]
  np.testing.assert_allclose(y[:, :6], changed[:, :6], rtol=1e-5, atol=1e-6)
  names = [p for p, _ in tl.named_weights(layer, w)]
  assert not any('/Dense/' in p for p in names)


def test_mult_conv_attention_encoder_variant_respects_padding():
  d = 16
  layer = tl.MultiplicativeConvAttention(d, 2, sparsity=4, mode='eval')
  x = jax.random.normal(jax.random.key(1), (1, 6, d))
  mask = jnp.array([[True] * 4 + [False] * 2])
  w, state = layer.init((sig(1, 6, d), sig(1, 6, dtype=jnp.bool_)), rng=jax.random.key(0))
  (y, mask_out), _ = layer.apply(w, state, (x, mask))
  assert y.shape == x.shape and (mask_out == mask).all()


def test_bad_sparsity_is_rejected():
  with pytest.raises(ValueError, match='divisible'):
    tl.MultiplicativeConvCausalAttention(18, 2, sparsity=4)
  with pytest.raises(ValueError, match='multiple'):
    tl.MultiplicativeDense(3, 10)


@pytest.mark.parametrize('causal', [True, False])
def test_locally_conv_qkv_equals_a_branch_of_three_convolutions(causal):
  x = jax.random.normal(jax.random.key(1), (2, 7, 8))
  fused = tl.LocallyConvQKV(4, 3, (3, 3, 1), length_kernel_size=3, causal=causal, mode='eval')
  branch = tl.Branch(*[tl.LocallyConvDense(4, 3, kernel_size=k, length_kernel_size=3,
                                           causal=causal, mode='eval') for k in (3, 3, 1)])
  weights, state = fused.init(sig(2, 7, 8), rng=jax.random.key(0))
  branch_weights, branch_state = branch.init(sig(2, 7, 8), rng=jax.random.key(0))
  for a, b in zip(jax.tree_util.tree_leaves(weights), jax.tree_util.tree_leaves(branch_weights)):
    np.testing.assert_array_equal(a, b)          # the same initial weights, the same layout
  weights = jax.tree_util.tree_map(
      lambda w: w + 0.1 * jax.random.normal(jax.random.key(5), w.shape), weights)
  got = fused.apply(weights, state, x)[0]
  want = branch.apply(weights, branch_state, x)[0]
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  if causal:   # one shared history decodes step by step to the same outputs
    predict = tl.LocallyConvQKV(4, 3, (3, 3, 1), length_kernel_size=3, mode='predict')
    _, history = predict.init(sig(2, 1, 8), rng=jax.random.key(0))
    assert isinstance(history.layers, tl.Carry)
    steps = []
    for t in range(7):
      out, history = predict.apply(weights, history, x[:, t:t + 1])
      steps.append(out)
    for i in range(3):
      np.testing.assert_allclose(jnp.concatenate([s[i] for s in steps], 1), want[i],
                                 rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not kernels.available(), reason='the fused CPU kernels were not built')
@pytest.mark.parametrize('d, s, batch, length_kernel, storage', [
    (64, 4, 1, 3, 'float32'), (48, 4, 2, 3, 'float32'), (128, 2, 2, 3, 'float32'),
    (96, 6, 1, 3, 'float32'), (1024, 8, 1, 3, 'float32'), (64, 4, 2, 1, 'float32'),
    (64, 4, 1, 2, 'float32'), (48, 4, 2, 3, 'int8'), (2048, 8, 1, 3, 'int8'),
    (96, 6, 1, 3, 'bfloat16'), (1024, 4, 1, 3, 'bfloat16')])
def test_fused_sparse_qkv_decoding_equals_the_serial(d, s, batch, length_kernel, storage):
  """The kernel (multiplicative layer + three convolutions) against the same
  sublayers run as a plain Serial: outputs and carried history, over a padded
  3-position call (2 valid), then single tokens; widths that fill whole
  register panels, leave a tail of columns (48 / 4 = 12) and of rows (2, 6 modules),
  small ones run in one part, and some large enough to split over two threads
  (1 MB of weights or more: 1024 / 8 in float32, 2048 / 8 in int8, 1024 / 4 in
  bfloat16); length kernels 3, 1 (no history) and 2; float32, int8 and bfloat16
  weights (the kernel converts them in registers, the plain layer in XLA)."""
  fused = tl.MultiplicativeConvCausalAttention(d, 2, sparsity=s, max_len=16,
                                               length_kernel_size=length_kernel, mode='predict')
  qkv = fused.sublayers[0]
  plain = tl.Serial(tl.SparseQKV(s, d, d // s, qkv.kernel_sizes, length_kernel, mode='predict',
                                 decode_kernel=False), *fused.sublayers[1:])
  w, state = fused.init(sig(batch, 1, d), rng=jax.random.key(0))
  w = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(a.size), a.shape), w)
  if storage != 'float32':
    w = tl.quantize_weights(w, storage)
  x = jax.random.normal(jax.random.key(1), (batch, 6, d))
  fused_step = jax.jit(lambda w, s_, x, n: fused.apply(w, s_, x, valid_length=n))
  plain_step = jax.jit(lambda w, s_, x, n: plain.apply(w, s_, x, valid_length=n))
  text = jax.jit(lambda w, s_, x: fused.apply(w, s_, x)).lower(w, state, x[:, :1]).as_text()
  assert 'sparse_trax_sparse_qkv' in text
  # int8 weights meet activations rounded to 15-bit integers where the kernel has VNNI
  # (tests/test_kernels.py checks that computation exactly): each product moves by up to
  # 2^-15 of its input's largest per unit of weight, so here up to about 1e-4 of the
  # outputs' largest; allowed: 1e-3 of it.
  integer = storage == 'int8' and registry.INTEGER_QKV
  fused_state = plain_state = state
  for start, stop, valid in [(0, 3, 2), (2, 3, 1), (3, 4, 1), (4, 6, 2)]:
    y_fused, fused_state = fused_step(w, fused_state, x[:, start:stop], valid)
    y_plain, plain_state = plain_step(w, plain_state, x[:, start:stop], valid)

    def close(a, b):
      # float32: the two sum in different orders, 2304 terms a convolution at 1024 / 4
      # (there 1.5e-5 apart where the outputs reach a few units): 1e-5 of the largest.
      largest = float(np.abs(b).max(initial=0.0))
      atol = 1e-3 * largest if integer else 1e-5 * max(1.0, largest)
      np.testing.assert_allclose(a, b, rtol=0 if integer else 1e-5, atol=atol)

    close(y_fused, y_plain)
    jax.tree.map(close, fused_state, plain_state)


def test_sparse_qkv_decoding_names_a_bad_input():
  """A width the weights do not take is refused before the kernel, naming the layer
  and the shapes."""
  layer = tl.MultiplicativeConvCausalAttention(64, 2, sparsity=4, max_len=8, mode='predict')
  w, state = layer.init(sig(1, 1, 64), rng=jax.random.key(0))
  with pytest.raises(tl.LayerError, match=r'SparseQKV[\s\S]*\(1, 1, 32\)'):
    layer.apply(w, state, jnp.zeros((1, 1, 32)))
