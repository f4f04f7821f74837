"""Quality of the small Scaling Transformer configs on the shipped corpus.

Trains dense, sparse FF, sparse QKV, sparse FF+QKV, FF+QKV+sparse loss and MoE
(gin/scaling/*.gin), and sparse FF variants (N=16 beside N=64; the mask
before or after the ReLU), for the same steps on the same seeded batches,
one after another in this process, and prints a table: parameters, final
eval log-perplexity, ratio to dense, and training tokens/s.

  python benchmarks/quality.py [--steps 600] [--configs dense sparse_ff ...]
"""

import argparse
import json
import os
import tempfile

import gin
import jax
import jax.numpy as jnp
import numpy as np

from sparse_trax import experiment, trainer
import sparse_trax.layers as tl

# name -> (gin file under gin/scaling, extra bindings)
_BEFORE = 'ScalingTransformerLM.ff_mask_before_activation = True'
_AFTER = 'ScalingTransformerLM.ff_mask_before_activation = False'
VARIANTS = {
    'dense': ('dense', ()),
    'sparse_ff': ('sparse_ff', ()),
    'sparse_qkv': ('sparse_qkv', ()),
    'sparse_ff_qkv': ('sparse_ff_qkv', ()),
    'sparse_ff_qkv_loss': ('sparse_ff_qkv_loss', ()),
    'moe': ('moe', ()),
    'sparse_ff_mask_before': ('sparse_ff', (_BEFORE,)),
    'sparse_ff_mask_after': ('sparse_ff', (_AFTER,)),
    'sparse_ff_n16_mask_before': ('sparse_ff', ('ScalingTransformerLM.ff_sparsity = 16', _BEFORE)),
    'sparse_ff_n16_mask_after': ('sparse_ff', ('ScalingTransformerLM.ff_sparsity = 16', _AFTER)),
}
CONFIGS = tuple(VARIANTS)
DEFAULT_CONFIGS = ('dense', 'sparse_ff', 'sparse_qkv', 'sparse_ff_qkv', 'sparse_ff_qkv_loss',
                   'moe')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parameter_count(config_file: str, bindings=()) -> int:
  gin.clear_config()
  experiment.parse_gin_config([config_file], list(bindings), finalize_config=False)
  from sparse_trax.train.steps import build_model  # pylint: disable=import-outside-toplevel
  model = build_model(gin.query_parameter('train.model').scoped_configurable_fn, 'eval',
                      gin.query_parameter('SentencePieceTokenizer.vocab_size'))
  shapes = jax.eval_shape(lambda: model.init(jax.ShapeDtypeStruct((1, 8), jnp.int32),
                                             rng=jax.random.key(0))[0])
  gin.clear_config()
  return tl.count_parameters(shapes)


def run(name: str, steps: int, output_root: str) -> dict:
  gin_name, bindings = VARIANTS[name]
  config_file = os.path.join(REPO, 'gin', 'scaling', f'{gin_name}.gin')
  params = parameter_count(config_file, bindings)
  output_dir = os.path.join(output_root, name)
  gin.clear_config()
  extra = [arg for binding in bindings for arg in ('--config', binding)]
  result = trainer.main(['--config_file', config_file, '--output_dir', output_dir,
                         '--config', f'train.n_steps = {steps}',
                         '--config', f'train.eval_every = {steps}',
                         '--config', f'train.checkpoint_every = {steps}',
                         '--config', 'train.progress_bar = False'] + extra)
  gin.clear_config()
  with open(os.path.join(output_dir, 'metrics.jsonl'), encoding='utf-8') as f:
    records = [json.loads(line) for line in f]
  rates = [r['tokens_per_s'] for r in records if 'tokens_per_s' in r][1:]  # skip compile
  return {'name': name, 'params': params, 'log_perplexity': result['eval_log_perplexity'],
          'unigram': result['unigram_log_perplexity'],
          'tokens_per_s': float(np.median(rates)) if rates else float('nan')}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=600)
  parser.add_argument('--configs', nargs='+', default=list(DEFAULT_CONFIGS), choices=CONFIGS)
  parser.add_argument('--output_root', default=None,
                      help='where the runs go (default: a new temporary folder)')
  args = parser.parse_args()
  output_root = args.output_root or tempfile.mkdtemp(prefix='sparse_trax_quality_')
  rows = [run(name, args.steps, output_root) for name in args.configs]
  dense = next((r for r in rows if r['name'] == 'dense'), None)
  print(f'\nQuality after {args.steps} steps (batch 16 x 128 tokens, shipped corpus, seed 0); '
        f'unigram baseline {rows[0]["unigram"]:.4f}')
  print(f'| config | parameters | eval log-perplexity | ratio to dense | train tokens/s |')
  print('|---|---|---|---|---|')
  for r in rows:
    ratio = f'{r["log_perplexity"] / dense["log_perplexity"]:.3f}' if dense else 'n/a'
    print(f'| {r["name"]} | {r["params"]:,} | {r["log_perplexity"]:.4f} | {ratio} | '
          f'{r["tokens_per_s"]:,.0f} |')


if __name__ == '__main__':
  main()
