"""Typed state records: KVCache bound, run_once, reorder by batch, jit donation, orbax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl
from sparse_trax import models
from conftest import sig


def test_kv_cache_append_writes_and_knows_its_bound():
  cache = tl.attention.empty_kv_cache(2, 6, 1, 3)
  k = jnp.ones((2, 2, 1, 3))
  cache, overflow = cache.append(jnp.int32(4), k, 2 * k)
  assert not bool(overflow) and cache.max_len == 6
  np.testing.assert_array_equal(cache.values[:, 4:6], 2 * k)
  with pytest.raises(ValueError, match=r'positions 5\.\.6 were asked for.*max_len is 6'):
    cache.append(jnp.int32(5), k, k)
  flagged = jax.jit(lambda c, p: c.append(p, k, k)[1])(cache, jnp.int32(5))
  assert bool(flagged)


def test_run_once_computes_only_on_the_first_call():
  record = tl.RunOnce.empty(sig(2, 3))
  calls = []

  def compute(operand):
    calls.append(1)
    return jnp.full((2, 3), operand), operand + 1

  value, operand, record = tl.run_once(record, compute, jnp.float32(5.0))
  assert bool(record.filled) and float(operand) == 6.0
  np.testing.assert_array_equal(value, 5.0)
  value, operand, record = tl.run_once(record, compute, jnp.float32(9.0))
  np.testing.assert_array_equal(value, 5.0)     # replayed, not recomputed
  assert float(operand) == 9.0


def predict_lm():
  config = dict(vocab_size=20, d_model=16, d_ff=32, n_layers=1, n_heads=2, max_len=8,
                dropout=0.0, ff_sparsity=4, attention_type='multconv', attention_sparsity=4)
  model = models.ScalingTransformerLM(**config, mode='predict')
  weights, state = model.init(sig(3, 1, dtype=jnp.int32), rng=jax.random.key(0))
  return model, weights, state


def test_predict_state_is_typed_records_with_one_position():
  model, weights, state = predict_lm()
  assert isinstance(state, tl.DecodeState)
  kinds = {type(r).__name__ for r in tl.state.records(state)}
  assert kinds == {'KVCache', 'Carry'}
  # No layer keeps its own position: the only int32 scalar is the model's.
  scalars = [x for x in jax.tree_util.tree_leaves(state) if x.ndim == 0]
  assert len(scalars) == 1


def test_reorder_batch_moves_every_record():
  model, weights, state = predict_lm()
  tokens = jnp.array([[1, 2], [3, 4], [5, 6]], jnp.int32)
  _, state = model.apply(weights, state, tokens)
  swapped = tl.reorder_batch(state, jnp.array([2, 0, 0]))
  for before, after in zip(tl.state.records(state), tl.state.records(swapped)):
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
      np.testing.assert_array_equal(b, a[np.array([2, 0, 0])])
  with pytest.raises(TypeError, match='outside typed records'):
    tl.reorder_batch({'loose': jnp.zeros((3, 2))}, jnp.array([0, 1, 2]))


def test_state_round_trips_through_jit_donation_and_orbax(tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')     # (the `train` extra)
  model, weights, state = predict_lm()
  step = jax.jit(model.apply, donate_argnums=1)
  tokens = jnp.ones((3, 1), jnp.int32)
  logits, state = step(weights, state, tokens)
  assert isinstance(state, tl.DecodeState) and int(state.position) == 1
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / 'state', state)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(tmp_path / 'state',
                                  jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state))
  assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
  a, _ = model.apply(weights, restored, tokens)
  b, _ = step(weights, state, tokens)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  del logits


def test_with_replay_sets_every_decisions_flag():
  layer = tl.SparseFF(16, n_elements_in_block=4)
  weights, state = layer.init(sig(1, 2, 8), rng=jax.random.key(0))
  _, recorded = layer.apply(weights, state, jnp.ones((1, 2, 8)), rng=jax.random.key(1))
  replay = tl.with_replay((recorded, {'other': recorded}))
  assert all(bool(r.replay) for r in tl.state.records(replay))
  assert not bool(recorded.replay)
