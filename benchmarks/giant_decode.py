"""Decoding at the paper's 17B width on this CPU: one block in float32, the whole all-sparse model in int8.

a. (--part block) One decoder block at 17B width (d_model 6144, d_ff 49152,
   48 heads, float32, random weights): dense, sparse FF (N 64), sparse QKV
   (S 16), sparse FF+QKV. ms per token (median of --tokens after warm-up,
   state donated), bytes a token reads, the floor (bytes / the bandwidth
   measured in this run), speedup over dense (the paper's Table 1: 20x for
   FF+QKV at 17B).
b. (--part model) The whole all-sparse decoder at that width (24 layers, N 64,
   multiplicative-conv attention S 16, loss sparsity 4, vocab 32k: about 16B
   parameters), its weights made by `model.init(..., weight_dtype='int8')`
   (each matrix drawn in float32 and converted at once), decoding
   --tokens tokens after an 8-token prompt: ms per token, tokens/s, peak
   resident memory, the floor.

  python benchmarks/giant_decode.py --part block
  python benchmarks/giant_decode.py --part model [--layers 24] [--tokens 64]
"""

import argparse
import gc
import resource
import statistics
import time

import jax
import jax.numpy as jnp

import sparse_trax.layers as tl
from sparse_trax import decoding, models
from sparse_trax.models import blocks, scaling

from decode_speed import memory_bandwidth   # run from benchmarks/ (python benchmarks/...)

D_MODEL, D_FF, N_HEADS, VOCAB = 6144, 49152, 48, 32000
BLOCK_VARIANTS = {
    'dense': dict(),
    '+sparse FF': dict(ff_sparsity=64),
    '+sparse QKV': dict(attention_type='multconv', attention_sparsity=16),
    '+sparse FF+QKV': dict(ff_sparsity=64, attention_type='multconv', attention_sparsity=16),
}


def peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def block(variant: str, max_len: int) -> tl.Layer:
  knobs = BLOCK_VARIANTS[variant]
  attention = scaling.causal_attention_factory(
      D_MODEL, N_HEADS, knobs.get('attention_type', 'dense'), knobs.get('attention_sparsity', 16),
      0.0, max_len)('predict')
  feed_forward = scaling.feed_forward_factory(D_MODEL, D_FF, knobs.get('ff_sparsity', 0), '1inN',
                                              0.0)('predict')
  return blocks.DecoderBlock(attention, feed_forward, 0.0, 'predict')


