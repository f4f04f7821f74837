"""Checkpoints: round trip of real train states, keep-last-n, damaged ones skipped,
incompatible ones refused, and reading that never moves anything."""

import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl
from sparse_trax.train import checkpoints, checksums, optimizers


def train_state(seed=0, width=4):
  model = tl.Serial(tl.Dense(width), tl.Relu(), tl.LayerNorm(), tl.Dense(2))
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
  for set_aside in (False, True):
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      state, meta = reopened.restore_latest(train_state(0), set_aside_corrupt=set_aside)
    assert meta['step'] == 10
    assert_trees_equal(state, train_state(10))
    messages = [str(w.message) for w in caught if 'damaged' in str(w.message)]
    assert messages and os.path.join(directory, '20') in messages[0]
    # Reading alone moves nothing; the trainer's set_aside_corrupt moves the bad one
    # aside, so that step 20 can be redone.
    assert reopened.steps() == ([10, 20] if not set_aside else [10])
  reopened.save(20, train_state(21), {'data_position': 20})
  assert reopened.steps() == [10, 20]


def test_checksum_changes_with_any_value():
  a = train_state(0)
  b = jax.tree_util.tree_map(lambda x: x, a)
  b['weights'][0]['w'] = b['weights'][0]['w'].at[0, 0].add(1e-6)
  assert checksums.tree_checksum(a) != checksums.tree_checksum(b)
  assert checksums.tree_checksum(a) == checksums.tree_checksum(train_state(0))


def _mix_slowly(x: int) -> int:
  mask = (1 << 64) - 1
  x ^= x >> 33
  x = (x * 0xFF51AFD7ED558CCD) & mask
  x ^= x >> 33
  x = (x * 0xC4CEB9FE1A85EC53) & mask
  return x ^ (x >> 33)


def _position_hash_slowly(array: np.ndarray) -> int:
  """The checksum's formula, one element at a time in Python integers."""
  bits = array.reshape(-1).view(f'uint{8 * array.dtype.itemsize}')
  return sum(_mix_slowly(_mix_slowly(i + checksums.SEED) ^ int(b))
             for i, b in enumerate(bits)) % (1 << 64)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16', 'int8', 'uint32', 'bool'])
def test_position_hash_follows_its_formula(dtype):
  array = np.asarray(jax.random.normal(jax.random.key(0), (3, 5, 2)) * 3).astype(dtype)
  assert checksums.block_sum(array, (0, 0, 0), array.shape) == _position_hash_slowly(array)
  scalar = np.asarray(2.5, np.float32)
  assert checksums.block_sum(scalar, (), ()) == _position_hash_slowly(scalar.reshape(1))


def test_checksum_is_the_same_however_the_array_is_split():
  """Blocks at their offsets add up to the whole array's sum (so shards held by
  different devices or processes give the whole array's checksum)."""
  array = np.arange(6 * 8 * 3, dtype=np.float32).reshape(6, 8, 3)
  whole = checksums.block_sum(array, (0, 0, 0), array.shape)
  for rows, columns in ((3, 8), (6, 4), (2, 2), (1, 8)):
    parts = [checksums.block_sum(array[r:r + rows, c:c + columns], (r, c, 0), array.shape)
             for r in range(0, 6, rows) for c in range(0, 8, columns)]
    assert sum(parts) % (1 << 64) == whole
  # Position counts: the same values in another order give another sum.
  swapped = array.copy()
  swapped[0, 0, 0], swapped[5, 7, 2] = swapped[5, 7, 2], swapped[0, 0, 0]
  assert checksums.block_sum(swapped, (0, 0, 0), array.shape) != whole


