"""Sparse feed-forward layers: one active unit per block (SparseFF) and one expert (MoE).

SparseFF (Scaling Transformer): a low-rank controller picks, for every token,
one active unit in each block of N hidden units. With d_ff units there are
B = d_ff / N blocks, so a token uses B units instead of d_ff; in 'predict'
mode only those B columns of W1 and rows of W2 are read.

Activations are [batch, length, d_model] (any leading axes).
"""

from typing import Optional

import jax
import jax.numpy as jnp

from sparse_trax import arguments
from sparse_trax import kernels
from sparse_trax.kernels.policy import FUSED_GATHER_ABOVE, XLA_POSITIONS
from sparse_trax.layers.base import Layer
from sparse_trax.layers.linear import linear, positions as _positions
from sparse_trax.layers.quantize import QuantizedArray, row_nbytes, take_rows, weight_nbytes
from sparse_trax.layers.state import Decisions, replayed_choices

_glorot = jax.nn.initializers.glorot_uniform()


def gumbel_choice(log_probs, rng, temperature):
  """argmax(log_probs + temperature * gumbel) over the last axis (int32)."""
  noise_rng, _ = jax.random.split(rng)
  noise = jax.random.gumbel(noise_rng, log_probs.shape, log_probs.dtype)
  return jnp.argmax(log_probs + temperature * noise, axis=-1).astype(jnp.int32)


def straight_through_mask(log_probs, index, rng, quant_prob):
  """The hard one-hot mask of `index` with probability quant_prob, else the soft one.

  The hard mask is one_hot + p - stop_gradient(p): one-hot forward, the
  gradient of p backward. One draw per call (from the second half of `rng`).
  """
  _, quant_rng = jax.random.split(rng)
  probs = jnp.exp(log_probs)
  hard = jax.nn.one_hot(index, log_probs.shape[-1], dtype=probs.dtype)
  hard = hard + probs - jax.lax.stop_gradient(probs)
  use_hard = jax.random.uniform(quant_rng) < quant_prob
  return jnp.where(use_hard, hard, probs)


def _gumbel_one_hot_mask(log_probs, rng, temperature, quant_prob, index=None):
  """(training mask, index): a fresh Gumbel choice unless `index` is given."""
  if index is None:
    index = gumbel_choice(log_probs, rng, temperature)
  return straight_through_mask(log_probs, index, rng, quant_prob), index


def _fused_loop_pays(w, n_rows: int) -> bool:
  """Whether rows gathered from `w` should be reduced in one fused loop (int8, large)."""
  return (isinstance(w, QuantizedArray) and w.values.dtype == jnp.int8 and
          n_rows * w.shape[-1] > FUSED_GATHER_ABOVE)


def _gathers(x) -> bool:
  """Whether a predict-mode call of x's positions gathers the chosen rows (in XLA); a
  longer one (a prompt's prefill) computes the masked product of the whole matrices,
  reading them once."""
  return _positions(x) <= XLA_POSITIONS['gather']


def _gathered_ff(x, w1, b1, w2, b2, fused_loop: bool):
  """relu(x . w1 rows + b1) . w2 rows + b2 for rows gathered per position.

  x [..., d], w1 and w2 [..., k, d] (rows already taken and dequantized), b1
  [..., k], b2 [d] -> [..., d]. With `fused_loop` the products are written as
  multiply-and-sum, which XLA:CPU fuses with the gather and the int8
  dequantization into one loop: at d 6144 and k 768 (the 17B width) that ran
  2.3-3.4 ms against 10-12 ms for the einsums' batched dots. Below about 2M
  gathered weights the einsums are faster (0.24 against 0.5 ms at d 4096,
  k 256), and for bfloat16 rows the fused loop is far slower at every size.
  """
  if fused_loop:
    hidden = jax.nn.relu(jnp.sum(w1 * x[..., None, :], axis=-1) + b1)           # [..., k]
    return jnp.sum(hidden[..., :, None] * w2, axis=-2) + b2.astype(x.dtype)     # [..., d]
  hidden = jax.nn.relu(jnp.einsum('...d,...kd->...k', x, w1) + b1)
  return jnp.einsum('...k,...kd->...d', hidden, w2) + b2.astype(x.dtype)


def masked_relu(pre_activation, mask, mask_before_activation: bool):
  """relu(pre * mask) or relu(pre) * mask: pre [..., d_ff], mask [..., B, N] (d_ff = B * N).

  Equal for a 0/1 mask; under a straight-through mask they differ in the
  gradient reaching the mask: before the ReLU, a unit whose mask is 0 gives
  relu'(0) * pre = 0; after it, relu(pre).
  """
  mask = mask.reshape(pre_activation.shape).astype(pre_activation.dtype)
  if mask_before_activation:
    return jax.nn.relu(pre_activation * mask)
  return jax.nn.relu(pre_activation) * mask


