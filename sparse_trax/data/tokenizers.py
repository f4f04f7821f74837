"""Tokenizers: SentencePiece (trained offline, applied by tensorflow-text) and bytes.

Every tokenizer reserves id 0 for padding and id 1 for end-of-sequence.
`build(source)` returns a ready tokenizer with `encode` (a TF op on a string
scalar -> int32 ids), `decode` (ids -> Python str) and `vocab_size`.
`extra_ids` reserves that many ids above the text's (as T5's vocabularies do,
for span corruption's sentinels): `decode` shows id vocab_size - 1 - k as
`<extra_id_k>`. A built tokenizer's `digest` (SHA-256 hex) identifies it:
runs record it and refuse to resume with another.
"""

import hashlib
import io
import os
import sys
from typing import Iterator, Optional

import numpy as np
import sentencepiece

from sparse_trax import arguments
from sparse_trax.data import sources
from sparse_trax.data import tf_setup

PAD_ID = 0
EOS_ID = 1
# Changes when the SentencePiece training settings below change (keys the cache).
TRAINING_SETTINGS = 'coverage=1.0,max_sentence=65536,pad0,eos1,unk2,no_bos'


def _decode_with_extra_ids(ids, n_text_ids: int, vocab_size: int, decode_text) -> str:
  """Text runs decoded by `decode_text`; ids >= n_text_ids shown as <extra_id_k>."""
  pieces, run = [], []
  for i in (int(i) for i in np.asarray(ids).reshape(-1)):
    if i >= n_text_ids:
      if run:
        pieces.append(decode_text(run))
      run = []
      pieces.append(f'<extra_id_{vocab_size - 1 - i}>')
    else:
      run.append(i)
  if run:
    pieces.append(decode_text(run))
  return ''.join(pieces)


class ByteTokenizer:
  """UTF-8 bytes as tokens: id = byte + 2 (vocab 258 + extra_ids), split by tensorflow-text.

  Args:
    extra_ids: ids reserved above the bytes (span corruption's sentinels).
  """

  pad_id = PAD_ID
  eos_id = EOS_ID
  n_text_ids = 258

  def __init__(self, extra_ids: int = 0):
    arguments.check_int('ByteTokenizer', 'extra_ids', extra_ids, minimum=0)
    self.extra_ids = extra_ids
    self.vocab_size = self.n_text_ids + extra_ids
    self.digest = hashlib.sha256(f'bytes+2/extra_ids={extra_ids}'.encode()).hexdigest()

  def build(self, source) -> 'ByteTokenizer':
    del source
    return self

  def encode(self, text):
    """tf.string scalar -> int32 [n]: each UTF-8 byte, plus 2."""
    # decode_raw of a scalar gives its bytes; tensorflow_text's ByteSplitter gives
    # the same, through ragged checks that take ~0.1 s to trace in every dataset.
    tf = tf_setup.tensorflow()
    return tf.cast(tf.io.decode_raw(text, tf.uint8), tf.int32) + 2

  def decode(self, ids) -> str:
    def text(run):
      return bytes(i - 2 for i in run if i >= 2).decode('utf-8', errors='replace')
    return _decode_with_extra_ids(ids, self.n_text_ids, self.vocab_size, text)


