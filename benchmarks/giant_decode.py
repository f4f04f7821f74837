"""Decoding at the paper's 17B width on this CPU: one block in float32, the whole all-sparse model in int8.

a. (--part block) One decoder block at 17B width (d_model 6144, d_ff 49152,
   48 heads, float32, random weights): dense, sparse FF (N 64), sparse QKV
   (S 16), sparse FF+QKV. Each variant runs in a process of its own, as a
   user decoding one model would (in one process, the FF+QKV block run after
   the dense one, whose 3 GB were made and freed first, took 12.2 ms a token
   against 9.5 ms run first). ms per token (median of --tokens after warm-up,
   state donated), bytes a token reads, the floor (bytes / the bandwidth
   measured in that process before and after its timing, the mean), speedup
   over dense (the paper's Table 1: 20x for FF+QKV at 17B). --rounds times
   (3) the variants in turn (dense, ..., dense, ...): this machine's bandwidth
   moves within minutes, so each round's speedup is against that round's dense
   block, and the summary gives min / median over the rounds.
b. (--part model) The whole all-sparse decoder at that width (24 layers, N 64,
   multiplicative-conv attention S 16, loss sparsity 4, vocab 32k: about 16B
   parameters), its weights made by `model.init(..., weight_dtype='int8')`
   (each matrix drawn in float32 and converted at once), decoded as users call
   it: `decoding.autoregressive_sample(model, weights, prompt, max_length=n)`
   with a --prompt-token prompt (64) in one call. The prefill is the call with
   max_length=1; ms per generated token = (the call with max_length=1+tokens -
   that) / tokens. --runs times (3), each with the bandwidth measured before
   it: prefill, ms/token, tokens/s, the floor (bytes a token reads / that
   bandwidth), then min / median, peak resident memory, and each layer
   family's share of a token (the family timed alone at this width, int8).

  python benchmarks/giant_decode.py --part block [--tokens 16] [--rounds 3] [--variants NAME ...]
  python benchmarks/giant_decode.py --part model [--layers 24] [--tokens 64] [--prompt 64]
"""

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
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


