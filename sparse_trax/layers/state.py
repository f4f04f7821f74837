"""Typed state records: what a layer keeps between calls, as registered pytrees.

Layers keep three kinds of state, each a record class here, so that tools
(`decode_cost`, beam-search reordering, reversible replay) dispatch on the
type rather than on dict keys:

- `KVCache` (predict mode): keys and values of every decoded position, with
  the bound `max_len` they were made for. `append` writes new positions and
  refuses (on the host) or poisons (under `jit`) writes past the bound.
- `RunOnce` (predict mode): a value computed on the first call and replayed
  after (an encoder's output, cross-attention keys, a scan's carry); the
  helper `run_once` is the one place that does "compute once, then replay".
- `Carry` (predict mode): a fixed-size recurrent carry (an SRU's cell, a
  convolution's input history), replaced on every call.
- `Decisions` ('train' mode): discrete choices a layer made (SparseFF units,
  LSH buckets) and a `replay` flag; a reversible backward pass sets the flag
  (`with_replay`) so that recomputing the layer makes the same choices.

`DecodeState` wraps a whole predict-mode model's state with the one decode
position it is at: layers never count positions themselves; the position is
passed down to them by `Layer.apply`.

Every record holds arrays with the batch as their leading axis (except flags
and the position), so `reorder_batch` can reorder a whole state, e.g. by beam.
"""

import dataclasses
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp


def _is_traced(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def _record(cls):
  """Makes a frozen dataclass a pytree: array fields are children, `static` fields aux data."""
  cls = dataclasses.dataclass(frozen=True)(cls)
  fields = dataclasses.fields(cls)
  data = [f.name for f in fields if not f.metadata.get('static')]
  meta = [f.name for f in fields if f.metadata.get('static')]
  return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)


def _static(**kwargs):
  return dataclasses.field(metadata={'static': True}, **kwargs)


@_record
class KVCache:
  """Keys and values of decoded positions: [batch, slots, n_heads, d_head] each.

  `slots` is `max_len` rounded up to whole blocks (attention reads whole
  blocks); only positions below `max_len` are valid. LSH attention also
  caches each position's buckets, [batch, slots, n_heads, n_hashes] int32.

  Attributes:
    keys, values: the cache arrays.
    buckets: optional LSH buckets (None otherwise).
    max_len: how many positions the cache may hold (static).
  """
  keys: jax.Array
  values: jax.Array
  buckets: Optional[jax.Array] = None
  max_len: int = _static(default=0)

  @classmethod
  def empty(cls, batch: int, max_len: int, n_heads: int, d_head: int, block: int,
            dtype=jnp.float32, n_hashes: Optional[int] = None) -> 'KVCache':
    """An empty cache of `max_len` positions rounded up to whole blocks of `block` slots."""
    slots = -(-max_len // block) * block
    shape = (batch, slots, n_heads, d_head)
    buckets = None
    if n_hashes is not None:
      buckets = jnp.zeros((batch, slots, n_heads, n_hashes), jnp.int32)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), buckets, max_len)

  @property
  def slots(self) -> int:
    return self.keys.shape[1]

  def append(self, position, keys, values, buckets=None) -> Tuple['KVCache', jax.Array]:
    """Writes `length` new positions starting at `position`.

    Args:
      position: int32 scalar, the position of the first new entry.
      keys, values: [batch, length, n_heads, d_head].
      buckets: [batch, length, n_heads, n_hashes] for an LSH cache.

    Returns:
      (the new cache, overflow): overflow is a bool scalar, True when the
      write went past `max_len`. When `position` is known on the host (not
      traced) such a write raises instead; under `jit` the caller must
      poison its output with `poison_if(overflow, ...)`.

    Raises:
      ValueError: the write does not fit, and `position` is concrete.
    """
    length = keys.shape[1]
    check_bound(position, length, self.max_len, 'the key/value cache')
    new = KVCache(
        jax.lax.dynamic_update_slice_in_dim(self.keys, keys.astype(self.keys.dtype), position,
                                            axis=1),
        jax.lax.dynamic_update_slice_in_dim(self.values, values.astype(self.values.dtype),
                                            position, axis=1),
        None if buckets is None else jax.lax.dynamic_update_slice_in_dim(
            self.buckets, buckets, position, axis=1),
        self.max_len)
    return new, position + length > self.max_len

  def reorder(self, indices) -> 'KVCache':
    take = lambda x: None if x is None else jnp.take(x, indices, axis=0)
    return KVCache(take(self.keys), take(self.values), take(self.buckets), self.max_len)


def check_bound(position, length: int, max_len: int, what: str) -> None:
  """Raises when `length` positions from `position` pass `max_len` and `position` is concrete."""
  if length > max_len:
    raise ValueError(f'{length} positions in one call do not fit {what} of max_len {max_len}')
  if not _is_traced(position) and int(position) + length > max_len:
    raise ValueError(f'decoding past the end of {what}: positions {int(position)}..'
                     f'{int(position) + length - 1} were asked for, but max_len is {max_len} '
                     f'(build the model with a larger max_len)')


def poison_if(flag, x):
  """x, or NaN everywhere when the bool scalar `flag` is set (a write past a cache's end)."""
  return jnp.where(flag, jnp.asarray(jnp.nan, x.dtype), x)


