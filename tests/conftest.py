"""Shared helpers for the tests: small signatures and keys.

The trainer tests compile the same tiny programs many times (in this process
and in subprocesses): a persistent compilation cache for the session, in a
fresh temporary folder, saves most of that time without carrying state
between sessions.
"""

import os
import tempfile

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='sparse_trax_jax_cache_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position


_JITTED_APPLY = {}


def prefill_then_steps(predict, weights, tokens, n_prefill, inputs=None):
  """Logits of a 'predict'-mode model fed the shifted `tokens` [batch, length]: positions
  0 .. n_prefill - 1 in one call, then one position per call. Compare with the eval pass."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from sparse_trax import decoding  # pylint: disable=import-outside-toplevel
  batch = tokens.shape[0]
  shifted = jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
  token_sig = sig(batch, 1, dtype=jnp.int32)
  state = decoding.initial_state(predict, token_sig if inputs is None else
                                 (sig(*inputs.shape, dtype=jnp.int32), token_sig))
  feed = lambda x: x if inputs is None else (inputs, x)
  outs = []
  logits, state = predict.apply(weights, state, feed(shifted[:, :n_prefill]))
  outs.append(logits)
  step = _JITTED_APPLY.setdefault(predict, jax.jit(predict.apply))   # one compile per model
  for t in range(n_prefill, tokens.shape[1]):
    logits, state = step(weights, state, feed(shifted[:, t:t + 1]))
    outs.append(logits)
  assert int(state.position) == tokens.shape[1]
  return np.asarray(jnp.concatenate(outs, 1))


def sig(*shape, dtype=jnp.float32):
  """A jax.ShapeDtypeStruct, short to write."""
  return jax.ShapeDtypeStruct(tuple(shape), dtype)


@pytest.fixture
def key():
  return jax.random.key(0)
