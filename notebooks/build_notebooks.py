"""Writes the notebooks in this folder from the cell texts below (outputs stripped).

  python notebooks/build_notebooks.py

Edit the cells here, not in the .ipynb files, and rerun; tests/test_notebooks.py
executes every notebook top to bottom.
"""

import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

SETTINGS = '''\
import os
# The tests run every notebook small (SPARSE_TRAX_NOTEBOOK_SMALL=1, a few seconds of
# training); unset it for the real run.
SMALL = os.environ.get('SPARSE_TRAX_NOTEBOOK_SMALL', '0') == '1'
'''

COMPOSE = [
    new_markdown_cell('''\
# Compose an architecture from combinators

`sparse_trax` layers are small immutable objects with pure `init` / `apply`
functions over explicit weight pytrees. This notebook builds a decoder block that
is not in the library: **sparse QKV attention** (a multiplicative layer and a
convolution give Q, K, V), then a **sparse feed-forward** (one active unit per
block of 16) beside a **low-rank SRU** branch (Terraformer). It shows the model
summary, runs it, trains it for a few steps on the shipped corpus (the King James
Bible) and decodes a sample.'''),
    new_code_cell(SETTINGS + '''
import jax
import jax.numpy as jnp

import sparse_trax.layers as tl

D_MODEL, D_FF, N_HEADS, MAX_LEN = 64, 256, 4, 128'''),
    new_markdown_cell('''\
## The block

Comments follow the data stack: `# x -> x` says what the layer takes from the
top of the stack and what it leaves there. `Residual` adds a shortcut,
`Branch` runs layers on copies of the same input, `Add` sums the top two items.'''),
    new_code_cell('''\
def SparseBlock(mode):
  """x [batch, length, D_MODEL] -> same: sparse-QKV attention, sparse FF + SRU branch."""
  attention = tl.MultiplicativeConvCausalAttention(
      D_MODEL, N_HEADS, sparsity=8, max_len=MAX_LEN, mode=mode)
  sparse_ff = tl.Serial(tl.LayerNorm(),
                        tl.SparseFF(D_FF, n_elements_in_block=16, mode=mode))
  sru = tl.Serial(tl.LayerNorm(), tl.Dense(32), tl.SRU(32, mode=mode), tl.Dense(D_MODEL))
  return tl.Serial(
      tl.Residual(tl.LayerNorm(), attention),   # x -> x
      tl.Residual(tl.Branch(sparse_ff, sru),    # x -> ff sru
                  tl.Add()),                    # ff sru -> x (plus the shortcut)
  )


def SparseLM(vocab_size, mode='train', n_layers=2):
  """Token ids [batch, length] -> logits [batch, length, vocab_size]."""
  return tl.Serial(
      tl.ShiftRight(mode=mode),                      # ids -> ids (next-token targets)
      tl.Embedding(vocab_size, D_MODEL),             # ids -> x
      tl.PositionalEncoding(MAX_LEN, mode=mode),     # x -> x
      [SparseBlock(mode) for _ in range(n_layers)],  # x -> x
      tl.LayerNorm(),
      tl.Dense(vocab_size),                          # x -> logits
  )'''),
    new_markdown_cell('''\
## Initialize, summarize, run

`init` traces the model abstractly, so it also tells shapes without computing.
`summary` lists every weight with its path, the total, and the bytes a decoded
token reads: the sparse FF reads one row of W1 and W2 per block, not all of them.'''),
    new_code_cell('''\
from sparse_trax.data import ByteTokenizer, Inputs, ShippedCorpus

inputs = Inputs(ShippedCorpus(), ByteTokenizer(), max_length=64, batch_size=8,
                n_eval_batches=2)
vocab_size = inputs.tokenizer.vocab_size

model = SparseLM(vocab_size, mode='eval')
tokens = jnp.zeros((2, 32), jnp.int32)
weights, state = model.init(tokens, rng=jax.random.key(0))
_ = tl.summary(model, weights)'''),
    new_code_cell('''\
logits, _ = model.apply(weights, state, tokens)
print('logits:', logits.shape)

# A wrong input names the layer, its path in the model and the shapes it got.
try:
  model.apply(weights, state, jnp.zeros((2, 32, 3)))
except tl.LayerError as error:
  print(str(error).splitlines()[0])'''),
    new_markdown_cell('''\
## Train on the shipped corpus

`sparse_trax.train.train` takes any model function with a `mode` argument (the
vocabulary size is filled in from the tokenizer). It checkpoints, evaluates,
shows a progress bar and returns the final metrics and the weights.'''),
    new_code_cell('''\
import tempfile

from sparse_trax.train import train

result = train(tempfile.mkdtemp(prefix='compose_'), model=SparseLM, inputs=inputs,
               n_steps=6 if SMALL else 600, eval_every=3 if SMALL else 200,
               checkpoint_every=3 if SMALL else 200, log_every=5, decode_length=0)
print(f"eval log-perplexity {result['eval_log_perplexity']:.3f} "
      f"(unigram baseline {result['unigram_log_perplexity']:.3f})")'''),
    new_markdown_cell('''\
## Decode a sample

The same weights run in `'predict'` mode: every layer keeps its cache in state
(attention keys and values, the convolution's history, the SRU carry), and the
whole generation is one jitted `lax.while_loop`.'''),
    new_code_cell('''\
import numpy as np

from sparse_trax import decoding

predict = SparseLM(vocab_size, mode='predict')
prompt = np.asarray(inputs.tokenizer.encode('And God said'))[None, :]
continuation = decoding.autoregressive_sample(
    predict, result['weights'], prompt, max_length=48, temperature=0.8,
    rng=jax.random.key(1), eos_id=inputs.tokenizer.eos_id)
print(repr(inputs.tokenizer.decode(np.concatenate([prompt[0], continuation[0]]))))'''),
]

