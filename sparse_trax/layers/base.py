"""The layer contract: immutable layers, pure `init` / `apply`, readable errors.

A layer is an immutable description (its constructor arguments). It owns no
arrays: `init` builds the weights and state pytrees from an input signature,
and `apply` is a pure function of (weights, state, inputs, rng), so `jax.jit`,
`jax.grad`, `jax.vmap`, optax and checkpointing take it as is.

Stack conventions (as in Trax): a layer takes `n_in` stack items and gives
`n_out`. At the public API a layer with `n_in == 1` takes a bare array and a
layer with `n_out == 1` returns a bare array; otherwise tuples.

Weights mirror the layer tree: a layer with sublayers holds a tuple with one
entry per sublayer (`()` where a sublayer has none); a leaf holds a dict of
named arrays. A layer instance used in several places (weight sharing) keeps
its weights only at its first place in depth-first order; the later places hold
`()` and read the first one's weights, so a gradient sums every use.
"""

import os
import sys
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from sparse_trax.layers import streamed_init
from sparse_trax.layers.state import DecodeState, Position

MODES = ('train', 'eval', 'predict')

_LIBRARY_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INTERNAL_DIRS = (os.path.join(_LIBRARY_DIR, 'layers'),)


class LayerError(Exception):
  """An error inside a layer's `init` or `apply`, told from the user's side.

  Attributes:
    layer_name: name of the failing layer.
    path: the layer's path in the model, e.g. `Serial/2/Dense`.
    created_at: `file:line` where the failing layer was constructed.
    phase: 'init', 'apply' or 'construct'.
    input_shapes: the shapes and dtypes the layer received, as text.
    message: the original error message.
  """

  def __init__(self, layer_name, created_at, phase, input_shapes, message):
    super().__init__(message)
    self.layer_name = layer_name
    self.created_at = created_at
    self.phase = phase
    self.input_shapes = input_shapes
    self.message = message
    self._path = [layer_name]

  @property
  def path(self) -> str:
    return '/'.join(self._path)

  def prepend_path(self, *parts: str) -> None:
    """Adds enclosing path components (outermost first) to the path."""
    self._path[:0] = list(parts)

  def __str__(self):
    inputs = ('' if self.phase == 'construct'
              else f'  Inputs it got: {self.input_shapes}\n')
    return (f'{self.layer_name} failed in {self.phase} at path {self.path} '
            f'(layer created at {self.created_at}).\n'
            f'{inputs}  Error: {self.message}')


def describe_shapes(tree) -> str:
  """Formats the arrays in a pytree as `float32[2, 8]`, for error messages."""
  def one(x):
    if hasattr(x, 'shape') and hasattr(x, 'dtype'):
      return f'{jnp.dtype(x.dtype).name}{list(x.shape)}'
    return repr(x)
  if isinstance(tree, (tuple, list)):
    return '(' + ', '.join(describe_shapes(t) for t in tree) + ')'
  if isinstance(tree, dict):
    return '{' + ', '.join(f'{k}: {describe_shapes(v)}' for k, v in tree.items()) + '}'
  return one(tree)


def as_tuple(x) -> tuple:
  """Stack items as a tuple: a bare array becomes a 1-tuple."""
  return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def to_signature(x):
  """Turns an array, a ShapeDtypeStruct, or a tuple of them into signatures."""
  if isinstance(x, (tuple, list)):
    return tuple(to_signature(t) for t in x)
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  if hasattr(x, 'shape') and hasattr(x, 'dtype'):
    return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)
  raise TypeError(f'expected an array or jax.ShapeDtypeStruct, got {x!r}')


def _creation_site() -> str:
  """Returns `file:line` of the first caller frame outside sparse_trax/layers."""
  frame = sys._getframe(2)  # pylint: disable=protected-access
  while frame is not None:
    filename = os.path.abspath(frame.f_code.co_filename)
    if not filename.startswith(_INTERNAL_DIRS):
      return f'{filename}:{frame.f_lineno}'
    frame = frame.f_back
  return '<unknown>'


def _first_in_mode(layer: 'Layer', modes, path: str):
  """(path, layer) of the first layer under `layer` given a mode in `modes`, else None."""
  if layer.mode_given and layer.mode in modes:
    return path, layer
  for index, sub in enumerate(layer.sublayers):
    if sub.given_modes & set(modes):
      return _first_in_mode(sub, modes, f'{path}/{index}/{sub.name}')
  return None


