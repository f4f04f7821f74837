"""Optimizers and learning-rate schedules (optax), each a plain function.

An optimizer function takes the learning rate (a number or a schedule
`step -> rate`) and returns an `optax.GradientTransformation`.
"""

from typing import Callable, Optional, Union

import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
LearningRate = Union[float, Schedule]


def Adam(learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.98,  # pylint: disable=invalid-name
         eps: float = 1e-9, weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Adam; AdamW (decoupled weight decay) when weight_decay > 0."""
  if weight_decay:
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def Adafactor(learning_rate: LearningRate, decay_rate: float = 0.8,  # pylint: disable=invalid-name
              multiply_by_parameter_scale: bool = True,
              clipping_threshold: Optional[float] = 1.0) -> optax.GradientTransformation:
  """Adafactor (factored second moments), as in the paper's configs."""
  return optax.adafactor(learning_rate, decay_rate=decay_rate,
                         multiply_by_parameter_scale=multiply_by_parameter_scale,
                         clipping_threshold=clipping_threshold)


def SGD(learning_rate: LearningRate, momentum: Optional[float] = None):  # pylint: disable=invalid-name
  """Plain (or momentum) SGD."""
  return optax.sgd(learning_rate, momentum=momentum)


def with_gradient_clipping(optimizer: optax.GradientTransformation,
                           clip_gradient_norm: Optional[float]) -> optax.GradientTransformation:
  """Clips the global gradient norm before `optimizer` (no clipping if None)."""
  if clip_gradient_norm is None:
    return optimizer
  return optax.chain(optax.clip_by_global_norm(clip_gradient_norm), optimizer)


def Constant(value: float = 1e-3) -> Schedule:  # pylint: disable=invalid-name
  """A constant learning rate."""
  return optax.constant_schedule(value)


def WarmupRsqrtDecay(peak: float = 1e-3, warmup_steps: int = 1000) -> Schedule:  # pylint: disable=invalid-name
  """Linear warmup to `peak` over warmup_steps, then peak * sqrt(warmup_steps / step).

  The paper's configs use this shape (Trax's 'constant * linear_warmup * rsqrt_decay').
  """
  if warmup_steps < 1:
    raise ValueError('warmup_steps must be >= 1')

  def schedule(step):
    step = jnp.maximum(jnp.asarray(step, jnp.float32), 1.0)
    warmup = jnp.minimum(1.0, step / warmup_steps)
    decay = jnp.sqrt(warmup_steps / jnp.maximum(step, warmup_steps))
    return peak * warmup * decay
  return schedule