@_record
class RunOnce:
  """A value computed on the first predict-mode call and replayed after.

  Attributes:
    value: a pytree of arrays, batch-major (zeros until filled).
    filled: bool scalar, True once the value was computed.
  """
  value: Any
  filled: jax.Array

  @classmethod
  def empty(cls, value_signature) -> 'RunOnce':
    """Zeros shaped as `value_signature` (a pytree of ShapeDtypeStructs), not filled."""
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), value_signature)
    return cls(zeros, jnp.zeros((), jnp.bool_))

  def reorder(self, indices) -> 'RunOnce':
    return RunOnce(jax.tree_util.tree_map(lambda x: jnp.take(x, indices, axis=0), self.value),
                   self.filled)


def run_once(record: RunOnce, compute: Callable, operand=None):
  """Computes a value on the first call and replays it on later ones.

  Args:
    record: the layer's RunOnce state.
    compute: operand -> (value, new operand); runs only while not filled
      (under `lax.cond`, so a later call does no work).
    operand: passed to `compute` and returned unchanged when replaying
      (e.g. the state of the layer that computes the value).

  Returns:
    (value, operand, new record): the stored or fresh value, the operand,
    and the record, now filled with the value.
  """
  def replay(op):
    return record.value, op
  value, operand = jax.lax.cond(record.filled, replay, compute, operand)
  return value, operand, RunOnce(value, jnp.ones((), jnp.bool_))


@_record
class Carry:
  """A recurrent carry replaced on every call: an SRU cell [batch, n], a convolution's history.

  Attributes:
    value: a batch-major array.
  """
  value: jax.Array

  def reorder(self, indices) -> 'Carry':
    return Carry(jnp.take(self.value, indices, axis=0))


@_record
class Decisions:
  """Discrete choices made in 'train' mode, and whether to replay them.

  Attributes:
    choices: int32 array of the last call's choices (SparseFF units
      [..., n_blocks], MoE experts, LSH buckets).
    replay: bool scalar; when set, the layer reuses `choices` instead of
      choosing anew (a reversible backward pass recomputing the layer).
  """
  choices: jax.Array
  replay: jax.Array

  @classmethod
  def empty(cls, shape) -> 'Decisions':
    return cls(jnp.zeros(shape, jnp.int32), jnp.zeros((), jnp.bool_))

  @classmethod
  def made(cls, choices) -> 'Decisions':
    """The record of fresh choices (replay off)."""
    return cls(choices, jnp.zeros((), jnp.bool_))

  def replayed(self, fresh):
    """The stored choices when replaying (and shapes match), else `fresh`."""
    if self.choices.shape != fresh.shape:
      return fresh
    return jnp.where(self.replay, self.choices, fresh)


def replayed_choices(state, fresh):
  """`state.replayed(fresh)` for a Decisions state; `fresh` for any other state."""
  return state.replayed(fresh) if isinstance(state, Decisions) else fresh


@_record
class Position:
  """Where a predict-mode call's positions sit: passed down by `Layer.apply` to every layer.

  Attributes:
    start: int32 scalar, the decode position of the call's first position.
    valid: int32 scalar, how many of the call's positions count. The rest
      (right padding of a prefill) are computed but do not advance the
      position: their cache entries are overwritten by later calls before
      any query can see them, and recurrent carries stop at the last valid
      position.
  """
  start: jax.Array
  valid: jax.Array

  @classmethod
  def at(cls, start, valid) -> 'Position':
    return cls(jnp.asarray(start, jnp.int32), jnp.asarray(valid, jnp.int32))


@_record
class DecodeState:
  """A predict-mode model's state: the decode position and every layer's state.

  `Layer.init` returns it for a model built with mode='predict'; `Layer.apply`
  passes `position` down to the layers and advances it by the number of
  positions fed.

  Attributes:
    position: int32 scalar, the position of the next token fed.
    layers: the layer tree's state (typed records in tuples and dicts).
  """
  position: jax.Array
  layers: Any


def _is_record(x) -> bool:
  return isinstance(x, (KVCache, RunOnce, Carry, Decisions, DecodeState))


def map_records(fn: Callable, state):
  """Applies `fn` to every typed record in `state` (tuples, lists and dicts are walked)."""
  return jax.tree_util.tree_map(lambda x: fn(x) if _is_record(x) else x, state,
                                is_leaf=_is_record)


def records(state):
  """The typed records in `state`, depth first (a DecodeState's layer records, not itself)."""
  found = []
  for x in jax.tree_util.tree_leaves(state, is_leaf=_is_record):
    if isinstance(x, DecodeState):
      found += records(x.layers)
    elif _is_record(x):
      found.append(x)
  return found


def with_replay(state):
  """The state with every Decisions record's replay flag set: recorded choices are reused."""
  def replay(record):
    if isinstance(record, Decisions):
      return Decisions(record.choices, jnp.ones((), jnp.bool_))
    return record
  return map_records(replay, state)


def reorder_batch(state, indices):
  """Every record of a predict-mode state with its batch rows taken at `indices` [new_batch].

  Used by beam search to follow the surviving beams. A bare array in the
  state (a layer that does not use the records) is an error: its batch
  axis cannot be known.
  """
  def reorder(record):
    if isinstance(record, DecodeState):
      return DecodeState(record.position, reorder_batch(record.layers, indices))
    if isinstance(record, Decisions):
      return record
    return record.reorder(indices)
  loose = [x for x in jax.tree_util.tree_leaves(state, is_leaf=_is_record) if not _is_record(x)]
  if loose:
    raise TypeError(f'reorder_batch: the state holds {len(loose)} arrays outside typed records '
                    f'(first: {jnp.dtype(loose[0].dtype).name}{list(loose[0].shape)}); '
                    'keep predict-mode state in KVCache, RunOnce or Carry records')
  return map_records(reorder, state)
