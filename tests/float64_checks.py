"""Run by test_float64.py in a process with JAX_ENABLE_X64=1: prints one JSON line.

Statistics (LayerNorm), softmax (attention, the loss) and carries (SRU) of
float64 inputs against float64 numpy, and each layer family's input gradient
against central finite differences, everything in float64.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np

import sparse_trax.layers as tl
from sparse_trax.layers import attention, losses

assert jax.config.jax_enable_x64, 'run with JAX_ENABLE_X64=1'
rng = np.random.default_rng(0)
results = {}


def as_float64(tree):
  return jax.tree_util.tree_map(
      lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


# LayerNorm: a large offset, where float32 statistics lose about 1e-4 relative.
x = rng.normal(size=(2, 5, 8)) * 3.0 + 1e4
norm = tl.LayerNorm()
weights, _ = norm.init(jax.ShapeDtypeStruct(x.shape, jnp.float64), rng=jax.random.key(0))
got = norm.apply(as_float64(weights), {}, jnp.asarray(x))[0]
mean = x.mean(-1, keepdims=True)
want = (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-6)
results['layer_norm'] = [str(got.dtype), float(np.max(np.abs(np.asarray(got) - want)))]

# Softmax attention.
q, k, v = (rng.normal(size=(1, 4, 2, 3)) for _ in range(3))
mask = np.tril(np.ones((4, 4), bool))[None, None]
got = attention.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask)
logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(3.0)
logits = np.where(mask, logits, -np.inf)
probs = np.exp(logits - logits.max(-1, keepdims=True))
probs /= probs.sum(-1, keepdims=True)
want = np.einsum('bhqk,bkhd->bqhd', probs, v)
results['softmax'] = [str(got.dtype), float(np.max(np.abs(np.asarray(got) - want)))]

# The loss's log-softmax.
logits = rng.normal(size=(2, 3, 7)) * 50.0
targets = rng.integers(0, 7, size=(2, 3))
got = losses.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.ones((2, 3)))
shifted = logits - logits.max(-1, keepdims=True)
log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
want = -np.take_along_axis(log_probs, targets[..., None], -1).mean()
results['log_softmax'] = [str(got.dtype), float(abs(float(got) - want))]

# SRU: the carry over 200 steps with forget gates near 1.
n = 4
sru = tl.SRU(n, forget_bias=4.0)
x = rng.normal(size=(1, 200, n))
weights, state = sru.init(jax.ShapeDtypeStruct(x.shape, jnp.float64), rng=jax.random.key(0))
weights = as_float64(weights)
got = sru.apply(weights, state, jnp.asarray(x))[0]
w, b = np.asarray(weights['w']), np.asarray(weights['b'])
y, f, r = np.split(x @ w.T, 3, axis=-1)
b_f, b_r = np.split(b, 2)
f, r = 1 / (1 + np.exp(-(f + b_f))), 1 / (1 + np.exp(-(r + b_r)))
c, want = np.zeros((1, n)), np.zeros_like(x)
for t in range(x.shape[1]):
  c = f[:, t] * c + (1 - f[:, t]) * y[:, t]
  want[:, t] = r[:, t] * c + (1 - r[:, t]) * x[:, t]
results['sru_carry'] = [str(got.dtype), float(np.max(np.abs(np.asarray(got) - want)))]


def as_float64_weights(initialized):
  weights, state = initialized
  return as_float64(weights), state


def finite_difference_error(layer, shape):
  """Relative error of the input gradient of sum(layer(x) * probe) along 3 directions."""
  x = jnp.asarray(rng.normal(size=shape))
  inputs = x if layer.n_in == 1 else (x, x * 0.5)
  signature = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), inputs)
  weights, state = jax.jit(lambda: as_float64_weights(layer.init(signature,
                                                                 rng=jax.random.key(1))))()
  probe = jnp.asarray(rng.normal(size=jax.eval_shape(
      lambda i: layer.apply(weights, state, i)[0], inputs).shape if layer.n_out == 1 else ()))

  @jax.jit     # one compiled program per family (eager, each operation compiles alone)
  def f(inputs):
    out = layer.apply(weights, state, inputs)[0]
    return jnp.sum(out * probe) if layer.n_out == 1 else sum(jnp.sum(o) for o in out)
  gradient = jax.tree_util.tree_map(np.asarray, jax.jit(jax.grad(f))(inputs))
  worst, h = 0.0, 1e-5
  for _ in range(3):
    direction = jax.tree_util.tree_map(lambda a: rng.normal(size=a.shape), inputs)
    step = lambda s: jax.tree_util.tree_map(lambda a, d: a + s * h * d, inputs, direction)
    numeric = (float(f(step(1.0))) - float(f(step(-1.0)))) / (2 * h)
    analytic = sum(float(np.vdot(g, d)) for g, d in zip(jax.tree_util.tree_leaves(gradient),
                                                         jax.tree_util.tree_leaves(direction)))
    worst = max(worst, abs(numeric - analytic) / max(abs(analytic), 1e-3))
  return worst


D = 8
families = {
    'dense': (tl.Dense(6), (2, 3, D)),
    'layer_norm': (tl.LayerNorm(), (2, 3, D)),
    'causal_attention': (tl.CausalAttention(D, 2, mode='eval'), (2, 5, D)),
    'sru': (tl.SRU(D, mode='eval'), (2, 5, D)),
    'sparse_ff': (tl.SparseFF(32, n_elements_in_block=4, mode='eval'), (2, 3, D)),
    'sparse_qkv_attention': (tl.MultiplicativeConvCausalAttention(D, n_heads=2, sparsity=2,
                                                                  mode='eval'), (2, 5, D)),
    'lsh_attention': (tl.LSHSelfAttention(n_heads=2, chunk_len=4, n_hashes=2, mode='eval'),
                      (1, 8, D)),
    'reversible_with_layer_norm': (tl.ReversibleSerial(*tl.ReversibleBlock(
        f=[tl.LayerNorm(), tl.Dense(D)], g=[tl.LayerNorm(), tl.Dense(D)])), (2, 3, D)),
}
results['gradients'] = {name: finite_difference_error(layer, shape)
                        for name, (layer, shape) in families.items()}
print(json.dumps(results))