DECODING = [
    new_markdown_cell('''\
# Dense vs sparse decoding speed

Decoding one sequence is bound by reading the weights from memory. Sparse FF
reads one row of W1 and W2 per block of units; sparse QKV replaces the four
d x d attention matrices by thin multiplicative layers and small convolutions.
Here we time one decoded token (batch 1, float32, random weights) for dense,
sparse FF and sparse FF+QKV models as d_ff grows, next to each one's floor:
the bytes it must read divided by the memory bandwidth measured with a large
matrix-vector product. `benchmarks/decode_speed.py` is the full benchmark.'''),
    new_code_cell(SETTINGS + '''
import statistics
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

import sparse_trax.layers as tl
from sparse_trax import decoding, models

D_FFS = [256, 512] if SMALL else [1024, 2048, 4096, 8192]
N_LAYERS, VOCAB, TOKENS = (2, 1000, 8) if SMALL else (6, 32000, 32)
VARIANTS = {
    'dense': {},
    'sparse FF': dict(ff_sparsity=32),
    'sparse FF+QKV': dict(ff_sparsity=32, attention_type='multconv', attention_sparsity=16),
}'''),
    new_code_cell('''\
def bandwidth(n=4096 if SMALL else 16384, repeats=7):
  """Bytes per second reading an [n, n] float32 matrix in a matrix-vector product."""
  matrix = jnp.ones((n, n), jnp.float32)
  matvec = jax.jit(lambda m: m @ jnp.ones((n,), jnp.float32))
  matvec(matrix).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matvec(matrix).block_until_ready()
    times.append(time.perf_counter() - start)
  return n * n * 4 / statistics.median(times)


def time_per_token(d_ff, knobs):
  """(median seconds per decoded token, bytes a token reads) for one model."""
  d_model = d_ff // 4
  model = models.ScalingTransformerLM(VOCAB, d_model, d_ff, N_LAYERS, n_heads=8,
                                      max_len=256, mode='predict', **knobs)
  signature = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  weights = jax.jit(lambda: model.init(signature, rng=jax.random.key(0))[0])()
  state = decoding.initial_state(model, signature)
  token, times = jnp.zeros((1,), jnp.int32), []
  for step in range(4 + TOKENS):    # the first calls compile and warm up
    start = time.perf_counter()
    token, _, state = decoding.decode_step(model, weights, state, token, None,
                                           jax.random.key(1), temperature=0.0, top_k=None)
    token.block_until_ready()
    if step >= 4:
      times.append(time.perf_counter() - start)
  cost = tl.decode_cost(model, weights, state)
  return statistics.median(times), cost['total']


bytes_per_second = bandwidth()
print(f'memory bandwidth: {bytes_per_second / 1e9:.1f} GB/s')
results = {name: [time_per_token(d_ff, knobs) for d_ff in D_FFS]
           for name, knobs in VARIANTS.items()}
for name, rows in results.items():
  print(name, ['%.2f ms' % (1e3 * seconds) for seconds, _ in rows])'''),
    new_code_cell('''\
figure, axis = plt.subplots(figsize=(7, 4.5))
for (name, rows), color in zip(results.items(), ['C0', 'C1', 'C2']):
  axis.plot(D_FFS, [1e3 * s for s, _ in rows], 'o-', color=color, label=f'{name}: measured')
  axis.plot(D_FFS, [1e3 * b / bytes_per_second for _, b in rows], '--', color=color,
            label=f'{name}: bandwidth floor')
axis.set_xscale('log', base=2)
axis.set_yscale('log')
axis.set_xlabel('d_ff (d_model = d_ff / 4)')
axis.set_ylabel('ms per decoded token')
axis.set_title(f'Unbatched decoding, {N_LAYERS} layers, vocab {VOCAB}, float32')
axis.legend(fontsize=8)
plt.show()'''),
    new_markdown_cell('''\
The gap between dense and sparse widens with d_ff: the dense floor grows with
d_model x d_ff, the sparse FF's with d_model x d_ff / 32. At small widths fixed
per-operation costs dominate and the floors are not reached.'''),
]

