"""autoregressive_sample: greedy == eval argmax, one trace, EOS, sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_trax import decoding, models

LM = dict(vocab_size=23, d_model=16, d_ff=32, n_layers=2, n_heads=2, max_len=32, dropout=0.0)


@pytest.fixture(scope='module')
def lm():
  evaluate = models.TransformerLM(**LM, mode='eval')
  weights, state = evaluate.init(jax.ShapeDtypeStruct((2, 4), jnp.int32), rng=jax.random.key(3))
  return evaluate, models.TransformerLM(**LM, mode='predict'), weights, state


def greedy_by_eval(model, weights, state, prefix, n):
  tokens = np.asarray(prefix)
  for _ in range(n):
    # The eval model predicts token t at position t: append a slot to read.
    padded = jnp.pad(jnp.asarray(tokens), ((0, 0), (0, 1)))
    next_logits = model.apply(weights, state, padded)[0][:, -1]
    tokens = np.concatenate([tokens, np.argmax(next_logits, -1)[:, None]], axis=1)
  return tokens[:, np.shape(prefix)[1]:]


def test_greedy_equals_eval_argmax(lm):
  evaluate, predict, weights, state = lm
  prefix = np.array([[5, 6, 7], [1, 2, 3]], np.int32)
  got = decoding.autoregressive_sample(predict, weights, prefix, max_length=6)
  want = greedy_by_eval(evaluate, weights, state, prefix, 6)
  np.testing.assert_array_equal(got, want)


def test_no_retrace_per_token(lm):
  _, predict, weights, _ = lm
  decoding.autoregressive_sample(predict, weights, np.ones((2, 2), np.int32), max_length=6)
  before = decoding.generate._cache_size()  # pylint: disable=protected-access
  for prefix_value in (3, 4):
    decoding.autoregressive_sample(predict, weights, np.full((2, 2), prefix_value, np.int32),
                                   max_length=6)
  assert decoding.generate._cache_size() == before  # pylint: disable=protected-access


def test_decode_step_by_step_equals_generate(lm):
  _, predict, weights, _ = lm
  prefix = np.array([[5, 6, 7], [1, 2, 3]], np.int32)
  want = decoding.autoregressive_sample(predict, weights, prefix, max_length=5)
  state = decoding.initial_state(predict, jax.ShapeDtypeStruct((2, 1), jnp.int32))
  token, got = jnp.zeros((2,), jnp.int32), []
  for t in range(3 + 5):
    sampled, logits, state = decoding.decode_step(predict, weights, state, token, None,
                                                  jax.random.key(0), temperature=0.0, top_k=None)
    assert logits.shape == (2, 23)
    token = jnp.asarray(prefix[:, t]) if t < 3 else sampled
    if t >= 3:
      got.append(np.asarray(sampled))
  np.testing.assert_array_equal(np.stack(got[:5], 1), want)
  before = decoding.decode_step._cache_size()  # pylint: disable=protected-access
  decoding.decode_step(predict, weights, state, token, None, jax.random.key(0),
                       temperature=0.0, top_k=None)
  assert decoding.decode_step._cache_size() == before  # pylint: disable=protected-access


def test_long_max_len_gives_the_same_tokens():
  short = models.TransformerLM(**dict(LM, max_len=64), mode='predict')
  long = models.TransformerLM(**dict(LM, max_len=2048), mode='predict')
  evaluate = models.TransformerLM(**LM, mode='eval')
  weights, _ = evaluate.init(jax.ShapeDtypeStruct((1, 4), jnp.int32), rng=jax.random.key(4))
  prefix = np.array([[3, 9, 4, 1, 7]], np.int32)
  a = decoding.autoregressive_sample(short, weights, prefix, max_length=20)
  b = decoding.autoregressive_sample(long, weights, prefix, max_length=20)
  np.testing.assert_array_equal(a, b)


def test_eos_stops_and_pads(lm):
  _, predict, weights, _ = lm
  prefix = np.array([[5, 6, 7], [1, 2, 3]], np.int32)
  free = decoding.autoregressive_sample(predict, weights, prefix, max_length=8)
  eos = int(free[0, 1])
  got = decoding.autoregressive_sample(predict, weights, prefix, max_length=8, eos_id=eos)
  first_eos = [list(row).index(eos) if eos in row else None for row in free]
  if all(i is not None for i in first_eos):
    assert got.shape[1] == max(first_eos) + 1
  for row, stop in zip(got, first_eos):
    if stop is not None:
      assert row[stop] == eos and np.all(row[stop + 1:] == 0)


def test_sampling_is_seeded(lm):
  _, predict, weights, _ = lm
  kwargs = dict(max_length=10, temperature=1.0, batch_size=2)
  a = decoding.autoregressive_sample(predict, weights, rng=jax.random.key(1), **kwargs)
  b = decoding.autoregressive_sample(predict, weights, rng=jax.random.key(1), **kwargs)
  c = decoding.autoregressive_sample(predict, weights, rng=jax.random.key(2), **kwargs)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  top1 = decoding.autoregressive_sample(predict, weights, rng=jax.random.key(1),
                                        max_length=10, temperature=1.0, top_k=1, batch_size=2)
  greedy = decoding.autoregressive_sample(predict, weights, max_length=10, batch_size=2)
  np.testing.assert_array_equal(top1, greedy)


def test_needs_predict_mode_and_rng(lm):
  evaluate, predict, weights, _ = lm
  with pytest.raises(ValueError, match='predict'):
    decoding.autoregressive_sample(evaluate, weights, max_length=2)
  with pytest.raises(ValueError, match='rng'):
    decoding.autoregressive_sample(predict, weights, max_length=2, temperature=0.5)


def test_encoder_decoder_greedy_equals_eval():
  config = dict(input_vocab_size=19, output_vocab_size=17, d_model=16, d_ff=32,
                n_encoder_layers=1, n_decoder_layers=2, n_heads=2, max_len=32, dropout=0.0)
  evaluate = models.Transformer(**config, mode='eval')
  predict = models.Transformer(**config, mode='predict')
  source = jax.random.randint(jax.random.key(1), (2, 6), 1, 19)
  weights, state = evaluate.init((source, jnp.zeros((2, 1), jnp.int32)), rng=jax.random.key(0))
  got = decoding.autoregressive_sample(predict, weights, inputs=source, max_length=5)
  tokens = np.zeros((2, 0), np.int32)
  for _ in range(5):
    target = jnp.pad(jnp.asarray(tokens), ((0, 0), (0, 1)))
    logits = evaluate.apply(weights, state, (source, target))[0][:, -1]
    tokens = np.concatenate([tokens, np.argmax(logits, -1)[:, None]], axis=1)
  np.testing.assert_array_equal(got, tokens)
