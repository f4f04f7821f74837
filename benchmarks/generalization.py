"""Length generalization on addition or copying: dense Transformer vs Terraformer with SRU.

Both models have the same width and depth (d_model 128, d_ff 512, 2 layers, 4
heads) and train for the same steps on the same seeded batches of additions
with 1..L digits per operand (digits little-endian, loss on the sum only), or
(`--task copy`) of decimal numbers of 1..L digits to copy (loss on the copy).
Each is then evaluated on 1..L digits (in distribution) and on 2L..2.3L digits
(out of distribution): sequence accuracy (every digit of the sum right, by
teacher-forced argmax, which equals greedy decoding for exact match).
The paper: L = 128 and 256-300 digits at evaluation; here L is chosen so
each model trains in minutes on a 2-core CPU.

  python benchmarks/generalization.py [--task addition|copy] [--train-digits 16] [--steps 2000]
                                     [--models 0 1 2]
"""

import argparse
import json
import math
import os
import tempfile
import time

import gin

from sparse_trax import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {
    'Transformer (dense)': ['train.model = @TransformerLM', 'TransformerLM.d_model = 128',
                            'TransformerLM.d_ff = 512', 'TransformerLM.n_layers = 2',
                            'TransformerLM.n_heads = 4', 'TransformerLM.max_len = 512',
                            'TransformerLM.dropout = 0.0'],
    'Terraformer (SRU 32)': [],   # gin/terraformer/addition.gin as is
    # Trax's Terraformer default: fixed-base positions, starts moved at random in
    # training, so positions past the trained lengths are not new to the model.
    'Terraformer (SRU 32, fixed-base positions)': [
        'TerraformerLM.positional_encoding = "fixed_base"'],
}


TASKS = {'addition': 'AdditionTask', 'copy': 'CopyTask'}   # --task -> the gin source


def run(name, bindings, args, output_dir):
  source = TASKS[args.task]
  common = [f'{source}.train_max_digits = {args.train_digits}',
            f'train.n_steps = {args.steps}', f'train.eval_every = {args.steps}',
            f'train.checkpoint_every = {args.steps}', 'train.decode_length = 0',
            'train.progress_bar = False', f'{source}.n_eval_examples = 256',
            f'Inputs.max_length = {4 * args.train_digits}',
            f'Inputs.eval_max_length = {math.ceil(7 * args.train_digits * 1.15) + 8}']
  low, high = 2 * args.train_digits, math.ceil(2.3 * args.train_digits)
  config = os.path.join(REPO, 'gin', 'terraformer', f'{args.task}.gin')

  def trainer_run(extra):
    gin.clear_config()
    flags = ['--config_file', config, '--output_dir', output_dir]
    for binding in bindings + common + extra:
      flags += ['--config', binding]
    result = trainer.main(flags)
    gin.clear_config()
    return result

  start = time.perf_counter()
  out_of_distribution = trainer_run([f'{source}.eval_min_digits = {low}',
                                     f'{source}.eval_max_digits = {high}'])
  minutes = (time.perf_counter() - start) / 60
  # Rerunning at the final step resumes there and only evaluates.
  in_distribution = trainer_run([f'{source}.eval_min_digits = 1',
                                 f'{source}.eval_max_digits = {args.train_digits}'])
  return {'name': name, 'minutes': minutes,
          'in': in_distribution['eval_sequence_accuracy'],
          'out': out_of_distribution['eval_sequence_accuracy'],
          'in_tokens': in_distribution['eval_accuracy'],
          'out_tokens': out_of_distribution['eval_accuracy'], 'range': (low, high)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--task', choices=sorted(TASKS), default='addition')
  parser.add_argument('--train-digits', dest='train_digits', type=int, default=16)
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--output_root', default=None)
  parser.add_argument('--models', nargs='+', type=int, default=list(range(len(MODELS))),
                      help='which models to run, by index: ' +
                      ', '.join(f'{i} {name}' for i, name in enumerate(MODELS)))
  args = parser.parse_args()
  root = args.output_root or tempfile.mkdtemp(prefix='sparse_trax_generalization_')
  names = list(MODELS)
  rows = [run(names[i], MODELS[names[i]], args, os.path.join(root, str(i)))
          for i in args.models]
  low, high = rows[0]['range']
  print(f'\n{args.task.capitalize()}, trained on 1..{args.train_digits} digits for '
        f'{args.steps} steps (batch 32, seed 0); 256 eval examples per range')
  print(f'| model | train minutes | sequence acc. 1..{args.train_digits} digits | '
        f'sequence acc. {low}..{high} digits | token acc. {low}..{high} |')
  print('|---|---|---|---|---|')
  for r in rows:
    print(f'| {r["name"]} | {r["minutes"]:.1f} | {r["in"]:.3f} | {r["out"]:.3f} | '
          f'{r["out_tokens"]:.3f} |')
  print(json.dumps(rows))


if __name__ == '__main__':
  main()