GIN = [
    new_markdown_cell('''\
# Experiments from gin files

Every experiment in `gin/` is a gin file: a model, data, an optimizer and the
training settings. The trainer entrypoint (`trainer --config_file ...
--config 'binding'`) and `sparse_trax.trainer.main` take the same arguments. Here we
run the dense and the sparse-FF Scaling Transformer configs, override bindings
on the command line, and plot their training curves from `metrics.jsonl`.'''),
    new_code_cell(SETTINGS + '''
import json
import tempfile

import gin
import matplotlib.pyplot as plt

from sparse_trax import trainer

print(open('../gin/scaling/sparse_ff.gin').read())'''),
    new_code_cell('''\
# Bindings override what the files say, exactly as `--config` does on the command line.
overrides = ['train.n_steps = 300', 'train.eval_every = 100', 'train.checkpoint_every = 100',
             'train.log_every = 10', 'train.decode_length = 16']   # about 2 minutes each
if SMALL:   # a tiny model and byte-level data so the test runs in seconds
  overrides = ['train.n_steps = 4', 'train.eval_every = 2', 'train.checkpoint_every = 4',
               'train.log_every = 1', 'train.decode_length = 0',
               'ScalingTransformerLM.d_model = 32', 'ScalingTransformerLM.d_ff = 128',
               'ScalingTransformerLM.n_layers = 1', 'Inputs.tokenizer = @ByteTokenizer()',
               'Inputs.batch_size = 4', 'Inputs.max_length = 32', 'Inputs.n_eval_batches = 1']

runs = {}
for name in ('dense', 'sparse_ff'):
  output_dir = tempfile.mkdtemp(prefix=f'{name}_')
  gin.clear_config()
  args = ['--config_file', f'../gin/scaling/{name}.gin', '--output_dir', output_dir]
  for binding in overrides:
    args += ['--config', binding]
  trainer.main(args)
  runs[name] = output_dir
gin.clear_config()'''),
    new_code_cell('''\
def read_metrics(output_dir):
  with open(f'{output_dir}/metrics.jsonl', encoding='utf-8') as f:
    return [json.loads(line) for line in f]


figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
for name, output_dir in runs.items():
  records = read_metrics(output_dir)
  steps = [r for r in records if 'loss' in r]
  evals = [r for r in records if 'eval_loss' in r]
  left.plot([r['step'] for r in steps], [r['loss'] for r in steps], label=name)
  right.plot([r['step'] for r in evals], [r['eval_log_perplexity'] for r in evals], 'o-',
             label=name)
left.set(xlabel='step', ylabel='training loss (nats/token)', title='Training')
right.set(xlabel='step', ylabel='eval log-perplexity', title='Evaluation')
left.legend()
right.legend()
plt.show()'''),
    new_code_cell('''\
# The operative config (every value a run used) is saved next to its metrics.
print(open(f"{runs['sparse_ff']}/config.gin").read()[:1200])'''),
]

NOTEBOOKS = {
    '01_compose_an_architecture.ipynb': COMPOSE,
    '02_sparse_decoding.ipynb': DECODING,
    '03_gin_experiments.ipynb': GIN,
}


def main():
  for name, cells in NOTEBOOKS.items():
    for i, cell in enumerate(cells):   # stable ids: rebuilding changes nothing
      cell['id'] = f'cell-{i}'
    notebook = new_notebook(cells=cells, metadata={
        'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'},
        'language_info': {'name': 'python'}})
    nbformat.write(notebook, os.path.join(HERE, name))
    print('wrote', name)


if __name__ == '__main__':
  main()
