"""Autoregressive decoding from a 'predict'-mode model: sampling and beam search.

A 'predict'-mode LM takes token ids [batch, length] and returns logits
[batch, length, vocab], keeping its caches in a `DecodeState`; position t is
fed the previous token (0 at t = 0) and predicts token t. An encoder-decoder
takes (inputs, ids) and runs its encoder once.

- `autoregressive_sample`: greedy, temperature and top-k sampling. The prompt
  is fed in one call (prefill); the rest of the generation runs inside one
  jitted `lax.while_loop`. Prompts of different lengths share one batch:
  the call prefills up to the shortest prompt (right padding computed but not
  counted: `Layer.apply(..., valid_length=)`), and the loop feeds each row
  its own prompt tokens until they run out, then its samples; so every row
  decodes exactly as it would alone, and one batch shape compiles once.
- `beam_search`: the same, keeping `beam_size` hypotheses per prompt; every
  typed cache follows its beam (`layers.reorder_batch`).
- `prefill` and `decode_step`: one jitted call each, for callers who drive
  the loop themselves (e.g. to time each token).
"""

import functools
from typing import List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from sparse_trax import arguments
from sparse_trax.layers.base import Layer, to_signature
from sparse_trax.layers.core import Embedding
from sparse_trax.layers.state import reorder_batch

NEG_INF = -1e30   # scores of impossible beams (finite, so sums and comparisons stay defined)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _initial_state(model: Layer, signature):
  return model.init(signature, rng=jax.random.key(0))[1]


def initial_state(model: Layer, input_signature):
  """The model's initial state for inputs of `input_signature`, without weights.

  Compiled once per (model, signature) and reused: every `autoregressive_sample`
  or `beam_search` call starts from it. The weights `init` would make are dead
  code under `jax.jit` and are never computed.
  """
  state = _initial_state(model, to_signature(input_signature))
  # XLA may return one buffer for several equal constants (zero caches); give
  # each leaf its own buffer so that donating the state can reuse every one.
  return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), state)


