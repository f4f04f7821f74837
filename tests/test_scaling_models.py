"""ScalingTransformerLM / ScalingTransformer: dense == baseline, predict == eval for every type."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl
from sparse_trax import models
from sparse_trax.decoding import initial_state
from conftest import prefill_then_steps, sig

SIZE = dict(vocab_size=40, d_model=16, d_ff=32, n_layers=2, n_heads=2, max_len=24)
VARIANTS = {
    'dense': {},
    'sparse_ff': dict(ff_sparsity=8),
    'moe': dict(ff_sparsity=4, ff_sparsity_type='block'),
    'sparse_qkv': dict(attention_type='multconv', attention_sparsity=4),
    'sparse_ff_qkv_loss': dict(ff_sparsity=8, attention_type='multconv', attention_sparsity=4,
                               loss_sparsity=4),
}


def test_dense_settings_are_exactly_the_baseline():
  tokens = jax.random.randint(jax.random.key(1), (2, 9), 1, 40)
  baseline = models.TransformerLM(**SIZE, dropout=0.0, mode='eval')
  scaling = models.ScalingTransformerLM(**SIZE, dropout=0.0, mode='eval')
  weights, state = baseline.init(tokens, rng=jax.random.key(0))
  scaling_weights, _ = scaling.init(tokens, rng=jax.random.key(0))
  assert jax.tree_util.tree_structure(weights) == jax.tree_util.tree_structure(scaling_weights)
  for a, b in zip(jax.tree_util.tree_leaves(weights), jax.tree_util.tree_leaves(scaling_weights)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(baseline.apply(weights, state, tokens)[0],
                                scaling.apply(weights, state, tokens)[0])


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_lm_predict_equals_eval(variant):
  kwargs = dict(SIZE, dropout=0.1, **VARIANTS[variant])
  tokens = jax.random.randint(jax.random.key(1), (2, 10), 1, 40)
  evaluate = models.ScalingTransformerLM(**kwargs, mode='eval')
  weights, state = evaluate.init(tokens, rng=jax.random.key(0))
  full = jax.jit(evaluate.apply)(weights, state, tokens)[0]
  predict = models.ScalingTransformerLM(**kwargs, mode='predict')
  cache = initial_state(predict, sig(2, 1, dtype=jnp.int32))
  step = jax.jit(predict.apply)
  previous, outs = jnp.zeros((2, 1), jnp.int32), []
  for t in range(10):
    logits, cache = step(weights, cache, previous)
    outs.append(logits)
    previous = tokens[:, t:t + 1]
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-4, atol=1e-4)
  # A prompt's prefill in one call, then token by token, gives the same logits.
  np.testing.assert_allclose(prefill_then_steps(predict, weights, tokens, 7), full,
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_lm_trains_in_every_variant(variant):
  model = models.ScalingTransformerLM(**SIZE, dropout=0.0, **VARIANTS[variant])
  tokens = jnp.tile(jnp.arange(1, 9, dtype=jnp.int32), (2, 2))
  weights, state = model.init(tokens, rng=jax.random.key(0))

  def loss(w, seed):
    logits = model.apply(w, state, tokens, rng=jax.random.key(seed))[0]
    return tl.weighted_cross_entropy(logits, tokens, jnp.ones(tokens.shape))
  grads = jax.grad(loss)(weights, 0)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.isfinite(g).all() for g in leaves)
  assert sum(float(jnp.abs(g).sum()) > 0 for g in leaves) > 0.9 * len(leaves)


def test_sparse_loss_is_multiplicative():
  model = models.ScalingTransformerLM(**SIZE, loss_sparsity=4)
  assert model.sublayers[-1].name == 'MultiplicativeDense'
  with pytest.raises(ValueError, match='multiple'):
    models.ScalingTransformerLM(**dict(SIZE, vocab_size=42), loss_sparsity=4)


def test_bad_types_are_rejected():
  with pytest.raises(ValueError, match='attention_type'):
    models.ScalingTransformerLM(**SIZE, attention_type='sparse')
  with pytest.raises(ValueError, match='ff_sparsity_type'):
    models.ScalingTransformerLM(**SIZE, ff_sparsity=8, ff_sparsity_type='2inN')


ENC_DEC = dict(input_vocab_size=30, output_vocab_size=36, d_model=16, d_ff=32,
               n_encoder_layers=1, n_decoder_layers=2, n_heads=2, max_len=24)


@pytest.mark.parametrize('variant', ['dense', 'sparse_ff_qkv_loss', 'moe'])
def test_encoder_decoder_predict_equals_eval(variant):
  kwargs = dict(ENC_DEC, dropout=0.0, **VARIANTS[variant])
  source = jax.random.randint(jax.random.key(1), (2, 7), 1, 30).at[1, 5:].set(0)
  target = jax.random.randint(jax.random.key(2), (2, 6), 1, 36)
  evaluate = models.ScalingTransformer(**kwargs, mode='eval')
  weights, state = evaluate.init((source, target), rng=jax.random.key(0))
  full = jax.jit(evaluate.apply)(weights, state, (source, target))[0]
  assert full.shape == (2, 6, 36)
  predict = models.ScalingTransformer(**kwargs, mode='predict')
  cache = initial_state(predict, (sig(2, 7, dtype=jnp.int32), sig(2, 1, dtype=jnp.int32)))
  step = jax.jit(predict.apply)
  previous, outs = jnp.zeros((2, 1), jnp.int32), []
  for t in range(6):
    logits, cache = step(weights, cache, (source, previous))
    outs.append(logits)
    previous = target[:, t:t + 1]
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_greedy_decoding_equals_eval_argmax(variant):
  """autoregressive_sample (one while_loop) == argmax of the eval forward pass, step by step."""
  from sparse_trax import decoding  # pylint: disable=import-outside-toplevel
  kwargs = dict(SIZE, dropout=0.0, **VARIANTS[variant])
  evaluate = models.ScalingTransformerLM(**kwargs, mode='eval')
  predict = models.ScalingTransformerLM(**kwargs, mode='predict')
  prefix = np.array([[5, 6, 7], [11, 2, 9]], np.int32)
  weights, state = evaluate.init(jnp.asarray(prefix), rng=jax.random.key(3))
  got = decoding.autoregressive_sample(predict, weights, prefix, max_length=6)
  tokens = prefix
  forward = jax.jit(lambda t: evaluate.apply(weights, state, t)[0])
  for t in range(3, 9):        # one length, one compile: causal, so later zeros do not count
    logits = forward(jnp.pad(jnp.asarray(tokens), ((0, 0), (0, 9 - t))))[:, t]
    tokens = np.concatenate([tokens, np.argmax(logits, -1)[:, None]], axis=1)
  np.testing.assert_array_equal(got, tokens[:, 3:])
