"""Forward + backward time and peak memory of LSH, chunked and full attention vs length.

One pre-norm residual attention layer (d_model 128, 4 heads, batch 1) at 1k,
4k, 16k and 64k tokens: median wall time of a jitted forward+backward, and
the peak memory of that step from XLA's buffer assignment. Full attention is
skipped where its forward+backward would need more than --max-gib: about 6
arrays of length^2 x heads floats (logits, probabilities and their gradients).

  python benchmarks/long_context.py [--lengths 1024 4096 16384 65536]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import sparse_trax.layers as tl

D_MODEL, HEADS = 128, 4


def layer_for(kind: str, length: int):
  attention = {
      'full': lambda: tl.CausalAttention(D_MODEL, HEADS, max_len=length),
      'chunked': lambda: tl.ChunkedCausalAttention(HEADS, chunk_len=128, n_chunks_before=1),
      'lsh': lambda: tl.LSHSelfAttention(HEADS, chunk_len=128, n_hashes=2, n_chunks_before=1),
  }[kind]()
  return tl.Residual(tl.LayerNorm(), attention)


def measure(kind: str, length: int, repeats: int) -> dict:
  layer = layer_for(kind, length)
  x = jax.random.normal(jax.random.key(0), (1, length, D_MODEL))
  weights, state = layer.init(x, rng=jax.random.key(1))

  def loss(w, x, rng):
    return jnp.sum(layer.apply(w, state, x, rng=rng)[0] ** 2)
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  compiled = step.lower(weights, x, jax.random.key(2)).compile()
  analysis = compiled.memory_analysis()
  jax.block_until_ready(compiled(weights, x, jax.random.key(2)))
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(weights, x, jax.random.key(3 + i)))
    times.append(time.perf_counter() - start)
  peak = analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + \
      analysis.output_size_in_bytes
  return {'kind': kind, 'length': length, 'seconds': statistics.median(times), 'peak': peak}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--lengths', type=int, nargs='+', default=[1024, 4096, 16384, 65536])
  parser.add_argument('--kinds', nargs='+', default=['lsh', 'chunked', 'full'])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--max-gib', dest='max_gib', type=float, default=12.0,
                      help='skip full attention whose estimated peak exceeds this')
  args = parser.parse_args()
  rows = []
  for kind in args.kinds:
    for length in args.lengths:
      if kind == 'full' and 6 * length * length * HEADS * 4 > args.max_gib * 2**30:
        rows.append({'kind': kind, 'length': length, 'seconds': None, 'peak': None})
        continue
      rows.append(measure(kind, length, args.repeats))
      print(f'  {kind} {length}: {rows[-1]["seconds"]:.3f} s', flush=True)
  print(f'\nForward + backward of Residual(LayerNorm, attention), d_model {D_MODEL}, {HEADS} heads, '
        f'batch 1, float32, chunk 128, LSH 2 hashes; median of {args.repeats}; '
        f'{jax.devices()[0].device_kind}')
  print('| attention | tokens | seconds | ms per 1k tokens | peak memory (MiB) |')
  print('|---|---|---|---|---|')
  for r in rows:
    if r['seconds'] is None:
      print(f'| {r["kind"]} | {r["length"]:,} | skipped: would need over {args.max_gib:g} GiB | | |')
      continue
    print(f'| {r["kind"]} | {r["length"]:,} | {r["seconds"]:.3f} | '
          f'{1e3 * r["seconds"] / (r["length"] / 1024):.1f} | {r["peak"] / 2**20:.0f} |')


if __name__ == '__main__':
  main()
