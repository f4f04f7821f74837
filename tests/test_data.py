"""The data pipeline: sources, tokenizers through tensorflow-text, batching, resuming."""

import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sparse_trax import data
from sparse_trax.data import corpus


@pytest.fixture(scope='module')
def text_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp('text')
  paragraphs = corpus.kjv_paragraphs()
  train, evaluation = folder / 'train.txt', folder / 'eval.txt'
  train.write_text('\n'.join(paragraphs[:300]), encoding='utf-8')
  evaluation.write_text('\n'.join(paragraphs[300:330]), encoding='utf-8')
  return str(train), str(evaluation)


@pytest.fixture(scope='module')
def sentencepiece_inputs(text_files, tmp_path_factory):
  source = data.TextFiles(*[[p] for p in text_files])
  tokenizer = data.SentencePieceTokenizer(300, cache_dir=str(tmp_path_factory.mktemp('spm')))
  return data.Inputs(source, tokenizer, max_length=32, batch_size=4, n_eval_batches=3)


def test_kjv_text_is_read_without_importing_the_package():
  paragraphs = corpus.kjv_paragraphs()
  assert paragraphs[0].startswith('In the beginning God created the heaven and the earth.')
  assert sum(len(p) for p in paragraphs) > 4_000_000


def test_shipped_corpus_builds_offline_with_tfds(tmp_path):
  source = data.ShippedCorpus(data_dir=str(tmp_path))
  train = [ex['targets'].decode() for ex in source.dataset('train').as_numpy_iterator()]
  n_eval = sum(1 for _ in source.dataset('eval'))
  assert any(text.startswith('In the beginning God created') for text in train)
  assert 4000 < len(train) < 5000 and 200 < n_eval < 300
  assert os.path.isdir(tmp_path / 'king_james_bible' / '1.0.0')


def test_sentencepiece_round_trip_through_tensorflow_text(sentencepiece_inputs):
  tokenizer = sentencepiece_inputs.tokenizer
  assert tokenizer.vocab_size == 300
  text = 'And God said, Let there be light: and there was light.'
  ids = tokenizer.encode(text).numpy()
  assert ids.dtype == np.int32 and ids.min() > 1 and ids.max() < 300
  assert tokenizer.decode(ids) == text


def test_sentencepiece_model_is_cached_and_reused(text_files, tmp_path):
  source = data.TextFiles([text_files[0]], [text_files[1]])
  config = data.SentencePieceTokenizer(200, cache_dir=str(tmp_path))
  first = config.build(source)
  path = config.model_path(source)
  assert os.path.exists(path)
  modified = os.path.getmtime(path)
  second = config.build(source)
  assert os.path.getmtime(path) == modified
  assert first.model_sha256 == second.model_sha256


def test_sentencepiece_cache_is_keyed_by_the_training_text(text_files, tmp_path):
  """Other files with the same settings get their own tokenizer (the stale-tokenizer
  bug: keyed by source name and size only, a second corpus reused the first's pieces);
  the same text under another file name reuses the cached one."""
  config = data.SentencePieceTokenizer(200, cache_dir=str(tmp_path / 'cache'))
  first_source = data.TextFiles([text_files[0]], [text_files[1]])
  other_text = tmp_path / 'other.txt'
  other_text.write_text('\n'.join(f'{n} plus {n} makes {2 * n}; the sum is even.'
                                  for n in range(400)), encoding='utf-8')
  other_source = data.TextFiles([str(other_text)], [text_files[1]])
  first, other = config.build(first_source), config.build(other_source)
  assert config.model_path(first_source) != config.model_path(other_source)
  assert first.digest != other.digest
  assert 'makes' in other.decode(other.encode('3 plus 3 makes 6').numpy())   # no ' ⁇ '
  copy = tmp_path / 'copy.txt'
  copy.write_bytes(open(text_files[0], 'rb').read())
  copied_source = data.TextFiles([str(copy)], [text_files[1]])
  assert config.model_path(copied_source) == config.model_path(first_source)
  assert config.build(copied_source).digest == first.digest
  # Every setting is in the key too.
  assert data.SentencePieceTokenizer(200, model_type='bpe', cache_dir=str(tmp_path)).model_path(
      first_source) != config.model_path(first_source)


