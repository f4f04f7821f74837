"""autoregressive_sample: greedy == eval argmax, one trace, EOS, sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl
from sparse_trax import decoding, models

LM = dict(vocab_size=23, d_model=16, d_ff=32, n_layers=2, n_heads=2, max_len=32, dropout=0.0)


@pytest.fixture(scope='module')
def lm():
  evaluate = models.TransformerLM(**LM, mode='eval')
  weights, state = evaluate.init(jax.ShapeDtypeStruct((2, 4), jnp.int32), rng=jax.random.key(3))
  return evaluate, models.TransformerLM(**LM, mode='predict'), weights, state


def greedy_by_eval(model, weights, state, prefix, n):
  """n greedy tokens after `prefix`, each the argmax of a whole eval-mode forward pass."""
  tokens = np.asarray(prefix)
  length = tokens.shape[1] + n
  # One shape, one compile: the eval model predicts token t at position t (its input
  # is shifted right) and is causal, so the zeros after position t do not reach it.
  forward = jax.jit(lambda x: model.apply(weights, state, x)[0])
  for t in range(tokens.shape[1], length):
    next_logits = forward(jnp.pad(jnp.asarray(tokens), ((0, 0), (0, length - t))))[:, t]
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
  compiled = (decoding.generate, decoding._initial_state)  # pylint: disable=protected-access
  before = [f._cache_size() for f in compiled]  # pylint: disable=protected-access
  for prefix_value in (3, 4):
    decoding.autoregressive_sample(predict, weights, np.full((2, 2), prefix_value, np.int32),
                                   max_length=6)
  # Neither the loop nor the initial state is traced again (the state was
  # traced and compiled on every call: ~2 s for the 24-layer benchmark model).
  assert [f._cache_size() for f in compiled] == before  # pylint: disable=protected-access


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
  forward = jax.jit(lambda target: evaluate.apply(weights, state, (source, target))[0])
  for t in range(5):           # fixed length: the decoder is causal (see greedy_by_eval)
    logits = forward(jnp.pad(jnp.asarray(tokens), ((0, 0), (0, 5 - t))))[:, t]
    tokens = np.concatenate([tokens, np.argmax(logits, -1)[:, None]], axis=1)
  np.testing.assert_array_equal(got, tokens)


# ------------------------------------------- batched prompts, bounds, beam search

def test_prompts_of_different_lengths_decode_as_alone(lm):
  _, predict, weights, _ = lm
  prompts = [[5, 6, 7, 8, 9], [1, 2], [], [4, 4, 4]]
  got = decoding.autoregressive_sample(predict, weights, prompts, max_length=6)
  assert isinstance(got, list) and len(got) == 4
  for prompt, row in zip(prompts, got):
    alone = decoding.autoregressive_sample(predict, weights, np.array([prompt], np.int32)
                                           .reshape(1, len(prompt)), max_length=6)
    np.testing.assert_array_equal(row, alone[0])
  # The same as a right-padded array with prefix_lengths.
  padded = np.zeros((4, 5), np.int32)
  for i, prompt in enumerate(prompts):
    padded[i, :len(prompt)] = prompt
  as_array = decoding.autoregressive_sample(predict, weights, padded, max_length=6,
                                            prefix_lengths=[5, 2, 0, 3])
  np.testing.assert_array_equal(as_array, np.stack(got))


def test_each_row_stops_at_its_own_eos_and_lists_have_no_padding(lm):
  _, predict, weights, _ = lm
  prompts = [[5, 6, 7], [1, 2]]
  free = decoding.autoregressive_sample(predict, weights, prompts, max_length=8)
  eos = int(free[0][2])
  got = decoding.autoregressive_sample(predict, weights, prompts, max_length=8, eos_id=eos)
  for row, full in zip(got, free):
    stop = list(full).index(eos) + 1 if eos in full else len(full)
    np.testing.assert_array_equal(row, full[:stop])


def test_no_retrace_across_prompt_lengths_in_one_batch_shape(lm):
  _, predict, weights, _ = lm
  padded = np.array([[3, 4, 5, 6], [7, 8, 0, 0]], np.int32)
  decoding.autoregressive_sample(predict, weights, padded, prefix_lengths=[4, 2], max_length=5)
  before = decoding.generate._cache_size()  # pylint: disable=protected-access
  for lengths in ([1, 3], [4, 4], [0, 2]):
    decoding.autoregressive_sample(predict, weights, padded, prefix_lengths=lengths,
                                   max_length=5)
  assert decoding.generate._cache_size() == before  # pylint: disable=protected-access


def test_prompt_ids_are_checked_on_the_host(lm):
  _, predict, weights, _ = lm
  with pytest.raises(ValueError, match=r'token id 23 at index \[1, 0\].*\[0, 23\)'):
    decoding.autoregressive_sample(predict, weights, [[1, 2], [23]], max_length=2)
  with pytest.raises(ValueError, match='token id -1'):
    decoding.autoregressive_sample(predict, weights, np.array([[1, -1]]), max_length=2)
  with pytest.raises(ValueError, match='empty list'):
    decoding.autoregressive_sample(predict, weights, [], max_length=2)
  with pytest.raises(ValueError, match='max_length must be a positive int'):
    decoding.autoregressive_sample(predict, weights, [[1]], max_length=0)


def test_asking_past_max_len_fails_before_any_work(lm):
  _, predict, weights, _ = lm
  with pytest.raises(ValueError, match=r'30 tokens after a prompt of 3 needs 33 positions.*32'):
    decoding.autoregressive_sample(predict, weights, [[1, 2, 3]], max_length=30)
  with pytest.raises(ValueError, match='33 positions'):
    decoding.beam_search(predict, weights, [[1, 2, 3]], beam_size=2, max_length=30)


def test_feeding_past_the_cache_by_hand_raises_or_gives_nan():
  model = models.TransformerLM(**dict(LM, max_len=4), mode='predict')
  weights, state = model.init(jax.ShapeDtypeStruct((1, 1), jnp.int32), rng=jax.random.key(0))
  tokens = jnp.ones((1, 3), jnp.int32)
  _, full = model.apply(weights, state, tokens)            # positions 0..2 of 4
  # The first layer that knows the bound names itself (path and numbers).
  with pytest.raises(tl.LayerError, match=r'(?s)at path TransformerLM/3/PositionalEncoding.*'
                                          r'positions 3\.\.4 were asked for.*max_len is 4'):
    model.apply(weights, full, jnp.ones((1, 2), jnp.int32))
  # Under jit the position is not known on the host: the logits are NaN, never plausible.
  step = jax.jit(model.apply)
  logits, at_4 = step(weights, full, jnp.ones((1, 1), jnp.int32))
  assert np.isfinite(logits).all()
  logits, _ = step(weights, at_4, jnp.ones((1, 1), jnp.int32))
  assert np.isnan(logits).all()


def test_beam_size_one_is_greedy(lm):
  _, predict, weights, _ = lm
  prompts = [[5, 6, 7], [1, 2]]
  greedy = decoding.autoregressive_sample(predict, weights, prompts, max_length=5)
  sequences, scores = decoding.beam_search(predict, weights, prompts, beam_size=1,
                                           max_length=5)
  assert sequences.shape == (2, 1, 5) and scores.shape == (2, 1)
  for row, want in zip(sequences[:, 0], greedy):
    np.testing.assert_array_equal(row, want)


def test_beam_search_equals_exhaustive_search():
  vocab, length = 5, 3
  config = dict(vocab_size=vocab, d_model=16, d_ff=32, n_layers=1, n_heads=2, max_len=8,
                dropout=0.0)
  evaluate = models.TransformerLM(**config, mode='eval')
  predict = models.TransformerLM(**config, mode='predict')
  weights, state = evaluate.init(jax.ShapeDtypeStruct((1, 4), jnp.int32),
                                 rng=jax.random.key(7))
  prompts = [[2, 3], [4]]
  # With beam_size = vocab ** (length - 1) every prefix survives: the search is exact.
  beams = vocab ** (length - 1)
  sequences, scores = decoding.beam_search(predict, weights, prompts, beam_size=beams,
                                           max_length=length, length_penalty=0.0)
  for prompt, got_seqs, got_scores in zip(prompts, sequences, scores):
    every = np.array(np.meshgrid(*[np.arange(vocab)] * length, indexing='ij')).reshape(length, -1).T
    full = np.concatenate([np.tile(prompt, (len(every), 1)), every], axis=1)
    log_probs = jax.nn.log_softmax(evaluate.apply(weights, state, jnp.asarray(full))[0])
    total = np.asarray(jnp.take_along_axis(log_probs, jnp.asarray(full)[..., None], -1)[..., 0]
                       [:, len(prompt):].sum(1))
    best = np.argsort(-total, kind='stable')[:beams]
    np.testing.assert_allclose(got_scores, total[best], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got_seqs[0], every[best[0]])
    assert {tuple(s) for s in got_seqs} == {tuple(every[i]) for i in best}


def test_beam_search_for_an_encoder_decoder_and_with_eos():
  config = dict(input_vocab_size=19, output_vocab_size=17, d_model=16, d_ff=32,
                n_encoder_layers=1, n_decoder_layers=1, n_heads=2, max_len=16, dropout=0.0)
  evaluate = models.Transformer(**config, mode='eval')
  predict = models.Transformer(**config, mode='predict')
  source = jax.random.randint(jax.random.key(1), (2, 6), 1, 19)
  weights, _ = evaluate.init((source, jnp.zeros((2, 1), jnp.int32)), rng=jax.random.key(0))
  greedy = decoding.autoregressive_sample(predict, weights, inputs=source, max_length=5)
  sequences, scores = decoding.beam_search(predict, weights, inputs=source, beam_size=1,
                                           max_length=5)
  np.testing.assert_array_equal(sequences[:, 0], greedy)
  sequences, scores = decoding.beam_search(predict, weights, inputs=source, beam_size=3,
                                           max_length=5, eos_id=int(greedy[0, 1]))
  assert sequences.shape == (2, 3, 5)
  assert np.all(np.diff(scores, axis=1) <= 1e-6)           # best first
  assert np.isfinite(scores).all()


# ------------------------------------------- output_position (the prefill's last logits)

def _apply_both_ways(model, weights, tokens, valid, index):
  """(whole call's outputs at `index`, states) and (output_position=index call, states)."""
  signature = jax.ShapeDtypeStruct(tokens.shape, jnp.int32)
  def run(position):
    state = decoding.initial_state(model, signature)
    return jax.jit(lambda w, s, x, v, i: model.apply(
        w, s, x, valid_length=v, output_position=i))(weights, state, tokens, valid, position)
  state = decoding.initial_state(model, signature)
  whole, whole_state = jax.jit(lambda w, s, x, v: model.apply(w, s, x, valid_length=v))(
      weights, state, tokens, valid)
  at, at_state = run(index)
  return (whole[:, index:index + 1], whole_state), (at, at_state)


@pytest.mark.parametrize('loss_sparsity', [0, 4])
def test_output_position_equals_that_position_of_the_whole_call(loss_sparsity):
  config = dict(LM, vocab_size=24, loss_sparsity=loss_sparsity)
  predict = models.ScalingTransformerLM(**config, mode='predict')
  weights, _ = models.ScalingTransformerLM(**config, mode='eval').init(
      jax.ShapeDtypeStruct((2, 6), jnp.int32), rng=jax.random.key(1))
  tokens = jax.random.randint(jax.random.key(2), (2, 6), 1, 24)
  for index in (0, 3, 5):
    (want, want_state), (got, got_state) = _apply_both_ways(
        predict, weights, tokens, jnp.int32(index + 1), jnp.int32(index))
    assert got.shape == (2, 1, 24)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                           got_state, want_state)


