"""From a source and a tokenizer to batches of numpy arrays.

Batches are dicts: 'targets' int32 [batch, max_length], 'weights' float32
[batch, max_length] (0 on padding and, for a language model reading a
sequence-to-sequence task, on the inputs part), and for encoder-decoder
models 'inputs' int32 [batch, max_input_length].

The training stream is deterministic for a seed; `train_batches(position)`
continues it from batch number `position`, so a resumed run sees exactly the
batches an uninterrupted one would.
"""

from __future__ import annotations   # `tf.data.Dataset` in annotations, TF imported on use

import functools
from typing import TYPE_CHECKING, Dict, Iterator, Optional, Sequence

import numpy as np
import tqdm

from sparse_trax import arguments
from sparse_trax.data import tf_setup

if TYPE_CHECKING:
  import tensorflow as tf

Batch = Dict[str, np.ndarray]


class Inputs:
  """The input pipeline of one experiment.

  Args:
    source: a data source (ShippedCorpus, TFDSSource, TextFiles, AdditionTask, ...).
    tokenizer: a tokenizer config (SentencePieceTokenizer, ByteTokenizer); built
      on the source's training split when `tokenizer` is first used.
    max_length: length of training sequences (targets, or inputs+targets
      for a language model on a sequence-to-sequence task).
    batch_size: training batch size.
    eval_batch_size: eval batch size (default: batch_size).
    eval_max_length: length of eval sequences (default: max_length).
    max_input_length: length of encoder inputs (default: max_length).
    pack: concatenate plain text into full windows of max_length (default:
      True for sources without inputs). Otherwise examples longer than the
      length are dropped and the rest padded.
    bucket_boundaries: with pack=False, batch examples of similar length,
      padded to the next boundary (the last must be >= max_length).
    shuffle_buffer: examples in the shuffle buffer.
    n_eval_batches: how many eval batches (default: the whole eval split).
    seed: shuffling seed (and span corruption's).
    span_corruption: a `SpanCorruption`: T5's span-corruption pretraining
      on a plain-text source, for an encoder-decoder. The token stream is
      cut into windows that corrupt to at most max_input_length inputs and
      max_length targets (eval: eval_max_length); sentinels are the
      tokenizer's top ids (give it `extra_ids`, e.g. 100).
  """

  def __init__(self, source, tokenizer, max_length: int = 128, batch_size: int = 16,
               eval_batch_size: Optional[int] = None, eval_max_length: Optional[int] = None,
               max_input_length: Optional[int] = None, pack: Optional[bool] = None,
               bucket_boundaries: Optional[Sequence[int]] = None, shuffle_buffer: int = 1024,
               n_eval_batches: Optional[int] = None, seed: int = 0,
               span_corruption=None):
    arguments.check_int('Inputs', 'max_length', max_length)
    arguments.check_int('Inputs', 'batch_size', batch_size)
    for name, value in (('eval_batch_size', eval_batch_size),
                        ('eval_max_length', eval_max_length),
                        ('max_input_length', max_input_length),
                        ('n_eval_batches', n_eval_batches)):
      arguments.check_int('Inputs', name, value, optional=True)
    arguments.check_int('Inputs', 'shuffle_buffer', shuffle_buffer)
    arguments.check_int('Inputs', 'seed', seed, minimum=0)
    if pack is not None and not isinstance(pack, bool):
      raise ValueError(f'Inputs: pack must be True, False or None, got {pack!r}')
    self.source = source
    self.tokenizer_config = tokenizer
    self.max_length = max_length
    self.batch_size = batch_size
    self.eval_batch_size = eval_batch_size or batch_size
    self.eval_max_length = eval_max_length or max_length
    self.max_input_length = max_input_length or max_length
    self.pack = (not source.has_inputs) if pack is None else pack
    if self.pack and source.has_inputs:
      raise ValueError(f'pack=True needs plain text; source {source.name!r} has inputs')
    if bucket_boundaries is not None and max(bucket_boundaries) < max_length:
      raise ValueError('the last bucket boundary must be >= max_length')
    self.bucket_boundaries = bucket_boundaries
    self.shuffle_buffer = shuffle_buffer
    self.n_eval_batches = n_eval_batches
    self.seed = seed
    self.span_corruption = span_corruption
    if span_corruption is not None:
      if source.has_inputs:
        raise ValueError(f'Inputs: span_corruption needs plain text; source {source.name!r} '
                         'has inputs')
      if pack is False:
        raise ValueError('Inputs: span_corruption packs the text into windows; '
                         'pack=False does not go with it')
      # Raises here, at construction, when no window fits the lengths.
      self.raw_lengths = {split: span_corruption.raw_length(self.max_input_length, length)
                          for split, length in (('train', max_length),
                                                ('eval', self.eval_max_length))}

  # ------------------------------------------------------------ public

  @functools.cached_property
  def tokenizer(self):
    """The built tokenizer. Built on first use, not at construction: building may
    prepare the source and train a tokenizer (SentencePiece) into shared caches,
    which with several processes only process 0 does first."""
    return self.tokenizer_config.build(self.source)

  def train_batches(self, position: int = 0, *, lm: bool = True) -> Iterator[Batch]:
    """Endless training batches starting at batch number `position`.

    Args:
      position: how many batches to skip (a resumed run's data position).
      lm: True for a language model (one sequence per example), False for
        an encoder-decoder (separate 'inputs').
    """
    ds = self._encoded('train', lm)
    if self.span_corruption is not None:
      self._check_encoder_decoder(lm)
      ds = ds.shuffle(self.shuffle_buffer, seed=self.seed, reshuffle_each_iteration=True)
      ds = self._corrupted(ds.repeat(), 'train', self.batch_size, self.max_length,
                           drop_remainder=True)
    elif self.pack:
      ds = ds.shuffle(self.shuffle_buffer, seed=self.seed, reshuffle_each_iteration=True)
      ds = self._packed(ds.repeat(), self.max_length)
      ds = ds.batch(self.batch_size, drop_remainder=True)
    else:
      ds = ds.filter(self._fits(self.max_length, lm))
      ds = ds.shuffle(self.shuffle_buffer, seed=self.seed, reshuffle_each_iteration=True)
      ds = self._padded_batches(ds.repeat(), self.batch_size, self.max_length, lm,
                                drop_remainder=True)
    ds = ds.skip(position).prefetch(2)
    return _numpy_batches(ds, f'no training batch: does any example of {self.source.name!r} '
                              f'fit max_length={self.max_length}?', self.tokenizer.vocab_size)

  def eval_batches(self, *, lm: bool = True) -> Iterator[Batch]:
    """The eval batches, the same every call."""
    ds = self._encoded('eval', lm)
    if self.span_corruption is not None:
      self._check_encoder_decoder(lm)
      ds = self._corrupted(ds, 'eval', self.eval_batch_size, self.eval_max_length,
                           drop_remainder=False)
    elif self.pack:
      ds = self._packed(ds, self.eval_max_length).batch(self.eval_batch_size)
    else:
      ds = ds.filter(self._fits(self.eval_max_length, lm))
      ds = self._padded_batches(ds, self.eval_batch_size, self.eval_max_length, lm,
                                drop_remainder=False)
    if self.n_eval_batches is not None:
      ds = ds.take(self.n_eval_batches)
    return _numpy_batches(ds, None, self.tokenizer.vocab_size)

  def check(self, *, lm: bool = True, max_examples: int = 1000) -> Batch:
    """Fails fast, with the reason, when training or evaluation would get no data.

    Reads at most `max_examples` examples of each split (printing a progress
    line when that takes a while; Ctrl-C works between examples): without
    packing, at least one must fit the lengths; with packing, the split must
    hold a full window. Then draws one training batch and one eval batch.
    Call before the first training step.

    Returns:
      The first training batch (what `next(train_batches(lm=lm))` gives).

    Raises:
      ValueError: naming the split, the lengths asked for and what was seen.
    """
    for split, length in (('train', self.max_length), ('eval', self.eval_max_length)):
      if self.span_corruption is not None:
        length = self.raw_lengths[split]      # a window of raw text
      self._check_split(split, length, lm, max_examples)
    first_batch = next(self.train_batches(lm=lm))
    eval_batch = next(self.eval_batches(lm=lm), None)
    if eval_batch is None or not eval_batch['weights'].any():
      raise ValueError(f'the eval split of {self.source.name!r} gives no batch with '
                       f'eval_max_length={self.eval_max_length}')
    return first_batch

  # ----------------------------------------------------------- private

  def _check_encoder_decoder(self, lm: bool) -> None:
    if lm:
      raise ValueError('Inputs: span_corruption makes (inputs, targets) pairs for an '
                       'encoder-decoder model; this model is a language model')

  def _corrupted(self, ds, split: str, batch_size: int, target_length: int,
                 drop_remainder: bool):
    """Encoded text -> span-corrupted windows, padded to the lengths, batched."""
    windows = self._packed(ds, self.raw_lengths[split]).map(lambda ex: ex['targets'])
    examples = self.span_corruption.corrupt(
        windows, vocab_size=self.tokenizer.vocab_size, eos_id=self.tokenizer.eos_id,
        seed=self.seed if split == 'train' else self.seed + 1)
    shapes = {'inputs': [self.max_input_length], 'targets': [target_length],
              'weights': [target_length]}
    return examples.padded_batch(batch_size, padded_shapes=shapes,
                                 drop_remainder=drop_remainder)

  def _check_split(self, split: str, length: int, lm: bool, max_examples: int) -> None:
    """Raises unless the split has an example that fits (or a full window, packed)."""
    tf = tf_setup.tensorflow()
    fits = self._fits(length, lm)
    longest = shortest = None
    seen, tokens = 0, 0
    with tqdm.tqdm(desc=f'checking {split} examples of {self.source.name!r}', unit='example',
                   delay=3, leave=False) as bar:
      for example in self._encoded(split, lm).take(max_examples):
        seen += 1
        bar.update(1)
        size = int(tf.shape(example['targets'])[0])
        tokens += size
        if self.pack:
          if tokens >= length:
            return
          continue
        if bool(fits(example)):
          return
        longest = size if longest is None else max(longest, size)
        shortest = size if shortest is None else min(shortest, size)
    if seen == 0:
      raise ValueError(f'the {split} split of {self.source.name!r} has no examples')
    if self.pack:
      raise ValueError(f'the {split} split of {self.source.name!r} holds {tokens} tokens, '
                       f'less than one window of max_length={length}')
    lengths = (f'max_length={length}' if lm or not self.source.has_inputs else
               f'max_length={length} and max_input_length={self.max_input_length}')
    raise ValueError(f'no example of the {split} split of {self.source.name!r} fits '
                     f'{lengths}: the first {seen} are {shortest} to {longest} tokens long')


  def unigram_log_perplexity(self, *, lm: bool = True, max_train_tokens: int = 2_000_000) -> float:
    """Eval cross-entropy (nats per token) of add-one-smoothed unigram frequencies.

    The frequencies are counted on up to `max_train_tokens` training tokens;
    the cross-entropy uses the same weighted positions as the model's eval loss.
    """
    counts = np.ones(self.tokenizer.vocab_size, np.float64)
    seen = 0
    for example in self._encoded('train', lm).as_numpy_iterator():
      targets = example['targets'][example['weights'] > 0]
      counts += np.bincount(targets, minlength=counts.size)[:counts.size]
      seen += targets.size
      if seen >= max_train_tokens:
        break
    log_probs = np.log(counts / counts.sum())
    total, weight = 0.0, 0.0
    for batch in self.eval_batches(lm=lm):
      total -= float(np.sum(log_probs[batch['targets']] * batch['weights']))
      weight += float(batch['weights'].sum())
    return total / max(weight, 1.0)

  def _encoded(self, split: str, lm: bool) -> tf.data.Dataset:
    """Examples as {'targets', 'weights'[, 'inputs']} id tensors (with EOS)."""
    tf = tf_setup.tensorflow()
    tokenizer, has_inputs = self.tokenizer, self.source.has_inputs
    eos = tf.constant([tokenizer.eos_id], tf.int32)

    def encode(example):
      targets = tf.concat([tokenizer.encode(example['targets']), eos], 0)
      weights = tf.ones_like(targets, tf.float32)
      if not has_inputs:
        return {'targets': targets, 'weights': weights}
      inputs = tokenizer.encode(example['inputs'])
      if lm:
        return {'targets': tf.concat([inputs, targets], 0),
                'weights': tf.concat([tf.zeros_like(inputs, tf.float32), weights], 0)}
      return {'inputs': tf.concat([inputs, eos], 0), 'targets': targets, 'weights': weights}

    options = tf.data.Options()
    options.deterministic = True
    # Traced as written: autograph would rewrite the tokenizer's tensorflow_text ops
    # in every dataset built (a second of start-up, files left in the temp folder).
    encode = tf.autograph.experimental.do_not_convert(encode)
    return self.source.dataset(split).map(encode).with_options(options)

  def _fits(self, length: int, lm: bool):
    tf = tf_setup.tensorflow()
    max_input_length = self.max_input_length

    def fits(example):
      ok = tf.shape(example['targets'])[0] <= length
      if 'inputs' in example and not lm:
        ok = tf.logical_and(ok, tf.shape(example['inputs'])[0] <= max_input_length)
      return ok
    return fits

  @staticmethod
  def _packed(ds: tf.data.Dataset, length: int) -> tf.data.Dataset:
    """Concatenates the token stream and cuts it into windows of `length`."""
    tf = tf_setup.tensorflow()
    windows = ds.map(lambda ex: ex['targets']).unbatch().batch(length, drop_remainder=True)
    return windows.map(lambda t: {'targets': t, 'weights': tf.ones_like(t, tf.float32)})

  def _padded_batches(self, ds, batch_size, length, lm, drop_remainder):
    tf = tf_setup.tensorflow()
    shapes = {'targets': [length], 'weights': [length]}
    if self.source.has_inputs and not lm:
      shapes['inputs'] = [self.max_input_length]
    if self.bucket_boundaries is None:
      return ds.padded_batch(batch_size, padded_shapes=shapes, drop_remainder=drop_remainder)
    # TF pads a bucket to (boundary - 1): shift the boundaries by one so a
    # bucket's batches have exactly the boundary's length.
    boundaries = [b + 1 for b in self.bucket_boundaries if b < length] + [length + 1]
    shapes = {k: [None] for k in shapes}
    if 'inputs' in shapes:
      max_input_length = self.max_input_length
      ds = ds.map(lambda ex: dict(ex, inputs=tf.pad(
          ex['inputs'], [[0, max_input_length - tf.shape(ex['inputs'])[0]]])))
      shapes['inputs'] = [max_input_length]
    return ds.bucket_by_sequence_length(
        lambda ex: tf.shape(ex['targets'])[0], bucket_boundaries=boundaries,
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1), padded_shapes=shapes,
        pad_to_bucket_boundary=True, drop_remainder=drop_remainder)


def check_ids(batch: Batch, vocab_size: int) -> None:
  """Raises ValueError naming the first token id outside [0, vocab_size) in a batch."""
  for key in ('targets', 'inputs'):
    if key not in batch:
      continue
    found = arguments.first_out_of_range(batch[key], vocab_size)
    if found is not None:
      where, token = found
      raise ValueError(f'token id {token} in batch[{key!r}] at {where} '
                       f'is outside [0, {vocab_size}) (the tokenizer\'s vocab_size)')


def _numpy_batches(ds: tf.data.Dataset, empty_message: Optional[str],
                   vocab_size: int) -> Iterator[Batch]:
  empty = True
  for batch in ds.as_numpy_iterator():
    empty = False
    check_ids(batch, vocab_size)
    yield batch
  if empty and empty_message:
    raise ValueError(empty_message)