class SparseFF(Layer):
  """Feed-forward with one active unit per block of N, chosen by a low-rank controller.

  [..., d_model] -> [..., d_model]. Hidden width d_ff is split into
  d_ff / N blocks of N units. The controller computes logits
  x C1^T C2^T + c (C1: [d_lowrank, d_model], C2: [d_ff, d_lowrank]);
  in each block:
    'train': Gumbel noise (scaled by temperature) picks a unit; the mask is
      the straight-through one-hot with probability quant_prob, else softmax;
    'eval': the argmax unit, applied as a mask on the full product;
    'predict': the argmax unit, and only its column of W1 and row of W2 are
      gathered and multiplied (B columns instead of d_ff). On CPU one kernel
      does it for any number of positions (a decoded token or a prompt's
      prefill), from float32, bfloat16 or int8 weights, each block's
      candidate rows read once for all positions (`kernels.sparse_ff`); in
      XLA a call of more than a few positions takes the eval path, which
      reads every weight once instead of B rows per position.
  y = (relu(x @ W1.T + b1) * mask) @ W2 + b2.

  Weights: w1 [d_ff, d_model] and w2 [d_ff, d_model] (one contiguous row per
  hidden unit, so decoding reads whole rows), b1 [d_ff], b2 [d_model],
  controller_in [d_lowrank, d_model], controller_out [d_ff, d_lowrank] (out-major),
  controller_bias [d_ff].

  Args:
    d_ff: hidden width (a multiple of n_elements_in_block).
    n_elements_in_block: N, the units per block.
    d_lowrank: controller rank (default d_ff / N).
    temperature: scale of the Gumbel noise in training.
    quant_prob: probability of training with the hard (one-hot) mask.
    dropout: dropout rate on the hidden units in 'train'.
    mode: 'train', 'eval' or 'predict'.
    decode_kernel: in 'predict' mode on CPU, let the kernel layer run the
      step as one fused C++ kernel where its policy allows (`kernels.POLICY`);
      False keeps the pure-JAX path (the same result; the kernel's sums may
      differ in rounding).
    mask_before_activation: in 'train', apply the mask before the ReLU,
      relu(mask * h), as Trax does: a unit the hard mask leaves out then
      sends no gradient to the controller. False (default): relu(h) * mask,
      every unit's activation reaches the controller's gradient. The two
      agree in 'eval' and 'predict' (a 0/1 mask).
  """

  def __init__(self, d_ff: int, n_elements_in_block: int = 64, d_lowrank: Optional[int] = None,
               temperature: float = 0.1, quant_prob: float = 0.3, dropout: float = 0.0,
               mode: str = 'train', decode_kernel: bool = True,
               mask_before_activation: bool = False):
    arguments.check_layer_arguments(self, SparseFF.__init__, locals())
    if d_ff % n_elements_in_block:
      raise ValueError(f'd_ff {d_ff} is not a multiple of n_elements_in_block '
                       f'{n_elements_in_block}')
    super().__init__(1, 1, mode=mode)
    self.d_ff = d_ff
    self.n_elements_in_block = n_elements_in_block
    self.n_blocks = d_ff // n_elements_in_block
    self.d_lowrank = d_lowrank or self.n_blocks
    self.temperature = temperature
    self.quant_prob = quant_prob
    self.dropout = dropout
    self.decode_kernel = decode_kernel
    self.mask_before_activation = mask_before_activation

  def init_weights_and_state(self, input_signature, rng):
    d_model = input_signature.shape[-1]
    keys = jax.random.split(rng, 4)
    return {'w1': _glorot(keys[0], (self.d_ff, d_model), jnp.float32),
            'b1': jnp.zeros((self.d_ff,), jnp.float32),
            'w2': _glorot(keys[1], (self.d_ff, d_model), jnp.float32),
            'b2': jnp.zeros((d_model,), jnp.float32),
            'controller_in': _glorot(keys[2], (self.d_lowrank, d_model), jnp.float32),
            'controller_out': _glorot(keys[3], (self.d_ff, self.d_lowrank), jnp.float32),
            'controller_bias': jnp.zeros((self.d_ff,), jnp.float32)}, self._initial_state(
                input_signature)

  def _initial_state(self, input_signature):
    if self.mode != 'train':
      return {}
    return Decisions.empty(tuple(input_signature.shape[:-1]) + (self.n_blocks,))

  def decode_weight_bytes(self, weights) -> int:
    """The controller, whole, and one row of W1 and W2 (and b1) per block."""
    controller = sum(weight_nbytes(weights[k]) for k in
                     ('controller_in', 'controller_out', 'controller_bias'))
    row = row_nbytes(weights['w1']) + row_nbytes(weights['w2']) + weights['b1'].dtype.itemsize
    return controller + self.n_blocks * row + weight_nbytes(weights['b2'])

  def controller_logits(self, weights, x):
    """[..., d_model] -> logits [..., n_blocks, N] of each unit in its block."""
    logits = linear(linear(x, weights['controller_in']), weights['controller_out'])
    logits = logits + weights['controller_bias'].astype(logits.dtype)
    return logits.reshape(x.shape[:-1] + (self.n_blocks, self.n_elements_in_block))

  def controller_log_probs(self, weights, x):
    """[..., d_model] -> log-probabilities [..., n_blocks, N] of each unit in its block."""
    return jax.nn.log_softmax(self.controller_logits(weights, x), axis=-1)

  def forward(self, weights, state, x, rng):
    y, units = self.forward_with_units(weights, x, rng, state=state)
    if self.mode == 'train':
      state = Decisions.made(units)
    return y, state

  def forward_with_units(self, weights, x, rng, units=None, state=None, pure_jax=False):
    """Like `apply`, also returning the chosen units [..., n_blocks] (int32).

    Pass `units` (from an earlier call) to reuse the same choice when the
    layer is recomputed; in 'train' mode a `Decisions` state with `replay`
    set does the same with the choices it holds (a reversible backward
    pass). `pure_jax` skips the fused decoding kernel (its reference).
    """
    if x.shape[-1] != weights['w1'].shape[1]:
      raise ValueError(f'last input dimension must be {weights["w1"].shape[1]}, '
                       f'got input shape {tuple(x.shape)}')
    if self.mode == 'predict' and units is None and not pure_jax and self.decode_kernel:
      return kernels.sparse_ff(
          x, kernels.SparseFFWeights(**weights), self.n_elements_in_block, mode=self.mode,
          reference=lambda flat: self.forward_with_units(weights, flat, None, pure_jax=True))
    if self.mode != 'train' and units is None:   # an argmax needs no normalization
      units = jnp.argmax(self.controller_logits(weights, x), axis=-1).astype(jnp.int32)
    if self.mode == 'predict' and _gathers(x):
      return self._gathered(weights, x, units), units
    if self.mode == 'train':
      log_probs = self.controller_log_probs(weights, x)
      if rng is None:
        raise ValueError("SparseFF in 'train' mode needs an rng (Gumbel noise)")
      mask_rng, dropout_rng = jax.random.split(rng)
      if units is None:
        units = replayed_choices(state, gumbel_choice(log_probs, mask_rng, self.temperature))
      mask, chosen = straight_through_mask(log_probs, units, mask_rng, self.quant_prob), units
    else:
      dropout_rng = None
      chosen = units
      mask = jax.nn.one_hot(chosen, self.n_elements_in_block, dtype=x.dtype)
    hidden = masked_relu(linear(x, weights['w1']) + weights['b1'].astype(x.dtype), mask,
                         self.mask_before_activation)
    if self.mode == 'train' and self.dropout > 0.0:
      keep = jax.random.bernoulli(dropout_rng, 1.0 - self.dropout, hidden.shape)
      hidden = jnp.where(keep, hidden / (1.0 - self.dropout), 0.0)
    return (kernels.vecmat(hidden, weights['w2'], mode=self.mode) +     # W2 widened in tiles
            weights['b2'].astype(hidden.dtype)), chosen

  def _gathered(self, weights, x, units):
    """Reads only the chosen unit's row of W1 and of W2 in each block."""
    flat_units = self.n_elements_in_block * jnp.arange(self.n_blocks) + units   # [..., B]
    w1 = take_rows(weights['w1'], flat_units, x.dtype)                        # [..., B, d]
    b1 = jnp.take(weights['b1'], flat_units).astype(x.dtype)                   # [..., B]
    w2 = take_rows(weights['w2'], flat_units, x.dtype)                        # [..., B, d]
    return _gathered_ff(x, w1, b1, w2, weights['b2'],
                        _fused_loop_pays(weights['w1'], self.n_blocks))