def _probed_lm(position_wise: bool, seen: list):
  """Embedding, causal attention, then a tail: LayerNorm, a probe recording its input shape, Dense."""
  def probe(x):
    seen.append(x.shape)
    return x
  return tl.Serial(tl.Embedding(11, 8),                                  # ids -> x
                   tl.CausalAttention(8, n_heads=2, max_len=16, mode='predict'),
                   tl.LayerNorm(),
                   tl.Fn('Probe', probe, position_wise=position_wise),
                   tl.Dense(11))                                         # x -> logits


def test_prefill_runs_the_position_wise_tail_on_the_last_position_only():
  tokens = jnp.array([[3, 4, 5, 6], [7, 8, 9, 1]], jnp.int32)
  results = {}
  for position_wise in (True, False):
    seen = []
    model = _probed_lm(position_wise, seen)
    weights, _ = model.init(jax.ShapeDtypeStruct((2, 5), jnp.int32), rng=jax.random.key(0))
    state = decoding.initial_state(model, jax.ShapeDtypeStruct((2, 5), jnp.int32))
    seen.clear()
    logits, position, _ = decoding.prefill(model, weights, state, tokens,
                                           jnp.array([4, 3], jnp.int32))
    # The shortest prompt (3 tokens) after the start token: position 3.
    assert int(position) == 3 and logits.shape == (2, 11)
    # With the flag the tail saw one position; without it, the Serial's tail
    # starts after the probe and the probe saw all five fed positions.
    assert seen == ([(2, 1, 8)] if position_wise else [(2, 5, 8)])
    results[position_wise] = logits
  np.testing.assert_allclose(results[True], results[False], rtol=1e-5, atol=1e-6)