class SentencePieceTokenizer:
  """A SentencePiece model trained on the source's training split, cached on disk.

  The model is trained by the `sentencepiece` package (offline, seconds for a
  few MB) the first time and saved to `cache_dir`; later runs reuse it. The
  cache key holds a digest of what it was trained on (the source's
  `fingerprint()`: the training files' contents, a TFDS dataset's name and
  version) and of every setting, so other text never reuses a tokenizer. A
  source without `fingerprint()` gets a tokenizer trained afresh each run.
  It is applied with `tensorflow_text.SentencepieceTokenizer`.

  Args:
    vocab_size: number of pieces (ids 0 pad, 1 eos, 2 unknown included).
    model_type: 'unigram' or 'bpe'.
    cache_dir: where trained models are kept (default: the data directory).
    max_training_chars: how much training text the trainer reads.
    extra_ids: ids reserved above the pieces (span corruption's sentinels);
      the built tokenizer's `vocab_size` is then vocab_size + extra_ids.
  """

  pad_id = PAD_ID
  eos_id = EOS_ID
  digest = None        # set by build()

  def __init__(self, vocab_size: int = 2000, model_type: str = 'unigram',
               cache_dir: Optional[str] = None, max_training_chars: int = 5_000_000,
               extra_ids: int = 0):
    arguments.check_int('SentencePieceTokenizer', 'vocab_size', vocab_size, minimum=4)
    arguments.check_choice('SentencePieceTokenizer', 'model_type', model_type, ('unigram', 'bpe'))
    arguments.check_int('SentencePieceTokenizer', 'max_training_chars', max_training_chars)
    arguments.check_int('SentencePieceTokenizer', 'extra_ids', extra_ids, minimum=0)
    self.n_text_ids = vocab_size
    self.extra_ids = extra_ids
    self.vocab_size = vocab_size + extra_ids
    self.model_type = model_type
    self.cache_dir = cache_dir or os.path.join(sources.default_data_dir(), 'tokenizers')
    self.max_training_chars = max_training_chars
    self.model_bytes = None
    self._tokenizer = None

  def model_path(self, source) -> Optional[str]:
    """Where the model trained on `source` is cached (None: the source has no fingerprint).

    The name is `<source>.<type><pieces>.<chars>.<digest>.spm.model`, the
    digest covering the source's fingerprint and every training setting.
    """
    fingerprint = getattr(source, 'fingerprint', None)
    if fingerprint is None:
      return None
    settings = (f'{TRAINING_SETTINGS}|{self.model_type}|{self.n_text_ids}|'
                f'{self.max_training_chars}|{fingerprint()}')
    digest = hashlib.sha256(settings.encode('utf-8')).hexdigest()[:16]
    key = f'{source.name}.{self.model_type}{self.n_text_ids}.{self.max_training_chars}'
    return os.path.join(self.cache_dir, f'{key}.{digest}.spm.model')

  def build(self, source) -> 'SentencePieceTokenizer':
    """Loads the cached model for `source`, training it first if needed."""
    path = self.model_path(source)
    if path is None or not os.path.exists(path):
      where = (f'once; cached as {path}' if path is not None else
               f'not cached: {type(source).__name__} has no fingerprint()')
      print(f'Training a SentencePiece tokenizer of {self.n_text_ids} pieces on '
            f'{source.name!r} ({where})...', file=sys.stderr, flush=True)
      model_bytes = self._train(_training_text(source, self.max_training_chars), source)
      if path is not None:
        os.makedirs(self.cache_dir, exist_ok=True)
        temporary = f'{path}.tmp{os.getpid()}'
        with open(temporary, 'wb') as f:
          f.write(model_bytes)
        os.replace(temporary, path)   # atomic: never a half-written model
    else:
      with open(path, 'rb') as f:
        model_bytes = f.read()
    built = SentencePieceTokenizer(self.n_text_ids, self.model_type, self.cache_dir,
                                   self.max_training_chars, self.extra_ids)
    built.model_bytes = model_bytes
    built._tokenizer = tf_setup.text().SentencepieceTokenizer(model=model_bytes)  # pylint: disable=protected-access
    built.model_sha256 = hashlib.sha256(model_bytes).hexdigest()
    built.digest = hashlib.sha256(
        f'{built.model_sha256}/extra_ids={self.extra_ids}'.encode()).hexdigest()
    return built

  def _train(self, sentences: Iterator[str], source) -> bytes:
    sentences = [text for text in sentences if text.strip()]
    if not sentences:
      raise ValueError(f'SentencePieceTokenizer: the train split of {source.name!r} has no '
                       'text to train a tokenizer on (empty or blank files?)')
    writer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=writer, vocab_size=self.n_text_ids,
        model_type=self.model_type, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=2, bos_id=-1,
        character_coverage=1.0, max_sentence_length=1 << 16, num_threads=2,
        minloglevel=2)
    return writer.getvalue()

  def _require_built(self):
    if self._tokenizer is None:
      raise RuntimeError('call build(source) first: this SentencePieceTokenizer has no model')

  def encode(self, text):
    """tf.string scalar -> int32 [n]."""
    self._require_built()
    tf = tf_setup.tensorflow()
    return tf.cast(self._tokenizer.tokenize(text), tf.int32)

  def decode(self, ids) -> str:
    self._require_built()
    tf = tf_setup.tensorflow()

    def text(run):
      run = [i for i in run if i > EOS_ID]
      return self._tokenizer.detokenize(tf.constant(run, tf.int32)).numpy().decode('utf-8')
    return _decode_with_extra_ids(ids, self.n_text_ids, self.vocab_size, text)


def _training_text(source, max_chars: int) -> Iterator[str]:
  """Yields training-split texts (inputs and targets) up to about max_chars."""
  total = 0
  for example in source.dataset('train').as_numpy_iterator():
    for key in ('inputs', 'targets'):
      if key in example:
        text = example[key].decode('utf-8')
        total += len(text)
        yield text
    if total >= max_chars:
      return
