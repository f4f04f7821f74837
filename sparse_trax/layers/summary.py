"""Readable weight paths and a model summary.

The path of an array is the chain of layer names and sublayer indices from the
model's root to the array's key, e.g. `Serial/3/SparseFF/w1`. Summaries,
error messages and checkpoints use the same paths.
"""

from typing import Callable, Iterator, Tuple

import jax
import numpy as np

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


def summary(model: Layer, weights, *, print_fn: Callable[[str], None] = print) -> str:
  """Prints every weight's path, shape and size, and the parameter total.

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
  text = '\n'.join(lines)
  if print_fn is not None:
    print_fn(text)
  return text