class BlockSparseFF(Layer):
  """Mixture-of-experts FF: one contiguous expert of d_ff / n_experts units per token.

  [..., d_model] -> [..., d_model]. A router (x R^T + r) picks the expert:
  Gumbel + straight-through in 'train' (as SparseFF, with n_experts choices),
  argmax in 'eval' (a mask on the full product) and 'predict' (only the
  expert's slice of W1 and W2 is read).

  Weights: w1 [d_ff, d_model] and w2 [d_ff, d_model] (an expert is a block of
  contiguous rows), b1 [d_ff], b2 [d_model], router [n_experts, d_model] (out-major),
  router_bias [n_experts].
  """

  def __init__(self, d_ff: int, n_experts: int = 16, temperature: float = 0.1,
               quant_prob: float = 0.3, dropout: float = 0.0, mode: str = 'train'):
    arguments.check_layer_arguments(self, BlockSparseFF.__init__, locals())
    if d_ff % n_experts:
      raise ValueError(f'd_ff {d_ff} is not a multiple of n_experts {n_experts}')
    super().__init__(1, 1, mode=mode)
    self.d_ff = d_ff
    self.n_experts = n_experts
    self.d_expert = d_ff // n_experts
    self.temperature = temperature
    self.quant_prob = quant_prob
    self.dropout = dropout

  def init_weights_and_state(self, input_signature, rng):
    d_model = input_signature.shape[-1]
    keys = jax.random.split(rng, 3)
    return {'w1': _glorot(keys[0], (self.d_ff, d_model), jnp.float32),
            'b1': jnp.zeros((self.d_ff,), jnp.float32),
            'w2': _glorot(keys[1], (self.d_ff, d_model), jnp.float32),
            'b2': jnp.zeros((d_model,), jnp.float32),
            'router': _glorot(keys[2], (self.n_experts, d_model), jnp.float32),
            'router_bias': jnp.zeros((self.n_experts,), jnp.float32)}, (
                Decisions.empty(tuple(input_signature.shape[:-1])) if self.mode == 'train'
                else {})

  def forward(self, weights, state, x, rng):
    if x.shape[-1] != weights['w1'].shape[1]:
      raise ValueError(f'last input dimension must be {weights["w1"].shape[1]}, '
                       f'got input shape {tuple(x.shape)}')
    log_probs = jax.nn.log_softmax(
        (linear(x, weights['router']) + weights['router_bias']).astype(jnp.float32))
    if self.mode == 'predict' and _gathers(x):
      return self._gathered(weights, x, jnp.argmax(log_probs, axis=-1)), state
    if self.mode == 'train':
      if rng is None:
        raise ValueError("BlockSparseFF in 'train' mode needs an rng (Gumbel noise)")
      mask_rng, dropout_rng = jax.random.split(rng)
      expert = replayed_choices(state, gumbel_choice(log_probs, mask_rng, self.temperature))
      mask = straight_through_mask(log_probs, expert, mask_rng, self.quant_prob)
      state = Decisions.made(expert)
    else:
      mask = jax.nn.one_hot(jnp.argmax(log_probs, axis=-1), self.n_experts, dtype=x.dtype)
    hidden = jax.nn.relu(linear(x, weights['w1']) + weights['b1'].astype(x.dtype))
    hidden = hidden.reshape(x.shape[:-1] + (self.n_experts, self.d_expert)) * \
        mask[..., None].astype(hidden.dtype)
    hidden = hidden.reshape(x.shape[:-1] + (self.d_ff,))
    if self.mode == 'train' and self.dropout > 0.0:
      keep = jax.random.bernoulli(dropout_rng, 1.0 - self.dropout, hidden.shape)
      hidden = jnp.where(keep, hidden / (1.0 - self.dropout), 0.0)
    return (kernels.vecmat(hidden, weights['w2'], mode=self.mode) +     # W2 widened in tiles
            weights['b2'].astype(hidden.dtype)), state

  def decode_weight_bytes(self, weights) -> int:
    """The router, and one expert's rows of W1 and W2 (and b1)."""
    expert = (weight_nbytes(weights['w1']) + weight_nbytes(weights['w2']) +
              weight_nbytes(weights['b1'])) // self.n_experts
    return weight_nbytes(weights['router']) + weight_nbytes(weights['router_bias']) + \
        expert + weight_nbytes(weights['b2'])

  def _gathered(self, weights, x, expert):
    """Reads only the chosen expert's d_ff / n_experts columns and rows."""
    rows = expert[..., None] * self.d_expert + jnp.arange(self.d_expert)     # [..., M]
    w1 = take_rows(weights['w1'], rows, x.dtype)                             # [..., M, d]
    b1 = jnp.take(weights['b1'], rows).astype(x.dtype)
    w2 = take_rows(weights['w2'], rows, x.dtype)                             # [..., M, d]
    return _gathered_ff(x, w1, b1, w2, weights['b2'],
                        _fused_loop_pays(weights['w1'], self.d_expert))
