"""Fixed-base positional encoding (Trax's FixedBasePositionalEncoding, Terraformer's default).

A position p is written in several bases b (11, 13, 14, 15 by default), each
with `n_digits` digits; digit i of p in base b, as a number 0..b-1, scales a
trained vector `scales[b, i]` of width d / n_digits. A base's vector is the
digits' vectors side by side ([d]); the encoding is the sum over bases, plus
a trained `start` vector at the sequence's first position. Because the
vectors are linear in each digit, the encoding extends to positions never
seen in training, which is why the paper's length-generalization runs use it.

Training randomizes where positions start: with probability
1 - 1/start_from_zero_one_in an example's first position is drawn uniformly
from [0, max_position - length) (the `start` vector still marks its first
token), and each base's vectors are dropped for an example with probability
1/base_dropout_one_in. Eval and predict start at 0.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

from sparse_trax import arguments
from sparse_trax.layers.base import Layer
from sparse_trax.layers.state import check_bound


class FixedBasePositionalEncoding(Layer):
  """Adds fixed-base position vectors: [batch, length, d] -> [batch, length, d].

  Weights: `scales` [n_bases, n_digits, d // n_digits], `start` [d]. In
  'predict' mode the model's decode position says where the fed positions
  start (a prompt fed at once and tokens fed one at a time get the same
  vectors), and `start` is added only at position 0. No state.

  Args:
    bases: the bases positions are written in.
    n_digits: digits per base; d_model must be a multiple of it. Positions
      up to min(bases) ** n_digits are distinct.
    start_from_zero_one_in: in training, one example in this many starts at
      position 0; the others at a random position.
    base_dropout_one_in: in training, each base's vectors are dropped for
      one example in this many.
    mode: 'train', 'eval' or 'predict'.
  """

  takes_position = True

  def __init__(self, bases: Sequence[int] = (11, 13, 14, 15), n_digits: int = 8,
               start_from_zero_one_in: int = 2, base_dropout_one_in: int = 100,
               mode: str = 'train'):
    arguments.check_layer_arguments(self, FixedBasePositionalEncoding.__init__, locals())
    super().__init__(1, 1, mode=mode)
    if not bases or min(bases) < 2:
      raise ValueError(f'FixedBasePositionalEncoding: bases must be integers >= 2, got {bases}')
    if n_digits < 1 or start_from_zero_one_in < 1 or base_dropout_one_in < 1:
      raise ValueError('FixedBasePositionalEncoding: n_digits, start_from_zero_one_in and '
                       'base_dropout_one_in must be >= 1')
    self.bases = tuple(int(b) for b in bases)
    self.n_digits = n_digits
    self.start_from_zero_one_in = start_from_zero_one_in
    self.base_dropout_one_in = base_dropout_one_in
    # Positions are int32 on device: stay below 2**31 whatever the bases.
    self.max_position = min(min(self.bases) ** n_digits, 2 ** 31 - 1)

  def decode_capacity(self, input_length: int = 0):
    return self.max_position

  def init_weights_and_state(self, input_signature, rng):
    self.check_rank(input_signature, 3)
    d = input_signature.shape[-1]
    if d % self.n_digits:
      raise ValueError(f'FixedBasePositionalEncoding: d ({d}) must be a multiple of '
                       f'n_digits ({self.n_digits})')
    scales_rng, start_rng = jax.random.split(rng)
    uniform = jax.nn.initializers.uniform(2e-4)        # [0, 2e-4) shifted to +-1e-4, as Trax
    scales = uniform(scales_rng, (len(self.bases), self.n_digits, d // self.n_digits)) - 1e-4
    start = uniform(start_rng, (d,)) - 1e-4
    return {'scales': scales, 'start': start}, {}

  def encoding(self, weights, positions, first, base_keep=None):
    """Position vectors [batch, length, d] of int32 `positions` [batch, length].

    Args:
      weights: the layer's weights.
      positions: [batch, length] absolute positions.
      first: [batch, length] bool, where the `start` vector is added.
      base_keep: optional [batch, n_bases] float, 0 drops a base for an example.
    """
    scales = weights['scales']
    total = 0.0
    for index, base in enumerate(self.bases):
      remaining, digits = positions, []
      for _ in range(self.n_digits):
        digits.append(jnp.mod(remaining, base))
        remaining = remaining // base
      digits = jnp.stack(digits, axis=-1).astype(scales.dtype)           # [b, l, n_digits]
      vectors = digits[..., None] * scales[index]                         # [b, l, n_digits, d/n]
      vectors = vectors.reshape(vectors.shape[:2] + (-1,))                # [b, l, d]
      if base_keep is not None:
        vectors = vectors * base_keep[:, index, None, None]
      total = total + vectors
    return total + jnp.where(first[..., None], weights['start'], 0.0)

  def forward(self, weights, state, x, rng, position):
    self.check_rank(x, 3)
    batch, length = x.shape[0], x.shape[1]
    if length >= self.max_position:
      raise ValueError(f'sequence length {length} reaches max_position {self.max_position}')
    offsets = jnp.arange(length, dtype=jnp.int32)[None, :]
    base_keep = None
    if self.mode == 'predict':
      check_bound(position.start, length, self.max_position, 'the positional encoding')
      positions = position.start + offsets
    elif self.mode == 'train' and rng is not None:
      start_rng, offset_rng, base_rng = jax.random.split(rng, 3)
      moved = jax.random.randint(start_rng, (batch,), 0, self.start_from_zero_one_in) > 0
      start = jax.random.randint(offset_rng, (batch,), 0, self.max_position - length)
      positions = jnp.where(moved, start, 0)[:, None] + offsets
      base_keep = (jax.random.randint(base_rng, (batch, len(self.bases)), 0,
                                      self.base_dropout_one_in) > 0).astype(weights['scales'].dtype)
    else:
      positions = offsets
    first = jnp.broadcast_to(offsets == 0, (batch, length))
    if self.mode == 'predict':
      first = first & (position.start == 0)
    positions = jnp.broadcast_to(positions, (batch, length))
    vectors = self.encoding(weights, positions, first, base_keep)
    return x + vectors.astype(x.dtype), state
