"""Low-precision weights: int8 round trip, every layer on int8 / bfloat16 weights, bytes counted."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl
from sparse_trax import decoding, kernels, models
from sparse_trax.layers import streamed_init
from conftest import sig


def test_int8_round_trip_error_is_within_half_a_step():
  w = jax.random.normal(jax.random.key(0), (37, 53)) * jnp.linspace(0.01, 3.0, 37)[:, None]
  q = tl.quantize_int8(w)
  assert q.values.dtype == jnp.int8 and q.scale.shape == (37,)
  error = jnp.abs(w - q.dequantize())
  assert bool(jnp.all(error <= q.scale[:, None] / 2 + 1e-7))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))
  qk = tl.quantize_int8(kernel)          # convolution kernels: a scale per output channel
  assert qk.scale.shape == (5,)
  assert bool(jnp.all(jnp.abs(kernel - qk.dequantize()) <= qk.scale / 2 + 1e-7))


def test_quantize_weights_converts_matrices_and_keeps_vectors():
  model = models.ScalingTransformerLM(40, 16, 32, 1, 2, max_len=16, dropout=0.0, ff_sparsity=8)
  weights, _ = model.init(sig(1, 4, dtype=jnp.int32), rng=jax.random.key(0))
  for storage, dtype in (('int8', jnp.int8), ('bfloat16', jnp.bfloat16)):
    low = tl.quantize_weights(weights, storage)
    leaves = jax.tree_util.tree_leaves(low, is_leaf=lambda x: isinstance(x, tl.QuantizedArray))
    matrices = [x for x in leaves if isinstance(x, tl.QuantizedArray)]
    assert matrices and all(m.values.dtype == dtype for m in matrices)
    assert all(x.ndim == 1 for x in leaves if not isinstance(x, tl.QuantizedArray))
  with pytest.raises(ValueError, match='storage must be one of'):
    tl.quantize_weights(weights, 'int4')


VARIANTS = {
    'dense': {},
    'sparse_ff_qkv_loss': dict(ff_sparsity=8, attention_type='multconv', attention_sparsity=4,
                               loss_sparsity=4),
    'moe': dict(ff_sparsity=4, ff_sparsity_type='block'),
}


@pytest.mark.parametrize('variant, storage', [('dense', 'int8'), ('moe', 'int8'),
                                              ('sparse_ff_qkv_loss', 'int8'),
                                              ('sparse_ff_qkv_loss', 'bfloat16')])
def test_every_layer_on_low_precision_weights_equals_its_dequantized_weights(variant, storage):
  kwargs = dict(vocab_size=40, d_model=16, d_ff=32, n_layers=2, n_heads=2, max_len=16,
                dropout=0.0, **VARIANTS[variant])
  tokens = jax.random.randint(jax.random.key(1), (2, 7), 1, 40)
  evaluate = models.ScalingTransformerLM(**kwargs, mode='eval')
  weights, state = evaluate.init(tokens, rng=jax.random.key(0))
  low = tl.quantize_weights(weights, storage)
  reference = tl.dequantize_weights(low)
  apply = jax.jit(evaluate.apply)
  want = apply(reference, state, tokens)[0]
  # int8 products round their activations to 15-bit integers (2^-15 of a vector's
  # largest value at most), which moves these log-probabilities by up to ~2e-4.
  tolerance = 5e-4 if storage == 'int8' else 1e-4
  np.testing.assert_allclose(apply(low, state, tokens)[0], want, rtol=tolerance, atol=tolerance)
  predict = models.ScalingTransformerLM(**kwargs, mode='predict')
  got = decoding.autoregressive_sample(predict, low, tokens[:, :3], max_length=4)
  np.testing.assert_array_equal(
      got, decoding.autoregressive_sample(predict, reference, tokens[:, :3], max_length=4))


def test_terraformer_on_int8_weights_and_in_bfloat16():
  from sparse_trax.train import steps  # pylint: disable=import-outside-toplevel
  kwargs = dict(vocab_size=40, d_model=16, d_ff=32, n_layers=1, n_heads=2, max_len=32,
                attention_type='chunked', attention_chunk_len=4, ff_sparsity=8, ff_use_sru=8,
                dropout=0.0)
  tokens = jax.random.randint(jax.random.key(1), (1, 9), 1, 40)
  evaluate = models.TerraformerLM(**kwargs, mode='eval')
  weights, state = evaluate.init(tokens, rng=jax.random.key(0))
  low = tl.quantize_weights(weights, 'int8')
  apply = jax.jit(evaluate.apply)
  np.testing.assert_allclose(apply(low, state, tokens)[0],
                             apply(tl.dequantize_weights(low), state, tokens)[0],
                             rtol=1e-4, atol=1e-4)
  # The reversible stack with SRU computes in bfloat16 on bfloat16 weights, and its
  # memory-saving gradient flows back to float32 weights.
  def loss(w):
    logits = evaluate.apply(steps.cast_floating(w, jnp.bfloat16), state, tokens)[0]
    assert logits.dtype == jnp.bfloat16
    return tl.weighted_cross_entropy(logits, tokens, jnp.ones(tokens.shape))
  grads = jax.jit(jax.grad(loss))(weights)
  assert all(g.dtype == jnp.float32 and np.isfinite(g).all()
             for g in jax.tree_util.tree_leaves(grads))


def test_summary_and_decode_cost_count_the_real_bytes():
  model = models.ScalingTransformerLM(64, 32, 256, 1, 2, max_len=16, dropout=0.0, ff_sparsity=32)
  weights, _ = model.init(sig(1, 4, dtype=jnp.int32), rng=jax.random.key(0))
  full = tl.decode_cost(model, weights)
  low = tl.decode_cost(model, tl.quantize_weights(weights, 'int8'))
  assert 0.25 < low['all_weights'] / full['all_weights'] < 0.35   # int8 values, scales, vectors
  assert 0.25 < low['weights'] / full['weights'] < 0.35
  assert 'int8' in tl.summary(model, tl.quantize_weights(weights, 'int8'), print_fn=None)


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_bfloat16_forward_computes_in_bfloat16(variant):
  from sparse_trax.train import steps  # pylint: disable=import-outside-toplevel
  model = models.ScalingTransformerLM(40, 16, 32, 1, 2, max_len=16, dropout=0.1,
                                      **VARIANTS[variant])
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 1, 40)
  weights, state = model.init(tokens, rng=jax.random.key(0))
  logits, _ = model.apply(steps.cast_floating(weights, jnp.bfloat16), state, tokens,
                          rng=jax.random.key(3))
  assert logits.dtype == jnp.bfloat16 and np.isfinite(np.asarray(logits, np.float32)).all()


def test_bfloat16_training_steps_keep_float32_weights_and_finite_losses():
  variant = 'sparse_ff_qkv_loss'   # sparse FF, sparse QKV and the sparse loss in one model
  import optax  # pylint: disable=import-outside-toplevel
  from sparse_trax.train import steps  # pylint: disable=import-outside-toplevel
  model = models.ScalingTransformerLM(40, 16, 32, 2, 2, max_len=16, dropout=0.1,
                                      **VARIANTS[variant])
  batch = {'targets': jax.random.randint(jax.random.key(1), (2, 8), 1, 40),
           'weights': jnp.ones((2, 8), jnp.float32)}
  weights, state = model.init(batch['targets'], rng=jax.random.key(0))
  tx = optax.adam(1e-2)
  opt_state = tx.init(weights)
  step = steps.make_train_step(model, tx, lm=True, compute_dtype='bfloat16')
  losses = []
  for i in range(3):
    weights, state, opt_state, metrics = step(weights, state, opt_state, batch,
                                              jax.random.key(i))
    losses.append(float(metrics['loss']))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(weights))
  assert np.isfinite(losses).all() and losses[-1] < losses[0]
  with pytest.raises(ValueError, match='compute_dtype'):
    steps.make_train_step(model, tx, lm=True, compute_dtype='float16')


def test_init_in_int8_gives_the_converted_weights():
  model = models.ScalingTransformerLM(256, 128, 1024, 2, 4, max_len=16, dropout=0.0,
                                      ff_sparsity=32, mode='predict')
  signature = sig(1, 1, dtype=jnp.int32)
  weights, state = model.init(signature, rng=jax.random.key(0), weight_dtype='int8')
  assert isinstance(state, tl.DecodeState)
  reference = tl.quantize_weights(model.init(signature, rng=jax.random.key(0))[0], 'int8')
  # The same weights as converting after (an int8 value may round the other way at .5).
  for a, b in zip(jax.tree_util.tree_leaves(weights), jax.tree_util.tree_leaves(reference)):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=1e-6, atol=1)


def test_init_in_int8_never_holds_the_float32_tree():
  # 8 matrices of 1024 x 1024: 32 MiB in float32, 8 MiB in int8. Live arrays
  # are sampled by the jax runtime after every traced equation.
  model = tl.Serial(*[tl.Dense(1024) for _ in range(8)])
  signature = sig(1, 1, 1024)
  float32_bytes = sum(x.size * 4 for x in jax.tree_util.tree_leaves(
      jax.eval_shape(lambda: model.init(signature, rng=jax.random.key(0))[0])))
  before = sum(a.nbytes for a in jax.live_arrays())
  peak = [0]
  def sample(done, total):
    del done, total
    peak[0] = max(peak[0], sum(a.nbytes for a in jax.live_arrays()) - before)
  weights, _ = streamed_init.init_in_storage(model, signature, jax.random.key(0), 'int8',
                                             on_step=sample)
  int8_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(weights))
  assert int8_bytes < 0.3 * float32_bytes
  matrix = 1024 * 1024 * 4
  assert peak[0] <= int8_bytes + 2 * matrix + 64 * 1024, (peak[0], float32_bytes)
  with pytest.raises(ValueError, match='storage must be one of'):
    model.init(signature, rng=jax.random.key(0), weight_dtype='int4')


@pytest.mark.skipif(not kernels.available(), reason='the fused CPU kernels were not built')
@pytest.mark.parametrize('storage', ['int8', 'bfloat16'])
@pytest.mark.parametrize('positions, d_out, d_in', [(1, 7, 33), (3, 64, 512), (1, 130, 40)])
def test_stored_matvec_kernel_equals_the_xla_path(storage, positions, d_out, d_in):
  from sparse_trax.layers import linear as linear_lib  # pylint: disable=import-outside-toplevel
  w = tl.quantize_weights({'w': jax.random.normal(jax.random.key(0), (d_out, d_in))},
                          storage)['w']
  x = jax.random.normal(jax.random.key(1), (1, positions, d_in))
  got = jax.jit(linear_lib.linear)(x, w)
  want = jax.jit(kernels.matvec_reference)(x, w)
  if storage == 'int8':
    # The kernel rounds each position's x to 15-bit integers for int8 rows: each value
    # moves by at most s / 2 (s = max|x| / 16383), a row's product by s / 2 * sum|w|.
    scale = jnp.abs(x).max(-1, keepdims=True) / 16383
    bound = scale / 2 * jnp.abs(w.values * w.scale[:, None]).sum(-1)
    assert bool(jnp.all(jnp.abs(got - want) <= bound + 1e-5))
  else:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  text = jax.jit(linear_lib.linear).lower(x, w).as_text()
  assert 'sparse_trax_stored_matvec' in text


@pytest.mark.skipif(not kernels.available(), reason='the fused CPU kernels were not built')
@pytest.mark.parametrize('storage', ['int8', 'bfloat16'])
@pytest.mark.parametrize('n_modules, d_out, positions, d_in', [
    (4, 200, 1, 40), (3, 210, 2, 40), (5, 1040, 1, 300)])   # groups of 4, a group of 2, 2 parts
def test_multiplicative_dense_on_stored_units_uses_the_kernel(storage, n_modules, d_out,
                                                             positions, d_in):
  layer = tl.MultiplicativeDense(n_modules, d_out)
  weights, _ = layer.init(sig(1, positions, d_in), rng=jax.random.key(0))
  low = tl.quantize_weights(weights, storage)
  x = jax.random.normal(jax.random.key(1), (1, positions, d_in))
  got = jax.jit(lambda w, x: layer.apply(w, {}, x)[0])(low, x)
  want = layer.apply(tl.dequantize_weights(low), {}, x)[0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  text = jax.jit(lambda w, x: layer.apply(w, {}, x)[0]).lower(low, x).as_text()
  assert 'sparse_trax_stored_vecmat' in text


def test_int8_weights_keep_a_trained_sparse_models_greedy_tokens_and_loss():
  # A small all-sparse LM trained briefly on a patterned stream; int8 weights must give the
  # same greedy token as float32 on >= 95% of 200 positions and an eval loss within 1%.
  import optax  # pylint: disable=import-outside-toplevel
  from sparse_trax.train import steps  # pylint: disable=import-outside-toplevel
  config = dict(vocab_size=32, d_model=64, d_ff=256, n_layers=2, n_heads=4, max_len=64,
                dropout=0.0, ff_sparsity=16, attention_type='multconv', attention_sparsity=4,
                loss_sparsity=2)
  model = models.ScalingTransformerLM(**config)
  rng = np.random.default_rng(0)
  pattern = rng.integers(1, 32, size=11)

  def batch(seed):
    starts = np.random.default_rng(seed).integers(0, 11, size=8)
    tokens = np.stack([np.resize(np.roll(pattern, -s), 40) for s in starts]).astype(np.int32)
    noise = np.random.default_rng(seed + 1).random(tokens.shape) < 0.1
    tokens = np.where(noise, np.random.default_rng(seed + 2).integers(1, 32, tokens.shape),
                      tokens).astype(np.int32)
    return {'targets': tokens, 'weights': np.ones(tokens.shape, np.float32)}
  weights, state = model.init(sig(8, 40, dtype=jnp.int32), rng=jax.random.key(0))
  tx = optax.adam(3e-3)
  opt_state = tx.init(weights)
  step = steps.make_train_step(model, tx, lm=True)
  for i in range(60):
    weights, state, opt_state, _ = step(weights, state, opt_state, batch(i), jax.random.key(i))
  eval_model = models.ScalingTransformerLM(**config, mode='eval')
  eval_step = steps.make_eval_step(eval_model, lm=True)
  low = tl.quantize_weights(weights, 'int8')
  loss = {name: steps.evaluate(eval_model, eval_step, w, [batch(1000), batch(1001)], True)
          ['eval_log_perplexity'] for name, w in (('float32', weights), ('int8', low))}
  assert loss['float32'] < 0.8 * np.log(32)                      # it learned something
  assert abs(loss['int8'] / loss['float32'] - 1) < 0.01, loss
  tokens = jnp.asarray(batch(2000)['targets'][:, :26])           # 8 rows x 25 predictions
  state = decoding.initial_state(eval_model, sig(*tokens.shape, dtype=jnp.int32))
  apply = jax.jit(lambda w: eval_model.apply(w, state, tokens)[0])
  greedy = {name: np.asarray(jnp.argmax(apply(w)[:, 1:], -1))
            for name, w in (('float32', weights), ('int8', low))}
  assert greedy['float32'].size == 200
  agreement = np.mean(greedy['int8'] == greedy['float32'])
  assert agreement >= 0.95
