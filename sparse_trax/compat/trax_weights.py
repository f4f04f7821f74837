"""Trax's flat weight lists, placed into sparse_trax weight trees.

Trax keeps a model's weights as one flat list, in depth-first order over its
layer tree (empty weights left out); the converters here walk that list in
the order a Trax model family lays it out and put each array at the path of
the matching weight in our model, transformed to our layout:
  * matrices out-major: Trax's Dense `w` is [d_in, d_out], ours [d_out, d_in];
  * the attention's Q, K and V matrices (and biases) stacked into `wqkv` [3d, d]
    (`bqkv` [3d]).
Every array's shape is checked against our weight's; a mismatch names the
Trax weight (its index and what it is) and our path.
"""

from typing import Callable, Dict, List, Sequence

import jax
import numpy as np


class TraxWeightError(ValueError):
  """Trax's weights do not fit the model built from the given arguments."""


class FlatWeights:
  """Trax's flat weight list, read front to back with a description of each."""

  def __init__(self, arrays: Sequence[np.ndarray], family: str):
    self.arrays = list(arrays)
    self.family = family
    self.index = 0

  def take(self, what: str) -> np.ndarray:
    """The next array (what it is in Trax, e.g. 'layer 0 attention query w')."""
    if self.index >= len(self.arrays):
      raise TraxWeightError(f'the Trax {self.family} checkpoint has {len(self.arrays)} weight '
                            f'arrays, but the model built from these arguments needs more '
                            f'(the next would be {what}): check n_layers and the other sizes')
    array = np.asarray(self.arrays[self.index])
    self.index += 1
    return array

  def where(self) -> int:
    return self.index - 1

  def check_used_up(self):
    if self.index != len(self.arrays):
      raise TraxWeightError(
          f'the Trax {self.family} checkpoint has {len(self.arrays)} weight arrays, but the '
          f'model built from these arguments uses {self.index}: check n_layers and the other '
          'sizes')


class OurWeights:
  """Fills our weights tree (given as a template of shapes) path by path."""

  def __init__(self, template, model_name: str):
    leaves_with_paths, self.treedef = jax.tree_util.tree_flatten_with_path(template)
    self.paths = [jax.tree_util.keystr(path) for path, _ in leaves_with_paths]
    self.shapes = {p: tuple(leaf.shape) for p, (_, leaf) in zip(self.paths, leaves_with_paths)}
    self.dtypes = {p: leaf.dtype for p, (_, leaf) in zip(self.paths, leaves_with_paths)}
    self.values: Dict[str, np.ndarray] = {}
    self.model_name = model_name

  def put(self, path: str, value: np.ndarray, trax: FlatWeights, what: str):
    if path not in self.shapes:
      raise TraxWeightError(f'{self.model_name} has no weight {path} (for Trax weight '
                            f'#{trax.where()}, {what}): was it built with the matching '
                            'arguments?')
    if tuple(value.shape) != self.shapes[path]:
      raise TraxWeightError(
          f'Trax weight #{trax.where()} ({what}) gives shape {tuple(value.shape)} in our layout, '
          f'but {self.model_name}{path} is {self.shapes[path]}: check the sizes passed '
          '(d_model, d_ff, n_heads, vocab_size, max_len, ...)')
    self.values[path] = value.astype(self.dtypes[path])

  def tree(self):
    missing = [p for p in self.paths if p not in self.values]
    if missing:
      raise TraxWeightError(f'no Trax weight was found for {self.model_name}{missing[0]} '
                            f'({len(missing)} weights left unset)')
    return jax.tree_util.tree_unflatten(self.treedef, [self.values[p] for p in self.paths])


def path(*keys) -> str:
  """Our weight path as `jax.tree_util.keystr` writes it: path(4, 0, 'w') -> "[4][0]['w']"."""
  return ''.join(f"['{k}']" if isinstance(k, str) else f'[{k}]' for k in keys)


def dense(trax: FlatWeights, ours: OurWeights, at: tuple, what: str):
  """A Trax Dense (w [d_in, d_out], b) into ours at `at` ({'w': [d_out, d_in], 'b'})."""
  ours.put(path(*at, 'w'), trax.take(f'{what} w').T, trax, f'{what} w')
  ours.put(path(*at, 'b'), trax.take(f'{what} b'), trax, f'{what} b')


