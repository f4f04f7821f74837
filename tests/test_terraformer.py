"""Terraformer and TerraformerLM: predict == eval, concatenation drops padding, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl
from sparse_trax import decoding, models
from conftest import prefill_then_steps, sig

LM = dict(vocab_size=40, d_model=16, d_ff=32, n_layers=2, n_heads=2, max_len=32,
          attention_chunk_len=4)
LM_VARIANTS = {
    'dense': {},
    'multconv_sparse_ff_sru_loss': dict(attention_type='multconv', attention_sparsity=4,
                                        ff_sparsity=8, ff_use_sru=8, loss_sparsity=4,
                                        positional_encoding='fixed_base'),
    'chunked_two_attentions': dict(attention_type='chunked', n_attention_layers=2),
}


def decode_all(predict, weights, first_inputs, tokens, inputs=None):
  signature = sig(tokens.shape[0], 1, dtype=jnp.int32)
  state = decoding.initial_state(predict, signature if inputs is None else
                                 (sig(*inputs.shape, dtype=jnp.int32), signature))
  step = jax.jit(predict.apply)
  previous, outs = jnp.zeros((tokens.shape[0], 1), jnp.int32), []
  for t in range(tokens.shape[1]):
    logits, state = step(weights, state, previous if inputs is None else (inputs, previous))
    outs.append(logits)
    previous = tokens[:, t:t + 1]
  return jnp.concatenate(outs, 1)


@pytest.mark.parametrize('variant', sorted(LM_VARIANTS))
def test_terraformer_lm_predict_equals_eval(variant):
  kwargs = dict(LM, dropout=0.1, **LM_VARIANTS[variant])
  tokens = jax.random.randint(jax.random.key(1), (2, 11), 1, 40)
  evaluate = models.TerraformerLM(**kwargs, mode='eval')
  weights, state = evaluate.init(tokens, rng=jax.random.key(0))
  full = jax.jit(evaluate.apply)(weights, state, tokens)[0]
  predict = models.TerraformerLM(**kwargs, mode='predict')
  got = decode_all(predict, weights, None, tokens)
  np.testing.assert_allclose(got, full, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(prefill_then_steps(predict, weights, tokens, 6), full,
                             rtol=1e-4, atol=1e-4)


def test_terraformer_lm_with_lsh_trains_and_decodes():
  kwargs = dict(LM, attention_type='lsh', dropout=0.0)
  model = models.TerraformerLM(**kwargs)
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 1, 40)
  weights, state = model.init(tokens, rng=jax.random.key(0))
  grads = jax.jit(jax.grad(lambda w: tl.weighted_cross_entropy(
      model.apply(w, state, tokens, rng=jax.random.key(2))[0], tokens,
      jnp.ones(tokens.shape))))(weights)
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
  predict = models.TerraformerLM(**kwargs, mode='predict')
  out = decoding.autoregressive_sample(predict, weights, tokens[:, :3], max_length=5)
  assert out.shape == (2, 5)
  # LSH decodes by its bucket rule (not eval's sorted chunks): a prefill gives what
  # token-by-token feeding gives.
  np.testing.assert_allclose(prefill_then_steps(predict, weights, tokens[:, :6], 4),
                             prefill_then_steps(predict, weights, tokens[:, :6], 1),
                             rtol=1e-4, atol=1e-4)


def test_reversible_and_plain_lm_give_the_same_gradients():
  kwargs = dict(LM, ff_sparsity=8, ff_use_sru=8, dropout=0.1, n_layers=1)
  reversible, plain = models.TerraformerLM(**kwargs), models.TerraformerLM(**kwargs, reversible=False)
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 1, 40)
  weights, state = reversible.init(tokens, rng=jax.random.key(0))
  loss = lambda m: lambda w: tl.weighted_cross_entropy(
      m.apply(w, state, tokens, rng=jax.random.key(5))[0], tokens, jnp.ones(tokens.shape))
  for a, b in zip(jax.tree_util.tree_leaves(jax.jit(jax.grad(loss(reversible)))(weights)),
                  jax.tree_util.tree_leaves(jax.jit(jax.grad(loss(plain)))(weights))):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)


ENC_DEC = dict(input_vocab_size=30, output_vocab_size=36, d_model=16, d_ff=32,
               n_encoder_layers=1, n_decoder_layers=2, n_heads=2, max_len=32)
ENC_DEC_VARIANTS = {
    'dense': {},
    # With what Trax's ConfigurableTerraformer has (sparse_trax.compat.trax sets it).
    'sparse': dict(encoder_attention_type='multconv', decoder_attention_type='multconv',
                   attention_sparsity=4, ff_sparsity=8, ff_use_sru=8, loss_sparsity=4,
                   positional_encoding='fixed_base', encoder_output_dense=True,
                   ff_mask_before_activation=True, sru_highway_scale=3 ** 0.5,
                   sru_candidate_bias=True),
}


@pytest.mark.parametrize('variant', sorted(ENC_DEC_VARIANTS))
def test_terraformer_predict_equals_eval(variant):
  kwargs = dict(ENC_DEC, dropout=0.1, **ENC_DEC_VARIANTS[variant])
  source = jax.random.randint(jax.random.key(1), (2, 7), 1, 30)     # unpadded for decoding
  target = jax.random.randint(jax.random.key(2), (2, 6), 1, 36)
  evaluate = models.Terraformer(**kwargs, mode='eval')
  weights, state = evaluate.init((source, target), rng=jax.random.key(0))
  full = jax.jit(evaluate.apply)(weights, state, (source, target))[0]
  assert full.shape == (2, 6, 36)
  predict = models.Terraformer(**kwargs, mode='predict')
  got = decode_all(predict, weights, None, target, source)
  np.testing.assert_allclose(got, full, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(prefill_then_steps(predict, weights, target, 4, inputs=source),
                             full, rtol=1e-4, atol=1e-4)


def test_concatenation_removes_encoder_padding():
  kwargs = dict(ENC_DEC, dropout=0.0, ff_use_sru=8, decoder_attention_type='multconv',
                attention_sparsity=4, n_decoder_layers=1, n_decoder_attention_layers=1)
  model = models.Terraformer(**kwargs, mode='eval')
  source = jax.random.randint(jax.random.key(1), (1, 5), 1, 30)
  target = jax.random.randint(jax.random.key(2), (1, 4), 1, 36)
  weights, state = model.init((source, target), rng=jax.random.key(0))
  apply = jax.jit(model.apply)
  unpadded = apply(weights, state, (source, target))[0]
  padded_source = jnp.pad(source, ((0, 0), (0, 3)))
  padded = apply(weights, state, (padded_source, target))[0]
  np.testing.assert_allclose(padded, unpadded, rtol=1e-4, atol=1e-5)


def test_terraformer_trains_with_lsh_encoder_and_chunked_decoder():
  kwargs = dict(ENC_DEC, dropout=0.1, encoder_attention_type='lsh',
                decoder_attention_type='chunked', attention_chunk_len=4, n_decoder_layers=1,
                n_decoder_attention_layers=1)
  model = models.Terraformer(**kwargs)
  source = jax.random.randint(jax.random.key(1), (2, 8), 1, 30)
  target = jax.random.randint(jax.random.key(2), (2, 6), 1, 36)
  weights, state = model.init((source, target), rng=jax.random.key(0))
  loss, grads = jax.jit(jax.value_and_grad(lambda w: tl.weighted_cross_entropy(
      model.apply(w, state, (source, target), rng=jax.random.key(3))[0], target,
      jnp.ones(target.shape))))(weights)
  assert np.isfinite(loss)
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))


def test_bad_attention_types_are_rejected():
  with pytest.raises(ValueError, match='decoder_attention_type'):
    models.Terraformer(**ENC_DEC, decoder_attention_type='sparse')
  with pytest.raises(ValueError, match='encoder_attention_type'):
    models.Terraformer(**ENC_DEC, encoder_attention_type='chunked')


def test_an_unknown_positional_encoding_is_named():
  with pytest.raises(ValueError, match=r"positional_encoding must be one of .*'fixed-base'"):
    models.Terraformer(**ENC_DEC, positional_encoding='fixed-base')   # Trax's spelling
  with pytest.raises(ValueError, match='positional_encoding'):
    models.TerraformerLM(**LM, positional_encoding='learned')
