"""Every gin file parses; the small Scaling configs keep the dense parameter count."""

import glob
import os

import gin
import jax
import jax.numpy as jnp
import pytest

import sparse_trax.layers as tl
from sparse_trax import gin_config  # noqa: F401  (registers the configurables)
from sparse_trax import gin_files
from sparse_trax import experiment
from sparse_trax.train.steps import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_FILES = sorted(glob.glob(os.path.join(REPO, 'gin', '**', '*.gin'), recursive=True))


def parse(config_file, check_unused_macros=True):
  gin.clear_config()
  experiment.parse_gin_config([config_file], finalize_config=False,
                           check_unused_macros=check_unused_macros)


def is_experiment(config_file):
  try:
    gin.query_parameter('train.model')
    return True
  except ValueError:
    return False


@pytest.mark.parametrize('config_file', GIN_FILES, ids=lambda p: os.path.relpath(p, REPO))
def test_gin_file_parses(config_file):
  # Fragments (sizes, models, data) bind macros for the experiments that include them;
  # an experiment must use every macro it binds.
  try:
    parse(config_file, check_unused_macros=False)
    if is_experiment(config_file):
      assert not gin_files.unused_macros([config_file]), config_file
  finally:
    gin.clear_config()


def parameters(config_file):
  parse(config_file)
  try:
    model = build_model(gin.query_parameter('train.model').scoped_configurable_fn, 'eval',
                        gin.query_parameter('SentencePieceTokenizer.vocab_size'))
    shapes = jax.eval_shape(lambda: model.init(jax.ShapeDtypeStruct((1, 8), jnp.int32),
                                               rng=jax.random.key(0))[0])
    return tl.count_parameters(shapes)
  finally:
    gin.clear_config()


@pytest.mark.parametrize('variant', ['sparse_ff', 'sparse_qkv', 'sparse_ff_qkv',
                                     'sparse_ff_qkv_loss', 'moe'])
def test_small_sparse_configs_within_5_percent_of_dense(variant):
  dense = parameters(os.path.join(REPO, 'gin', 'scaling', 'dense.gin'))
  sparse = parameters(os.path.join(REPO, 'gin', 'scaling', f'{variant}.gin'))
  assert abs(sparse / dense - 1) < 0.05, (variant, sparse, dense)


def test_large_configs_have_the_paper_sizes():
  dense = parameters(os.path.join(REPO, 'gin', 'scaling', 'c4_large.gin'))
  qkv = parameters(os.path.join(REPO, 'gin', 'scaling', 'c4_large_sparse_qkv.gin'))
  assert 360e6 < dense < 375e6     # 24 decoder layers of d 1024, d_ff 4096, vocab 32k
  assert abs(qkv / dense - 1) < 0.05
