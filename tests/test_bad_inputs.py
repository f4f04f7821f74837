"""Bad input from a user gets one line naming the argument and what is allowed
(#25 item 6): decoding arguments, layer constructors, damaged Trax files."""

import gzip
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl
from sparse_trax import decoding, models
from sparse_trax.compat import trax_files

VOCAB = 40


@pytest.fixture(scope='module')
def predict_lm():
  model = models.TransformerLM(VOCAB, 16, 32, 1, 2, max_len=32, dropout=0.0, mode='predict')
  weights, _ = model.init(jax.ShapeDtypeStruct((1, 1), jnp.int32), rng=jax.random.key(0))
  return model, weights


@pytest.mark.parametrize('prefix, kwargs, message', [
    ([[5.5, 6.0]], {}, r'prefix\[0\] must hold integer token ids, got dtype float64'),
    (np.array([[5.5, 6.0]]), {}, 'prefix must hold integer token ids, got dtype float64'),
    ('In the beginning', {}, r"prefix is text \('In the beginning'\); decoding takes token ids: "
                             r'tokenize it first'),
    (['In the beginning'], {}, 'prefix is text'),
    ([[5, 6]], {'eos_id': 99999}, 'autoregressive_sample: eos_id must be < the vocabulary '
                                  f'size {VOCAB}, got 99999'),
    ([[5, 6]], {'eos_id': -1}, 'autoregressive_sample: eos_id must be >= 0, got -1'),
    ([[5, 6]], {'top_k': 5000, 'temperature': 1.0},
     f'autoregressive_sample: top_k must be <= the vocabulary size {VOCAB}, got 5000'),
    ([[5, 6]], {'top_k': 0}, 'autoregressive_sample: top_k must be >= 1, got 0'),
    ([[5, 6]], {'temperature': '1'}, "autoregressive_sample: temperature must be a number"),
    ([[5, 6]], {'temperature': -0.5}, 'autoregressive_sample: temperature must be >= 0.0'),
])
def test_decoding_arguments_are_checked_before_any_work(predict_lm, prefix, kwargs, message):
  model, weights = predict_lm
  with pytest.raises(ValueError, match=message):
    decoding.autoregressive_sample(model, weights, prefix, max_length=2, **kwargs)


def test_beam_search_checks_eos_id(predict_lm):
  model, weights = predict_lm
  with pytest.raises(ValueError, match='beam_search: eos_id must be < the vocabulary size'):
    decoding.beam_search(model, weights, [[5, 6]], beam_size=2, max_length=2, eos_id=VOCAB)


def test_integer_lists_still_decode(predict_lm):
  model, weights = predict_lm
  ids = decoding.autoregressive_sample(model, weights, [np.array([5, 6], np.int64)],
                                       max_length=2, eos_id=1)
  assert ids[0].dtype == np.int32


@pytest.mark.parametrize('make, message', [
    (lambda: tl.Dense(0), 'Dense: n_units must be >= 1, got 0'),
    (lambda: tl.Dense('8'), r"Dense: n_units must be an int, got '8' \(a str\)"),
    (lambda: tl.Dense(8, use_bias='yes'), 'Dense: use_bias must be True or False'),
    (lambda: tl.SparseFF(-4), 'SparseFF: d_ff must be >= 1, got -4'),
    (lambda: tl.SparseFF(64, n_elements_in_block=0),
     'SparseFF: n_elements_in_block must be >= 1, got 0'),
    (lambda: tl.Embedding(10, 2.5), r'Embedding: d_feature must be an int, got 2.5 \(a float\)'),
    (lambda: tl.Dropout(1.5), r'Dropout: rate must be < 1.0, got 1.5'),
    (lambda: tl.Dropout(0.1, mode='training'), "Dropout: mode must be one of"),
    (lambda: tl.CausalAttention(16, n_heads=0), 'CausalAttention: n_heads must be >= 1'),
    (lambda: tl.LSHSelfAttention(chunk_len=-1), 'LSHSelfAttention: chunk_len must be >= 1'),
    (lambda: tl.SRU(0), 'SRU: n_units must be >= 1'),
])
def test_layer_constructors_check_their_numbers(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_layer_constructors_keep_their_zero_and_negative_uses():
  tl.LSHSelfAttention(hash_seed=0, n_chunks_before=0)
  tl.Concatenate(axis=-1)
  tl.SRU(4, forget_bias=-1.0)
  tl.Dropout(0.0)


def test_truncated_trax_checkpoint_names_the_file(tmp_path):
  data = gzip.compress(pickle.dumps({'flat_weights': [np.zeros(3)], 'step': 1}))
  truncated_gzip = tmp_path / 'model.pkl.gz'
  truncated_gzip.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=f'{truncated_gzip} is truncated'):
    trax_files.read_checkpoint(str(truncated_gzip))
  truncated_pickle = tmp_path / 'other.pkl.gz'
  truncated_pickle.write_bytes(gzip.compress(pickle.dumps({'flat_weights': []})[:12]))
  with pytest.raises(ValueError, match=f'{truncated_pickle} is not a whole Trax checkpoint'):
    trax_files.read_checkpoint(str(truncated_pickle))