def _check_no_predict_mixed(layer: 'Layer') -> None:
  """Raises if the sublayers mix 'predict' with another mode.

  Only modes given to a layer count (layers that take no `mode` argument
  behave the same in every mode).
  """
  if 'predict' not in layer.given_modes or len(layer.given_modes) == 1:
    return
  others = sorted(layer.given_modes - {'predict'})
  odd, odd_layer = _first_in_mode(layer, others, layer.name)
  predict, _ = _first_in_mode(layer, ('predict',), layer.name)
  raise ValueError(
      f"{layer.name} (made at {layer.created_at}) mixes 'predict' with {others[0]!r}: "
      f'{odd} (made at {odd_layer.created_at}) is in {odd_layer.mode!r} mode while {predict} '
      f"is in 'predict'; build every layer of a decoding model with mode='predict'")


def _derived_mode(sublayers) -> str:
  """A combinator's mode: 'predict' if any sublayer predicts, else 'eval' if any evals."""
  modes = {layer.mode for layer in sublayers}
  for mode in ('predict', 'eval'):
    if mode in modes:
      return mode
  return 'train'


class _FrozenAfterInit(type):
  """Metaclass that makes instances immutable once `__init__` returns."""

  def __call__(cls, *args, **kwargs):
    instance = super().__call__(*args, **kwargs)
    object.__setattr__(instance, '_frozen', True)
    return instance


