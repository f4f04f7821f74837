"""The dense baselines: shapes, training-mode randomness, predict == eval."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import sparse_trax.layers as tl
from sparse_trax import models
from sparse_trax.decoding import initial_state
from conftest import sig

LM = dict(vocab_size=37, d_model=16, d_ff=32, n_layers=2, n_heads=4, max_len=32)
ENC_DEC = dict(input_vocab_size=29, output_vocab_size=31, d_model=16, d_ff=32,
               n_encoder_layers=2, n_decoder_layers=2, n_heads=4, max_len=32)


def test_transformer_lm_shapes_and_causality():
  model = models.TransformerLM(**LM, dropout=0.0, mode='eval')
  tokens = jax.random.randint(jax.random.key(1), (2, 9), 1, 37)
  weights, state = model.init(tokens, rng=jax.random.key(0))
  logits = model.apply(weights, state, tokens)[0]
  assert logits.shape == (2, 9, 37)
  changed = model.apply(weights, state, tokens.at[:, 5].set(3))[0]
  # Position t sees tokens < t: changing token 5 changes positions 6.. only.
  np.testing.assert_allclose(logits[:, :6], changed[:, :6], rtol=1e-5, atol=1e-5)
  assert not np.allclose(logits[:, 6:], changed[:, 6:])


def test_dropout_in_train_only_eval_deterministic():
  tokens = jax.random.randint(jax.random.key(1), (2, 9), 1, 37)
  train = models.TransformerLM(**LM, dropout=0.3, mode='train')
  weights, state = train.init(tokens, rng=jax.random.key(0))
  a = train.apply(weights, state, tokens, rng=jax.random.key(1))[0]
  b = train.apply(weights, state, tokens, rng=jax.random.key(2))[0]
  assert not np.allclose(a, b)
  evaluate = models.TransformerLM(**LM, dropout=0.3, mode='eval')
  c = evaluate.apply(weights, state, tokens, rng=jax.random.key(1))[0]
  d = evaluate.apply(weights, state, tokens, rng=jax.random.key(2))[0]
  np.testing.assert_array_equal(c, d)


def test_same_weights_fit_every_mode():
  shapes = {}
  for mode in ('train', 'eval', 'predict'):
    model = models.TransformerLM(**LM, mode=mode)
    length = 1 if mode == 'predict' else 9
    weights, _ = model.init(sig(2, length, dtype=jnp.int32), rng=jax.random.key(0))
    shapes[mode] = jax.tree_util.tree_map(jnp.shape, weights)
  assert shapes['train'] == shapes['eval'] == shapes['predict']


def test_transformer_lm_predict_equals_eval():
  tokens = jax.random.randint(jax.random.key(1), (3, 12), 1, 37)
  evaluate = models.TransformerLM(**LM, dropout=0.1, mode='eval')
  weights, state = evaluate.init(tokens, rng=jax.random.key(0))
  full = jax.jit(evaluate.apply)(weights, state, tokens)[0]
  predict = models.TransformerLM(**LM, dropout=0.1, mode='predict')
  cache = initial_state(predict, sig(3, 1, dtype=jnp.int32))
  step = jax.jit(predict.apply)
  previous = jnp.zeros((3, 1), jnp.int32)
  outs = []
  for t in range(12):
    logits, cache = step(weights, cache, previous)
    outs.append(logits)
    previous = tokens[:, t:t + 1]
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-4, atol=1e-4)


def test_transformer_encoder_decoder_shapes_and_padding():
  model = models.Transformer(**ENC_DEC, dropout=0.0, mode='eval')
  source = jax.random.randint(jax.random.key(1), (2, 7), 1, 29).at[1, 5:].set(0)
  target = jax.random.randint(jax.random.key(2), (2, 5), 1, 31)
  weights, state = model.init((source, target), rng=jax.random.key(0))
  logits = model.apply(weights, state, (source, target))[0]
  assert logits.shape == (2, 5, 31)
  # The decoder reads the source through cross-attention.
  changed = model.apply(weights, state, (source.at[:, 0].set(3), target))[0]
  assert not np.allclose(logits, changed)


def test_transformer_predict_equals_eval():
  source = jax.random.randint(jax.random.key(1), (2, 7), 1, 29).at[1, 5:].set(0)
  target = jax.random.randint(jax.random.key(2), (2, 6), 1, 31)
  evaluate = models.Transformer(**ENC_DEC, dropout=0.1, mode='eval')
  weights, state = evaluate.init((source, target), rng=jax.random.key(0))
  full = jax.jit(evaluate.apply)(weights, state, (source, target))[0]
  predict = models.Transformer(**ENC_DEC, dropout=0.1, mode='predict')
  cache = initial_state(predict, (sig(2, 7, dtype=jnp.int32), sig(2, 1, dtype=jnp.int32)))
  step = jax.jit(predict.apply)
  previous = jnp.zeros((2, 1), jnp.int32)
  outs = []
  for t in range(6):
    logits, cache = step(weights, cache, (source, previous))
    outs.append(logits)
    previous = target[:, t:t + 1]
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-4, atol=1e-4)


def test_lm_trains_on_a_tiny_pattern():
  """A few Adam steps on a repeating sequence lower the loss a lot."""
  model = models.TransformerLM(**LM, dropout=0.0)
  tokens = jnp.tile(jnp.arange(1, 9, dtype=jnp.int32), (4, 2))
  weights, state = model.init(tokens, rng=jax.random.key(0))
  loss_layer = tl.CrossEntropyLoss()
  ones = jnp.ones(tokens.shape)

  def loss(w):
    logits = model.apply(w, state, tokens, rng=jax.random.key(0))[0]
    return loss_layer.apply((), (), (logits, tokens, ones))[0]
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(weights)

  @jax.jit
  def update(w, o):
    value, grads = jax.value_and_grad(loss)(w)
    updates, o = optimizer.update(grads, o, w)
    return optax.apply_updates(w, updates), o, value
  first = None
  for _ in range(60):
    weights, opt_state, value = update(weights, opt_state)
    first = value if first is None else first
  assert float(value) < 0.3 * float(first)