def layer_norm(trax: FlatWeights, ours: OurWeights, at: tuple, what: str):
  ours.put(path(*at, 'scale'), trax.take(f'{what} scale'), trax, f'{what} scale')
  ours.put(path(*at, 'bias'), trax.take(f'{what} bias'), trax, f'{what} bias')


def fused_attention(trax: FlatWeights, ours: OurWeights, at: tuple, what: str):
  """Trax's attention (Dense q, k, v, out, each with a bias) into our fused
  `wqkv` [3d, d], `bqkv` [3d], `wo`, `bo`."""
  matrices, biases = [], []
  for part in ('query', 'key', 'value'):
    matrices.append(trax.take(f'{what} {part} w').T)
    biases.append(trax.take(f'{what} {part} b'))
  ours.put(path(*at, 'wqkv'), np.concatenate(matrices, axis=0), trax, f'{what} q, k, v w')
  ours.put(path(*at, 'bqkv'), np.concatenate(biases, axis=0), trax, f'{what} q, k, v b')
  ours.put(path(*at, 'wo'), trax.take(f'{what} output w').T, trax, f'{what} output w')
  ours.put(path(*at, 'bo'), trax.take(f'{what} output b'), trax, f'{what} output b')


def transformer_lm(trax: FlatWeights, ours: OurWeights, n_layers: int):
  """Trax's TransformerLM: embedding, positional table, decoder blocks
  (LayerNorm, attention; LayerNorm, Dense, Dense), LayerNorm, Dense.

  Ours (`models.TransformerLM(..., qkv_bias=True, trained_positions=True)`):
  [1] Embedding, [3] PositionalEncoding, [4 + i] DecoderBlock i
  ([0][0] LayerNorm, [0][1] attention, [1][0] LayerNorm, [1][1][0] and
  [1][1][3] the FF Dense layers), [4 + n] LayerNorm, [5 + n] Dense.
  """
  ours.put(path(1, 'embedding'), trax.take('embedding'), trax, 'embedding')
  ours.put(path(3, 'table'), trax.take('positional table'), trax, 'positional table')
  for i in range(n_layers):
    block = 4 + i
    layer_norm(trax, ours, (block, 0, 0), f'layer {i} attention LayerNorm')
    fused_attention(trax, ours, (block, 0, 1), f'layer {i} attention')
    layer_norm(trax, ours, (block, 1, 0), f'layer {i} feed-forward LayerNorm')
    dense(trax, ours, (block, 1, 1, 0), f'layer {i} feed-forward first Dense')
    dense(trax, ours, (block, 1, 1, 3), f'layer {i} feed-forward second Dense')
  layer_norm(trax, ours, (4 + n_layers,), 'final LayerNorm')
  dense(trax, ours, (5 + n_layers,), 'logits Dense')


Converter = Callable[..., None]
CONVERTERS: Dict[str, Converter] = {'TransformerLM': transformer_lm}


def convert(family: str, flat_weights: List[np.ndarray], template, n_layers: int,
            model_name: str):
  """Our weights tree from Trax's flat weights of a `family` model.

  Args:
    family: the Trax model class name, e.g. 'TransformerLM'.
    flat_weights: Trax's flat weight arrays (`trax_files.read_checkpoint`).
    template: our model's weights (or their ShapeDtypeStructs) to fill.
    n_layers: the model's number of layers.
    model_name: for error messages.
  """
  needed = _count_taken(family, n_layers)
  if needed != len(flat_weights):
    raise TraxWeightError(
        f'the Trax {family} checkpoint holds {len(flat_weights)} weight arrays, but {model_name} '
        f'with n_layers={n_layers} takes {needed}: check n_layers (and the other arguments)')
  trax = FlatWeights(flat_weights, family)
  ours = OurWeights(template, model_name)
  CONVERTERS[family](trax, ours, n_layers)
  trax.check_used_up()
  return ours.tree()


class _Counter(FlatWeights):
  """Counts the arrays a converter takes (each an empty stand-in)."""

  def __init__(self, family):
    super().__init__([], family)

  def take(self, what: str) -> np.ndarray:
    self.index += 1
    return np.zeros((0,), np.float32)


class _Ignore(OurWeights):
  def __init__(self):  # pylint: disable=super-init-not-called
    pass

  def put(self, path, value, trax, what):
    pass


def _count_taken(family: str, n_layers: int) -> int:
  """How many Trax weight arrays a `family` model with `n_layers` layers holds."""
  counter = _Counter(family)
  CONVERTERS[family](counter, _Ignore(), n_layers)
  return counter.index
