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


def multiplicative_dense(trax: FlatWeights, ours: OurWeights, at: tuple, what: str):
  """Trax's FactoredDense (gating G [S, d_in], projection P [d_in, M], b [d_out])
  into our MultiplicativeDense (`modules` G^T [d_in, S], `units` P, `b`)."""
  ours.put(path(*at, 'modules'), trax.take(f'{what} gating').T, trax, f'{what} gating')
  ours.put(path(*at, 'units'), trax.take(f'{what} projection'), trax, f'{what} projection')
  ours.put(path(*at, 'b'), trax.take(f'{what} bias'), trax, f'{what} bias')


def multiplicative_conv_attention(trax: FlatWeights, ours: OurWeights, at: tuple, what: str):
  """Trax's MultiplicativeConvCausalAttention: FactoredDense, then the Q, K and V
  convolutions (HWIO kernels, biases), as our SparseQKV ([0]: `multiplicative`,
  `query`, `key`, `value`)."""
  multiplicative_dense(trax, ours, at + (0, 'multiplicative'), f'{what} multiplicative layer')
  for part in ('query', 'key', 'value'):
    ours.put(path(*at, 0, part, 'kernel'), trax.take(f'{what} {part} convolution kernel'),
             trax, f'{what} {part} convolution kernel')
    ours.put(path(*at, 0, part, 'b'), trax.take(f'{what} {part} convolution bias'),
             trax, f'{what} {part} convolution bias')


def sparse_ff(trax: FlatWeights, ours: OurWeights, at: tuple, what: str):
  """Trax's SparseFF (controller m1 [d, r], m2 [r, B, N], mb [B, N]; W1 [d, B, N],
  W2 [N, B, d], b2; no first-layer bias) into ours (unit b * N + n is row
  b * N + n of `w1` and `w2`; `b1` zero, as Trax adds none)."""
  m1 = trax.take(f'{what} controller m1')
  ours.put(path(*at, 'controller_in'), m1.T, trax, f'{what} controller m1')
  m2 = trax.take(f'{what} controller m2')
  ours.put(path(*at, 'controller_out'), m2.reshape(m2.shape[0], -1).T, trax,
           f'{what} controller m2')
  ours.put(path(*at, 'controller_bias'), trax.take(f'{what} controller bias').reshape(-1),
           trax, f'{what} controller bias')
  w1 = trax.take(f'{what} W1')
  ours.put(path(*at, 'w1'), w1.reshape(w1.shape[0], -1).T, trax, f'{what} W1')
  w2 = trax.take(f'{what} W2')
  ours.put(path(*at, 'w2'), np.transpose(w2, (1, 0, 2)).reshape(-1, w2.shape[-1]), trax,
           f'{what} W2')
  ours.put(path(*at, 'b1'), np.zeros(w1.shape[1] * w1.shape[2], w1.dtype), trax,
           f'{what} (no first-layer bias in Trax)')
  ours.put(path(*at, 'b2'), trax.take(f'{what} b2'), trax, f'{what} b2')


def block_sparse_ff(trax: FlatWeights, ours: OurWeights, at: tuple, what: str):
  """Trax's BlockSparseFF (router m1 [d, E], W1 [d, d_ff], W2 [d_ff, d], b2; no
  other biases) into our BlockSparseFF (out-major; zero router and first biases)."""
  router = trax.take(f'{what} router')
  ours.put(path(*at, 'router'), router.T, trax, f'{what} router')
  ours.put(path(*at, 'router_bias'), np.zeros(router.shape[1], router.dtype), trax,
           f'{what} (no router bias in Trax)')
  w1 = trax.take(f'{what} W1')
  ours.put(path(*at, 'w1'), w1.T, trax, f'{what} W1')
  ours.put(path(*at, 'b1'), np.zeros(w1.shape[1], w1.dtype), trax,
           f'{what} (no first-layer bias in Trax)')
  ours.put(path(*at, 'w2'), trax.take(f'{what} W2'), trax, f'{what} W2')
  ours.put(path(*at, 'b2'), trax.take(f'{what} b2'), trax, f'{what} b2')


