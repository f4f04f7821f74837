"""A matrix-vector product from int8, bfloat16 and float32 storage, side by side.

One process: a d x d matrix of random weights in each storage (float32 as it
is; `tl.quantize_weights` for int8 with per-row scales and for bfloat16), one
vector, `kernels.matvec` jitted for each (on CPU the stored products run the
C++ kernel, float32 XLA's product). The three are timed in interleaved rounds
(each round: every storage in turn, `--calls` calls each, their median), so
that the machine's drift falls on all of them alike. Reports min / median ms
over the rounds, GB/s read at the median, and each storage's speedup over
float32 at the median and its range over the rounds (ratio within a round).

  python benchmarks/stored_matvec.py [--d 16384] [--rounds 12] [--calls 10]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import tqdm

import sparse_trax.layers as tl
from sparse_trax import kernels

STORAGES = ('float32', 'bfloat16', 'int8')


def stored_matrices(d: int):
  """{storage: [d, d] weights in it}, from one float32 matrix."""
  matrix = jax.jit(lambda: jax.random.normal(jax.random.key(0), (d, d), jnp.float32))()
  stored = {'float32': matrix}
  for storage in ('bfloat16', 'int8'):
    stored[storage] = jax.jit(lambda m, s=storage: tl.quantize_weights({'w': m}, s)['w'])(matrix)
  return stored


def bytes_read(w) -> int:
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(w))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--d', type=int, default=16384, help='rows and columns')
  parser.add_argument('--rounds', type=int, default=12)
  parser.add_argument('--calls', type=int, default=10, help='calls per storage per round')
  args = parser.parse_args()

  stored = stored_matrices(args.d)
  x = jax.random.normal(jax.random.key(1), (args.d,), jnp.float32)
  product = jax.jit(lambda x, w: kernels.matvec(x, w, mode='predict'))
  for w in stored.values():
    product(x, w).block_until_ready()                   # compile, and touch the weights
  times = {storage: [] for storage in STORAGES}
  for _ in tqdm.trange(args.rounds, desc='rounds', leave=False):
    for storage in STORAGES:
      calls = []
      for _ in range(args.calls):
        start = time.perf_counter()
        product(x, stored[storage]).block_until_ready()
        calls.append(time.perf_counter() - start)
      times[storage].append(1e3 * statistics.median(calls))

  print(f'{args.d} x {args.d} matrix-vector product, {args.rounds} interleaved rounds of '
        f'{args.calls} calls; {jax.devices()[0].platform}')
  print('| storage | MB read | ms min / median | GB/s at the median | speedup vs float32 '
        '(median; range over rounds) |')
  print('|---|---|---|---|---|')
  for storage in STORAGES:
    ms = times[storage]
    megabytes = bytes_read(stored[storage]) / 1e6
    ratios = [f / s for f, s in zip(times['float32'], ms)]
    speedup = statistics.median(times['float32']) / statistics.median(ms)
    print(f'| {storage} | {megabytes:.1f} | {min(ms):.2f} / {statistics.median(ms):.2f} | '
          f'{megabytes / statistics.median(ms):.1f} | {speedup:.2f}x '
          f'({min(ratios):.2f}-{max(ratios):.2f}x) |')


if __name__ == '__main__':
  main()
