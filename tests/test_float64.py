"""The dtype contract in float64 (#26 item 5): statistics, softmax and carries
accumulate in the input's dtype when it is wider than float32, and every layer
family's gradient matches finite differences at 1e-6.

JAX's float64 mode is process-wide (`JAX_ENABLE_X64`), so the checks run in
their own process (`float64_checks.py`)."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.slow       # one 30 s process: scheduled first


@pytest.fixture(scope='module')
def results():
  env = dict(os.environ, JAX_ENABLE_X64='1', JAX_PLATFORMS='cpu')
  finished = subprocess.run([sys.executable, os.path.join(HERE, 'float64_checks.py')], env=env,
                            capture_output=True, text=True, check=True, timeout=600)
  return json.loads(finished.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('name', ['layer_norm', 'softmax', 'log_softmax', 'sru_carry'])
def test_float64_inputs_accumulate_in_float64(results, name):
  dtype, error = results[name]
  assert dtype == 'float64'
  # float32 statistics / softmax / carry were off by 7e-4, 1e-8, 6e-7, 2e-7 here.
  assert error < 1e-9, (name, error)


@pytest.mark.parametrize('family', ['dense', 'layer_norm', 'causal_attention', 'sru',
                                    'sparse_ff', 'sparse_qkv_attention', 'lsh_attention',
                                    'reversible_with_layer_norm'])
def test_float64_gradients_match_finite_differences(results, family):
  assert results['gradients'][family] < 1e-6, results['gradients']