@pytest.mark.parametrize('content', ['', '   \n\n  \n'])
def test_sentencepiece_on_empty_text_says_so(tmp_path, content):
  empty = tmp_path / 'empty.txt'
  empty.write_text(content, encoding='utf-8')
  source = data.TextFiles([str(empty)], [str(empty)])
  with pytest.raises(ValueError, match=r"SentencePieceTokenizer: the train split of "
                                       r"'text_files' has no text to train a tokenizer on"):
    data.SentencePieceTokenizer(200, cache_dir=str(tmp_path)).build(source)


def test_byte_tokenizer_round_trip():
  tokenizer = data.ByteTokenizer().build(None)
  text = 'héllo, 123+45='
  ids = tokenizer.encode(text).numpy()
  assert ids.dtype == np.int32
  assert ids.tolist() == [b + 2 for b in text.encode('utf-8')]      # ids 0, 1: pad, EOS
  assert tokenizer.decode(ids) == text
  assert tokenizer.encode('').numpy().tolist() == []


def test_packed_batches_and_weights(sentencepiece_inputs):
  batch = next(sentencepiece_inputs.train_batches())
  assert batch['targets'].shape == (4, 32) and batch['targets'].dtype == np.int32
  np.testing.assert_array_equal(batch['weights'], 1.0)   # packed: no padding
  assert (batch['targets'] == data.tokenizers.EOS_ID).any() or batch['targets'].min() > 1


def test_training_stream_is_deterministic_and_resumable(sentencepiece_inputs):
  first = [b['targets'] for _, b in zip(range(8), sentencepiece_inputs.train_batches())]
  again = [b['targets'] for _, b in zip(range(8), sentencepiece_inputs.train_batches())]
  resumed = [b['targets'] for _, b in zip(range(3), sentencepiece_inputs.train_batches(5))]
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(first[5:], resumed):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[0], first[1])


def test_eval_batches_repeat_exactly(sentencepiece_inputs):
  a = [b['targets'] for b in sentencepiece_inputs.eval_batches()]
  b = [b['targets'] for b in sentencepiece_inputs.eval_batches()]
  assert len(a) == 3
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_unigram_baseline_is_plausible(sentencepiece_inputs):
  value = sentencepiece_inputs.unigram_log_perplexity()
  assert 3.0 < value < np.log(300)


def _examples(task, split, n):
  return [e for _, e in zip(range(n), task.examples(split))]


def test_addition_targets_are_correct_sums():
  task = data.AdditionTask(1, 12, 20, 23, n_eval_examples=30, seed=3)
  for split, (low, high) in (('train', (1, 12)), ('eval', (20, 23))):
    for inputs, targets in _examples(task, split, 30):
      x, y = inputs.rstrip('=').split('+')
      assert low <= len(x) <= high and low <= len(y) <= high
      assert int(targets[::-1]) == int(x[::-1]) + int(y[::-1])   # little-endian
  assert len(list(task.examples('eval'))) == 30


def test_copy_targets_copy_the_digits():
  task = data.CopyTask(3, 5, 8, 9, seed=1)
  for inputs, targets in _examples(task, 'train', 20):
    assert inputs == targets + '=' and 3 <= len(targets) <= 5 and targets.isdigit()


def test_task_batches_weight_only_the_answer():
  inputs = data.Inputs(data.AdditionTask(1, 6, seed=0), data.ByteTokenizer(), max_length=24,
                       batch_size=8)
  batch = next(inputs.train_batches())
  tokenizer = inputs.tokenizer
  for targets, weights in zip(batch['targets'], batch['weights']):
    text = tokenizer.decode(targets)
    question, answer = text.split('=')
    n_question = len(question) + 1
    n_answer = len(answer) + 1   # + EOS
    np.testing.assert_array_equal(weights[:n_question], 0.0)
    np.testing.assert_array_equal(weights[n_question:n_question + n_answer], 1.0)
    np.testing.assert_array_equal(weights[n_question + n_answer:], 0.0)   # padding
    np.testing.assert_array_equal(targets[n_question + n_answer:], 0)
    assert targets[n_question + n_answer - 1] == tokenizer.eos_id