class Layer(metaclass=_FrozenAfterInit):
  """Base class of every layer.

  Subclasses without sublayers override `init_weights_and_state` and
  `forward`. Subclasses with sublayers (combinators) pass `sublayers` to the
  constructor, override `init_with_signature` and `forward`, and call their
  sublayers through `init_sublayer` / `apply_sublayer`, which keep the paths
  in error messages right.

  Predict mode passes the model's one decode position down: a layer whose
  class sets `takes_position = True` gets `forward(weights, state, inputs,
  rng, position)`, with `position` a `state.Position` (where the call's
  positions start, and how many of them count) in 'predict' mode, None in
  the others. Every combinator sets it and hands the position on through
  `apply_sublayer`.
  """

  takes_position = False
  # True for a layer that runs its sublayers on whole sequences even in 'predict' mode (an
  # encoder run once, in 'eval' mode): their modes do not count as mixed with 'predict'.
  runs_sublayers_whole = False
  # Which input item's axis 1 is the decoded sequence (its length advances the position).
  decode_stream = -1
  # Combinators (as in Trax): given more stack items than n_in at init/apply, the
  # layer runs on the first n_in and the rest follow its outputs unchanged.
  passes_extra_items = False
  # True for a one-in, one-out layer whose output at a position depends only on its input
  # at that position and which keeps no decode state (LayerNorm, Dense, the vocabulary
  # projection, elementwise functions): `apply(..., output_position=)` runs such a tail
  # of a Serial on the one position asked for.
  position_wise = False

  def __init__(self, n_in: int = 1, n_out: int = 1, *, name: Optional[str] = None,
               mode: Optional[str] = None, sublayers: Sequence['Layer'] = ()):
    mode_given = mode is not None
    if mode is None:
      mode = _derived_mode(sublayers)
    if mode not in MODES:
      raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    self.n_in = n_in
    self.n_out = n_out
    self.name = name or type(self).__name__
    self.mode = mode
    self.sublayers = tuple(sublayers)
    self.created_at = _creation_site()
    # The modes given explicitly to this layer or any layer under it.
    self.mode_given = mode_given
    own = frozenset({mode} if mode_given else ())
    self.given_modes = own if self.runs_sublayers_whole else own.union(
        *(sub.given_modes for sub in self.sublayers))
    _check_no_predict_mixed(self)

  def __setattr__(self, key, value):
    if getattr(self, '_frozen', False):
      raise AttributeError(f'{self.name} is immutable: cannot set {key!r}; '
                           'build a new layer instead')
    object.__setattr__(self, key, value)

  def __repr__(self):
    if not self.sublayers:
      return f'{self.name}[in={self.n_in}, out={self.n_out}]'
    inner = ', '.join(repr(s) for s in self.sublayers)
    return f'{self.name}[{inner}]'

  # -------------------------------------------------------------- public API

  def init(self, input_signature, *, rng, weight_dtype: Optional[str] = None
           ) -> Tuple[Any, Any]:
    """Creates weights and state for inputs of the given signature.

    Args:
      input_signature: a `jax.ShapeDtypeStruct` (or array) when `n_in == 1`,
        else a tuple of `n_in` of them. Shapes flow by abstract evaluation;
        no input data is computed on.
      rng: a `jax.random.key`; sublayer i gets `fold_in(rng, i)`.
      weight_dtype: None (float32), or 'int8' / 'bfloat16': every weight
        matrix is converted as it is made (see `quantize_weights`): the
        initialization runs one traced equation at a time and keeps only the
        converted arrays, so peak memory is the converted weights plus about
        one float32 matrix (`layers/streamed_init.py`). The values equal
        `quantize_weights` of the float32 `init` (an int8 value may round
        the other way at .5).

    Returns:
      (weights, state), both pytrees of arrays. In 'predict' mode the state
      is a `DecodeState` at position 0 holding every layer's caches.
    """
    signature, _ = self._split_extra_items(to_signature(input_signature))
    if weight_dtype is not None:
      return streamed_init.init_in_storage(self, signature, rng, weight_dtype)
    weights, state, _ = self._init_checked(signature, rng)
    if self.mode == 'predict':
      state = DecodeState(jnp.zeros((), jnp.int32), state)
    return _unshare(self, weights, {}), state

  def output_signature(self, input_signature):
    """Returns the output signature for inputs of the given signature."""
    signature, extra = self._split_extra_items(to_signature(input_signature))
    def build():
      return self._init_checked(signature, jax.random.key(0))[2]
    return self._with_extra_items(jax.eval_shape(build), extra)

  def apply(self, weights, state, inputs, *, rng=None,
            valid_length=None, output_position=None) -> Tuple[Any, Any]:
    """Runs the layer: a pure function, safe under `jax.jit` and `jax.grad`.

    In 'predict' mode `state` is the `DecodeState` from `init` (or from the
    previous call): its position is passed down to the layers, and the new
    state's position is advanced by the length (axis 1) of the decoded
    stream (the last input item; the first for layers whose class says
    `decode_stream = 0`). A call may feed several positions at once (a
    prompt's prefill) or one (a decoding step).

    Args:
      weights: the weights pytree from `init` (or a trained one).
      state: the state pytree from `init` or from the previous `apply`.
      inputs: a bare array when `n_in == 1`, else a tuple of `n_in` arrays.
      rng: a `jax.random.key`, needed by layers that draw randomness in
        'train' mode (dropout, Gumbel noise).
      valid_length: 'predict' mode: how many of the fed positions count
        (an int32 scalar, may be traced; default all). The position advances
        by it; the positions after it are padding (a batch of prompts fed at
        once up to the shortest one's length, with one compiled shape).
      output_position: 'predict' mode, one-output layers: an int32 scalar
        (may be traced), the index among the fed positions whose outputs
        are wanted; the outputs then have length 1 on axis 1. A Serial runs
        its position-wise tail (e.g. the final LayerNorm and the vocabulary
        projection, see `position_wise`) on that position alone, so a
        prompt's prefill computes the vocabulary once, not at every
        position. The state is the same as without it.

    Returns:
      (outputs, new_state); outputs a bare array when `n_out == 1`. A
      combinator given more items than `n_in` passes the rest through after
      its outputs (as in Trax: `Serial(None)` on (x, y) gives (x, y)).
    """
    inputs, extra = self._split_extra_items(inputs)
    if output_position is not None and (self.mode != 'predict' or self.n_out != 1):
      raise LayerError(self.name, self.created_at, 'apply', describe_shapes(inputs),
                       "output_position is for one-output layers in 'predict' mode; this "
                       f'layer is in {self.mode!r} mode with {self.n_out} outputs')
    outputs, new_state = self._apply_whole(weights, state, inputs, rng, valid_length,
                                           output_position)
    return self._with_extra_items(outputs, extra), new_state

  def _apply_whole(self, weights, state, inputs, rng, valid_length, output_position=None):
    expanded = _share(self, weights, {})
    if self.mode != 'predict':
      return self._apply_checked(expanded, state, inputs, rng)
    if not isinstance(state, DecodeState):
      raise LayerError(self.name, self.created_at, 'apply', describe_shapes(inputs),
                       "in 'predict' mode the state must be the DecodeState that init "
                       f'returns (or the previous apply), got {type(state).__name__}')
    stream = as_tuple(inputs)[self.decode_stream]
    length = stream.shape[1] if getattr(stream, 'ndim', 0) >= 2 else 1
    valid = length if valid_length is None else valid_length
    outputs, layers_state = self._apply_checked(expanded, state.layers, inputs, rng,
                                                Position.at(state.position, valid),
                                                output_position)
    return outputs, DecodeState(state.position + valid, layers_state)

  def decode_capacity(self, input_length: int = 0) -> Optional[int]:
    """How many positions a 'predict'-mode run may feed (None: no bound).

    Args:
      input_length: the length of an encoder-decoder's source, for models
        whose decoder also holds the source in its caches.

    Default: the smallest capacity of the sublayers; layers with a cache of
    `max_len` positions give `max_len`.
    """
    bounds = [b for b in (sub.decode_capacity(input_length) for sub in self.sublayers)
              if b is not None]
    return min(bounds) if bounds else None

  # ------------------------------------------------------------ to override

  def init_weights_and_state(self, input_signature, rng) -> Tuple[Any, Any]:
    """Leaf layers: returns (weights, state). Default: none of either."""
    del input_signature, rng
    return {}, {}

  def init_with_signature(self, input_signature, rng) -> Tuple[Any, Any, Any]:
    """Returns (weights, state, output_signature).

    Leaf layers keep this default, which finds the output signature by
    abstract evaluation of `forward`. Combinators override it and chain
    their sublayers' signatures.
    """
    weights, state = self.init_weights_and_state(input_signature, rng)
    def run(w, s, x, key):
      position = None
      if self.mode == 'predict':
        stream = as_tuple(x)[self.decode_stream]
        position = Position.at(0, stream.shape[1] if stream.ndim >= 2 else 1)
      if self.takes_position:
        return self.forward(w, s, x, key, position)[0]
      return self.forward(w, s, x, key)[0]
    rng_signature = jax.eval_shape(lambda: jax.random.key(0))
    output_signature = jax.eval_shape(run, weights, state, input_signature,
                                      rng_signature)
    return weights, state, output_signature

  def forward(self, weights, state, inputs, rng) -> Tuple[Any, Any]:
    """Returns (outputs, new_state). Subclasses must override."""
    raise NotImplementedError(f'{type(self).__name__} must define forward')

  def forward_at(self, weights, state, inputs, rng, position, index) -> Tuple[Any, Any]:
    """'predict' mode, one output: (outputs at fed position `index` only, new_state).

    The outputs are [batch, 1, ...] (axis 1 is the decoded stream). Default:
    the whole forward pass, then a slice; `Serial` runs its position-wise
    tail on the one position.
    """
    if self.takes_position:
      outputs, new_state = self.forward(weights, state, inputs, rng, position)
    else:
      outputs, new_state = self.forward(weights, state, inputs, rng)
    if getattr(outputs, 'ndim', 0) < 2:
      raise ValueError('output_position needs outputs with a position axis (axis 1), '
                       f'got {describe_shapes(outputs)}')
    return jax.lax.dynamic_slice_in_dim(outputs, index, 1, axis=1), new_state

  def decode_weight_bytes(self, weights) -> int:
    """Bytes of weights one decoded token reads (batch 1, 'predict' mode).

    Default: every weight array, whole; a layer with sublayers sums them.
    Layers that read part of their weights per token (an embedding row, the
    chosen rows of a SparseFF) override this.
    """
    if self.sublayers:
      return sum(sub.decode_weight_bytes(w) for sub, w in zip(self.sublayers, weights))
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(weights)))

  # -------------------------------------------------- helpers for subclasses

  def init_sublayer(self, index: int, input_signature, rng):
    """Initializes sublayer `index` with rng `fold_in(rng, index)`."""
    sublayer = self.sublayers[index]
    sub_rng = jax.random.fold_in(rng, index)
    try:
      return sublayer._init_checked(input_signature, sub_rng)  # pylint: disable=protected-access
    except LayerError as e:
      e.prepend_path(str(index))
      raise

  def apply_sublayer(self, index: int, weights, state, inputs, rng, position=None,
                     output_index=None):
    """Applies sublayer `index` with rng `fold_in(rng, index)` (if any) at `position`.

    With `output_index` ('predict' mode, a one-output sublayer) it runs the
    sublayer's `forward_at`: its outputs at that fed position only.
    """
    sublayer = self.sublayers[index]
    sub_rng = None if rng is None else jax.random.fold_in(rng, index)
    try:
      return sublayer._apply_checked(weights, state, inputs, sub_rng, position,  # pylint: disable=protected-access
                                     output_index)
    except LayerError as e:
      e.prepend_path(str(index))
      raise

  def error(self, message: str, inputs=None, phase: str = 'apply') -> LayerError:
    """Builds a LayerError for this layer (to `raise` from init or forward)."""
    return LayerError(self.name, self.created_at, phase,
                      describe_shapes(inputs), message)

  def check_rank(self, x, rank: int, what: str = 'input') -> None:
    """Raises a ValueError unless `x` has the given rank."""
    if len(x.shape) != rank:
      raise ValueError(f'{what} must have rank {rank}, got shape {tuple(x.shape)}')

  # ---------------------------------------------------------------- private

  def _split_extra_items(self, inputs):
    """(the n_in items this layer takes, the items after them) for a combinator
    given more stack items than it takes; (inputs, ()) otherwise."""
    if (not self.passes_extra_items or not isinstance(inputs, (tuple, list))
        or len(inputs) <= self.n_in):
      return inputs, ()
    items = tuple(inputs)
    taken = items[0] if self.n_in == 1 else items[:self.n_in]
    return taken, items[self.n_in:]

  def _with_extra_items(self, outputs, extra: tuple):
    if not extra:
      return outputs
    return (outputs,) + extra if self.n_out == 1 else tuple(outputs) + extra

  def _check_n_items(self, inputs):
    if self.n_in == 1:
      if isinstance(inputs, (tuple, list)):
        raise ValueError(f'expected a single array, got a tuple of {len(inputs)}')
      return
    if not isinstance(inputs, (tuple, list)) or len(inputs) != self.n_in:
      got = len(inputs) if isinstance(inputs, (tuple, list)) else 1
      raise ValueError(f'expected {self.n_in} inputs, got {got}')

  def _init_checked(self, input_signature, rng):
    try:
      self._check_n_items(input_signature)
      return self.init_with_signature(input_signature, rng)
    except LayerError as e:
      e.prepend_path(self.name)
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise LayerError(self.name, self.created_at, 'init',
                       describe_shapes(input_signature),
                       f'{type(e).__name__}: {e}') from e

  def _apply_checked(self, weights, state, inputs, rng, position=None, output_index=None):
    try:
      self._check_n_items(inputs)
      if output_index is not None:
        return self.forward_at(weights, state, inputs, rng, position, output_index)
      if self.takes_position:
        return self.forward(weights, state, inputs, rng, position)
      return self.forward(weights, state, inputs, rng)
    except LayerError as e:
      e.prepend_path(self.name)
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise LayerError(self.name, self.created_at, 'apply',
                       describe_shapes(inputs),
                       f'{type(e).__name__}: {e}') from e


# ---------------------------------------------------------------- sharing
# A layer instance seen again (depth first) keeps `()` in its weights slot.
# `_unshare` turns init's full weights into that form; `_share` fills the
# slots back in with the first occurrence's (same) arrays before a forward
# pass, so autodiff sums the gradient over every use.

def _unshare(layer: Layer, weights, seen: dict):
  if id(layer) in seen:
    return ()
  if layer.sublayers:
    weights = tuple(_unshare(sub, w, seen)
                    for sub, w in zip(layer.sublayers, weights))
  seen[id(layer)] = True
  return weights


def _share(layer: Layer, weights, first: dict):
  if id(layer) in first:
    return first[id(layer)]
  if layer.sublayers:
    if not isinstance(weights, tuple) or len(weights) != len(layer.sublayers):
      raise LayerError(layer.name, layer.created_at, 'apply',
                       describe_shapes(weights),
                       f'weights must be a tuple of {len(layer.sublayers)} '
                       f'entries, one per sublayer')
    weights = tuple(_share(sub, w, first)
                    for sub, w in zip(layer.sublayers, weights))
  first[id(layer)] = weights
  return weights
