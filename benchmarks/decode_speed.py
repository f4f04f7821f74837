"""Unbatched decoding speed of dense and sparse Scaling Transformers vs the bandwidth floor.

For each size and variant (dense, +sparse FF, +sparse QKV, +sparse FF+QKV,
+FF+QKV+sparse loss), random weights, batch 1, float32: time each decoded
token (one jitted `decode_step` call, caches donated) after warm-up, and
report the median ms per token, per layer, the speedup over dense, the
parameters, the bytes of weights and cache a token reads (`decode_cost`),
and the floor: those bytes / the memory bandwidth, measured with a large
matrix-vector product just before and just after that variant's timing (the
mean of the two: on a shared machine the bandwidth drifts within a run).
Also the mean ms per token of the whole generation in one `lax.while_loop`
(`decoding.generate`, what `autoregressive_sample` runs) against the same floor,
and how long a `decode_step` call takes to return (the host's dispatch of the
step's weight and state buffers, counted in the table; the model then runs
on XLA's threads), which the loop does not pay per token.

  python benchmarks/decode_speed.py [--sizes small large] [--tokens 64] [--max-len 2048]
"""

import argparse
import gc
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import sparse_trax.layers as tl
from sparse_trax import decoding
from sparse_trax import models

SIZES = {
    # name: (d_model, d_ff, n_layers, n_heads); sparse QKV raises d_ff by half.
    'small': (512, 2048, 6, 8),
    'large': (1024, 4096, 24, 16),
}
VOCAB = 32000
VARIANTS = {
    'dense': dict(),
    '+sparse FF': dict(ff_sparsity=64),
    '+sparse QKV': dict(attention_type='multconv', attention_sparsity=16),
    '+sparse FF+QKV': dict(ff_sparsity=64, attention_type='multconv', attention_sparsity=16),
    '+FF+QKV+loss': dict(ff_sparsity=64, attention_type='multconv', attention_sparsity=16,
                         loss_sparsity=4),
}


def memory_bandwidth(n: int = 16384, repeats: int = 15) -> float:
  """Bytes/s reading an [n, n] float32 matrix in a jitted matrix-vector product."""
  matrix = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  vector = jnp.ones((n,), jnp.float32)
  matvec = jax.jit(lambda m, v: m @ v)
  matvec(matrix, vector).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matvec(matrix, vector).block_until_ready()
    times.append(time.perf_counter() - start)
  del matrix
  return n * n * 4 / statistics.median(times)


