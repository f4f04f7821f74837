"""FixedBasePositionalEncoding: a slow reference, predict == eval, training's randomization."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl
from conftest import sig


def reference(weights, positions, bases, n_digits, kept_bases=None):
  """Position vectors [length, d] by Python loops over positions, bases and digits."""
  scales, start = np.asarray(weights['scales']), np.asarray(weights['start'])
  width = scales.shape[-1]
  out = np.zeros((len(positions), width * n_digits))
  for row, p in enumerate(positions):
    for b, base in enumerate(bases):
      if kept_bases is not None and b not in kept_bases:
        continue
      remaining = p
      for digit in range(n_digits):
        out[row, digit * width:(digit + 1) * width] += (remaining % base) * scales[b, digit]
        remaining //= base
  out[0] += start
  return out


def random_weights(layer, d, seed=0):
  weights, _ = layer.init(sig(1, 4, d), rng=jax.random.key(seed))
  return jax.tree_util.tree_map(lambda w: jax.random.normal(jax.random.key(seed + 1), w.shape),
                                weights)


def test_eval_equals_the_slow_reference():
  layer = tl.FixedBasePositionalEncoding(bases=(3, 5), n_digits=4, mode='eval')
  weights = random_weights(layer, 8)
  assert weights['scales'].shape == (2, 4, 2) and weights['start'].shape == (8,)
  x = jax.random.normal(jax.random.key(3), (2, 30, 8))
  got = layer.apply(weights, {}, x)[0]
  want = np.asarray(x) + reference(weights, range(30), (3, 5), 4)[None]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_predict_prefill_and_steps_equal_eval():
  evaluate = tl.FixedBasePositionalEncoding(mode='eval')
  weights = random_weights(evaluate, 16)
  x = jax.random.normal(jax.random.key(3), (2, 9, 16))
  want = evaluate.apply(weights, {}, x)[0]
  model = tl.Serial(tl.FixedBasePositionalEncoding(mode='predict'))
  state = model.init(sig(2, 1, 16), rng=jax.random.key(0))[1]
  outs = []
  prefill, state = model.apply((weights,), state, x[:, :4])
  outs.append(prefill)
  for t in range(4, 9):
    y, state = model.apply((weights,), state, x[:, t:t + 1])
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), want, rtol=1e-6, atol=1e-6)


def test_training_without_randomization_equals_eval():
  kwargs = dict(bases=(3, 5), n_digits=4, start_from_zero_one_in=1, base_dropout_one_in=10 ** 9)
  weights = random_weights(tl.FixedBasePositionalEncoding(**kwargs), 8)
  x = jnp.zeros((4, 12, 8))
  train = tl.FixedBasePositionalEncoding(**kwargs, mode='train').apply(
      weights, {}, x, rng=jax.random.key(5))[0]
  evaluate = tl.FixedBasePositionalEncoding(**kwargs, mode='eval').apply(weights, {}, x)[0]
  np.testing.assert_allclose(train, evaluate, rtol=1e-6)


def test_training_drops_whole_bases_per_example():
  kwargs = dict(bases=(3, 5, 7), n_digits=4, start_from_zero_one_in=1, base_dropout_one_in=2)
  layer = tl.FixedBasePositionalEncoding(**kwargs, mode='train')
  weights = random_weights(layer, 8)
  out = np.asarray(layer.apply(weights, {}, jnp.zeros((32, 10, 8)), rng=jax.random.key(7))[0])
  subsets = [set(s) for n in range(4) for s in itertools.combinations(range(3), n)]
  chosen = []
  for row in out:
    matches = [s for s in subsets
               if np.allclose(row, reference(weights, range(10), (3, 5, 7), 4, s), atol=1e-5)]
    assert matches, 'each example keeps some of the bases, whole'
    chosen.append(len(matches[0]))
  assert 0 < np.mean(chosen) < 3     # some bases were dropped, not all


def test_training_moves_the_start_of_some_examples():
  kwargs = dict(bases=(3, 5), n_digits=6, base_dropout_one_in=10 ** 9)
  layer = tl.FixedBasePositionalEncoding(**kwargs, mode='train')
  weights = random_weights(layer, 12)
  out = np.asarray(layer.apply(weights, {}, jnp.zeros((64, 5, 12)), rng=jax.random.key(8))[0])
  at_zero = reference(weights, range(5), (3, 5), 6)
  moved = ~np.all(np.isclose(out, at_zero[None], atol=1e-5), axis=(1, 2))
  assert 10 < moved.sum() < 54          # about half of 64 (start_from_zero_one_in=2)
  # A moved example is the encoding of consecutive positions from its start,
  # the start vector at its first one: recover the start from the first
  # position's lowest digits (each base's digit 0 is p mod base) and compare.
  for row in out[moved][:8]:
    start = next(p for p in range(3 ** 6 - 5)
                 if np.allclose(row, reference(weights, range(p, p + 5), (3, 5), 6), atol=1e-4))
    assert start > 0


def test_bad_sizes_are_named():
  with pytest.raises(tl.LayerError, match=r'd \(12\) must be a multiple of n_digits \(8\)'):
    tl.FixedBasePositionalEncoding().init(sig(1, 4, 12), rng=jax.random.key(0))
  with pytest.raises(ValueError, match='bases must be integers >= 2'):
    tl.FixedBasePositionalEncoding(bases=(1, 5))
