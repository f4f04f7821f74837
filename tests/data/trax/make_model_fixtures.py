"""Writes small Trax 1.4.1 checkpoints and Trax's own outputs on fixed inputs.

Run with Trax 1.4.1 in its own venv (see ../shared/trax/README.md):

    /tmp/trax-venv/bin/python tests/data/trax/make_model_fixtures.py

For each model: `<name>/model.pkl.gz` (+ `model.weights.npy.gz`, as a Trax
training Loop writes them, after a few Adam steps so that every bias is
non-zero) or `<name>/saved.pkl.gz` (`Layer.save_to_file`), and
`<name>/expected.npz` (`saved_expected.npz`): the eval-mode logits on fixed
tokens and the tokens a predict-mode model picks greedily after a fixed
prompt. The save_to_file checkpoint holds the trained weights moved at
random, so that greedy decoding picks varied tokens.
"""

import os
import shutil
import warnings

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
warnings.filterwarnings('ignore')

import numpy as np  # pylint: disable=wrong-import-position
import trax  # pylint: disable=wrong-import-position
from trax import layers as tl  # pylint: disable=wrong-import-position
from trax import models, shapes  # pylint: disable=wrong-import-position
from trax.supervised import training  # pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENS = np.array([[3, 9, 1, 4, 11, 5, 2, 8], [7, 7, 6, 12, 1, 10, 3, 3]], np.int32)
PROMPT = [3, 9, 1]
N_GREEDY = 8


def trained_weights(model, vocab_size, folder, steps=3):
  """Trains `model` (mode 'train') a few steps with a Trax Loop writing its checkpoint."""
  def batches():
    rng = np.random.RandomState(0)
    while True:
      x = rng.randint(1, vocab_size, size=(2, TOKENS.shape[1])).astype(np.int32)
      yield x, x, np.ones_like(x, np.float32)
  task = training.TrainTask(labeled_data=batches(), loss_layer=tl.WeightedCategoryCrossEntropy(),
                            optimizer=trax.optimizers.Adam(0.05), n_steps_per_checkpoint=steps)
  loop = training.Loop(model, [task], output_dir=folder)
  loop.run(steps)
  for name in os.listdir(folder):     # keep only the checkpoint files a user would have
    if name not in ('model.pkl.gz', 'model.weights.npy.gz'):
      full = os.path.join(folder, name)
      shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
  return model.weights


def greedy(predict_model, weights):
  """Feeds 0, the prompt, then each picked token; returns the picked tokens."""
  predict_model.init(shapes.ShapeDtype((1, 1), np.int32))
  predict_model.weights = weights
  fed, picked = [0] + PROMPT, []
  for t in range(len(fed) + N_GREEDY - 1):
    token = fed[t] if t < len(fed) else picked[-1]
    logits = predict_model(np.array([[token]], np.int32))
    if t >= len(fed) - 1:
      picked.append(int(np.argmax(logits[0, -1])))
  return np.array(picked, np.int32)


def transformer_lm():
  kwargs = dict(vocab_size=13, d_model=16, d_ff=32, n_layers=2, n_heads=2, max_len=16)
  folder = os.path.join(HERE, 'transformer_lm')
  shutil.rmtree(folder, ignore_errors=True)    # a Loop would resume from an old checkpoint
  os.makedirs(folder)
  weights = trained_weights(models.TransformerLM(mode='train', **kwargs), 13, folder)
  eval_model = models.TransformerLM(mode='eval', **kwargs)
  eval_model.init(shapes.signature(TOKENS))
  eval_model.weights = weights
  logits = np.asarray(eval_model(TOKENS))
  tokens = greedy(models.TransformerLM(mode='predict', **kwargs), weights)
  np.savez(os.path.join(folder, 'expected.npz'), tokens=TOKENS, logits=logits,
           prompt=np.array(PROMPT, np.int32), greedy=tokens)
  print('transformer_lm (Loop):', logits.shape, 'greedy', tokens.tolist())
  # Randomly moved weights (varied greedy tokens) through Layer.save_to_file.
  rng = np.random.RandomState(1)
  moved = trax.fastmath.nested_map(lambda w: w + 0.3 * rng.normal(size=w.shape), weights)
  moved = trax.fastmath.nested_map(lambda w: np.asarray(w, np.float32), moved)
  eval_model.weights = moved
  logits = np.asarray(eval_model(TOKENS))
  tokens = greedy(models.TransformerLM(mode='predict', **kwargs), moved)
  eval_model.save_to_file(os.path.join(folder, 'saved.pkl.gz'),
                          input_signature=shapes.signature(TOKENS))
  np.savez(os.path.join(folder, 'saved_expected.npz'), tokens=TOKENS, logits=logits,
           prompt=np.array(PROMPT, np.int32), greedy=tokens)
  print('transformer_lm (save_to_file):', logits.shape, 'greedy', tokens.tolist())