def macs_per_token(layers: int, position: int) -> dict:
  """Multiply-adds one decoded token of the all-sparse model costs, by family (the
  kernels' arithmetic, counted from the shapes)."""
  n_blocks = D_FF // 64
  rank = n_blocks                                    # SparseFF's default controller rank
  modules, channels = 16, D_MODEL // 16
  feed_forward = rank * D_MODEL + D_FF * rank + 2 * n_blocks * D_MODEL
  multiplicative = modules * D_MODEL * channels
  convolutions = modules * 3 * (3 + 3 + 1) * channels * channels   # length 3, kernels 3, 3, 1
  attention = 2 * D_MODEL * (position + 1)
  vocabulary = 4 * D_MODEL * (VOCAB // 4)
  return {'sparse FF': layers * feed_forward,
          'sparse QKV attention': layers * (multiplicative + convolutions + attention),
          'vocabulary (multiplicative)': vocabulary}


def gemm_macs_per_second(n: int = 2048, repeats: int = 7) -> float:
  """Multiply-adds per second of a float32 [n, n] x [n, n] product in XLA (this
  machine's arithmetic rate, both cores)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  product = jax.jit(lambda a: a @ a)
  product(a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    product(a).block_until_ready()
    times.append(time.perf_counter() - start)
  return n ** 3 / min(times)


def time_family(layer: tl.Layer, copies: int, position: int, repeats: int = 12) -> float:
  """Median ms of one token through `layer` (a Serial of `copies` stacked copies with
  their own int8 weights, so that they come from memory), per copy."""
  signature = jax.ShapeDtypeStruct((1, 1, D_MODEL), jnp.float32)
  weights, _ = layer.init(signature, rng=jax.random.key(1), weight_dtype='int8')
  state = decoding.initial_state(layer, signature)
  if isinstance(state, tl.DecodeState):
    state = tl.DecodeState(jnp.int32(position), state.layers)
  apply = jax.jit(lambda w, s, x: layer.apply(w, s, x), donate_argnums=1)
  x = jax.random.normal(jax.random.key(3), (1, 1, D_MODEL))
  out, state = apply(weights, state, x)
  out.block_until_ready()
  times = []
  for _ in range(repeats):
    if isinstance(state, tl.DecodeState):
      state = tl.DecodeState(jnp.int32(position), state.layers)
    start = time.perf_counter()
    out, state = apply(weights, state, x)
    out.block_until_ready()
    times.append(time.perf_counter() - start)
  del weights, state
  gc.collect()
  return 1e3 * statistics.median(times) / copies


def family_shares(layers: int, position: int) -> dict:
  """ms per token of each layer family at this width (int8), timed alone and scaled to
  the model: `layers` sparse FFs, `layers` sparse-QKV attentions, one vocabulary."""
  attention = scaling.causal_attention_factory(D_MODEL, N_HEADS, 'multconv', 16, 0.0, 128)
  feed_forward = scaling.feed_forward_factory(D_MODEL, D_FF, 64, '1inN', 0.0)
  copies = 4
  return {
      'sparse FF': layers * time_family(
          tl.Serial([feed_forward('predict') for _ in range(copies)]), copies, position),
      'sparse QKV attention': layers * time_family(
          tl.Serial([attention('predict') for _ in range(copies)]), copies, position),
      'vocabulary (multiplicative)': time_family(
          scaling.logits_layer(VOCAB, 4, 'predict'), 1, position),
  }


def run_model(layers: int, tokens: int, prompt_length: int, runs: int):
  """The whole all-sparse int8 decoder through `decoding.autoregressive_sample`."""
  model = models.ScalingTransformerLM(VOCAB, D_MODEL, D_FF, layers, N_HEADS, max_len=256,
                                      dropout=0.0, ff_sparsity=64, attention_type='multconv',
                                      attention_sparsity=16, loss_sparsity=4, mode='predict')
  signature = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  start = time.perf_counter()
  weights, _ = model.init(signature, rng=jax.random.key(1), weight_dtype='int8')
  made_seconds = time.perf_counter() - start
  print(f'  weights made in {made_seconds:.0f} s; peak RSS {peak_rss_gib():.1f} GiB', flush=True)
  params = sum(x.size for x in jax.tree_util.tree_leaves(weights))
  prompt = jax.random.randint(jax.random.key(7), (1, prompt_length), 2, VOCAB)

  def sample(n: int) -> float:
    begin = time.perf_counter()
    out = decoding.autoregressive_sample(model, weights, prompt, max_length=n)
    assert out.shape == (1, n), out.shape
    return time.perf_counter() - begin

  for n in (1, 1 + tokens):          # compile both programs first
    begin = time.perf_counter()
    sample(n)
    print(f'  compiled and ran max_length={n} in {time.perf_counter() - begin:.0f} s', flush=True)
  rows = []
  for run in range(runs):
    bandwidth = memory_bandwidth(n=8192)
    prefill_s = min(sample(1) for _ in range(2))     # the prefill and one sampled token
    total_s = sample(1 + tokens)
    token_ms = 1e3 * (total_s - prefill_s) / tokens
    rows.append({'bandwidth': bandwidth, 'prefill_ms': 1e3 * prefill_s, 'token_ms': token_ms})
    print(f'  run {run + 1}: bandwidth {bandwidth / 1e9:.1f} GB/s, prefill {1e3 * prefill_s:.0f} '
          f'ms, {token_ms:.1f} ms/token', flush=True)
  state = decoding.initial_state(model, signature)
  cost = tl.decode_cost(model, weights, state, position=prompt_length + tokens // 2)
  peak = peak_rss_gib()
  del weights, state
  gc.collect()
  shares = family_shares(layers, prompt_length + tokens // 2)
  macs = macs_per_token(layers, prompt_length + tokens // 2)
  rate = gemm_macs_per_second()
  print(f'\nall-sparse decoder, {layers} layers at d_model {D_MODEL}, d_ff {D_FF}, N 64, '
        f'multconv S 16, loss sparsity 4, vocab {VOCAB}: {params / 1e9:.2f}B parameters, int8 '
        f'weights {cost["all_weights"] / 1e9:.1f} GB (model.init in {made_seconds:.0f} s). '
        f'decoding.autoregressive_sample with a {prompt_length}-token prompt: prefill = the call '
        f'with max_length=1 (best of 2), ms/token = (max_length={1 + tokens} call - that) / '
        f'{tokens}. Peak RSS {peak:.1f} GiB.')
  print('| run | bandwidth GB/s | prefill ms | prefill / 10 tokens | ms/token | tokens/s | '
        'MB read/token | floor ms | floor / measured |')
  print('|---|---|---|---|---|---|---|---|---|')
  for i, row in enumerate(rows):
    floor = 1e3 * cost['total'] / row['bandwidth']
    print(f'| {i + 1} | {row["bandwidth"] / 1e9:.1f} | {row["prefill_ms"]:.0f} | '
          f'{row["prefill_ms"] / (10 * row["token_ms"]):.2f} | {row["token_ms"]:.1f} | '
          f'{1e3 / row["token_ms"]:.2f} | {cost["total"] / 1e6:.0f} | {floor:.1f} | '
          f'{floor / row["token_ms"]:.0%} |')
  token_ms = [row['token_ms'] for row in rows]
  prefill_ms = [row['prefill_ms'] for row in rows]
  print(f'| min / median | | {min(prefill_ms):.0f} / {statistics.median(prefill_ms):.0f} | | '
        f'{min(token_ms):.1f} / {statistics.median(token_ms):.1f} | '
        f'{1e3 / min(token_ms):.2f} / {1e3 / statistics.median(token_ms):.2f} | | | |')
  median_ms = statistics.median(token_ms)
  print('\nshare of a token by layer family (each timed alone at this width, int8, four '
        'stacked copies; scaled to the model; the rest is embedding, LayerNorms, residuals '
        'and the sampling loop):')
  print(f'(arithmetic: {sum(macs.values()) / 1e9:.2f} G multiply-adds per token; an XLA '
        f'float32 GEMM ran {rate / 1e9:.0f} G/s here, so the arithmetic alone takes '
        f'{1e3 * sum(macs.values()) / rate:.1f} ms at that rate, beside the bytes\' floor)')
  print('| family | ms/token (alone) | share of the median token | G multiply-adds | '
        'ms at the GEMM rate |')
  print('|---|---|---|---|---|')
  for name, ms in shares.items():
    print(f'| {name} | {ms:.1f} | {ms / median_ms:.0%} | {macs[name] / 1e9:.2f} | '
          f'{1e3 * macs[name] / rate:.1f} |')
  rest = median_ms - sum(shares.values())
  print(f'| the rest | {rest:.1f} | {rest / median_ms:.0%} | | |')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--part', choices=['block', 'model'], default='block')
  parser.add_argument('--tokens', type=int, default=None,
                      help='tokens timed (block: 16; model: generated after the prompt, 64)')
  parser.add_argument('--layers', type=int, default=24)
  parser.add_argument('--prompt', type=int, default=64, help='prompt tokens (model)')
  parser.add_argument('--runs', type=int, default=3, help='timed runs (model)')
  parser.add_argument('--rounds', type=int, default=3,
                      help='(block) rounds of the variants in turn, each in its own process')
  parser.add_argument('--variants', nargs='+', choices=list(BLOCK_VARIANTS),
                      default=list(BLOCK_VARIANTS),
                      help='(block) variants timed (dense is always one: the baseline)')
  parser.add_argument('--variant', choices=list(BLOCK_VARIANTS), default=None,
                      help='(block) time this variant alone in this process and print it as JSON')
  args = parser.parse_args()
  if args.part == 'model':   # the bandwidth is measured after the weights are made (memory)
    run_model(args.layers, args.tokens or 64, args.prompt, args.runs)
    return
  args.tokens = args.tokens or 16
  if args.variant:                 # one variant, in this process: one JSON line for the parent
    before = memory_bandwidth()
    row = time_block(args.variant, args.tokens)
    row['bandwidth'] = (before + memory_bandwidth()) / 2
    print(json.dumps(row))
    return
  if args.rounds < 1:
    parser.error('--rounds must be at least 1')
  variants = ['dense'] + [v for v in BLOCK_VARIANTS if v in args.variants and v != 'dense']
  rounds = []                      # rounds[r][variant]: that process's JSON row
  for r in range(args.rounds):
    rows = {}
    for variant in variants:
      child = subprocess.run(
          [sys.executable, os.path.abspath(__file__), '--part', 'block', '--variant', variant,
           '--tokens', str(args.tokens)], capture_output=True, text=True, check=False)
      if child.returncode != 0:
        sys.exit(f'the {variant!r} block failed:\n{child.stderr[-3000:]}')
      rows[variant] = json.loads(child.stdout.strip().splitlines()[-1])
      print(f'  round {r + 1}/{args.rounds} {variant}: {rows[variant]["ms"]:.2f} ms '
            f'(bandwidth {rows[variant]["bandwidth"] / 1e9:.1f} GB/s)', flush=True)
    rounds.append(rows)
  print(f'\none decoder block at 17B width (d_model {D_MODEL}, d_ff {D_FF}, {N_HEADS} heads), '
        f'float32, batch 1, median of {args.tokens} tokens, each variant in its own process, '
        f'{args.rounds} rounds of the variants in turn')
  print('| round | variant | params | ms/token | MB read | GB/s | floor ms | floor / measured | '
        'speedup vs that round\'s dense |')
  print('|---|---|---|---|---|---|---|---|---|')
  def floor_ms(row):               # the bytes a token reads at the bandwidth measured
    return 1e3 * row['bytes'] / row['bandwidth']

  for r, rows in enumerate(rounds):
    for variant in variants:
      row = rows[variant]
      print(f'| {r + 1} | {variant} | {row["params"] / 1e6:.0f}M | {row["ms"]:.2f} | '
            f'{row["bytes"] / 1e6:.0f} | {row["bandwidth"] / 1e9:.1f} | {floor_ms(row):.2f} | '
            f'{floor_ms(row) / row["ms"]:.0%} | {rows["dense"]["ms"] / row["ms"]:.1f}x |')
  print(f'\nover the {args.rounds} rounds (min / median; speedups each against its own round\'s dense)')
  print('| variant | ms/token | floor / measured | speedup vs dense | speedups by round |')
  print('|---|---|---|---|---|')
  for variant in variants:
    ms = [rows[variant]['ms'] for rows in rounds]
    share = [floor_ms(rows[variant]) / rows[variant]['ms'] for rows in rounds]
    speedups = [rows['dense']['ms'] / rows[variant]['ms'] for rows in rounds]
    print(f'| {variant} | {min(ms):.2f} / {statistics.median(ms):.2f} | '
          f'{min(share):.0%} / {statistics.median(share):.0%} | '
          f'{min(speedups):.1f}x / {statistics.median(speedups):.1f}x | '
          f'{", ".join(f"{x:.1f}x" for x in speedups)} |')

if __name__ == '__main__':
  main()