def test_encoder_decoder_batches_and_length_filter():
  inputs = data.Inputs(data.CopyTask(1, 20, seed=0), data.ByteTokenizer(), max_length=12,
                       max_input_length=12, batch_size=8)
  for _, batch in zip(range(5), inputs.train_batches(lm=False)):
    assert batch['inputs'].shape == (8, 12) and batch['targets'].shape == (8, 12)
    lengths = (batch['weights'] > 0).sum(1)
    assert lengths.max() <= 12   # longer examples were dropped, not cut


def test_bucketing_pads_to_boundaries():
  inputs = data.Inputs(data.CopyTask(1, 30, seed=0), data.ByteTokenizer(), max_length=64,
                       batch_size=4, bucket_boundaries=[16, 32, 64])
  shapes = {b['targets'].shape[1] for _, b in zip(range(30), inputs.train_batches())}
  assert shapes <= {16, 32, 64} and len(shapes) >= 2


def test_tfds_mock_data_through_the_full_pipeline():
  with tfds.testing.mock_data(num_examples=16):
    source = data.TFDSSource('lm1b', data_dir='/nonexistent')
    inputs = data.Inputs(source, data.ByteTokenizer(), max_length=16, batch_size=4,
                         n_eval_batches=2)
    batch = next(inputs.train_batches())
    assert batch['targets'].shape == (4, 16)
    assert len(list(inputs.eval_batches())) == 2
    arxiv = data.TFDSSource('scientific_papers/arxiv', input_key='article',
                            target_key='abstract', data_dir='/nonexistent')
    pairs = data.Inputs(arxiv, data.ByteTokenizer(), max_length=64, batch_size=2, pack=False)
    batch = next(pairs.train_batches(lm=False))
    assert set(batch) == {'inputs', 'targets', 'weights'}


def test_unknown_tfds_name_fails_naming_it():
  with pytest.raises(ValueError, match='no_such_dataset'):
    data.TFDSSource('no_such_dataset').dataset('train')


def test_unprepared_tfds_dataset_fails_fast_without_download(tmp_path):
  with pytest.raises(FileNotFoundError, match="'lm1b' is not prepared"):
    data.TFDSSource('lm1b', data_dir=str(tmp_path)).dataset('train')


def test_missing_text_file_fails_naming_it(tmp_path):
  missing = str(tmp_path / 'nope.txt')
  with pytest.raises(FileNotFoundError, match='nope.txt'):
    data.TextFiles([missing], [missing])


def test_token_ids_outside_the_vocabulary_fail_on_the_host():
  batch = {'targets': np.array([[1, 2, 300]], np.int32), 'weights': np.ones((1, 3), np.float32)}
  with pytest.raises(ValueError, match=r"token id 300 in batch\['targets'\] at \(0, 2\) is "
                                       r'outside \[0, 258\)'):
    data.pipeline.check_ids(batch, 258)
  batch['targets'][0, 2] = -1
  with pytest.raises(ValueError, match='token id -1'):
    data.pipeline.check_ids(batch, 258)
  batch['targets'][0, 2] = 257
  data.pipeline.check_ids(batch, 258)