def sample_logits(logits, rng, temperature: float, top_k: Optional[int]):
  """Picks one token per row from logits [batch, vocab]: greedy if temperature is 0."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _model_inputs(tokens, inputs):
  return tokens if inputs is None else (inputs, tokens)


def _prefill(model, weights, state, prompt, prompt_lengths, inputs):
  """Feeds positions 0 .. min(prompt_lengths) in one call.

  Returns (logits [batch, vocab] at the last fed position, its position, state).
  Only that position's logits are computed: the model's position-wise tail
  (final LayerNorm, vocabulary projection) runs on it alone
  (`Layer.apply(..., output_position=)`).
  """
  batch = prompt.shape[0]
  fed = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), prompt], axis=1)   # s_0 .. s_width
  shortest = jnp.min(prompt_lengths).astype(jnp.int32)
  logits, state = model.apply(weights, state, _model_inputs(fed, inputs),
                              valid_length=shortest + 1, output_position=shortest)
  return logits[:, 0], shortest, state


@functools.partial(jax.jit, static_argnames=('model',), donate_argnames=('state',))
def prefill(model: Layer, weights, state, prompt, prompt_lengths, inputs=None):
  """Feeds prompts in one call: (logits [batch, vocab], position, state).

  Args:
    prompt: [batch, width] int32, right-padded.
    prompt_lengths: [batch] int32. Positions 0 .. min(prompt_lengths) are fed
      (the start token, then the prompt); the returned logits predict the
      token after the shortest prompt, and the position is that of the last
      fed token. Longer prompts' remaining tokens are for the caller to feed.
    inputs: the source ids of an encoder-decoder.
  """
  return _prefill(model, weights, state, prompt, prompt_lengths, inputs)


def _next_token(model, weights, state, token, inputs, rng, temperature, top_k):
  logits, state = model.apply(weights, state, _model_inputs(token[:, None], inputs), rng=None)
  logits = logits[:, -1, :]
  return sample_logits(logits, rng, temperature, top_k), logits, state


@functools.partial(jax.jit, static_argnames=('model', 'temperature', 'top_k'),
                   donate_argnames=('state',))
def decode_step(model: Layer, weights, state, token, inputs, rng, *,
                temperature: float, top_k: Optional[int]):
  """One token: (previous token [batch]) -> (next token [batch], logits, state).

  Jitted once per (model, temperature, top_k, shapes) and reused for every
  token; the state buffers are donated (updated in place).
  """
  return _next_token(model, weights, state, token, inputs, rng, temperature, top_k)


def _prompt_token(prompt, index):
  """prompt[b, index[b]] (index [batch] or a scalar, clamped into the prompt): [batch]."""
  width = prompt.shape[1]
  if width == 0:
    return jnp.zeros(prompt.shape[:1], jnp.int32)
  index = jnp.broadcast_to(jnp.clip(index, 0, width - 1), prompt.shape[:1])
  return jnp.take_along_axis(prompt, index[:, None], axis=1)[:, 0]


@functools.partial(jax.jit, static_argnames=('model', 'max_length', 'temperature', 'top_k',
                                             'eos_id'),
                   donate_argnames=('state',))
def generate(model: Layer, weights, state, prompt, prompt_lengths, inputs, rng, *,
             max_length: int, temperature: float, top_k: Optional[int],
             eos_id: Optional[int]):
  """The whole generation: one prefill call, then one `lax.while_loop`.

  Position t is fed s_t, where s_0 = 0, s_1..s_n are a row's n prompt
  tokens, and the samples follow; the output at position t >= n is that
  row's generated token t - n. A row stops after max_length tokens or its
  eos_id.

  Args:
    prompt: [batch, width] int32, right-padded (width may be 0).
    prompt_lengths: [batch] int32, each row's prompt length.

  Returns:
    (tokens [batch, max_length] with 0 after a row's end, counts [batch] of
     tokens generated per row, the final state). The state is donated.
  """
  batch = prompt.shape[0]

  def record(t, sampled, out, counts, done):
    """Writes row b's token t - n_b (if it is generating) and returns s_{t+1}."""
    index = t - prompt_lengths
    generating = (index >= 0) & ~done
    slot = jnp.arange(max_length)[None, :] == index[:, None]
    out = jnp.where(slot & generating[:, None], sampled[:, None], out)
    counts = jnp.where(generating, index + 1, counts)
    finished = index >= max_length - 1
    if eos_id is not None:
      finished = finished | (sampled == eos_id)
    done = done | (generating & finished)
    fed = jnp.where(t + 1 <= prompt_lengths, _prompt_token(prompt, t), sampled)
    return fed, out, counts, done

  logits, t, state = _prefill(model, weights, state, prompt, prompt_lengths, inputs)
  sampled = sample_logits(logits, jax.random.fold_in(rng, t), temperature, top_k)
  out = jnp.zeros((batch, max_length), jnp.int32)
  counts = jnp.zeros((batch,), jnp.int32)
  token, out, counts, done = record(t, sampled, out, counts, jnp.zeros((batch,), jnp.bool_))

  def keep_going(carry):
    return ~jnp.all(carry[-1])

  def step(carry):
    t, token, state, out, counts, done = carry
    t = t + 1
    sampled, _, state = _next_token(model, weights, state, token, inputs,
                                    jax.random.fold_in(rng, t), temperature, top_k)
    token, out, counts, done = record(t, sampled, out, counts, done)
    return t, token, state, out, counts, done

  _, _, state, out, counts, _ = jax.lax.while_loop(
      keep_going, step, (t, token, state, out, counts, done))
  return out, counts, state


# ------------------------------------------------------------- host checks

Prompts = Union[np.ndarray, jax.Array, Sequence[Sequence[int]]]


def _embeddings(model: Layer) -> List[Embedding]:
  found = []

  def walk(layer):
    if isinstance(layer, Embedding):
      found.append(layer)
    for sub in layer.sublayers:
      walk(sub)
  walk(model)
  return found


def check_ids(ids: np.ndarray, vocab_size: Optional[int], what: str) -> None:
  """Raises ValueError naming the first id outside [0, vocab_size) (checked on the host)."""
  ids = np.asarray(ids)
  if ids.size and not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f'{what} must hold integer token ids, got dtype {ids.dtype}')
  if vocab_size is None or not ids.size:
    return
  found = arguments.first_out_of_range(ids, vocab_size)
  if found is not None:
    where, token = found
    raise ValueError(f'{what} holds token id {token} at index {list(where)}, '
                     f'outside the vocabulary [0, {vocab_size})')


