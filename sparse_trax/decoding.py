"""Autoregressive sampling from a 'predict'-mode model.

A 'predict'-mode LM takes the previous token [batch, 1] and returns the next
token's logits [batch, 1, vocab], keeping its caches in state. An
encoder-decoder takes (inputs, previous token) and runs its encoder once.

`autoregressive_sample` runs the whole generation (prefix feeding, sampling,
EOS) inside one jitted `lax.while_loop`: no Python work per token. The
per-token `decode_step` (one jitted call, state donated) is there for
callers that want to drive the loop themselves, e.g. to time each token.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from sparse_trax.layers.base import Layer


def initial_state(model: Layer, input_signature):
  """The model's initial state for inputs of `input_signature`, without weights.

  The weights `init` would make are dead code under `jax.jit` and are never
  computed.
  """
  state = jax.jit(lambda: model.init(input_signature, rng=jax.random.key(0))[1])()
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


def _next_token(model, weights, state, token, inputs, rng, temperature, top_k):
  model_inputs = token[:, None] if inputs is None else (inputs, token[:, None])
  logits, state = model.apply(weights, state, model_inputs, rng=None)
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


@functools.partial(jax.jit, static_argnames=('model', 'max_length', 'temperature', 'top_k',
                                             'eos_id'),
                   donate_argnames=('state',))
def generate(model: Layer, weights, state, prefix, inputs, rng, *, max_length: int,
             temperature: float, top_k: Optional[int], eos_id: Optional[int]):
  """The whole generation in one `lax.while_loop`.

  Step t feeds the previous token (0 at t = 0, then the prefix, then the
  samples) and samples the next one. Stops after max_length samples or when
  every row has produced eos_id.

  Args:
    prefix: [batch, prefix_length] int32 (prefix_length may be 0).

  Returns:
    (tokens [batch, max_length] with 0 after a row's EOS and past the end,
     number of tokens generated, the final state). The state is donated:
     its buffers are updated in place and returned.
  """
  batch, prefix_length = prefix.shape
  padded_prefix = jnp.concatenate([prefix, jnp.zeros((batch, 1), jnp.int32)], axis=1)
  total_steps = prefix_length + max_length

  def keep_going(carry):
    t, _, _, _, done = carry
    return (t < total_steps) & ~jnp.all(done)

  def step(carry):
    t, token, state, out, done = carry
    sampled, _, state = _next_token(model, weights, state, token, inputs,
                                    jax.random.fold_in(rng, t), temperature, top_k)
    index = t - prefix_length
    generating = index >= 0
    sampled = jnp.where(done, 0, sampled)
    out = jnp.where(generating,
                    jax.lax.dynamic_update_index_in_dim(out, sampled, jnp.maximum(index, 0), 1),
                    out)
    if eos_id is not None:
      done = done | (generating & (sampled == eos_id))
    fed = jax.lax.dynamic_index_in_dim(padded_prefix, jnp.minimum(t, prefix_length), 1,
                                       keepdims=False)
    token = jnp.where(generating, sampled, fed)
    return t + 1, token, state, out, done

  init = (jnp.zeros((), jnp.int32), jnp.zeros((batch,), jnp.int32), state,
          jnp.zeros((batch, max_length), jnp.int32), jnp.zeros((batch,), jnp.bool_))
  t, _, state, out, _ = jax.lax.while_loop(keep_going, step, init)
  return out, t - prefix_length, state


def autoregressive_sample(model: Layer, weights, prefix=None, *, max_length: int,
                          temperature: float = 0.0, top_k: Optional[int] = None,
                          eos_id: Optional[int] = None, rng=None, inputs=None,
                          batch_size: int = 1) -> np.ndarray:
  """Generates tokens one at a time from a 'predict'-mode model.

  Args:
    model: a layer built with mode='predict': an LM ([batch, 1] ids ->
      [batch, 1, vocab] logits) or, when `inputs` is given, an
      encoder-decoder ((inputs, [batch, 1] ids) -> logits).
    weights: the model's weights (the same as in 'train' / 'eval' mode).
    prefix: optional [batch, prefix_length] int ids to continue from.
    max_length: how many tokens to generate at most. prefix_length +
      max_length must fit the model's max_len.
    temperature: 0 for greedy decoding, else the softmax temperature.
    top_k: sample only among the k most likely tokens (with temperature > 0).
    eos_id: stop once every row has produced this id; later positions are 0.
    rng: a `jax.random.key`, needed when temperature > 0.
    inputs: [batch, length_in] int ids for an encoder-decoder.
    batch_size: rows to generate when neither prefix nor inputs is given.

  Returns:
    [batch, n] int32 numpy array of generated ids, n <= max_length.
  """
  if model.mode != 'predict':
    raise ValueError(f"autoregressive_sample needs a model built with mode='predict', "
                     f'got mode={model.mode!r}')
  if temperature > 0.0 and rng is None:
    raise ValueError('sampling with temperature > 0 needs an rng')
  rng = jax.random.key(0) if rng is None else rng
  if prefix is not None:
    batch = np.shape(prefix)[0]
  elif inputs is not None:
    batch = np.shape(inputs)[0]
  else:
    batch = batch_size
  prefix = (jnp.zeros((batch, 0), jnp.int32) if prefix is None
            else jnp.asarray(prefix, jnp.int32))
  token_signature = jax.ShapeDtypeStruct((batch, 1), jnp.int32)
  if inputs is not None:
    inputs = jnp.asarray(inputs, jnp.int32)
    signature = (jax.ShapeDtypeStruct(inputs.shape, jnp.int32), token_signature)
  else:
    signature = token_signature
  state = initial_state(model, signature)
  tokens, n_generated, _ = generate(model, weights, state, prefix, inputs, rng,
                                 max_length=max_length, temperature=float(temperature),
                                 top_k=top_k, eos_id=eos_id)
  return np.asarray(tokens)[:, :int(n_generated)]