CONFIGURABLE_LM = dict(vocab_size=14, d_model=16, d_ff=32, n_layers=2, n_heads=2, max_len=16)
CONFIGURABLE_VARIANTS = {
    'dense': {},
    'sparse_ff': dict(ff_sparsity=4),
    'moe_ff': dict(ff_sparsity=2, ff_sparsity_type='Block'),
    'sparse_qkv': dict(attention_type='MultiplicativeConvCausalAttention'),
    'sparse_loss': dict(loss_sparsity=2),
    'all_sparse': dict(ff_sparsity=4, attention_type='MultiplicativeConvCausalAttention',
                       loss_sparsity=2),
}


def configurable_transformer_lm():
  """ConfigurableTransformerLM variants, randomly initialized then moved at random,
  each written by save_to_file."""
  from trax.models.research.configurable_transformer import ConfigurableTransformerLM  # pylint: disable=import-outside-toplevel
  folder = os.path.join(HERE, 'configurable_transformer_lm')
  shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(folder)
  for index, (name, variant) in enumerate(CONFIGURABLE_VARIANTS.items()):
    kwargs = dict(CONFIGURABLE_LM, **variant)
    if 'attention_type' in kwargs:
      kwargs['attention_type'] = getattr(tl, kwargs['attention_type'])
    eval_model = ConfigurableTransformerLM(mode='eval', **kwargs)
    eval_model.init(shapes.signature(TOKENS))
    rng = np.random.RandomState(10 + index)
    moved = trax.fastmath.nested_map(
        lambda w: np.asarray(w + 0.3 * rng.normal(size=w.shape), np.float32), eval_model.weights)
    eval_model.weights = moved
    logits = np.asarray(eval_model(TOKENS))
    tokens = greedy(ConfigurableTransformerLM(mode='predict', **kwargs), moved)
    eval_model.save_to_file(os.path.join(folder, f'{name}.pkl.gz'),
                            input_signature=shapes.signature(TOKENS))
    np.savez(os.path.join(folder, f'{name}_expected.npz'), tokens=TOKENS, logits=logits,
             prompt=np.array(PROMPT, np.int32), greedy=tokens)
    print(f'configurable_transformer_lm {name}:', logits.shape, 'greedy', tokens.tolist())


SOURCE = np.array([[4, 8, 2, 9, 0, 0], [5, 3, 11, 7, 6, 1]], np.int32)   # 0: padding


def greedy_encoder_decoder(predict_model, checkpoint, source):
  """Feeds (source, token) with token 0, then each picked one; returns the picked tokens.

  The weights come from the checkpoint file (Trax's predict-mode Transformer
  nests its encoder in a Cache, so the eval weights tree does not fit it).
  """
  signature = (shapes.signature(source), shapes.ShapeDtype((1, 1), np.int32))
  predict_model.init(signature)
  predict_model.init_from_file(checkpoint, weights_only=True, input_signature=signature)
  token, picked = 0, []
  for _ in range(N_GREEDY):
    outputs = predict_model((source, np.array([[token]], np.int32)))
    logits = outputs[0] if isinstance(outputs, tuple) else outputs
    token = int(np.argmax(logits[0, -1]))
    picked.append(token)
  return np.array(picked, np.int32)


def save_moved_encoder_decoder(eval_model, rng, scale, checkpoint):
  """Moves an initialized eval-mode encoder-decoder's weights at random (normal,
  `scale`), writes them with save_to_file and returns its logits on (SOURCE, TOKENS)."""
  eval_model.weights = trax.fastmath.nested_map(
      lambda w: np.asarray(w + scale * rng.normal(size=w.shape), np.float32), eval_model.weights)
  outputs = eval_model((SOURCE, TOKENS))
  eval_model.save_to_file(checkpoint,
                          input_signature=(shapes.signature(SOURCE), shapes.signature(TOKENS)))
  return np.asarray(outputs[0] if isinstance(outputs, tuple) else outputs)


def transformer():
  """Trax's encoder-decoder Transformer, moved at random, by save_to_file."""
  kwargs = dict(input_vocab_size=12, output_vocab_size=13, d_model=16, d_ff=32,
                n_encoder_layers=2, n_decoder_layers=2, n_heads=2, max_len=16)
  folder = os.path.join(HERE, 'transformer')
  shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(folder)
  eval_model = models.Transformer(mode='eval', **kwargs)
  eval_model.init((shapes.signature(SOURCE), shapes.signature(TOKENS)))
  checkpoint = os.path.join(folder, 'saved.pkl.gz')
  logits = save_moved_encoder_decoder(eval_model, np.random.RandomState(6), 0.3, checkpoint)
  tokens = greedy_encoder_decoder(models.Transformer(mode='predict', **kwargs), checkpoint,
                                  SOURCE[1:])
  np.savez(os.path.join(folder, 'expected.npz'), source=SOURCE, tokens=TOKENS, logits=logits,
           greedy=tokens)
  print('transformer:', logits.shape, 'greedy', tokens.tolist())