def test_check_reports_what_cannot_give_data(text_files):
  tokenizer = data.ByteTokenizer()
  task = data.CopyTask(train_max_digits=8, eval_min_digits=8, eval_max_digits=8)
  with pytest.raises(ValueError, match=r"no example of the train split of 'copy' fits "
                                       r'max_length=3: the first 200 are \d+ to \d+ tokens'):
    data.Inputs(task, tokenizer, max_length=3, batch_size=2).check(lm=True, max_examples=200)
  with pytest.raises(ValueError, match=r"no example of the eval split of 'copy' fits "
                                       r'max_length=12'):
    data.Inputs(task, tokenizer, max_length=24, eval_max_length=12,
                batch_size=2).check(lm=True, max_examples=200)
  data.Inputs(task, tokenizer, max_length=24, batch_size=2).check(lm=True)
  data.Inputs(data.TextFiles(*[[p] for p in text_files]), tokenizer, max_length=16,
              batch_size=2).check(lm=True)


@pytest.mark.parametrize('argument, value, message', [
    ('batch_size', 0, 'Inputs: batch_size must be >= 1, got 0'),
    ('max_length', 12.5, 'Inputs: max_length must be an int, got 12.5 (a float)'),
    ('n_eval_batches', -1, 'Inputs: n_eval_batches must be >= 1, got -1'),
])
def test_inputs_arguments_are_checked(argument, value, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    data.Inputs(data.CopyTask(), data.ByteTokenizer(), **{argument: value})


def test_span_corruption_batches_reassemble_to_the_text_and_resume(text_files):
  """Span-corrupted windows: T5's lengths, sentinels above the text ids, inputs and
  targets that give back a window of the token stream, the same batches every run."""
  from sparse_trax.data import corruption  # pylint: disable=import-outside-toplevel
  tokenizer = data.ByteTokenizer(extra_ids=40)
  inputs = data.Inputs(data.TextFiles([text_files[0]], [text_files[1]]), tokenizer,
                       max_length=24, max_input_length=64, batch_size=3, n_eval_batches=2,
                       span_corruption=data.SpanCorruption())
  raw = inputs.raw_lengths['train']
  assert corruption.corrupted_lengths(raw)[0] <= 64 and corruption.corrupted_lengths(raw)[1] <= 24
  assert corruption.corrupted_lengths(raw + 1)[0] > 64 or corruption.corrupted_lengths(raw + 1)[1] > 24
  first = inputs.check(lm=False)
  assert first['inputs'].shape == (3, 64) and first['targets'].shape == (3, 24)
  stream = np.concatenate([np.append(tokenizer.encode(line).numpy(), tokenizer.eos_id)
                           for line in open(text_files[0], encoding='utf-8').read().split('\n')])
  n_spans = corruption.noise_counts(raw)[1]
  for row in range(3):
    source = first['inputs'][row][first['inputs'][row] > 0][:-1]          # without EOS
    target = first['targets'][row][first['weights'][row] > 0][:-1]
    assert source.max() >= tokenizer.vocab_size - n_spans                # sentinels on top
    window = corruption.reassemble(source, target, vocab_size=tokenizer.vocab_size,
                                   n_sentinels=n_spans + 1)
    assert window.size == raw and window.max() < 258
    # The documents are shuffled before packing: each piece between EOS ids is text.
    for piece in np.split(window, np.flatnonzero(window == tokenizer.eos_id)):
      piece = piece[piece != tokenizer.eos_id]
      if piece.size:
        views = np.lib.stride_tricks.sliding_window_view(stream, piece.size)
        assert (views == piece).all(axis=1).any()
  again = next(inputs.train_batches(lm=False))
  np.testing.assert_array_equal(again['inputs'], first['inputs'])
  resumed = next(inputs.train_batches(2, lm=False))
  batches = inputs.train_batches(lm=False)
  third = [next(batches) for _ in range(3)][2]
  np.testing.assert_array_equal(resumed['targets'], third['targets'])
  assert '<extra_id_0>' in tokenizer.decode(first['targets'][0])
  with pytest.raises(ValueError, match='encoder-decoder'):
    next(inputs.train_batches(lm=True))
  with pytest.raises(ValueError, match='no window fits'):
    data.Inputs(data.TextFiles([text_files[0]], [text_files[1]]), tokenizer, max_length=1,
                max_input_length=2, span_corruption=data.SpanCorruption())
