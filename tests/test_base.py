"""The layer contract: abstract init, purity under jit/grad, rngs, errors, summary."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import sparse_trax.layers as tl
from conftest import sig


def test_init_uses_abstract_evaluation_only():
  seen = []

  def record(x):
    seen.append(isinstance(x, jax.core.Tracer))
    return x * 2
  model = tl.Serial(tl.Dense(8), tl.Fn('Record', record), tl.Dense(3))
  # A billion-row batch: any real computation on inputs would not fit.
  weights, state = model.init(sig(10**9, 4), rng=jax.random.key(0))
  assert seen and all(seen)
  assert weights[0]['w'].shape == (8, 4)
  assert weights[2]['w'].shape == (3, 8)
  assert model.output_signature(sig(10**9, 4)).shape == (10**9, 3)


def test_init_accepts_tuple_signature_and_arrays():
  model = tl.Serial(tl.Add(), tl.Dense(2))
  weights, _ = model.init((sig(3, 4), jnp.ones((3, 4))), rng=jax.random.key(0))
  assert weights[1]['w'].shape == (2, 4)


def test_apply_under_jit_and_grad():
  model = tl.Serial(tl.Dense(8), tl.Relu(), tl.Dense(1), tl.Mean(axis=0))
  weights, state = model.init(sig(5, 3), rng=jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (5, 3))
  eager = model.apply(weights, state, x)[0]
  jitted = jax.jit(model.apply)(weights, state, x)[0]
  np.testing.assert_allclose(eager, jitted, rtol=1e-6)
  grads = jax.grad(lambda w: jnp.sum(model.apply(w, state, x)[0]))(weights)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(weights)
  assert float(jnp.abs(grads[2]['w']).sum()) > 0


def test_vmap_over_apply():
  model = tl.Dense(4)
  weights, state = model.init(sig(3), rng=jax.random.key(0))
  xs = jax.random.normal(jax.random.key(1), (7, 3))
  out = jax.vmap(lambda x: model.apply(weights, state, x)[0])(xs)
  np.testing.assert_allclose(out, xs @ weights['w'].T + weights['b'], rtol=1e-5)


def test_gradient_matches_finite_differences():
  model = tl.Serial(tl.Dense(8), tl.LayerNorm(), tl.CausalAttention(8, n_heads=2),
                    tl.Dense(3), tl.Mean(axis=None))
  weights, state = model.init(sig(2, 5, 4), rng=jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (2, 5, 4))
  check_grads(lambda w, x: model.apply(w, state, x)[0], (weights, x), order=1,
              modes=['rev'], atol=2e-2, rtol=2e-2, eps=1e-2)


def test_adding_a_layer_keeps_earlier_initial_weights():
  layers = [tl.Dense(8), tl.Relu(), tl.Dense(5)]
  short = tl.Serial(*layers)
  longer = tl.Serial(*layers, tl.Dense(2))
  w_short, _ = short.init(sig(3, 4), rng=jax.random.key(7))
  w_long, _ = longer.init(sig(3, 4), rng=jax.random.key(7))
  for a, b in zip(jax.tree_util.tree_leaves(w_short), jax.tree_util.tree_leaves(w_long[:3])):
    np.testing.assert_array_equal(a, b)


def test_sublayer_rng_is_fold_in_of_index():
  model = tl.Serial(tl.Relu(), tl.Dense(3))
  weights, _ = model.init(sig(2, 4), rng=jax.random.key(5))
  alone, _ = tl.Dense(3).init(sig(2, 4), rng=jax.random.fold_in(jax.random.key(5), 1))
  np.testing.assert_array_equal(weights[1]['w'], alone['w'])


def test_layers_are_immutable():
  dense = tl.Dense(3)
  with pytest.raises(AttributeError, match='immutable'):
    dense.n_units = 4


def test_bad_mode_is_rejected():
  with pytest.raises(ValueError, match='mode'):
    tl.Dropout(0.1, mode='training')


def test_predict_mixed_with_another_mode_fails_at_construction_naming_the_layer():
  with pytest.raises(ValueError, match=r"Serial \(made at .*test_base.py:\d+\) mixes 'predict' "
                                       r"with 'train': Serial/1/Residual/1/Dropout .* is in "
                                       r"'train' mode while Serial/0/CausalAttention is in "
                                       r"'predict'"):
    tl.Serial(tl.CausalAttention(8, 2, mode='predict'),
              tl.Residual(tl.Dense(8), tl.Dropout(0.1)))
  # Layers that take no mode (Dense, Relu) mix with anything; an encoder run once under
  # Cache is built in 'eval' mode inside a 'predict' model.
  tl.Serial(tl.Dense(8), tl.Relu(), tl.CausalAttention(8, 2, mode='predict'))
  tl.Serial(tl.Cache(tl.Serial(tl.Attention(8, 2, mode='eval')), mode='predict'),
            tl.CausalAttention(8, 2, mode='predict'))
  with pytest.raises(ValueError, match="build it in 'eval' mode, not \\['train'\\]"):
    tl.Cache(tl.Dropout(0.1, mode='train'), mode='predict')


def _error_of(model, inputs, signature=None):
  signature = signature if signature is not None else jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), inputs)
  weights, state = model.init(signature, rng=jax.random.key(0))
  with pytest.raises(tl.LayerError) as info:
    model.apply(weights, state, inputs)
  return info.value


def test_error_wrong_rank_names_path_and_shapes():
  model = tl.Serial(tl.Dense(8), tl.CausalAttention(8, 2))
  error = _error_of(model, jnp.ones((2, 8)), signature=sig(2, 5, 8))
  assert error.path == 'Serial/1/CausalAttention'
  assert 'float32[2, 8]' in str(error)
  assert 'Serial/1/CausalAttention' in str(error)
  assert 'test_base.py' in error.created_at


def test_error_wrong_last_dimension():
  model = tl.Serial(tl.Relu(), tl.Residual(tl.Dense(4)))
  error = _error_of(model, jnp.ones((2, 5)), signature=sig(2, 4))
  assert error.path == 'Serial/1/Residual/0/Dense'
  assert 'float32[2, 5]' in str(error)
  assert 'last input dimension must be 4' in str(error)


def test_error_when_init_fails_names_path():
  model = tl.Serial(tl.Dense(6), tl.CausalAttention(8, 2))
  with pytest.raises(tl.LayerError) as info:
    model.init(sig(2, 5, 3), rng=jax.random.key(0))
  assert info.value.path == 'Serial/1/CausalAttention'
  assert info.value.phase == 'init'
  assert 'float32[2, 5, 6]' in str(info.value)


def test_error_embedding_wrong_dtype():
  model = tl.Serial(tl.Embedding(10, 4), tl.Dense(2))
  with pytest.raises(tl.LayerError) as info:
    model.init(sig(2, 3), rng=jax.random.key(0))
  assert info.value.path == 'Serial/0/Embedding'
  assert 'integer' in str(info.value) and 'float32[2, 3]' in str(info.value)
  weights, state = model.init(sig(2, 3, dtype=jnp.int32), rng=jax.random.key(0))
  with pytest.raises(tl.LayerError, match='integer'):
    model.apply(weights, state, jnp.ones((2, 3)))


def test_error_serial_given_too_few_inputs():
  model = tl.Serial(tl.Dense(4), tl.Add())
  assert model.n_in == 2
  weights, state = model.init((sig(2, 4), sig(2, 4)), rng=jax.random.key(0))
  with pytest.raises(tl.LayerError) as info:
    model.apply(weights, state, jnp.ones((2, 4)))
  assert info.value.path == 'Serial'
  assert 'expected 2 inputs, got 1' in str(info.value)


def test_error_fn_with_default_arguments():
  with pytest.raises(tl.LayerError) as info:
    tl.Fn('Scale', lambda x, factor=2.0: x * factor)
  assert 'Scale' in str(info.value) and 'factor' in str(info.value)
  assert 'test_base.py' in info.value.created_at


def test_error_inside_jit_keeps_path():
  model = tl.Serial(tl.Dense(4), tl.Dense(2))
  weights, state = model.init(sig(3, 5), rng=jax.random.key(0))
  with pytest.raises(tl.LayerError) as info:
    jax.jit(model.apply)(weights, state, jnp.ones((3, 6)))
  assert info.value.path == 'Serial/0/Dense'


def test_summary_lists_paths_shapes_and_total():
  model = tl.Serial(tl.Dense(8), tl.Relu(), tl.Residual(tl.LayerNorm()))
  weights, _ = model.init(sig(2, 4), rng=jax.random.key(0))
  lines = []
  text = tl.summary(model, weights, print_fn=lines.append)
  assert lines == [text]
  assert 'Serial/0/Dense/w' in text and '8x4' in text
  assert 'Serial/2/Residual/0/LayerNorm/scale' in text
  assert text.splitlines()[-2].split()[-1] == f'{4 * 8 + 8 + 8 + 8:,}'
  assert 'a decoded token reads 224 bytes of weights' in text
  assert tl.count_parameters(weights) == 56
  paths = [p for p, _ in tl.named_weights(model, weights)]
  assert paths == ['Serial/0/Dense/b', 'Serial/0/Dense/w',
                   'Serial/2/Residual/0/LayerNorm/bias', 'Serial/2/Residual/0/LayerNorm/scale']


def test_importing_layers_does_not_import_tensorflow_or_gin():
  code = ('import sys, sparse_trax.layers, sparse_trax.models, sparse_trax.decoding; '
          'print("tensorflow" in sys.modules, "gin" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       check=True).stdout.split()
  assert out == ['False', 'False']
