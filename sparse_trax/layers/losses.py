"""Losses and metrics as layers taking (logits, targets, weights) -> scalar.

logits: [batch, length, vocab] float; targets: [batch, length] int;
weights: [batch, length] float, 0 on padding. Each result is a weighted mean
over the positions (or sequences) with nonzero weight.
"""

import jax
import jax.numpy as jnp

from sparse_trax.layers.base import Layer
from sparse_trax.layers.dtypes import accumulation_dtype


def _check(logits, targets, weights):
  if logits.shape[:-1] != targets.shape or targets.shape != weights.shape:
    raise ValueError(f'need logits [..., vocab] with targets and weights of shape '
                     f'logits.shape[:-1] = {tuple(logits.shape[:-1])}; got targets '
                     f'{tuple(targets.shape)}, weights {tuple(weights.shape)}')
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise TypeError(f'targets must be integer ids, got {jnp.dtype(targets.dtype).name}')


def weighted_cross_entropy(logits, targets, weights):
  """Mean of -log p(target) over positions, weighted; 0 where all weights are 0."""
  _check(logits, targets, weights)
  log_probs = jax.nn.log_softmax(logits.astype(accumulation_dtype(logits.dtype)), axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1e-9)


def weighted_accuracy(logits, targets, weights):
  """Weighted fraction of positions whose argmax equals the target."""
  _check(logits, targets, weights)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1e-9)


def sequence_accuracy(logits, targets, weights):
  """Fraction of sequences (first axis) whose weighted positions are all right.

  Sequences with no weighted position are left out of the mean.
  """
  _check(logits, targets, weights)
  wrong = (jnp.argmax(logits, axis=-1) != targets) & (weights > 0)
  axes = tuple(range(1, targets.ndim))
  all_right = ~jnp.any(wrong, axis=axes)
  counted = jnp.any(weights > 0, axis=axes)
  return (jnp.sum(all_right & counted) / jnp.maximum(jnp.sum(counted), 1)).astype(jnp.float32)


class _Metric(Layer):
  """(logits, targets, weights) -> scalar."""

  metric = staticmethod(weighted_cross_entropy)

  def __init__(self):
    super().__init__(3, 1)

  def forward(self, weights, state, inputs, rng):
    return self.metric(*inputs), state


class CrossEntropyLoss(_Metric):
  """Weighted mean cross-entropy of logits against integer targets.

  (logits [batch, length, vocab], targets [batch, length] int, weights
  [batch, length]) -> scalar.
  """
  metric = staticmethod(weighted_cross_entropy)


class Accuracy(_Metric):
  """Weighted token accuracy of argmax(logits) against targets.

  (logits [batch, length, vocab], targets [batch, length] int, weights
  [batch, length]) -> scalar.
  """
  metric = staticmethod(weighted_accuracy)


class SequenceAccuracy(_Metric):
  """Fraction of sequences with every weighted token right.

  (logits [batch, length, vocab], targets [batch, length] int, weights
  [batch, length]) -> scalar.
  """
  metric = staticmethod(sequence_accuracy)