def decoder_only_lm(trax: FlatWeights, ours: OurWeights, config: dict):
  """Trax's TransformerLM and ConfigurableTransformerLM: embedding, positional
  table, decoder blocks (LayerNorm, attention; LayerNorm, feed-forward),
  LayerNorm, the vocabulary projection.

  Ours (`models.TransformerLM` / `ScalingTransformerLM` with qkv_bias and
  trained_positions): [1] Embedding, [3] PositionalEncoding, [4 + i]
  DecoderBlock i ([0][0] LayerNorm, [0][1] attention, [1][0] LayerNorm,
  [1][1] the feed-forward), [4 + n] LayerNorm, [5 + n] the projection.

  config: n_layers; attention 'dense' or 'multconv'; ff 'dense', 'sparse'
  (SparseFF) or 'block' (BlockSparseFF); loss 'dense' or 'mult'.
  """
  n_layers = config['n_layers']
  ours.put(path(1, 'embedding'), trax.take('embedding'), trax, 'embedding')
  ours.put(path(3, 'table'), trax.take('positional table'), trax, 'positional table')
  for i in range(n_layers):
    block = 4 + i
    layer_norm(trax, ours, (block, 0, 0), f'layer {i} attention LayerNorm')
    if config.get('attention', 'dense') == 'dense':
      fused_attention(trax, ours, (block, 0, 1), f'layer {i} attention')
    else:
      multiplicative_conv_attention(trax, ours, (block, 0, 1), f'layer {i} attention')
    layer_norm(trax, ours, (block, 1, 0), f'layer {i} feed-forward LayerNorm')
    feed_forward(trax, ours, (block, 1, 1), f'layer {i}', config)
  layer_norm(trax, ours, (4 + n_layers,), 'final LayerNorm')
  logits(trax, ours, (5 + n_layers,), config)


def feed_forward(trax: FlatWeights, ours: OurWeights, at: tuple, what: str, config: dict):
  """The feed-forward of config['ff']: 'dense', 'sparse' (SparseFF) or 'block'."""
  kind = config.get('ff', 'dense')
  if kind == 'dense':
    dense_feed_forward(trax, ours, at, f'{what} feed-forward')
  elif kind == 'sparse':
    sparse_ff(trax, ours, at, f'{what} SparseFF')
  else:
    block_sparse_ff(trax, ours, at, f'{what} BlockSparseFF')


def logits(trax: FlatWeights, ours: OurWeights, at: tuple, config: dict):
  """The vocabulary projection of config['loss']: 'dense' or 'mult'."""
  if config.get('loss', 'dense') == 'dense':
    dense(trax, ours, at, 'logits Dense')
  else:
    multiplicative_dense(trax, ours, at, 'logits FactoredDense')


def separate_attention(trax: FlatWeights, ours: OurWeights, at: tuple, what: str):
  """Trax's encoder-decoder attention (Dense q, k, v, out, with biases) into our
  EncDecAttention (`wq`, `wk`, `wv`, `wo` out-major; `bq`, `bk`, `bv`, `bo`)."""
  for part, name in (('query', 'q'), ('key', 'k'), ('value', 'v'), ('output', 'o')):
    ours.put(path(*at, f'w{name}'), trax.take(f'{what} {part} w').T, trax, f'{what} {part} w')
    ours.put(path(*at, f'b{name}'), trax.take(f'{what} {part} b'), trax, f'{what} {part} b')


def dense_feed_forward(trax: FlatWeights, ours: OurWeights, at: tuple, what: str):
  """Trax's Dense, activation, Dropout, Dense: ours at `at` (Dense at [0] and [3])."""
  dense(trax, ours, at + (0,), f'{what} first Dense')
  dense(trax, ours, at + (3,), f'{what} second Dense')


