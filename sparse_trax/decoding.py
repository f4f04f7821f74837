"""Autoregressive sampling from a 'predict'-mode model.

A 'predict'-mode LM takes the previous token [batch, 1] and returns the next
token's logits [batch, 1, vocab], keeping its caches in state. An
encoder-decoder takes (inputs, previous token) and runs its encoder once.
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
  return jax.jit(lambda: model.init(input_signature, rng=jax.random.key(0))[1])()


def sample_logits(logits, rng, temperature: float, top_k: Optional[int]):
  """Picks one token per row from logits [batch, vocab]: greedy if temperature is 0."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('model', 'temperature', 'top_k'),
                   donate_argnames=('state',))
def decode_step(model: Layer, weights, state, token, inputs, rng, *,
                temperature: float, top_k: Optional[int]):
  """One token: (previous token [batch]) -> (next token [batch], logits, state).

  Jitted once per (model, temperature, top_k, shapes) and reused for every
  token; the state buffers are donated.
  """
  model_inputs = token[:, None] if inputs is None else (inputs, token[:, None])
  logits, state = model.apply(weights, state, model_inputs, rng=None)
  logits = logits[:, -1, :]
  return sample_logits(logits, rng, temperature, top_k), logits, state


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
    max_length: how many tokens to generate at most.
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
  token_signature = jax.ShapeDtypeStruct((batch, 1), jnp.int32)
  if inputs is not None:
    inputs = jnp.asarray(inputs, jnp.int32)
    signature = (jax.ShapeDtypeStruct(inputs.shape, jnp.int32), token_signature)
  else:
    signature = token_signature
  state = initial_state(model, signature)

  step = functools.partial(decode_step, model, temperature=temperature, top_k=top_k)
  token = jnp.zeros((batch,), jnp.int32)  # position 0 sees the start (pad) token
  fed = [] if prefix is None else list(np.asarray(prefix, np.int32).T)
  for t, known in enumerate(fed):
    _, _, state = step(weights, state, token, inputs, jax.random.fold_in(rng, t))
    token = jnp.asarray(known)

  generated = []
  done = np.zeros((batch,), bool)
  for t in range(max_length):
    token, _, state = step(weights, state, token, inputs,
                           jax.random.fold_in(rng, len(fed) + t))
    row = np.where(done, 0, np.asarray(token))
    generated.append(row)
    if eos_id is not None:
      done |= row == eos_id
      if done.all():
        break
  return np.stack(generated, axis=1).astype(np.int32)
