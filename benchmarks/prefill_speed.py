"""Feeding a prompt: one prefill call vs one token at a time.

For dense and sparse Scaling Transformer LMs (random weights, batch 1,
float32), the time to feed a prompt of --prompt tokens into a fresh
'predict'-mode state (a) in one call (`decoding.prefill`), (b) one token per
step inside one jitted `lax.fori_loop` (how decoding fed prompts before
prefill existed), (c) one jitted `decode_step` call per token. Each is
compiled first, then timed (median of --repeats). Also checks that (a) and
(b) end with the same next-token logits.

  python benchmarks/prefill_speed.py [--prompt 512] [--size small] [--repeats 3]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from sparse_trax import decoding
from sparse_trax import models

SIZES = {'small': (512, 2048, 6, 8), 'large': (1024, 4096, 24, 16)}
VOCAB = 32000
VARIANTS = {
    'dense': dict(),
    '+sparse FF+QKV': dict(ff_sparsity=64, attention_type='multconv', attention_sparsity=16),
}


def timed(fn, repeats):
  fn()   # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure(size, variant, prompt_length, repeats):
  d_model, d_ff, n_layers, n_heads = SIZES[size]
  knobs = dict(VARIANTS[variant])
  if knobs.get('attention_type') == 'multconv':
    d_ff = d_ff * 3 // 2
  model = models.ScalingTransformerLM(VOCAB, d_model, d_ff, n_layers, n_heads,
                                      max_len=prompt_length + 64, dropout=0.0, mode='predict',
                                      **knobs)
  signature = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  weights = jax.jit(lambda: model.init(signature, rng=jax.random.key(1))[0])()
  prompt = jax.random.randint(jax.random.key(2), (1, prompt_length), 1, VOCAB)
  lengths = jnp.full((1,), prompt_length, jnp.int32)
  fed = jnp.concatenate([jnp.zeros((1, 1), jnp.int32), prompt], axis=1)   # 0, then the prompt
  results = {}

  def one_call():
    state = decoding.initial_state(model, signature)
    logits, _, state = decoding.prefill(model, weights, state, prompt, lengths)
    results['prefill'] = np.asarray(logits)

  @jax.jit
  def loop(weights, state):
    def body(t, carry):
      _, state = carry
      logits, state = model.apply(weights, state, jax.lax.dynamic_slice_in_dim(fed, t, 1, 1))
      return logits[:, -1], state
    return jax.lax.fori_loop(0, prompt_length + 1, body,
                             (jnp.zeros((1, VOCAB), jnp.float32), state))

  def token_loop():
    logits, _ = loop(weights, decoding.initial_state(model, signature))
    results['loop'] = np.asarray(logits)

  def token_calls():
    state = decoding.initial_state(model, signature)
    for t in range(prompt_length + 1):
      _, _, state = decoding.decode_step(model, weights, state, fed[:, t], None,
                                         jax.random.key(0), temperature=0.0, top_k=None)
    jax.block_until_ready(state)

  row = {'size': size, 'variant': variant,
         'prefill': timed(one_call, repeats), 'loop': timed(token_loop, repeats),
         'calls': timed(token_calls, 1)}
  row['max_diff'] = float(np.max(np.abs(results['prefill'] - results['loop'])))
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--prompt', type=int, default=512)
  parser.add_argument('--sizes', nargs='+', default=['small'], choices=list(SIZES))
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  rows = [measure(size, variant, args.prompt, args.repeats)
          for size in args.sizes for variant in VARIANTS]
  print(f'\nprompt of {args.prompt} tokens, batch 1, float32, vocab {VOCAB}; '
        f'{jax.devices()[0].device_kind}')
  print('| size | variant | prefill (one call) s | token loop s | token calls s | '
        'loop / prefill | calls / prefill | max |logit diff| |')
  print('|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(f'| {r["size"]} | {r["variant"]} | {r["prefill"]:.3f} | {r["loop"]:.3f} | '
          f'{r["calls"]:.3f} | {r["loop"] / r["prefill"]:.1f}x | '
          f'{r["calls"] / r["prefill"]:.1f}x | {r["max_diff"]:.1e} |')


if __name__ == '__main__':
  main()
