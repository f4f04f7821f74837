"""Trax's stack conventions in every combinator, checked against Trax 1.4.1's own outputs.

tests/data/trax/combinators.json was written by Trax 1.4.1
(tests/data/trax/make_combinator_fixtures.py): each case is an expression
that builds the same layer in either library, the stack items it is called
on, and Trax's n_in, n_out and outputs.
"""

import json
import os

import jax
import numpy as np
import pytest

import sparse_trax.layers as tl

FIXTURE = os.path.join(os.path.dirname(__file__), 'data', 'trax', 'combinators.json')
with open(FIXTURE, encoding='utf-8') as f:
  TABLE = json.load(f)


def _call(layer, names):
  items = tuple(np.array(TABLE['items'][name], np.float32) for name in names.split())
  stack = items[0] if len(items) == 1 else items
  weights, state = layer.init(stack, rng=jax.random.key(0))
  outputs, _ = layer.apply(weights, state, stack, rng=jax.random.key(1))
  signature = layer.output_signature(stack)
  return items, outputs if isinstance(outputs, tuple) else (outputs,), signature


@pytest.mark.parametrize('case', TABLE['cases'], ids=lambda c: f"{c['layer']} on {c['inputs']}")
def test_combinator_matches_trax(case):
  layer = eval(case['layer'])  # pylint: disable=eval-used
  assert (layer.n_in, layer.n_out) == (case['n_in'], case['n_out'])
  items, outputs, signature = _call(layer, case['inputs'])
  expected = case['outputs']
  if case['layer'].startswith('tl.Parallel') and len(items) > layer.n_in:
    # Trax's Parallel called alone drops the items after the ones it takes; ours
    # passes them through like every other combinator (inside a Serial both keep them).
    expected = expected + [x.tolist() for x in items[layer.n_in:]]
  assert len(outputs) == len(expected)
  for ours, theirs in zip(outputs, expected):
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
  signatures = signature if isinstance(signature, tuple) else (signature,)
  assert [s.shape for s in signatures] == [np.shape(o) for o in outputs]


def test_what_a_layer_argument_may_be():
  assert isinstance(tl.Parallel([tl.Relu(), tl.Dup()], None).sublayers[0], tl.Serial)
  with pytest.raises(TypeError, match="got 'relu'"):
    tl.Parallel('relu', None)
  with pytest.raises(TypeError, match='got 3'):
    tl.Serial(tl.Relu(), [3])
  # Plain layers stay strict: Relu given two items is an error naming it.
  with pytest.raises(tl.LayerError, match='Relu'):
    tl.Relu().init((np.zeros(3), np.zeros(3)), rng=jax.random.key(0))
