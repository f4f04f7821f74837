"""Shared helpers for the tests: small signatures and keys."""

import jax
import jax.numpy as jnp
import pytest


def sig(*shape, dtype=jnp.float32):
  """A jax.ShapeDtypeStruct, short to write."""
  return jax.ShapeDtypeStruct(tuple(shape), dtype)


@pytest.fixture
def key():
  return jax.random.key(0)
