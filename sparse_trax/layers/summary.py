"""Readable weight paths and a model summary.

The path of an array is the chain of layer names and sublayer indices from the
model's root to the array's key, e.g. `Serial/3/SparseFF/w1`. Summaries,
error messages and checkpoints use the same paths.
"""

from typing import Callable, Iterator, Tuple

import jax
import numpy as np

from sparse_trax.layers import attention
from sparse_trax.layers import state as state_lib
from sparse_trax.layers.base import Layer


def named_weights(model: Layer, weights) -> Iterator[Tuple[str, jax.Array]]:
  """Yields (path, array) for every weight array of `model`, depth first.

  Args:
    model: the layer whose weights these are.
    weights: the weights pytree from `model.init` (shared layers hold `()`
      at every place but their first).
  """
  yield from _walk(model, weights, model.name)


def _walk(layer: Layer, weights, prefix: str):
  if layer.sublayers:
    for index, (sub, w) in enumerate(zip(layer.sublayers, weights)):
      yield from _walk(sub, w, f'{prefix}/{index}/{sub.name}')
    return
  leaves = jax.tree_util.tree_flatten_with_path(weights)[0]
  for key_path, leaf in leaves:
    suffix = '/'.join(_key_name(k) for k in key_path)
    yield (f'{prefix}/{suffix}' if suffix else prefix), leaf


def _key_name(key) -> str:
  for attribute in ('key', 'idx', 'name'):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def count_parameters(weights) -> int:
  """Total number of scalars in a weights pytree."""
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(weights)))


def decode_cost(model: Layer, weights, state=None, position: int = 0) -> dict:
  """Bytes one decoded token reads: weights, and caches at `position`.

  Args:
    model: the layer (any mode: the count depends on its structure).
    weights: its weights.
    state: optional 'predict'-mode state (from `decoding.initial_state`);
      its `KVCache` records are read up to the block holding `position`,
      its other records (`Carry`, `RunOnce`: convolution histories, SRU
      carries, cached encoder keys) whole.
    position: the position of the token being decoded.

  Returns:
    {'weights': bytes, 'cache': bytes, 'total': bytes, 'all_weights': bytes}.
  """
  weight_bytes = model.decode_weight_bytes(weights)
  cache_bytes = 0
  if state is not None:
    for record in state_lib.records(state):
      if isinstance(record, state_lib.KVCache):
        # Attention reads the filled blocks only: those up to the one holding `position`.
        block = attention.cache_block_size(record.max_len)
        used = min(record.slots, -(-(position + 1) // block) * block)
        per_slot = sum(x[:, :1].size * x.dtype.itemsize
                       for x in (record.keys, record.values, record.buckets) if x is not None)
        cache_bytes += used * per_slot
      elif not isinstance(record, state_lib.DecodeState):
        cache_bytes += sum(int(x.size * x.dtype.itemsize)
                           for x in jax.tree_util.tree_leaves(record))
  all_weights = int(sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(weights)))
  return {'weights': weight_bytes, 'cache': cache_bytes, 'total': weight_bytes + cache_bytes,
          'all_weights': all_weights}


def summary(model: Layer, weights, *, print_fn: Callable[[str], None] = print) -> str:
  """Prints every weight's path, shape and size, the parameter total, and
  the bytes of weights one decoded token reads (see `decode_cost`).

  Args:
    model: the layer.
    weights: its weights pytree.
    print_fn: where the text goes (`print` by default; `None` to only return).

  Returns:
    The summary text.
  """
  rows = [(path, 'x'.join(map(str, x.shape)) or 'scalar', str(x.dtype),
           int(np.prod(x.shape)))
          for path, x in named_weights(model, weights)]
  width = max([len(r[0]) for r in rows] + [4])
  lines = [f'{"path":<{width}}  {"shape":>16}  {"dtype":>8}  {"params":>12}']
  lines += [f'{p:<{width}}  {s:>16}  {d:>8}  {n:>12,}' for p, s, d, n in rows]
  total = sum(r[3] for r in rows)
  lines.append(f'{"total":<{width}}  {"":>16}  {"":>8}  {total:>12,}')
  cost = decode_cost(model, weights)
  share = cost['weights'] / max(cost['all_weights'], 1)
  lines.append(f'a decoded token reads {cost["weights"]:,} bytes of weights '
               f'({share:.1%} of {cost["all_weights"]:,}), plus its attention caches')
  text = '\n'.join(lines)
  if print_fn is not None:
    print_fn(text)
  return text
