"""Peak training memory of one step vs depth: reversible and plain stacks of the same width.

For TerraformerLM at depths 2, 6, 12, 24, reversible (activations recomputed in
the backward pass) and plain (the same function under ordinary autodiff),
compile one Adam training step and read XLA's buffer assignment of the
compiled step (`memory_analysis()`): the arguments (weights, optimizer state,
batch), and the temporaries, i.e. the peak memory beyond weights and
optimizer state. One step of each is also run, to check it executes.

  python benchmarks/memory.py [--depths 2 6 12 24] [--length 1024] [--d-model 256]
                              [--dropout 0.1] [--sru 32]
"""

import argparse

import jax
import jax.numpy as jnp
import optax

import sparse_trax.layers as tl
from sparse_trax import models


def step_memory(depth: int, reversible: bool, args) -> dict:
  model = models.TerraformerLM(vocab_size=args.vocab, d_model=args.d_model, d_ff=4 * args.d_model,
                               n_layers=depth, n_heads=args.heads, max_len=args.length,
                               ff_use_sru=args.sru, reversible=reversible,
                               dropout=args.dropout)
  tokens = jnp.ones((args.batch, args.length), jnp.int32)
  weights, state = model.init(tokens, rng=jax.random.key(0))
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(weights)

  def train_step(weights, opt_state, tokens, rng):
    def loss(w):
      logits = model.apply(w, state, tokens, rng=rng)[0]
      return tl.weighted_cross_entropy(logits, tokens, jnp.ones(tokens.shape))
    value, grads = jax.value_and_grad(loss)(weights)
    updates, opt_state = optimizer.update(grads, opt_state, weights)
    return optax.apply_updates(weights, updates), opt_state, value

  compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(
      weights, opt_state, tokens, jax.random.key(1)).compile()
  analysis = compiled.memory_analysis()
  weights, opt_state, value = compiled(weights, opt_state, tokens, jax.random.key(1))
  assert jnp.isfinite(value)
  return {'depth': depth, 'reversible': reversible,
          'arguments': analysis.argument_size_in_bytes,
          'temporaries': analysis.temp_size_in_bytes,
          'params': tl.count_parameters(weights)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--depths', type=int, nargs='+', default=[2, 6, 12, 24])
  parser.add_argument('--length', type=int, default=1024)
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--d-model', dest='d_model', type=int, default=256)
  parser.add_argument('--heads', type=int, default=4)
  parser.add_argument('--vocab', type=int, default=2000)
  parser.add_argument('--dropout', type=float, default=0.0)
  parser.add_argument('--sru', type=int, default=0, help='SRU width beside the FF (0: none)')
  args = parser.parse_args()
  rows = []
  for reversible in (True, False):
    for depth in args.depths:
      rows.append(step_memory(depth, reversible, args))
      print(f'  {"reversible" if reversible else "plain"} depth {depth}: '
            f'{rows[-1]["temporaries"] / 2**20:.1f} MiB temporaries', flush=True)
  base = {r['reversible']: r['temporaries'] for r in rows if r['depth'] == args.depths[0]}
  print(f'\nOne Adam step of TerraformerLM (d_model {args.d_model}, d_ff {4 * args.d_model}, '
        f'SRU {args.sru}, dropout {args.dropout}, batch {args.batch} x {args.length} tokens, '
        f'float32); XLA buffer assignment of the compiled step on {jax.devices()[0].device_kind}')
  print('| stack | layers | parameters | weights + optimizer + batch (MiB) | '
        f'peak beyond them (MiB) | vs {args.depths[0]} layers |')
  print('|---|---|---|---|---|---|')
  for r in rows:
    print(f'| {"reversible" if r["reversible"] else "plain"} | {r["depth"]} | '
          f'{r["params"] / 1e6:.1f}M | {r["arguments"] / 2**20:.1f} | '
          f'{r["temporaries"] / 2**20:.1f} | {r["temporaries"] / base[r["reversible"]]:.2f}x |')


if __name__ == '__main__':
  main()
