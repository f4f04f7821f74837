"""Checkpoints: round trip of real train states, keep-last-n, corrupt ones skipped."""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl
from sparse_trax.train import checkpoints, optimizers


def train_state(seed=0):
  model = tl.Serial(tl.Dense(4), tl.Relu(), tl.LayerNorm(), tl.Dense(2))
  weights, state = model.init(jax.ShapeDtypeStruct((3, 5), jnp.float32), rng=jax.random.key(seed))
  tx = optimizers.Adam(1e-3)
  return {'weights': weights, 'model_state': state, 'opt_state': tx.init(weights),
          'rng': jax.random.key_data(jax.random.key(seed))}


def assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_round_trip_and_keep_last_n(tmp_path):
  checkpointer = checkpoints.Checkpointer(str(tmp_path / 'ckpt'), keep=2)
  for step in (1, 2, 3):
    checkpointer.save(step, train_state(step), {'data_position': step})
  assert checkpointer.steps() == [2, 3]
  state, meta = checkpointer.restore_latest(train_state(0))
  assert meta['step'] == 3 and meta['data_position'] == 3
  assert_trees_equal(state, train_state(3))


def test_empty_directory_restores_nothing(tmp_path):
  assert checkpoints.Checkpointer(str(tmp_path)).restore_latest(train_state()) is None


def _largest_file(folder):
  files = [os.path.join(root, f) for root, _, names in os.walk(folder) for f in names]
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize('damage', ['truncate', 'flip'])
def test_corrupt_latest_falls_back_with_a_warning_naming_it(tmp_path, damage):
  directory = str(tmp_path / 'ckpt')
  checkpointer = checkpoints.Checkpointer(directory, keep=3)
  checkpointer.save(10, train_state(10), {'data_position': 10})
  checkpointer.save(20, train_state(20), {'data_position': 20})
  victim = _largest_file(os.path.join(directory, '20'))
  content = open(victim, 'rb').read()
  with open(victim, 'wb') as f:
    if damage == 'truncate':
      f.write(content[:len(content) // 2])
    else:
      f.write(content[:-8] + bytes(255 - b for b in content[-8:]))
  reopened = checkpoints.Checkpointer(directory, keep=3)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    state, meta = reopened.restore_latest(train_state(0))
  assert meta['step'] == 10
  assert_trees_equal(state, train_state(10))
  messages = [str(w.message) for w in caught if 'corrupt' in str(w.message)]
  assert messages and os.path.join(directory, '20') in messages[0]
  assert reopened.steps() == [10]          # the bad one is moved aside, step 20 can be redone
  reopened.save(20, train_state(21), {'data_position': 20})
  assert reopened.steps() == [10, 20]


def test_checksum_changes_with_any_value():
  a = train_state(0)
  b = jax.tree_util.tree_map(lambda x: x, a)
  b['weights'][0]['w'] = b['weights'][0]['w'].at[0, 0].add(1e-6)
  assert checkpoints.tree_checksum(a) != checkpoints.tree_checksum(b)
  assert checkpoints.tree_checksum(a) == checkpoints.tree_checksum(train_state(0))
