"""Losses and metrics with padding weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl


logits = jnp.log(jnp.array([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]],
                            [[0.2, 0.5, 0.3], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]]]))
targets = jnp.array([[0, 1, 0], [1, 2, 2]], jnp.int32)
weights = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def apply(layer):
  return float(layer.apply((), (), (logits, targets, weights))[0])


def test_cross_entropy_ignores_padding():
  want = -(np.log(0.7) + np.log(0.8) + np.log(0.5) + np.log(0.2) + np.log(0.8)) / 5
  np.testing.assert_allclose(apply(tl.CrossEntropyLoss()), want, rtol=1e-5)


def test_accuracy():
  # row 0: right, right, (padding); row 1: right, wrong, right
  np.testing.assert_allclose(apply(tl.Accuracy()), 4 / 5, rtol=1e-6)


def test_sequence_accuracy():
  np.testing.assert_allclose(apply(tl.SequenceAccuracy()), 1 / 2, rtol=1e-6)
  all_padding = jnp.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
  value = tl.SequenceAccuracy().apply((), (), (logits, targets, all_padding))[0]
  np.testing.assert_allclose(value, 1.0)


def test_loss_gradient_zero_on_padding():
  grad = jax.grad(lambda l: tl.weighted_cross_entropy(l, targets, weights))(logits)
  np.testing.assert_array_equal(grad[0, 2], 0.0)


def test_loss_shape_errors():
  with pytest.raises(tl.LayerError, match='targets'):
    tl.CrossEntropyLoss().apply((), (), (logits, targets[:, :2], weights))