def encoder_decoder(trax: FlatWeights, ours: OurWeights, config: dict):
  """Trax's Transformer and ConfigurableTransformer (dense attention; config['ff']
  and config['loss'] as in `decoder_only_lm`): the encoder (embedding, positional table, blocks of
  LayerNorm, attention, LayerNorm, feed-forward; a final LayerNorm), then the
  decoder (embedding, positional table, blocks of LayerNorm, causal attention,
  LayerNorm, encoder-decoder attention, LayerNorm, feed-forward), LayerNorm,
  Dense.

  Ours (`models.Transformer(..., qkv_bias=True, trained_positions=True)`):
  [0][0] the encoder ([0][0][0] embedding, [0][0][0][2] positions, [1 + i]
  blocks, [1 + n][0] its LayerNorm), [3] the target embedding, [5] positions,
  [6 + i] decoder blocks, [7 + n] LayerNorm, [8 + n] Dense.
  """
  n_encoder, n_decoder = config['n_encoder_layers'], config['n_decoder_layers']
  encoder = (0, 0)
  ours.put(path(*encoder, 0, 0, 0, 'embedding'), trax.take('encoder embedding'), trax,
           'encoder embedding')
  ours.put(path(*encoder, 0, 0, 2, 'table'), trax.take('encoder positional table'), trax,
           'encoder positional table')
  for i in range(n_encoder):
    block = encoder + (1 + i,)
    layer_norm(trax, ours, block + (0, 0), f'encoder layer {i} attention LayerNorm')
    fused_attention(trax, ours, block + (0, 1), f'encoder layer {i} attention')
    layer_norm(trax, ours, block + (1, 0), f'encoder layer {i} feed-forward LayerNorm')
    feed_forward(trax, ours, block + (1, 1), f'encoder layer {i}', config)
  layer_norm(trax, ours, encoder + (1 + n_encoder, 0), 'encoder final LayerNorm')
  ours.put(path(3, 'embedding'), trax.take('decoder embedding'), trax, 'decoder embedding')
  ours.put(path(5, 'table'), trax.take('decoder positional table'), trax,
           'decoder positional table')
  for i in range(n_decoder):
    block = (6 + i,)
    layer_norm(trax, ours, block + (0, 0), f'decoder layer {i} attention LayerNorm')
    fused_attention(trax, ours, block + (0, 1), f'decoder layer {i} causal attention')
    layer_norm(trax, ours, block + (1, 0), f'decoder layer {i} cross-attention LayerNorm')
    separate_attention(trax, ours, block + (1, 1), f'decoder layer {i} cross-attention')
    layer_norm(trax, ours, block + (2, 0), f'decoder layer {i} feed-forward LayerNorm')
    feed_forward(trax, ours, block + (2, 1), f'decoder layer {i}', config)
  layer_norm(trax, ours, (7 + n_decoder,), 'decoder final LayerNorm')
  logits(trax, ours, (8 + n_decoder,), config)


def fixed_base_positions(trax: FlatWeights, ours: OurWeights, at: tuple, what: str,
                         n_bases: int = 4, n_digits: int = 8):
  """Trax's FixedBasePositionalEncoding (one [1, d / n_digits] vector per base and
  digit, base-major, then the start vector [1, 1, d]) into ours (`scales`
  [n_bases, n_digits, d / n_digits], `start` [d])."""
  scales = np.stack([np.stack([trax.take(f'{what} base {b} digit {i}').reshape(-1)
                               for i in range(n_digits)]) for b in range(n_bases)])
  ours.put(path(*at, 'scales'), scales, trax, f'{what} digit vectors')
  ours.put(path(*at, 'start'), trax.take(f'{what} start vector').reshape(-1), trax,
           f'{what} start vector')