CONFIGURABLE_TRANSFORMER = dict(input_vocab_size=12, output_vocab_size=14, d_model=16, d_ff=32,
                                n_encoder_layers=2, n_decoder_layers=2, n_heads=2, max_len=16)
CONFIGURABLE_TRANSFORMER_VARIANTS = {
    'sparse_ff_and_loss': dict(ff_sparsity=4, loss_sparsity=2),
    'moe_ff': dict(ff_sparsity=2, ff_sparsity_type='Block'),
}


def configurable_transformer():
  """ConfigurableTransformer variants, moved at random, by save_to_file."""
  from trax.models.research.configurable_transformer import ConfigurableTransformer  # pylint: disable=import-outside-toplevel
  folder = os.path.join(HERE, 'configurable_transformer')
  shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(folder)
  for index, (name, variant) in enumerate(CONFIGURABLE_TRANSFORMER_VARIANTS.items()):
    kwargs = dict(CONFIGURABLE_TRANSFORMER, **variant)
    eval_model = ConfigurableTransformer(mode='eval', **kwargs)
    eval_model.init((shapes.signature(SOURCE), shapes.signature(TOKENS)))
    checkpoint = os.path.join(folder, f'{name}.pkl.gz')
    logits = save_moved_encoder_decoder(eval_model, np.random.RandomState(20 + index), 0.3,
                                        checkpoint)
    tokens = greedy_encoder_decoder(ConfigurableTransformer(mode='predict', **kwargs),
                                    checkpoint, SOURCE[1:])
    np.savez(os.path.join(folder, f'{name}_expected.npz'), source=SOURCE, tokens=TOKENS,
             logits=logits, greedy=tokens)
    print(f'configurable_transformer {name}:', logits.shape, 'greedy', tokens.tolist())


def greedy_by_eval(eval_model, source):
  """Greedy tokens from an eval-mode encoder-decoder: the whole target so far is run
  again for each token (position t's logits pick token t)."""
  picked = []
  for _ in range(N_GREEDY):
    target = np.array([picked + [0]], np.int32)
    outputs = eval_model((source, target))
    logits = outputs[0] if isinstance(outputs, tuple) else outputs
    picked.append(int(np.argmax(logits[0, len(picked)])))
  return np.array(picked, np.int32)


TERRAFORMER = dict(input_vocab_size=12, output_vocab_size=14, d_model=16, d_ff=32,
                   n_encoder_layers=2, n_decoder_layers=2, n_heads=2, max_len=32)
TERRAFORMER_VARIANTS = {
    'dense': {},
    'sparse_sru': dict(ff_sparsity=4, ff_use_sru=(1, 8), loss_sparsity=2),
    'sparse_qkv': dict(encoder_decoder_attention_type='MultiplicativeConvCausalAttention',
                       ff_sparsity=4, loss_sparsity=2),
}
TERRAFORMER_SEEDS = {'dense': 1, 'sparse_sru': 1, 'sparse_qkv': 1}   # seeds whose greedy tokens vary


def terraformer():
  """ConfigurableTerraformer variants (Trax's defaults otherwise: fixed-base positions,
  SelfAttention, an encoder ending in Dense and LayerNorm), moved at random, by
  save_to_file. The greedy tokens come from Trax's eval mode (`greedy_by_eval`): its
  predict-mode SelfAttention fails under the jax installed beside it
  ("cond() got an unexpected keyword argument 'true_operand'")."""
  from trax.models.research.terraformer import ConfigurableTerraformer  # pylint: disable=import-outside-toplevel
  folder = os.path.join(HERE, 'terraformer')
  shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(folder)
  for name, variant in TERRAFORMER_VARIANTS.items():
    kwargs = dict(TERRAFORMER, **variant)
    if 'encoder_decoder_attention_type' in kwargs:
      kwargs['encoder_decoder_attention_type'] = getattr(
          tl, kwargs['encoder_decoder_attention_type'])
    eval_model = ConfigurableTerraformer(mode='eval', **kwargs)
    seed = TERRAFORMER_SEEDS[name]
    eval_model.init((shapes.signature(SOURCE), shapes.signature(TOKENS)),
                    rng=trax.fastmath.random.get_prng(seed))
    checkpoint = os.path.join(folder, f'{name}.pkl.gz')
    logits = save_moved_encoder_decoder(eval_model, np.random.RandomState(seed), 0.5, checkpoint)
    tokens = greedy_by_eval(eval_model, SOURCE[1:])
    np.savez(os.path.join(folder, f'{name}_expected.npz'), source=SOURCE, tokens=TOKENS,
             logits=logits, greedy=tokens)
    print(f'terraformer {name}:', logits.shape, 'greedy', tokens.tolist())


if __name__ == '__main__':
  import sys  # pylint: disable=import-outside-toplevel
  families = sys.argv[1:] or ['transformer_lm', 'configurable_transformer_lm', 'transformer',
                              'configurable_transformer', 'terraformer']
  for family in families:
    globals()[family]()
