"""Core layers: Dense, Embedding, LayerNorm, Dropout, activations, positions.

Shapes use `[batch, length, d]` as the usual case; position-wise layers
(Dense, LayerNorm, activations) accept any leading axes.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sparse_trax import arguments
from sparse_trax import kernels
from sparse_trax.layers.dtypes import accumulation_dtype
from sparse_trax.layers.base import Layer
from sparse_trax.layers.combinators import Fn
from sparse_trax.layers.linear import linear, positions
from sparse_trax.layers.quantize import row_nbytes, take_rows
from sparse_trax.layers.state import check_bound, poison_if

Initializer = Callable[..., jax.Array]


class Dense(Layer):
  """Affine map of the last axis: [..., d_in] -> [..., n_units].

  Weights: `w` [n_units, d_in] (out-major, see `layers/linear.py`; Glorot
  uniform), `b` [n_units] (zeros).
  """

  position_wise = True

  def __init__(self, n_units: int, use_bias: bool = True,
               kernel_initializer: Initializer = jax.nn.initializers.glorot_uniform(),
               bias_initializer: Initializer = jax.nn.initializers.zeros):
    arguments.check_layer_arguments(self, Dense.__init__, locals())
    super().__init__(1, 1)
    self.n_units = n_units
    self.use_bias = use_bias
    self.kernel_initializer = kernel_initializer
    self.bias_initializer = bias_initializer

  def init_weights_and_state(self, input_signature, rng):
    if len(input_signature.shape) < 1:
      raise ValueError('Dense needs inputs of rank >= 1')
    d_in = input_signature.shape[-1]
    w_rng, b_rng = jax.random.split(rng)
    weights = {'w': self.kernel_initializer(w_rng, (self.n_units, d_in), jnp.float32)}
    if self.use_bias:
      weights['b'] = self.bias_initializer(b_rng, (self.n_units,), jnp.float32)
    return weights, {}

  def forward(self, weights, state, x, rng):
    w = weights['w']
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
      raise ValueError(f'last input dimension must be {w.shape[1]} (the weights '
                       f'were made for it), got input shape {tuple(x.shape)}')
    y = linear(x, w)
    if self.use_bias:
      y = y + weights['b'].astype(y.dtype)
    return y, state


class Embedding(Layer):
  """Token ids [...] (integer) -> vectors [..., d_feature].

  Weights: `embedding` [vocab_size, d_feature], normal with stddev 1.
  """

  def __init__(self, vocab_size: int, d_feature: int):
    arguments.check_layer_arguments(self, Embedding.__init__, locals())
    super().__init__(1, 1)
    self.vocab_size = vocab_size
    self.d_feature = d_feature

  def init_weights_and_state(self, input_signature, rng):
    self._check_ids(input_signature)
    table = jax.random.normal(rng, (self.vocab_size, self.d_feature), jnp.float32)
    return {'embedding': table}, {}

  def _check_ids(self, x):
    if not jnp.issubdtype(x.dtype, jnp.integer):
      raise TypeError(f'Embedding needs integer token ids, got dtype {jnp.dtype(x.dtype).name}')

  def decode_weight_bytes(self, weights) -> int:
    """A decoded token reads one row of the table."""
    return row_nbytes(weights['embedding'])

  def forward(self, weights, state, x, rng):
    self._check_ids(x)
    return take_rows(weights['embedding'], x), state


class LayerNorm(Layer):
  """Normalizes the last axis to zero mean, unit variance; learned scale and bias.

  [..., d] -> [..., d]. Weights: `scale` [d] (ones), `bias` [d] (zeros).
  """

  position_wise = True

  def __init__(self, epsilon: float = 1e-6):
    arguments.check_layer_arguments(self, LayerNorm.__init__, locals())
    super().__init__(1, 1)
    self.epsilon = epsilon

  def init_weights_and_state(self, input_signature, rng):
    d = input_signature.shape[-1]
    return {'scale': jnp.ones((d,), jnp.float32), 'bias': jnp.zeros((d,), jnp.float32)}, {}

  def forward(self, weights, state, x, rng):
    if x.shape[-1] != weights['scale'].shape[0]:
      raise ValueError(f'last input dimension must be {weights["scale"].shape[0]}, '
                       f'got input shape {tuple(x.shape)}')
    if (weights['scale'].dtype == weights['bias'].dtype == jnp.float32 and
        kernels.POLICY.runs_kernel('layer_norm', storage=jnp.dtype(x.dtype).name,
                                   positions=positions(x), mode=self.mode)):
      # Decoding: one kernel call where XLA:CPU runs five operations.
      return self._fused(weights, x), state
    return self._normalize(weights, x), state

  def _fused(self, weights, x):
    """The kernel forward; gradients (a few positions in training) through `_normalize`."""
    @jax.custom_vjp
    def normalize(weights, x):
      return kernels.layer_norm(x, weights['scale'], weights['bias'], self.epsilon,
                                reference=lambda rows: self._normalize(weights, rows))

    def forward(weights, x):
      return normalize(weights, x), (weights, x)

    def backward(residuals, cotangent):
      return jax.vjp(self._normalize, *residuals)[1](cotangent)

    normalize.defvjp(forward, backward)
    return normalize(weights, x)

  def _normalize(self, weights, x):
    # Statistics in float32 (float64 for float64 input); the result in the input's dtype.
    wide = x.astype(accumulation_dtype(x.dtype))
    mean = jnp.mean(wide, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(wide - mean), axis=-1, keepdims=True)
    normed = ((wide - mean) * jax.lax.rsqrt(variance + self.epsilon)).astype(x.dtype)
    return normed * weights['scale'].astype(x.dtype) + weights['bias'].astype(x.dtype)


class Dropout(Layer):
  """Zeroes a `rate` fraction of entries and rescales the rest, in 'train' only.

  [...] -> [...] (same shape). Needs an rng in 'train' mode when rate > 0;
  identity in 'eval' and 'predict'.
  """

  position_wise = True

  def __init__(self, rate: float = 0.0, mode: str = 'train'):
    arguments.check_layer_arguments(self, Dropout.__init__, locals())
    if not 0.0 <= rate < 1.0:
      raise ValueError(f'dropout rate must be in [0, 1), got {rate}')
    super().__init__(1, 1, mode=mode)
    self.rate = rate

  def forward(self, weights, state, x, rng):
    if self.mode != 'train' or self.rate == 0.0:
      return x, state
    if rng is None:
      raise ValueError("Dropout in 'train' mode needs an rng: pass rng= to apply")
    keep = jax.random.bernoulli(rng, 1.0 - self.rate, x.shape)
    return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x)), state


def Relu() -> Layer:  # pylint: disable=invalid-name
  """Elementwise max(x, 0): [...] -> [...]."""
  return Fn('Relu', jax.nn.relu, position_wise=True)


def Gelu() -> Layer:  # pylint: disable=invalid-name
  """Elementwise GELU (tanh approximation): [...] -> [...]."""
  return Fn('Gelu', lambda x: jax.nn.gelu(x),  # pylint: disable=unnecessary-lambda
            position_wise=True)


def Sigmoid() -> Layer:  # pylint: disable=invalid-name
  """Elementwise logistic sigmoid: [...] -> [...]."""
  return Fn('Sigmoid', jax.nn.sigmoid, position_wise=True)


def Tanh() -> Layer:  # pylint: disable=invalid-name
  """Elementwise tanh: [...] -> [...] (same shape)."""
  return Fn('Tanh', jnp.tanh, position_wise=True)


def LogSoftmax(axis: int = -1) -> Layer:  # pylint: disable=invalid-name
  """Log-probabilities along `axis`: [..., vocab] -> [..., vocab] (same shape)."""
  return Fn('LogSoftmax', lambda x: jax.nn.log_softmax(x, axis=axis),
            position_wise=axis == -1)


def Mean(axis: int = -1, keepdims: bool = False) -> Layer:  # pylint: disable=invalid-name
  """Mean along `axis`: [..., d, ...] -> [..., ...] (or [..., 1, ...] with keepdims)."""
  return Fn('Mean', lambda x: jnp.mean(x, axis=axis, keepdims=keepdims))


def ArgMax(axis: int = -1) -> Layer:  # pylint: disable=invalid-name
  """Index of the largest entry along `axis` (int32): [..., d] -> [...]."""
  return Fn('ArgMax', lambda x: jnp.argmax(x, axis=axis).astype(jnp.int32))


def sinusoidal_table(max_len: int, d_feature: int) -> np.ndarray:
  """[max_len, d_feature] sinusoidal position table (sin on even, cos on odd)."""
  position = np.arange(max_len)[:, None]
  div = np.exp(np.arange(0, d_feature, 2) * -(np.log(10000.0) / d_feature))
  table = np.zeros((max_len, d_feature), np.float32)
  table[:, 0::2] = np.sin(position * div)
  table[:, 1::2] = np.cos(position * div)[:, :d_feature // 2]
  return table


class PositionalEncoding(Layer):
  """Adds position vectors: [batch, length, d] -> [batch, length, d].

  Sinusoidal vectors, fixed (no weights), or with `trainable=True` a table
  `{'table': [max_len, d]}` that starts sinusoidal and is trained (as Trax's
  PositionalEncoding, whose checkpoints hold it). In 'predict' mode the
  model's decode position (passed down by `apply`) says where the fed
  positions start, so a prompt fed at once and tokens fed one at a time get
  the vectors of their absolute positions. Past max_len it raises (position
  known on the host) or gives NaN (under `jit`). No state.

  Args:
    max_len: positions in the table.
    mode: 'train', 'eval' or 'predict'.
    trainable: keep the table as a weight.
  """

  takes_position = True

  def __init__(self, max_len: int = 2048, mode: str = 'train', trainable: bool = False):
    arguments.check_layer_arguments(self, PositionalEncoding.__init__, locals())
    super().__init__(1, 1, mode=mode)
    self.max_len = max_len
    self.trainable = trainable

  def decode_capacity(self, input_length: int = 0):
    return self.max_len

  def init_weights_and_state(self, input_signature, rng):
    if not self.trainable:
      return {}, {}
    self.check_rank(input_signature, 3)
    return {'table': jnp.asarray(sinusoidal_table(self.max_len, input_signature.shape[-1]))}, {}

  def forward(self, weights, state, x, rng, position):
    self.check_rank(x, 3)
    length, d = x.shape[1], x.shape[2]
    if length > self.max_len:
      raise ValueError(f'sequence length {length} exceeds max_len {self.max_len}')
    table = weights['table'] if self.trainable else jnp.asarray(sinusoidal_table(self.max_len, d))
    if self.mode != 'predict':
      return x + table[None, :length].astype(x.dtype), state
    start = position.start
    check_bound(start, length, self.max_len, 'the positional encoding')
    rows = jax.lax.dynamic_slice_in_dim(table, start, length, axis=0)
    return poison_if(start + length > self.max_len, x + rows[None].astype(x.dtype)), state


class ShiftRight(Layer):
  """Shifts [batch, length, ...] right along axis 1 by `n_positions`, padding 0.

  A no-op in 'predict' mode, where the decoder is fed the previous token.
  """

  def __init__(self, n_positions: int = 1, mode: str = 'train'):
    arguments.check_layer_arguments(self, ShiftRight.__init__, locals())
    super().__init__(1, 1, mode=mode)
    self.n_positions = n_positions

  def forward(self, weights, state, x, rng):
    if self.mode == 'predict':
      return x, state
    if x.ndim < 2:
      raise ValueError(f'ShiftRight needs [batch, length, ...], got shape {tuple(x.shape)}')
    pad = [(0, 0)] * x.ndim
    pad[1] = (self.n_positions, 0)
    return jnp.pad(x, pad)[:, :x.shape[1]], state


def PaddingMask(pad_id: int = 0) -> Layer:  # pylint: disable=invalid-name
  """Token ids [batch, length] -> bool mask [batch, length], True where not padding."""
  return Fn('PaddingMask', lambda ids: ids != pad_id)