def _prompts(prefix, prefix_lengths, batch: int) -> Tuple[np.ndarray, np.ndarray, bool]:
  """(right-padded prompt [batch, width] int32, lengths [batch] int32, given as a list)."""
  if prefix is None:
    return np.zeros((batch, 0), np.int32), np.zeros((batch,), np.int32), False
  if _holds_text(prefix):
    raise ValueError(f'prefix is text ({_short(prefix)}); decoding takes token ids: tokenize '
                     'it first, e.g. ids = tokenizer.encode(text).numpy() (the trainer\'s '
                     'Inputs(...).tokenizer), and pass [ids]')
  if isinstance(prefix, (list, tuple)):
    if not prefix:
      raise ValueError('prefix is an empty list: give one token list per prompt '
                       '(an empty prompt is [])')
    rows = [np.asarray(row).reshape(-1) for row in prefix]
    for i, row in enumerate(rows):
      if row.size and not np.issubdtype(row.dtype, np.integer):
        raise ValueError(f'prefix[{i}] must hold integer token ids, got dtype {row.dtype} '
                         f'({_short(prefix[i])})')
    rows = [row.astype(np.int64) for row in rows]
    width = max(len(row) for row in rows)
    prompt = np.zeros((len(rows), width), np.int64)
    for i, row in enumerate(rows):
      prompt[i, :len(row)] = row
    lengths = np.array([len(row) for row in rows], np.int32)
    if prefix_lengths is not None:
      raise ValueError('prefix_lengths goes with an array prefix; a list of prompts has its '
                       'own lengths')
    return prompt, lengths, True
  prompt = np.asarray(prefix)
  if prompt.ndim != 2:
    raise ValueError(f'prefix must be [batch, length] ids or a list of token lists, got '
                     f'shape {prompt.shape}')
  if prefix_lengths is None:
    lengths = np.full((prompt.shape[0],), prompt.shape[1], np.int32)
  else:
    lengths = np.asarray(prefix_lengths, np.int32).reshape(-1)
    if lengths.shape != (prompt.shape[0],) or (lengths < 0).any() or \
        (lengths > prompt.shape[1]).any():
      raise ValueError(f'prefix_lengths must be [batch] = [{prompt.shape[0]}] lengths in '
                       f'[0, {prompt.shape[1]}], got {lengths.tolist()}')
  return prompt, lengths, False


def _holds_text(prefix) -> bool:
  """Whether a prompt was given as text (a str, bytes, or a list holding them)."""
  if isinstance(prefix, (str, bytes)):
    return True
  if isinstance(prefix, (list, tuple)):
    return any(_holds_text(row) for row in prefix)
  return isinstance(prefix, np.ndarray) and prefix.dtype.kind in 'USO' and any(
      isinstance(x, (str, bytes)) for x in prefix.reshape(-1)[:16])


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + '...'


def output_vocab_size(model: Layer) -> Optional[int]:
  """The vocabulary a model decodes into (its last embedding's), if it has one."""
  embeddings = _embeddings(model)
  return embeddings[-1].vocab_size if embeddings else None


def check_sampling(model: Layer, temperature, top_k, eos_id, rng) -> None:
  """One-line errors for bad sampling arguments, before any work is done."""
  arguments.check_number('autoregressive_sample', 'temperature', temperature, minimum=0.0)
  vocab_size = output_vocab_size(model)
  if top_k is not None:
    arguments.check_int('autoregressive_sample', 'top_k', top_k)
    if vocab_size is not None and top_k > vocab_size:
      raise ValueError(f'autoregressive_sample: top_k must be <= the vocabulary size '
                       f'{vocab_size}, got {top_k}')
  check_eos_id(vocab_size, eos_id, 'autoregressive_sample')
  if temperature > 0.0 and rng is None:
    raise ValueError('sampling with temperature > 0 needs an rng')


def check_eos_id(vocab_size: Optional[int], eos_id, owner: str) -> None:
  """One-line error unless `eos_id` is None or an id in [0, vocab_size)."""
  if eos_id is None:
    return
  arguments.check_int(owner, 'eos_id', eos_id, minimum=0)
  if vocab_size is not None and eos_id >= vocab_size:
    raise ValueError(f'{owner}: eos_id must be < the vocabulary size {vocab_size}, '
                     f'got {eos_id}')