def per_head_attention(trax: FlatWeights, ours: OurWeights, at: tuple, what: str):
  """Trax's SelfAttention (per-head w_q, w_k, w_v [heads, d, d_head], w_o [heads,
  d_head, d]; no biases) into our fused `wqkv` [3d, d] (row head * d_head + j),
  `wo` [d, d] and a zero `bo`."""
  matrices = []
  for part in ('query', 'key', 'value'):
    w = trax.take(f'{what} {part} w')                      # [heads, d, d_head]
    matrices.append(np.transpose(w, (0, 2, 1)).reshape(-1, w.shape[1]))
  ours.put(path(*at, 'wqkv'), np.concatenate(matrices, axis=0), trax, f'{what} q, k, v w')
  w_o = trax.take(f'{what} output w')                      # [heads, d_head, d]
  ours.put(path(*at, 'wo'), w_o.reshape(-1, w_o.shape[-1]).T, trax, f'{what} output w')
  ours.put(path(*at, 'bo'), np.zeros(w_o.shape[-1], w_o.dtype), trax,
           f'{what} (no output bias in Trax)')


def sru(trax: FlatWeights, ours: OurWeights, at: tuple, what: str):
  """Trax's SRU (Dense(3n): w [n, 3n] and b [3n], columns reset, forget, candidate)
  into ours with candidate_bias (`w` [3n, n] and `b` [3n], rows candidate, forget,
  reset)."""
  w = trax.take(f'{what} w').T
  b = trax.take(f'{what} b')
  n = w.shape[0] // 3

  def reorder(x):
    return np.concatenate([x[2 * n:], x[n:2 * n], x[:n]], axis=0)
  ours.put(path(*at, 'w'), reorder(w), trax, f'{what} w')
  ours.put(path(*at, 'b'), reorder(b), trax, f'{what} b')


def feed_forward_with_sru(trax: FlatWeights, ours: OurWeights, at: tuple, what: str,
                          config: dict):
  """Trax's FeedForwardWithOptions (LayerNorm, feed-forward; with ff_use_sru also
  LayerNorm, Dense, SRU, Dense) into our FeedForwardWithSRU at `at`."""
  main = at + (0, 0) if config.get('sru') else at
  layer_norm(trax, ours, main + (0,), f'{what} feed-forward LayerNorm')
  feed_forward(trax, ours, main + (1,), what, config)
  if config.get('sru'):
    branch = at + (0, 1)
    layer_norm(trax, ours, branch + (0,), f'{what} SRU LayerNorm')
    dense(trax, ours, branch + (1,), f'{what} SRU input Dense')
    sru(trax, ours, branch + (2,), f'{what} SRU')
    dense(trax, ours, branch + (3,), f'{what} SRU output Dense')