def time_block(variant: str, tokens: int, warmup: int = 4) -> dict:
  layer = block(variant, max_len=128)
  signature = jax.ShapeDtypeStruct((1, 1, D_MODEL), jnp.float32)
  weights = jax.jit(lambda: layer.init(signature, rng=jax.random.key(1))[0])()
  state = decoding.initial_state(layer, signature)
  step = jax.jit(lambda w, s, x: layer.apply(w, s, x), donate_argnums=1)
  x = jax.random.normal(jax.random.key(2), (1, 1, D_MODEL))
  times = []
  for t in range(warmup + tokens):
    start = time.perf_counter()
    y, state = step(weights, state, x)
    y.block_until_ready()
    if t >= warmup:
      times.append(time.perf_counter() - start)
  cost = tl.decode_cost(layer, weights, state, position=warmup + tokens // 2)
  params = tl.count_parameters(weights)
  del weights, state
  gc.collect()
  return {'variant': variant, 'ms': 1e3 * statistics.median(times), 'bytes': cost['total'],
          'params': params}


def run_model(layers: int, tokens: int):
  model = models.ScalingTransformerLM(VOCAB, D_MODEL, D_FF, layers, N_HEADS, max_len=128,
                                      dropout=0.0, ff_sparsity=64, attention_type='multconv',
                                      attention_sparsity=16, loss_sparsity=4, mode='predict')
  signature = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  start = time.perf_counter()
  weights, _ = model.init(signature, rng=jax.random.key(1), weight_dtype='int8')
  print(f'  weights made; peak RSS {peak_rss_gib():.1f} GiB', flush=True)
  made_seconds = time.perf_counter() - start
  params = sum(x.size for x in jax.tree_util.tree_leaves(weights))
  # The 8-token prompt is fed one token per step: a one-call prefill of int8 weights makes
  # XLA convert every matrix to float32 at once (it asked for 63 GB here).
  state_after = decoding.initial_state(model, signature)
  token = jnp.zeros((1,), jnp.int32)
  for t in range(8):
    _, _, state_after = decoding.decode_step(model, weights, state_after, token, None,
                                             jax.random.key(0), temperature=0.0, top_k=None)
    token = jnp.full((1,), t + 1, jnp.int32)
  position = int(state_after.position)   # read before the state is donated
  times = []
  for t in range(tokens):
    begin = time.perf_counter()
    token, _, state_after = decoding.decode_step(model, weights, state_after, token, None,
                                                 jax.random.key(0), temperature=0.0, top_k=None)
    token.block_until_ready()
    if t >= 2:
      times.append(time.perf_counter() - begin)
  cost = tl.decode_cost(model, weights, state_after, position=8 + tokens // 2)
  ms = 1e3 * statistics.median(times)
  peak = peak_rss_gib()
  bandwidth = memory_bandwidth(n=8192)
  print(f'memory bandwidth (8192x8192 float32 matvec, median): {bandwidth / 1e9:.1f} GB/s')
  floor = 1e3 * cost['total'] / bandwidth
  print(f'\nall-sparse decoder, {layers} layers at d_model {D_MODEL}, d_ff {D_FF}, N 64, '
        f'multconv S 16, loss sparsity 4, vocab {VOCAB}; int8 weights (model.init, made in '
        f'{made_seconds:.0f} s); {tokens} tokens after an 8-token prompt (position {position})')
  print('| parameters | int8 weights GB | ms/token | tokens/s | MB read/token | floor ms | '
        'floor / measured | peak RSS GiB |')
  print('|---|---|---|---|---|---|---|---|')
  print(f'| {params / 1e9:.2f}B | {cost["all_weights"] / 1e9:.1f} | {ms:.1f} | {1e3 / ms:.2f} | '
        f'{cost["total"] / 1e6:.0f} | {floor:.1f} | {floor / ms:.0%} | {peak:.1f} |')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--part', choices=['block', 'model'], default='block')
  parser.add_argument('--tokens', type=int, default=16)
  parser.add_argument('--layers', type=int, default=24)
  args = parser.parse_args()
  if args.part == 'model':   # the bandwidth is measured after the weights are made (memory)
    run_model(args.layers, args.tokens)
    return
  bandwidth = memory_bandwidth()
  print(f'memory bandwidth (16384x16384 float32 matvec, median): {bandwidth / 1e9:.1f} GB/s')
  rows = []
  for variant in BLOCK_VARIANTS:
    rows.append(time_block(variant, args.tokens))
    print(f'  measured {variant}: {rows[-1]["ms"]:.2f} ms', flush=True)
  print(f'\none decoder block at 17B width (d_model {D_MODEL}, d_ff {D_FF}, {N_HEADS} heads), '
        f'float32, batch 1, median of {args.tokens} tokens')
  print('| variant | params | ms/token | MB read | floor ms | floor / measured | '
        'speedup vs dense |')
  print('|---|---|---|---|---|---|---|')
  for row in rows:
    floor = 1e3 * row['bytes'] / bandwidth
    print(f'| {row["variant"]} | {row["params"] / 1e6:.0f}M | {row["ms"]:.2f} | '
          f'{row["bytes"] / 1e6:.0f} | {floor:.2f} | {floor / row["ms"]:.0%} | '
          f'{rows[0]["ms"] / row["ms"]:.1f}x |')


if __name__ == '__main__':
  main()
