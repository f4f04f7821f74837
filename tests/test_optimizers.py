"""Schedules and optimizers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparse_trax.train import optimizers


def test_warmup_rsqrt_decay_shape():
  schedule = optimizers.WarmupRsqrtDecay(peak=1e-3, warmup_steps=100)
  np.testing.assert_allclose(schedule(50), 0.5e-3, rtol=1e-6)
  np.testing.assert_allclose(schedule(100), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(schedule(400), 0.5e-3, rtol=1e-6)   # sqrt(100 / 400)


def test_constant_schedule():
  assert float(optimizers.Constant(0.1)(12345)) == np.float32(0.1)


def test_gradient_clipping_bounds_the_update():
  params = {'w': jnp.zeros(3)}
  grads = {'w': jnp.array([30.0, 40.0, 0.0])}
  tx = optimizers.with_gradient_clipping(optimizers.SGD(1.0), 1.0)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(optax.tree.norm(updates), 1.0, rtol=1e-5)
  assert optimizers.with_gradient_clipping(optimizers.SGD(1.0), None) is not tx


def test_each_optimizer_reduces_a_quadratic():
  for make in (lambda: optimizers.Adam(0.1), lambda: optimizers.Adam(0.1, weight_decay=0.01),
               lambda: optimizers.Adafactor(0.1, multiply_by_parameter_scale=False),
               lambda: optimizers.SGD(0.1)):
    tx = make()
    params = {'w': jnp.full((4, 4), 3.0)}
    state = tx.init(params)
    loss = lambda p: jnp.sum(p['w'] ** 2)
    for _ in range(20):
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      params = optax.apply_updates(params, updates)
    assert float(loss(params)) < 0.5 * 144.0