def test_a_nested_serial_at_the_end_runs_its_tail_on_one_position():
  """Serial(embedding, Serial(attention, LayerNorm, probe, Dense)): the outer Serial
  has no position-wise tail, so it asks its last sublayer for the one position."""
  seen = []
  flat = _probed_lm(True, seen)
  nested = tl.Serial(flat.sublayers[0], tl.Serial(*flat.sublayers[1:]))
  tokens = jnp.array([[3, 4, 5, 6], [7, 8, 9, 1]], jnp.int32)
  signature = jax.ShapeDtypeStruct((2, 5), jnp.int32)
  flat_weights, _ = flat.init(signature, rng=jax.random.key(0))
  nested_weights = (flat_weights[0], tuple(flat_weights[1:]))      # the same arrays
  logits = {}
  for name, model, weights in (('flat', flat, flat_weights),
                               ('nested', nested, nested_weights)):
    state = decoding.initial_state(model, signature)
    seen.clear()
    logits[name], _, _ = decoding.prefill(model, weights, state, tokens, jnp.array([4, 3]))
    assert seen == [(2, 1, 8)], name
  np.testing.assert_allclose(logits['nested'], logits['flat'], rtol=1e-6, atol=1e-6)


def test_output_position_is_for_one_output_layers_in_predict_mode(lm):
  evaluate, _, weights, state = lm
  with pytest.raises(tl.LayerError, match="output_position is for one-output layers in "
                                          "'predict' mode; this layer is in 'eval' mode"):
    evaluate.apply(weights, state, jnp.ones((2, 4), jnp.int32), output_position=1)
  with pytest.raises(tl.LayerError, match='position_wise=True is for one-in, one-out'):
    tl.Fn('Pair', lambda a, b: a + b, position_wise=True)