def test_checkpoints_with_the_earlier_checksum_still_restore(tmp_path):
  """Format-2 checkpoints saved before the checksum method was recorded hashed the
  arrays' bytes: they restore (and a damaged one is still caught)."""
  directory = str(tmp_path / 'ckpt')
  checkpointer = checkpoints.Checkpointer(directory)
  state = train_state(3)
  checkpointer.save(3, state, {'data_position': 3})
  os.remove(os.path.join(directory, '3', checkpoints.FILE_RECORD))   # not written back then
  meta_file = os.path.join(directory, '3', 'meta', 'metadata')
  with open(meta_file, encoding='utf-8') as f:
    meta = json.load(f)
  del meta['checksum_method']
  meta['checksums'] = {'weights': checksums.legacy_tree_checksum(state['weights']),
                       'train': checksums.legacy_tree_checksum(
                           {k: v for k, v in state.items() if k != 'weights'})}
  with open(meta_file, 'w', encoding='utf-8') as f:
    json.dump(meta, f)
  restored, _ = checkpointer.restore(3, train_state(0))
  assert_trees_equal(restored, state)
  meta['checksums']['weights'] = checksums.legacy_tree_checksum(train_state(4)['weights'])
  with open(meta_file, 'w', encoding='utf-8') as f:
    json.dump(meta, f)
  with pytest.raises(checkpoints.CorruptCheckpointError, match='checksum'):
    checkpointer.restore(3, train_state(0))


def test_incompatible_checkpoint_is_refused_naming_the_weight_and_kept(tmp_path):
  directory = str(tmp_path / 'ckpt')
  checkpointer = checkpoints.Checkpointer(directory)
  checkpointer.save(1, train_state(1), {'data_position': 1})
  checkpointer.save(2, train_state(2), {'data_position': 2})
  before = sorted(os.walk(directory))
  for _ in range(2):
    with pytest.raises(checkpoints.IncompatibleCheckpointError,
                       match=r'weights/0/b is \(4,\) float32 in the checkpoint but '
                             r'\(8,\) float32 in the model'):
      checkpointer.restore_latest(train_state(0, width=8), set_aside_corrupt=True)
  assert sorted(os.walk(directory)) == before
  assert not os.path.exists(directory + '_corrupt')
  assert checkpointer.steps() == [1, 2]
  # Another optimizer's state is a different tree: refused too, naming the first path.
  other = dict(train_state(0), opt_state=optimizers.SGD(0.1).init(train_state(0)['weights']))
  with pytest.raises(checkpoints.IncompatibleCheckpointError, match='train/opt_state'):
    checkpointer.restore_latest(other)


def test_load_weights_reads_any_mode_and_moves_nothing(tmp_path):
  from sparse_trax import models  # pylint: disable=import-outside-toplevel
  from sparse_trax.train import load_weights  # pylint: disable=import-outside-toplevel
  model = models.TransformerLM(50, 16, 32, 1, 2, max_len=32, dropout=0.0)
  signature = jax.ShapeDtypeStruct((4, 12), jnp.int32)
  weights, _ = model.init(signature, rng=jax.random.key(3))
  directory = str(tmp_path / 'checkpoints')
  checkpointer = checkpoints.Checkpointer(directory)
  for step in (5, 10):
    scaled = jax.tree_util.tree_map(lambda x, s=step: x * s, weights)
    checkpointer.save(step, {'weights': scaled, 'rng': jnp.zeros(2, jnp.uint32)},
                      {'data_position': step,
                       'input_signature': checkpoints.signature_to_json(signature)})
  predict = models.TransformerLM(50, 16, 32, 1, 2, max_len=32, dropout=0.0, mode='predict')
  before = sorted(os.walk(str(tmp_path)))
  latest = load_weights(str(tmp_path), predict)
  assert_trees_equal(latest, jax.tree_util.tree_map(lambda x: x * 10, weights))
  assert_trees_equal(load_weights(str(tmp_path), model, step=5),
                     jax.tree_util.tree_map(lambda x: x * 5, weights))
  assert sorted(os.walk(str(tmp_path))) == before
  with pytest.raises(FileNotFoundError, match='there are steps'):
    load_weights(str(tmp_path), model, step=7)
  with pytest.raises(checkpoints.IncompatibleCheckpointError, match='in the model'):
    load_weights(str(tmp_path), models.TransformerLM(50, 24, 32, 1, 2, max_len=32))
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    load_weights(str(tmp_path / 'nothing'), model)
