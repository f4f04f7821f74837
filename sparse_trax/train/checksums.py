"""Checksums of pytrees of arrays that do not depend on how the arrays are sharded.

A checkpoint records a checksum of each item's arrays when it is saved and
checks it when it is read back. On several processes no process holds a
whole array, so the checksum cannot hash the bytes in order. Instead each
element contributes a 64-bit hash of (its position in the whole array, its
bits), and an array's checksum is the sum of those hashes modulo 2**64:

    position_hash(x) = sum over i of mix(mix(i + SEED) ^ bits(x[i]))  mod 2**64

where i is the element's flat (row-major) index in the whole array and `mix`
is the 64-bit MurmurHash3 finalizer. A sum does not care about order, so each
process adds up the blocks it owns (the shards with replica id 0) and the
processes add their partial sums together. The result is the same for one
array whole, split over devices or split over processes, and any change of
an element changes it with probability 1 - 2**-64. It detects damage, not
tampering: it is not a cryptographic hash.
"""

import hashlib
from typing import List

import jax
import numpy as np

SEED = 0x9E3779B97F4A7C15
METHOD = 'position-hash-64'     # recorded in the checkpoint's metadata
_MASK = (1 << 64) - 1
_CHUNK_ELEMENTS = 1 << 22       # elements hashed at once (bounds the temporaries)


def _mix(x: np.ndarray) -> np.ndarray:
  """MurmurHash3's 64-bit finalizer, elementwise on uint64 (wrapping)."""
  x = x ^ (x >> np.uint64(33))
  x = x * np.uint64(0xFF51AFD7ED558CCD)
  x = x ^ (x >> np.uint64(33))
  x = x * np.uint64(0xC4CEB9FE1A85EC53)
  return x ^ (x >> np.uint64(33))


def _bits(values: np.ndarray) -> np.ndarray:
  """Each element's bit pattern as uint64 (any dtype of 1, 2, 4 or 8 bytes)."""
  values = np.ascontiguousarray(values)
  unsigned = np.dtype(f'uint{8 * values.dtype.itemsize}')
  return values.view(unsigned).astype(np.uint64)


def block_sum(values: np.ndarray, offsets, global_shape) -> int:
  """The position-hash sum of one block of an array.

  Args:
    values: the block, shape [s_0, ..., s_k-1].
    offsets: where the block starts in the whole array, one int per axis.
    global_shape: the whole array's shape.

  Returns:
    The block's sum of element hashes, an int in [0, 2**64).
  """
  values = np.asarray(values)
  if values.ndim == 0:          # hashed as a 1-element array (numpy scalars warn on wrapping)
    values, offsets, global_shape = values.reshape(1), (0,), (1,)
  strides = [int(np.prod(global_shape[axis + 1:], dtype=np.int64))
             for axis in range(len(global_shape))]
  row_elements = max(1, int(np.prod(values.shape[1:], dtype=np.int64)))
  rows_per_chunk = max(1, _CHUNK_ELEMENTS // row_elements)
  total = 0
  for start in range(0, values.shape[0], rows_per_chunk):
    chunk = values[start:start + rows_per_chunk]
    index = np.full(chunk.shape, SEED, np.uint64)
    for axis, size in enumerate(chunk.shape):
      first = offsets[axis] + (start if axis == 0 else 0)
      along = np.arange(first, first + size, dtype=np.uint64) * np.uint64(strides[axis])
      shape = [1] * chunk.ndim
      shape[axis] = size
      index += along.reshape(shape)
    hashes = _mix(_mix(index) ^ _bits(chunk))
    total = (total + int(np.add.reduce(hashes, axis=None, dtype=np.uint64))) & _MASK
  return total


def _owned_blocks(x):
  """(block values, offsets) of the parts of `x` this process adds up: each block
  of the array once over all processes (replica 0 of each shard)."""
  if not isinstance(x, jax.Array):
    return [(np.asarray(x), (0,) * np.ndim(x))]
  blocks = []
  for shard in x.addressable_shards:
    if shard.replica_id != 0:
      continue
    offsets = tuple(index.indices(size)[0] for index, size in zip(shard.index, x.shape))
    blocks.append((np.asarray(shard.data), offsets))
  return blocks


def _local_sums(leaves) -> List[int]:
  return [sum(block_sum(values, offsets, np.shape(x)) for values, offsets in _owned_blocks(x))
          & _MASK for x in leaves]


def _sum_over_processes(sums: List[int]) -> List[int]:
  """Adds every process's partial sums (a collective: all processes must call it)."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  halves = np.array([[s >> 32, s & 0xFFFFFFFF] for s in sums], np.uint32).reshape(-1, 2)
  gathered = np.asarray(multihost_utils.process_allgather(halves))   # [process, leaf, 2]
  return [sum((int(high) << 32) | int(low) for high, low in gathered[:, leaf]) & _MASK
          for leaf in range(len(sums))]


def tree_checksum(tree) -> str:
  """A hex SHA-256 over each array leaf's dtype, shape and position-hash sum.

  The same for a tree whose arrays are whole, sharded over local devices or
  spread over processes. When some array is spread over processes, every
  process must call this together (it adds the processes' partial sums).
  """
  leaves = jax.tree_util.tree_leaves(tree)
  sums = _local_sums(leaves)
  spread = any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in leaves)
  if spread:
    sums = _sum_over_processes(sums)
  digest = hashlib.sha256()
  for leaf, total in zip(leaves, sums):
    digest.update(f'{np.dtype(leaf.dtype)}{tuple(np.shape(leaf))}:{total:016x};'.encode())
  return digest.hexdigest()


def legacy_tree_checksum(tree) -> str:
  """The checksum of sparse_trax checkpoints saved before METHOD was recorded:
  SHA-256 over each array's dtype, shape and bytes (whole arrays only)."""
  digest = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(tree):
    array = np.asarray(leaf)
    digest.update(f'{array.dtype}{array.shape}'.encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()