def measure(size: str, variant: str, tokens: int, max_len: int, warmup: int,
            weight_dtype: str = 'float32') -> dict:
  d_model, d_ff, n_layers, n_heads = SIZES[size]
  knobs = dict(VARIANTS[variant])
  if knobs.get('attention_type') == 'multconv':
    d_ff = d_ff * 3 // 2      # keep the parameter count of dense (the paper: 4096 -> 6144)
  model = models.ScalingTransformerLM(VOCAB, d_model, d_ff, n_layers, n_heads, max_len,
                                      dropout=0.0, mode='predict', **knobs)
  signature = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  weights = jax.jit(lambda: model.init(signature, rng=jax.random.key(1))[0])()
  if weight_dtype != 'float32':
    weights = jax.jit(lambda w: tl.quantize_weights(w, weight_dtype))(weights)
  params = tl.count_parameters(weights)
  state = decoding.initial_state(model, signature)
  rng = jax.random.key(2)
  token = jnp.zeros((1,), jnp.int32)
  step_times, return_times = [], []
  for t in range(warmup + tokens):
    start = time.perf_counter()
    token, _, state = decoding.decode_step(model, weights, state, token, None, rng,
                                           temperature=0.0, top_k=None)
    returned = time.perf_counter()
    token.block_until_ready()
    if t >= warmup:
      step_times.append(time.perf_counter() - start)
      return_times.append(returned - start)
  buffers = len(jax.tree_util.tree_leaves((weights, state)))
  cost = tl.decode_cost(model, weights, state, position=warmup + tokens // 2)
  # The same number of tokens inside one while_loop (compiled first, then timed).
  prompt, prompt_lengths = jnp.zeros((1, 0), jnp.int32), jnp.zeros((1,), jnp.int32)
  for _ in range(2):   # the first run compiles; the second is timed
    fresh = decoding.initial_state(model, signature)
    start = time.perf_counter()
    out, _, fresh = decoding.generate(model, weights, fresh, prompt, prompt_lengths, None, rng,
                                      max_length=warmup + tokens, temperature=0.0,
                                      top_k=None, eos_id=None)
    out.block_until_ready()
    loop_seconds = time.perf_counter() - start
    del fresh
  del weights, state
  gc.collect()
  ms = 1e3 * statistics.median(step_times)
  return {'size': size, 'variant': variant, 'weight_dtype': weight_dtype, 'params': params,
          'ms': ms, 'return_ms': 1e3 * statistics.median(return_times),
          'buffers': buffers,
          'loop_ms': 1e3 * loop_seconds / (warmup + tokens), 'per_layer_ms': ms / n_layers,
          'weight_bytes': cost['weights'], 'cache_bytes': cost['cache'],
          'bytes': cost['total']}


def _at_position(state, position: int):
  """A predict-mode state (a DecodeState) moved to decode position `position`."""
  if not isinstance(state, tl.DecodeState):   # a layer without decoding state
    return state
  return tl.DecodeState(jnp.int32(position), state.layers)


def profile_parts(size: str, variant: str, max_len: int, position: int, repeats: int = 30):
  """Times one token through each part of a block (jitted), against its floor.

  Each part of a block is stacked n_layers times with its own weights (as in
  the model), so that its weights come from memory rather than from a cache
  they would fit alone; the vocabulary projection runs once.

  Returns rows of (part, median ms per copy, bytes read per copy).
  """
  d_model, d_ff, n_layers, n_heads = SIZES[size]
  knobs = dict(VARIANTS[variant])
  if knobs.get('attention_type') == 'multconv':
    d_ff = d_ff * 3 // 2
  from sparse_trax.models import scaling  # pylint: disable=import-outside-toplevel
  attention = scaling.causal_attention_factory(
      d_model, n_heads, knobs.get('attention_type', 'dense'), 16, 0.0, max_len)
  feed_forward = scaling.feed_forward_factory(d_model, d_ff, knobs.get('ff_sparsity', 0),
                                              '1inN', 0.0)
  parts = {   # name: (layer, copies)
      'attention': (tl.Serial([attention('predict') for _ in range(n_layers)]), n_layers),
      'feed-forward': (tl.Serial([feed_forward('predict') for _ in range(n_layers)]), n_layers),
      'layer norm': (tl.Serial([tl.LayerNorm() for _ in range(n_layers)]), n_layers),
      'vocabulary projection': (scaling.logits_layer(VOCAB, knobs.get('loss_sparsity', 0), 'predict'),
                                 1),
  }
  x = jax.random.normal(jax.random.key(3), (1, 1, d_model))
  rows = []
  for name, (layer, copies) in parts.items():
    signature = jax.ShapeDtypeStruct(x.shape, x.dtype)
    weights = jax.jit(lambda l=layer: l.init(signature, rng=jax.random.key(1))[0])()
    state = _at_position(decoding.initial_state(layer, signature), position)
    # The state is donated, as in decoding: otherwise each call would copy the caches.
    apply = jax.jit(lambda w, s, inputs, l=layer: l.apply(w, s, inputs), donate_argnums=1)
    out, state = apply(weights, state, x)
    out.block_until_ready()
    times = []
    for _ in range(repeats):
      state = _at_position(state, position)
      start = time.perf_counter()
      out, state = apply(weights, state, x)
      out.block_until_ready()
      times.append(time.perf_counter() - start)
    cost = tl.decode_cost(layer, weights, state, position=position)
    rows.append((name, 1e3 * statistics.median(times) / copies, cost['total'] / copies))
    del weights, state
    gc.collect()
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', nargs='+', default=['small', 'large'], choices=list(SIZES))
  parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
  parser.add_argument('--tokens', type=int, default=64, help='timed tokens (after warm-up)')
  parser.add_argument('--warmup', type=int, default=8)
  parser.add_argument('--max-len', type=int, default=2048, help='cache slots of each layer')
  parser.add_argument('--weight-dtypes', nargs='+', default=['float32'],
                      choices=['float32', 'bfloat16', 'int8'],
                      help='weight storage (tl.quantize_weights); activations stay float32')
  parser.add_argument('--profile', action='store_true',
                      help='also time each part of one block alone (where the time goes)')
  args = parser.parse_args()
  if args.profile:
    for size in args.sizes:
      for variant in args.variants:
        before = memory_bandwidth()
        part_rows = profile_parts(size, variant, args.max_len, args.warmup + args.tokens // 2)
        bandwidth = (before + memory_bandwidth()) / 2
        print(f'\none token through the parts of a {size} {variant} block, each part stacked '
              f'{SIZES[size][2]} times (position {args.warmup + args.tokens // 2}; bandwidth '
              f'{bandwidth / 1e9:.1f} GB/s):')
        print('| part | ms | MB read | floor ms | floor / measured |')
        print('|---|---|---|---|---|')
        for name, ms, nbytes in part_rows:
          floor = 1e3 * nbytes / bandwidth
          print(f'| {name} | {ms:.3f} | {nbytes / 1e6:.2f} | {floor:.3f} | {floor / ms:.0%} |')
  rows = []
  for size in args.sizes:
    for variant in args.variants:
      for weight_dtype in args.weight_dtypes:
        before = memory_bandwidth()
        row = measure(size, variant, args.tokens, args.max_len, args.warmup, weight_dtype)
        row['bandwidth'] = (before + memory_bandwidth()) / 2
        row['floor_ms'] = 1e3 * row['bytes'] / row['bandwidth']
        rows.append(row)
        print(f'  measured {size} {variant} {weight_dtype}: {row["ms"]:.2f} ms/token '
              f'(bandwidth {before / 1e9:.1f} GB/s before, {row["bandwidth"] / 1e9:.1f} mean)',
              flush=True)
  print(f'\nbatch 1, float32 activations, vocab {VOCAB}, cache max_len {args.max_len}, median '
        f'of {args.tokens} tokens after {args.warmup} warm-up; {jax.devices()[0].device_kind}')
  print('| size | variant | weights | params | ms/token | ms/layer | speedup vs dense | '
        'loop ms/token | loop speedup | call returns ms (buffers) | '
        'MB read/token (weights + cache) | GB/s | floor ms | floor / measured | floor / loop |')
  print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
  for row in rows:
    dense = next((r for r in rows if r['size'] == row['size'] and r['variant'] == 'dense'
                  and r['weight_dtype'] == 'float32'), row)
    print(f'| {row["size"]} | {row["variant"]} | {row["weight_dtype"]} | '
          f'{row["params"] / 1e6:.1f}M | {row["ms"]:.2f} | '
          f'{row["per_layer_ms"]:.3f} | {dense["ms"] / row["ms"]:.2f}x | {row["loop_ms"]:.2f} | '
          f'{dense["loop_ms"] / row["loop_ms"]:.2f}x | {row["return_ms"]:.2f} ({row["buffers"]}) | '
          f'{row["weight_bytes"] / 1e6:.1f} + {row["cache_bytes"] / 1e6:.1f} | '
          f'{row["bandwidth"] / 1e9:.1f} | {row["floor_ms"]:.2f} | '
          f'{row["floor_ms"] / row["ms"]:.0%} | {row["floor_ms"] / row["loop_ms"]:.0%} |')


if __name__ == '__main__':
  main()
