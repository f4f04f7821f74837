"""SRU, the simple recurrent unit (Lei et al.), as used beside the FF in Terraformer.

f_t = sigmoid(W_f x_t + b_f), r_t = sigmoid(W_r x_t + b_r), y_t = W x_t [+ b_y],
c_t = f_t * c_{t-1} + (1 - f_t) * y_t,  h_t = r_t * c_t + (1 - r_t) * x_t * s
(s = highway_scale; Trax's SRU has s = sqrt(3) and the bias b_y).
The matrix products run for all steps at once; the elementwise recurrence,
linear in c, runs as an associative scan over the length.
"""

import jax
import jax.numpy as jnp

from sparse_trax import arguments
from sparse_trax.layers.base import Layer
from sparse_trax.layers.dtypes import accumulation_dtype
from sparse_trax.layers.linear import linear
from sparse_trax.layers.state import Carry


def linear_recurrence(decay, update, initial):
  """c_t = decay_t * c_{t-1} + update_t along axis 1, by an associative scan.

  Args:
    decay, update: [batch, length, n].
    initial: [batch, n], the carry before step 0.

  Returns:
    c: [batch, length, n].
  """
  update = update.at[:, 0].add(decay[:, 0] * initial)

  def combine(earlier, later):
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2
  return jax.lax.associative_scan(combine, (decay, update), axis=1)[1]


class SRU(Layer):
  """Simple recurrent unit: [batch, length, n_units] -> [batch, length, n_units].

  Weights: `w` [3 * n_units, n_units] (y, forget, reset rows; out-major), `b` [2 * n_units]
  (forget and reset biases; [3 * n_units], y first, with `candidate_bias`).
  In 'predict' mode the state holds the carry c (a `Carry` record), so
  feeding steps one or many at a time continues the sequence.

  Args:
    n_units: the input and output width.
    forget_bias: the forget gate bias's initial value.
    highway_scale: s, the factor on the input in h_t's highway term (Trax: sqrt(3)).
    candidate_bias: a bias on y_t too (Trax's SRU has one).
    mode: 'train', 'eval' or 'predict'.
  """

  def __init__(self, n_units: int, forget_bias: float = 1.0, mode: str = 'train',
               highway_scale: float = 1.0, candidate_bias: bool = False):
    arguments.check_layer_arguments(self, SRU.__init__, locals())
    super().__init__(1, 1, mode=mode)
    self.n_units = n_units
    self.forget_bias = forget_bias
    self.highway_scale = highway_scale
    self.candidate_bias = candidate_bias

  def init_weights_and_state(self, input_signature, rng):
    if input_signature.ndim != 3 or input_signature.shape[-1] != self.n_units:
      raise ValueError(f'SRU({self.n_units}) needs [batch, length, {self.n_units}], '
                       f'got shape {tuple(input_signature.shape)}')
    w = jax.nn.initializers.glorot_uniform()(rng, (3 * self.n_units, self.n_units), jnp.float32)
    b = jnp.concatenate([jnp.zeros((self.n_units,), jnp.float32)] * self.candidate_bias +
                        [jnp.full((self.n_units,), self.forget_bias, jnp.float32),
                         jnp.zeros((self.n_units,), jnp.float32)])
    state = {}
    if self.mode == 'predict':
      state = Carry(jnp.zeros((input_signature.shape[0], self.n_units),
                              accumulation_dtype(input_signature.dtype)))
    return {'w': w, 'b': b}, state

  def gates(self, weights, x):
    """(y, forget, reset), each [batch, length, n_units], for all steps at once."""
    if x.ndim != 3 or x.shape[-1] != self.n_units:
      raise ValueError(f'SRU({self.n_units}) needs [batch, length, {self.n_units}], '
                       f'got shape {tuple(x.shape)}')
    y, forget, reset = jnp.split(linear(x, weights['w']), 3, axis=-1)
    biases = jnp.split(weights['b'].astype(y.dtype), 3 if self.candidate_bias else 2)
    if self.candidate_bias:
      y = y + biases[0]
    b_forget, b_reset = biases[-2:]
    return y, jax.nn.sigmoid(forget + b_forget), jax.nn.sigmoid(reset + b_reset)

  takes_position = True

  def forward(self, weights, state, x, rng, position):
    wide = accumulation_dtype(x.dtype)
    y, forget, reset = (t.astype(wide) for t in self.gates(weights, x))
    # The carry accumulates in float32 (float64 for float64 input); h is in the input's dtype.
    initial = state.value.astype(wide) if self.mode == 'predict' else jnp.zeros(
        (x.shape[0], self.n_units), wide)
    c = linear_recurrence(forget, (1.0 - forget) * y, initial)
    highway = x.astype(wide)
    if self.highway_scale != 1.0:
      highway = highway * self.highway_scale
    h = (reset * c + (1.0 - reset) * highway).astype(x.dtype)
    if self.mode == 'predict':
      # The carry after the last valid position (a padded prefill has more).
      state = Carry(jax.lax.dynamic_index_in_dim(c, position.valid - 1, axis=1, keepdims=False))
    return h, state