def _checked_request(model: Layer, prefix, prefix_lengths, inputs, max_length, batch_size):
  """Validates a decoding request on the host; returns (prompt, lengths, as_list, inputs)."""
  if model.mode != 'predict':
    raise ValueError(f"decoding needs a model built with mode='predict', got "
                     f'mode={model.mode!r}')
  if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or \
      max_length < 1:
    raise ValueError(f'max_length must be a positive int, got {max_length!r}')
  embeddings = _embeddings(model)
  if inputs is not None:
    inputs = np.asarray(inputs)
    if inputs.ndim != 2:
      raise ValueError(f'inputs must be [batch, length] ids, got shape {inputs.shape}')
    check_ids(inputs, embeddings[0].vocab_size if embeddings else None, 'inputs')
    batch = inputs.shape[0]
  else:
    batch = batch_size
  if prefix is not None and not _holds_text(prefix) and (
      isinstance(prefix, (list, tuple)) or np.ndim(prefix) >= 1):
    batch = len(prefix) if isinstance(prefix, (list, tuple)) else np.shape(prefix)[0]
  prompt, lengths, as_list = _prompts(prefix, prefix_lengths, batch)
  check_ids(prompt, embeddings[-1].vocab_size if embeddings else None, 'prefix')
  if inputs is not None and inputs.shape[0] != prompt.shape[0]:
    raise ValueError(f'inputs has {inputs.shape[0]} rows but prefix has {prompt.shape[0]}')
  capacity = model.decode_capacity(0 if inputs is None else inputs.shape[1])
  needed = prompt.shape[1] + max_length
  if capacity is not None and needed > capacity:
    raise ValueError(f'decoding {max_length} tokens after a prompt of {prompt.shape[1]} needs '
                     f'{needed} positions, but the model holds {capacity} (its max_len'
                     + ('' if inputs is None else f' less the {inputs.shape[1]} source tokens')
                     + '): ask for fewer tokens or build the model with a larger max_len')
  return prompt.astype(np.int32), lengths, as_list, inputs


def _signature(batch: int, inputs):
  tokens = jax.ShapeDtypeStruct((batch, 1), jnp.int32)
  if inputs is None:
    return tokens
  return (jax.ShapeDtypeStruct((batch,) + tuple(inputs.shape[1:]), jnp.int32), tokens)


def autoregressive_sample(model: Layer, weights, prefix: Optional[Prompts] = None, *,
                          max_length: int, temperature: float = 0.0,
                          top_k: Optional[int] = None, eos_id: Optional[int] = None,
                          rng=None, inputs=None, batch_size: int = 1,
                          prefix_lengths=None):
  """Generates tokens from a 'predict'-mode model.

  Args:
    model: a layer built with mode='predict': an LM ([batch, length] ids ->
      [batch, length, vocab] logits) or, when `inputs` is given, an
      encoder-decoder ((inputs, ids) -> logits).
    weights: the model's weights (the same as in 'train' / 'eval' mode).
    prefix: prompts to continue: [batch, length] int ids (all rows that
      long, or right-padded with `prefix_lengths`), or a list of token lists
      of any lengths.
    max_length: how many tokens to generate at most per row. The longest
      prompt + max_length must fit the model's max_len (checked first).
    temperature: 0 for greedy decoding, else the softmax temperature.
    top_k: sample only among the k most likely tokens (with temperature > 0).
    eos_id: a row stops after producing this id (which is kept).
    rng: a `jax.random.key`, needed when temperature > 0.
    inputs: [batch, length_in] int ids for an encoder-decoder.
    batch_size: rows to generate when neither prefix nor inputs is given.
    prefix_lengths: [batch] lengths of a right-padded array prefix.

  Returns:
    For an array (or no) prefix: [batch, n] int32 numpy array, n <= max_length
    the longest row's count, 0 after a row's end. For a list prefix: a list
    of 1-D int32 arrays, one per prompt, each as long as that row's output.

  Raises:
    ValueError: a bad argument, an id outside the vocabulary, or a request
      longer than the model's max_len, before any work is done.
  """
  prompt, lengths, as_list, inputs = _checked_request(model, prefix, prefix_lengths, inputs,
                                                      max_length, batch_size)
  check_sampling(model, temperature, top_k, eos_id, rng)
  rng = jax.random.key(0) if rng is None else rng
  batch = prompt.shape[0]
  state = initial_state(model, _signature(batch, inputs))
  tokens, counts, _ = generate(model, weights, state, jnp.asarray(prompt), jnp.asarray(lengths),
                               None if inputs is None else jnp.asarray(inputs, jnp.int32), rng,
                               max_length=int(max_length), temperature=float(temperature),
                               top_k=top_k, eos_id=eos_id)
  tokens, counts = np.asarray(tokens), np.asarray(counts)
  if as_list:
    return [tokens[i, :counts[i]] for i in range(batch)]
  return tokens[:, :int(counts.max(initial=0))]


