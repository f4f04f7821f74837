"""Quality of low precision on trained runs: int8 / bfloat16 weights, and bfloat16 training.

For each config (default: the quickstart and the small all-sparse Scaling
config, gin/scaling/sparse_ff_qkv_loss.gin):
  1. train it in float32 with the trainer into <output_root>/<name> (a
     finished run there is reused: the trainer's rerun trains nothing);
  2. read its weights back with `train.load_weights` and convert them with
     `tl.quantize_weights`;
  3. eval log-perplexity on the run's eval batches with float32, int8 and
     bfloat16 weights (activations float32);
  4. greedy decoding of --tokens tokens after a 16-token prompt from each of
     --prompts eval examples with float32 weights, then: on how many of those
     positions the low-precision model, fed the same tokens (teacher forced),
     picks the same greedy token; and how many tokens its own free-running
     greedy decoding shares with float32's before the first difference;
  5. with --bfloat16-training, train the config again with
     `train.compute_dtype = 'bfloat16'` and compare the eval log-perplexity.

  python benchmarks/low_precision.py [--steps N] [--configs quickstart sparse_ff_qkv_loss]
      [--bfloat16-training] [--output_root DIR]
"""

import argparse
import os
import tempfile

import gin
import jax
import jax.numpy as jnp
import numpy as np

import sparse_trax.layers as tl
from sparse_trax import decoding, experiment, trainer
from sparse_trax.train import load_weights, steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {'quickstart': os.path.join(REPO, 'gin', 'quickstart.gin'),
           'sparse_ff_qkv_loss': os.path.join(REPO, 'gin', 'scaling', 'sparse_ff_qkv_loss.gin')}
STORAGES = ('float32', 'int8', 'bfloat16')


def train_run(config_file: str, output_dir: str, steps, extra=()) -> None:
  args = ['--config_file', config_file, '--output_dir', output_dir,
          '--config', 'train.progress_bar = False', '--config', 'train.decode_length = 0']
  if steps is not None:
    args += ['--config', f'train.n_steps = {steps}', '--config', f'train.eval_every = {steps}',
             '--config', f'train.checkpoint_every = {steps}']
  for binding in extra:
    args += ['--config', binding]
  gin.clear_config()
  trainer.main(args)
  gin.clear_config()


def run_pieces(output_dir: str):
  """(eval model, predict model, inputs) of a run, built from the operative config it wrote."""
  gin.clear_config()
  experiment.parse_gin_config([os.path.join(output_dir, 'config.gin')], finalize_config=False,
                           check_unused_macros=False)
  try:
    model_fn = gin.query_parameter('train.model').scoped_configurable_fn
    inputs = gin.query_parameter('train.inputs').scoped_configurable_fn()
    vocab = inputs.tokenizer.vocab_size
    return (steps.build_model(model_fn, 'eval', vocab), steps.build_model(model_fn, 'predict', vocab),
            inputs)
  finally:
    gin.clear_config()


def weights_in(weights, storage: str):
  return weights if storage == 'float32' else tl.quantize_weights(weights, storage)


def eval_log_perplexity(eval_model, inputs, weights) -> float:
  return steps.evaluate(eval_model, steps.make_eval_step(eval_model, lm=True), weights,
                       inputs.eval_batches(lm=True), True)['eval_log_perplexity']


def measure(output_dir: str, prompts: int, tokens: int) -> dict:
  eval_model, predict, inputs = run_pieces(output_dir)
  weights = load_weights(output_dir, eval_model)
  result = {f'{storage} log-ppl': eval_log_perplexity(eval_model, inputs,
                                                      weights_in(weights, storage))
            for storage in STORAGES}
  # Prompts: the first 16 tokens of the first eval rows.
  batch = next(inputs.eval_batches(lm=True))
  prompt = np.asarray(batch['targets'][:prompts, :16], np.int32)
  reference = np.asarray(decoding.autoregressive_sample(predict, weights, prompt,
                                                        max_length=tokens))
  full = jnp.asarray(np.concatenate([prompt, reference], axis=1))
  apply = jax.jit(eval_model.apply)
  state = decoding.initial_state(eval_model, jax.ShapeDtypeStruct(full.shape, jnp.int32))
  for storage in STORAGES[1:]:
    w = weights_in(weights, storage)
    logits = apply(w, state, full)[0]
    forced = np.asarray(jnp.argmax(logits[:, 16:], axis=-1))   # position t predicts token t
    result[f'{storage} same greedy'] = float(np.mean(forced == reference))
    own = np.asarray(decoding.autoregressive_sample(predict, w, prompt, max_length=tokens))
    differs = own != reference
    first = np.where(differs.any(axis=1), differs.argmax(axis=1), tokens)
    result[f'{storage} free-running shared'] = float(first.sum() / reference.size)
  result['positions'] = int(reference.size)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
  parser.add_argument('--steps', type=int, default=None,
                      help='training steps (default: what the config says)')
  parser.add_argument('--prompts', type=int, default=8)
  parser.add_argument('--tokens', type=int, default=25)
  parser.add_argument('--bfloat16-training', action='store_true')
  parser.add_argument('--output_root', default=None)
  args = parser.parse_args()
  root = args.output_root or tempfile.mkdtemp(prefix='sparse_trax_low_precision_')
  rows = []
  for name in args.configs:
    output_dir = os.path.join(root, name)
    train_run(CONFIGS[name], output_dir, args.steps)
    row = dict(measure(output_dir, args.prompts, args.tokens), name=name)
    if args.bfloat16_training:
      bf16_dir = os.path.join(root, f'{name}_bfloat16_training')
      train_run(CONFIGS[name], bf16_dir, args.steps, ["train.compute_dtype = 'bfloat16'"])
      eval_model, _, inputs = run_pieces(bf16_dir)
      row['bfloat16-trained log-ppl'] = eval_log_perplexity(
          eval_model, inputs, load_weights(bf16_dir, eval_model))
    rows.append(row)
    print(f'  {name}: {row}', flush=True)
  print(f'\nLow precision on trained runs (runs in {root}; {rows[0]["positions"]} greedy '
        f'positions each: {args.prompts} prompts x {args.tokens} tokens)')
  print('| config | float32 log-ppl | int8 log-ppl (change) | bfloat16 log-ppl (change) | '
        'int8 same greedy | bfloat16 same greedy | int8 free-running shared | '
        'bfloat16-trained log-ppl (change) |')
  print('|---|---|---|---|---|---|---|---|')
  for r in rows:
    base = r['float32 log-ppl']
    change = lambda v, b=base: f'{v:.4f} ({(v / b - 1) * 100:+.2f}%)'  # pylint: disable=unnecessary-lambda-assignment
    trained = (change(r['bfloat16-trained log-ppl']) if 'bfloat16-trained log-ppl' in r
               else 'not run')
    print(f'| {r["name"]} | {base:.4f} | {change(r["int8 log-ppl"])} | '
          f'{change(r["bfloat16 log-ppl"])} | {r["int8 same greedy"]:.1%} | '
          f'{r["bfloat16 same greedy"]:.1%} | {r["int8 free-running shared"]:.1%} | {trained} |')


if __name__ == '__main__':
  main()
