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


def sig(*shape, dtype=jnp.float32):
  """A jax.ShapeDtypeStruct, short to write."""
  return jax.ShapeDtypeStruct(tuple(shape), dtype)


@pytest.fixture
def key():
  return jax.random.key(0)