def terraformer(trax: FlatWeights, ours: OurWeights, config: dict):
  """Trax's ConfigurableTerraformer (SelfAttention, fixed-base positions, the
  encoder ending in Dense and LayerNorm; config: n_encoder_layers,
  n_decoder_layers, n_decoder_attention_layers, decoder_attention 'dense' or
  'multconv' (MultiplicativeConvCausalAttention), ff, loss, sru): source and
  target embeddings with their positional weights, the encoder's reversible
  blocks (LayerNorm, attention; feed-forward), its Dense and LayerNorm, the
  decoder's blocks (LayerNorm, attention, n_decoder_attention_layers times;
  feed-forward), LayerNorm, the vocabulary projection.

  Ours (`models.Terraformer(..., positional_encoding='fixed_base',
  encoder_output_dense=True)`): [0][0] the encoder ([0][0][0][0] embedding
  [0] and positions [2], [0][0][2] its reversible stack, [0][0][4] Dense,
  [0][0][5][0] LayerNorm), [3] the target embedding, [5] positions,
  [6][0][1] the decoder's reversible stack, [7] LayerNorm, [8] the projection.
  In a reversible stack each half-residual is followed by a swap.
  """
  encoder = (0, 0)
  ours.put(path(*encoder, 0, 0, 0, 'embedding'), trax.take('encoder embedding'), trax,
           'encoder embedding')
  fixed_base_positions(trax, ours, encoder + (0, 0, 2), 'encoder positions')
  ours.put(path(3, 'embedding'), trax.take('decoder embedding'), trax, 'decoder embedding')
  fixed_base_positions(trax, ours, (5,), 'decoder positions')
  for i in range(config['n_encoder_layers']):
    layer = encoder + (2, 4 * i)
    layer_norm(trax, ours, layer + (0, 0), f'encoder layer {i} attention LayerNorm')
    per_head_attention(trax, ours, layer + (0, 1), f'encoder layer {i} attention')
    feed_forward_with_sru(trax, ours, encoder + (2, 4 * i + 2, 0), f'encoder layer {i}',
                          config)
  dense(trax, ours, encoder + (4,), 'encoder output Dense')
  layer_norm(trax, ours, encoder + (5, 0), 'encoder final LayerNorm')
  n_attention = config['n_decoder_attention_layers']
  per_block = 2 * (n_attention + 1)
  for i in range(config['n_decoder_layers']):
    for a in range(n_attention):
      layer = (6, 0, 1, per_block * i + 2 * a)
      layer_norm(trax, ours, layer + (0, 0), f'decoder layer {i} attention {a} LayerNorm')
      if config.get('decoder_attention', 'dense') == 'dense':
        per_head_attention(trax, ours, layer + (0, 1), f'decoder layer {i} attention {a}')
      else:
        multiplicative_conv_attention(trax, ours, layer + (0, 1),
                                      f'decoder layer {i} attention {a}')
    feed_forward_with_sru(trax, ours, (6, 0, 1, per_block * i + 2 * n_attention, 0),
                          f'decoder layer {i}', config)
  layer_norm(trax, ours, (7,), 'decoder final LayerNorm')
  logits(trax, ours, (8,), config)


Converter = Callable[[FlatWeights, OurWeights, dict], None]
CONVERTERS: Dict[str, Converter] = {'TransformerLM': decoder_only_lm,
                                    'ConfigurableTransformerLM': decoder_only_lm,
                                    'Transformer': encoder_decoder,
                                    'ConfigurableTransformer': encoder_decoder,
                                    'ConfigurableTerraformer': terraformer}


def convert(family: str, flat_weights: List[np.ndarray], template, config: dict,
            model_name: str):
  """Our weights tree from Trax's flat weights of a `family` model.

  Args:
    family: the Trax model class name, e.g. 'TransformerLM'.
    flat_weights: Trax's flat weight arrays (`trax_files.read_checkpoint`).
    template: our model's weights (or their ShapeDtypeStructs) to fill.
    config: what the converter needs to know of the model (n_layers, and the
      variant of each part; see the converter).
    model_name: for error messages.
  """
  needed = _count_taken(family, config)
  if needed != len(flat_weights):
    layers = ', '.join(f'{k}={v}' for k, v in config.items() if k.startswith('n_'))
    raise TraxWeightError(
        f'the Trax {family} checkpoint holds {len(flat_weights)} weight arrays, but {model_name} '
        f'with {layers} takes {needed}: check the layer counts and the arguments that pick '
        'each part (attention_type, ff_sparsity, loss_sparsity, ...)')
  trax = FlatWeights(flat_weights, family)
  ours = OurWeights(template, model_name)
  CONVERTERS[family](trax, ours, config)
  trax.check_used_up()
  return ours.tree()


class _Counter(FlatWeights):
  """Counts the arrays a converter takes (each a tiny stand-in)."""

  def __init__(self, family):
    super().__init__([], family)

  def take(self, what: str) -> np.ndarray:
    self.index += 1
    return np.zeros((1, 1, 1), np.float32)


class _Ignore(OurWeights):
  def __init__(self):  # pylint: disable=super-init-not-called
    pass

  def put(self, path, value, trax, what):
    pass


def _count_taken(family: str, config: dict) -> int:
  """How many Trax weight arrays a `family` model of this config holds."""
  counter = _Counter(family)
  CONVERTERS[family](counter, _Ignore(), config)
  return counter.index