# ------------------------------------------------------------ beam search

def length_penalty_factor(length, alpha: float):
  """GNMT's length normalization ((5 + length) / 6) ** alpha; scores are log-prob / factor."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


@functools.partial(jax.jit, static_argnames=('model', 'beam_size', 'max_length',
                                             'length_penalty', 'eos_id'))
def _beam_search(model: Layer, weights, state, prompt, prompt_lengths, inputs, *,
                 beam_size: int, max_length: int, length_penalty: float,
                 eos_id: Optional[int]):
  """Beam search on rows tiled beam_size times ([batch * beam_size, ...]).

  Returns (sequences [batch, beam, max_length], scores [batch, beam]), best first.
  """
  batch = prompt.shape[0] // beam_size
  k = beam_size
  lengths = prompt_lengths.reshape(batch, k)[:, 0]
  rows = prompt.reshape(batch, k, -1)[:, 0]
  log_probs, t, state = _prefill(model, weights, state, prompt, prompt_lengths, inputs)
  vocab = log_probs.shape[-1]

  alive_seq = jnp.zeros((batch, k, max_length), jnp.int32)
  alive_logp = jnp.full((batch, k), NEG_INF).at[:, 0].set(0.0)  # the beams start as one
  finished_seq = jnp.zeros((batch, k, max_length), jnp.int32)
  finished_score = jnp.full((batch, k), NEG_INF)

  def choose(t, log_probs, alive_seq, alive_logp, finished_seq, finished_score):
    """One step: extends the beams by the token predicted at position t."""
    index = t - lengths                                      # [batch] generated index
    active = (index >= 0) & (index < max_length)
    forced = index < 0                                       # next token still from the prompt
    lp = jax.nn.log_softmax(log_probs.astype(jnp.float32), axis=-1).reshape(batch, k, vocab)
    prompt_token = _prompt_token(rows, t)
    forced_lp = jnp.where(jnp.arange(vocab)[None, None, :] == prompt_token[:, None, None],
                          0.0, NEG_INF)
    lp = jnp.where(forced[:, None, None], forced_lp, lp)
    candidates = (alive_logp[:, :, None] + lp).reshape(batch, k * vocab)
    top_logp, top_index = jax.lax.top_k(candidates, 2 * k)   # [batch, 2k]
    top_beam, top_token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    top_seq = jnp.take_along_axis(alive_seq, top_beam[:, :, None], axis=1)
    slot = jnp.arange(max_length)[None, None, :] == index[:, None, None]
    top_seq = jnp.where(slot & active[:, None, None], top_token[:, :, None], top_seq)
    is_eos = jnp.zeros_like(top_token, jnp.bool_) if eos_id is None else \
        (top_token == eos_id) & active[:, None]
    # The k best candidates that do not end stay alive.
    alive_candidates = jnp.where(is_eos, NEG_INF, top_logp)
    new_alive_logp, pick = jax.lax.top_k(alive_candidates, k)
    new_alive_seq = jnp.take_along_axis(top_seq, pick[:, :, None], axis=1)
    new_alive_beam = jnp.take_along_axis(top_beam, pick, axis=1)
    new_alive_token = jnp.take_along_axis(top_token, pick, axis=1)
    # Those that end join the finished ones; the k best finished are kept.
    ended = jnp.where(is_eos, top_logp / length_penalty_factor(index + 1, length_penalty)[:, None],
                      NEG_INF)
    pool_score = jnp.concatenate([finished_score, ended], axis=1)
    pool_seq = jnp.concatenate([finished_seq, top_seq], axis=1)
    new_finished_score, keep = jax.lax.top_k(pool_score, k)
    new_finished_seq = jnp.take_along_axis(pool_seq, keep[:, :, None], axis=1)
    moving = active | forced   # rows past their end keep everything as it was

    def hold(new, old):
      return jnp.where(moving.reshape((batch,) + (1,) * (new.ndim - 1)), new, old)
    beams = hold(new_alive_beam, jnp.broadcast_to(jnp.arange(k)[None], (batch, k)))
    return (beams, new_alive_token, hold(new_alive_seq, alive_seq),
            hold(new_alive_logp, alive_logp), hold(new_finished_seq, finished_seq),
            hold(new_finished_score, finished_score))

  def follow(state, beams):
    flat = (jnp.arange(batch)[:, None] * k + beams).reshape(-1)
    return reorder_batch(state, flat)

  def keep_going(carry):
    t, _, _, alive_logp, _, finished_score, _ = carry
    running = t - lengths < max_length
    if eos_id is not None:   # stop rows whose best alive beam can no longer win
      best_possible = alive_logp[:, 0] / length_penalty_factor(max_length, length_penalty)
      running = running & (best_possible > finished_score[:, -1])
    return jnp.any(running)

  def step(carry):
    t, log_probs, alive_seq, alive_logp, finished_seq, finished_score, state = carry
    beams, tokens, alive_seq, alive_logp, finished_seq, finished_score = choose(
        t, log_probs, alive_seq, alive_logp, finished_seq, finished_score)
    state = follow(state, beams)
    logits, state = model.apply(weights, state, _model_inputs(tokens.reshape(-1, 1), inputs))
    return (t + 1, logits[:, -1], alive_seq, alive_logp, finished_seq, finished_score, state)

  carry = (t, log_probs, alive_seq, alive_logp, finished_seq, finished_score, state)
  _, _, alive_seq, alive_logp, finished_seq, finished_score, _ = jax.lax.while_loop(
      keep_going, step, carry)
  # Beams still alive at max_length compete with the finished ones.
  alive_score = alive_logp / length_penalty_factor(max_length, length_penalty)
  scores = jnp.concatenate([finished_score, alive_score], axis=1)
  seqs = jnp.concatenate([finished_seq, alive_seq], axis=1)
  scores, best = jax.lax.top_k(scores, k)
  return jnp.take_along_axis(seqs, best[:, :, None], axis=1), scores


def beam_search(model: Layer, weights, prefix: Optional[Prompts] = None, *, inputs=None,
                beam_size: int, max_length: int, length_penalty: float = 0.6,
                eos_id: Optional[int] = None, prefix_lengths=None,
                batch_size: int = 1) -> Tuple[np.ndarray, np.ndarray]:
  """Beam search from a 'predict'-mode LM or encoder-decoder.

  Each prompt keeps `beam_size` hypotheses; a step extends every hypothesis
  by every token, keeps the best, and moves every cache to follow its beam.
  A hypothesis ends at `eos_id` (kept in it); its score is its total
  log-probability divided by ((5 + length) / 6) ** length_penalty (GNMT;
  0 scores by log-probability alone). Hypotheses still running at
  max_length compete with the ended ones.

  Args:
    model: a layer built with mode='predict' (as for `autoregressive_sample`).
    weights: its weights.
    prefix: prompts, as for `autoregressive_sample` (an array, optionally
      with `prefix_lengths`, or a list of token lists).
    inputs: [batch, length_in] source ids of an encoder-decoder.
    beam_size: hypotheses kept per prompt.
    max_length: tokens generated at most per hypothesis.
    length_penalty: the GNMT exponent alpha.
    eos_id: the id that ends a hypothesis (None: all run to max_length).
    prefix_lengths: [batch] lengths of a right-padded array prefix.
    batch_size: prompts when neither prefix nor inputs is given.

  Returns:
    (sequences [batch, beam_size, max_length] int32, 0 after a hypothesis'
     end; scores [batch, beam_size] float32), best first.
  """
  if isinstance(beam_size, bool) or not isinstance(beam_size, (int, np.integer)) or \
      beam_size < 1:
    raise ValueError(f'beam_size must be a positive int, got {beam_size!r}')
  prompt, lengths, _, inputs = _checked_request(model, prefix, prefix_lengths, inputs,
                                                max_length, batch_size)
  check_eos_id(output_vocab_size(model), eos_id, 'beam_search')
  batch = prompt.shape[0]
  tile = lambda x: np.repeat(x, beam_size, axis=0)
  tiled_inputs = None if inputs is None else jnp.asarray(tile(inputs), jnp.int32)
  state = initial_state(model, _signature(batch * beam_size, inputs))
  sequences, scores = _beam_search(model, weights, state, jnp.asarray(tile(prompt)),
                                   jnp.asarray(tile(lengths)), tiled_inputs,
                                   beam_size=int(beam_size), max_length=int(max_length),
                                   length_penalty=float(length_penalty), eos_id=eos_id)
  return np.asarray(sequences), np.asarray(scores)
