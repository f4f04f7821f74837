"""Shared helpers for the tests: small signatures and keys.

The tests spend most of their time compiling tiny programs. Three settings,
for this session and the subprocesses it starts, cut that: a persistent
compilation cache in a fresh temporary folder, removed at the end, holding
every program (the trainer tests compile the same programs many times, and the
two workers and the subprocesses many of the same small ones), XLA:CPU's
backend optimization level 0 (LLVM does little optimization: compiles about
30% faster), and its loop emitters in place of the MLIR fusion emitters
(`--xla_cpu_use_fusion_emitters=false`: backend compiles about 40% faster,
`benchmarks/compile_flags.py`; tests/test_terraformer.py about 35% faster;
only for jaxlib < 0.11: jaxlib 0.12 dropped the flag, and XLA aborts on an
unknown one).
The tiny programs run no slower that matters. Neither changes what a program
computes beyond float rounding; the benchmarks run with XLA's defaults.
"""

import atexit
import importlib.metadata
import os
import shutil
import tempfile

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  # Made once, by the first process (pytest-xdist's workers and the tests'
  # subprocesses inherit it), and removed when that process exits.
  _CACHE_DIR = tempfile.mkdtemp(prefix='sparse_trax_jax_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE_DIR
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
# Every program, however quick to compile: the two workers and the tests' subprocesses
# compile many of the same small ones (eight test files on two workers: 43.6 / 43.7 s
# against 45.7 / 45.3 s with only programs of 0.5 s or more cached; 29 MB of cache).
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')


def fast_compile_flags(jaxlib_version: str) -> tuple:
  """The XLA flags for this jaxlib: XLA aborts the process on a flag it does not know,
  and jaxlib 0.12 no longer has the loop-emitter switch (its CPU backend has only the
  fusion emitters), so that one is given only to the releases measured with it (< 0.11)."""
  major, minor = (int(part) for part in jaxlib_version.split('.')[:2])
  flags = ('--xla_backend_optimization_level=0',)
  if (major, minor) < (0, 11):
    flags += ('--xla_cpu_use_fusion_emitters=false',)
  return flags


FAST_COMPILE_FLAGS = fast_compile_flags(importlib.metadata.version('jaxlib'))
for _flag in FAST_COMPILE_FLAGS:
  if _flag.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

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
  # Jitted, the prefill too: the same computation, one compile where running the model
  # operation by operation compiles each of them (a Terraformer's prefill_then_steps: 3.3
  # -> 1.9 s).
  step = _JITTED_APPLY.setdefault(predict, jax.jit(predict.apply))   # one compile per shape
  logits, state = step(weights, state, feed(shifted[:, :n_prefill]))
  outs = [logits]
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


def pytest_collection_modifyitems(items):
  """Runs the tests marked slow first (stable order otherwise): with two xdist
  workers, a long test started last would leave one worker idle at the end."""
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)
