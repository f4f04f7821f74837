"""T5's span corruption on one example, in numpy (no TensorFlow).

About `noise_density` of the tokens, in spans averaging `mean_noise_span_length`,
are dropped from the inputs; each dropped span is replaced there by a
sentinel id, counting down from the top of the vocabulary (vocab_size - 1,
vocab_size - 2, ...), and the targets are those sentinels each followed by
the span it stands for:

    tokens   a b c d e f g h i        (d e and h dropped)
    inputs   a b c S1 f g S2 i
    targets  S1 d e S2 h S3           (S1 = vocab_size - 1, S2 = vocab_size - 2, ...)

(the targets replace each kept span by a sentinel, so the k-th sentinel of
the inputs and of the targets mark the same place).

Precisely T5's `random_spans_noise_mask` and `noise_span_to_unique_sentinel` /
`nonnoise_span_to_unique_sentinel` (the `t5.data.preprocessors` formulas):
with n = max(length, 2),
    noise tokens = min(max(round(n * noise_density), 1), n - 1)
    noise spans  = max(round(noise tokens / mean_noise_span_length), 1)
and the kept and dropped tokens are each cut into that many segments at
random, kept first, interleaved (segments are non-empty unless there are
fewer kept tokens than spans; then, as in T5, neighbouring dropped spans
merge). The random cuts come from
numpy's generator seeded with `seed` (T5 draws them with TensorFlow's
stateless ops, so the same seed does not give T5's exact spans).
"""

from typing import Tuple

import numpy as np


def noise_counts(length: int, noise_density: float = 0.15,
                 mean_noise_span_length: float = 3.0) -> Tuple[int, int]:
  """(noise tokens, noise spans) that T5's formulas give for a sequence of `length`."""
  n = max(length, 2)
  noise_tokens = min(max(int(round(n * noise_density)), 1), n - 1)
  noise_spans = max(int(round(noise_tokens / mean_noise_span_length)), 1)
  return noise_tokens, noise_spans


def _random_segmentation(n_items: int, n_segments: int, rng: np.random.Generator) -> np.ndarray:
  """Lengths of `n_segments` non-empty segments that cut `n_items` items at random."""
  first_in_segment = np.zeros(n_items, np.int64)
  cuts = rng.permutation(np.arange(n_items - 1) < n_segments - 1)
  first_in_segment[1:] = cuts
  segment_id = np.cumsum(first_in_segment)
  return np.bincount(segment_id, minlength=n_segments)


def noise_mask(length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
               seed=0) -> np.ndarray:
  """[length] bool, True on the dropped tokens (T5's random_spans_noise_mask).

  `seed`: an int or a sequence of ints (numpy's `default_rng` seeding).
  """
  n = max(length, 2)
  noise_tokens, noise_spans = noise_counts(length, noise_density, mean_noise_span_length)
  rng = np.random.default_rng(seed)
  noise_lengths = _random_segmentation(noise_tokens, noise_spans, rng)
  kept_lengths = _random_segmentation(n - noise_tokens, noise_spans, rng)
  interleaved = np.stack([kept_lengths, noise_lengths], axis=1).reshape(-1)
  span_starts = np.cumsum(interleaved)[:-1]
  start_indicator = np.zeros(n, np.int64)
  np.add.at(start_indicator, span_starts, 1)    # an empty segment starts twice at one place
  is_noise = np.cumsum(start_indicator) % 2 == 1
  return is_noise[:length]


def _spans_to_sentinels(tokens: np.ndarray, mask: np.ndarray, vocab_size: int) -> np.ndarray:
  """Each run of masked tokens replaced by one sentinel, vocab_size - 1 downwards."""
  previous = np.concatenate([[False], mask[:-1]])
  first = mask & ~previous
  later = mask & previous
  sentinels = vocab_size - np.cumsum(first)
  return np.where(first, sentinels, tokens)[~later].astype(tokens.dtype)


def span_corruption(tokens, *, vocab_size: int, noise_density: float = 0.15,
                    mean_noise_span_length: float = 3.0, seed=0
                    ) -> Tuple[np.ndarray, np.ndarray]:
  """T5 span corruption of one example: (inputs, targets), 1-D int arrays.

  Args:
    tokens: [length] token ids (no padding); ids at the top of the vocabulary
      must be free for the sentinels (as many as there are spans).
    vocab_size: the vocabulary size; sentinels are vocab_size - 1, - 2, ...
    noise_density: the fraction of tokens dropped.
    mean_noise_span_length: the mean length of a dropped span.
    seed: seeds the spans (the same seed, the same spans): an int or a
      sequence of ints.

  Returns:
    (inputs, targets): inputs are the tokens with each dropped span replaced
    by its sentinel; targets are each sentinel followed by its span.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 1:
    raise ValueError(f'span_corruption takes one example, a 1-D array; got shape {tokens.shape}')
  if not 0.0 < noise_density < 1.0:
    raise ValueError(f'noise_density must be in (0, 1), got {noise_density}')
  if mean_noise_span_length < 1.0:
    raise ValueError(f'mean_noise_span_length must be >= 1, got {mean_noise_span_length}')
  if tokens.size == 0:
    return tokens.copy(), tokens.copy()
  mask = noise_mask(tokens.size, noise_density, mean_noise_span_length, seed)
  return (_spans_to_sentinels(tokens, mask, vocab_size),
          _spans_to_sentinels(tokens, ~mask, vocab_size))


def reassemble(inputs, targets, *, vocab_size: int, n_sentinels: int) -> np.ndarray:
  """The original tokens from span_corruption's (inputs, targets).

  Ids >= vocab_size - n_sentinels are read as sentinels: each in the inputs
  is replaced by the tokens after the same sentinel in the targets.
  """
  inputs, targets = np.asarray(inputs), np.asarray(targets)
  lowest = vocab_size - n_sentinels
  spans, current = {}, None
  for token in targets.tolist():
    if token >= lowest:
      current = token
      spans[current] = []
    elif current is not None:
      spans[current].append(token)
  out = []
  for token in inputs.tolist():
    out.extend(spans.get(token, []) if token >= lowest else [token])
  return np.array(out, inputs.dtype)


def corrupted_lengths(raw_length: int, noise_density: float = 0.15,
                      mean_noise_span_length: float = 3.0) -> Tuple[int, int]:
  """(inputs length, targets length) of a corrupted window of `raw_length` tokens,
  each with one end-of-sequence token added (T5's `random_spans_helper`)."""
  noise_tokens, noise_spans = noise_counts(raw_length, noise_density, mean_noise_span_length)
  return (raw_length - noise_tokens + noise_spans + 1, noise_tokens + noise_spans + 1)


def raw_length_for(input_length: int, target_length: int, noise_density: float = 0.15,
                   mean_noise_span_length: float = 3.0) -> int:
  """The longest window of raw tokens whose corrupted inputs and targets (with
  end-of-sequence) fit `input_length` and `target_length`.

  For T5's inputs of 512: 568 raw tokens give inputs of 512 and targets of
  114. Raises ValueError when not even 2 tokens fit.
  """
  best = None
  raw = 2
  while True:
    inputs, targets = corrupted_lengths(raw, noise_density, mean_noise_span_length)
    if inputs > input_length:
      break
    if targets <= target_length:
      best = raw
    raw += 1
  if best is None:
    raise ValueError(f'span corruption: no window fits inputs of {input_length} and targets of '
                     f'{target_length} tokens (noise_density {noise_density})')
  return best


class SpanCorruption:
  """T5's span corruption as a step of the input pipeline (`Inputs(span_corruption=...)`).

  The text is tokenized, concatenated and cut into windows of
  `raw_length_for(max_input_length, max_length)` tokens; each window becomes
  an example {'inputs', 'targets'} by `span_corruption` (seeded by the
  pipeline's seed and the window's number, so a run is reproducible), with
  an end-of-sequence token appended to both; the batches are padded to
  max_input_length and max_length. For an encoder-decoder model.

  Args:
    noise_density: the fraction of tokens dropped (T5: 0.15).
    mean_noise_span_length: the mean dropped span (T5: 3).
  """

  def __init__(self, noise_density: float = 0.15, mean_noise_span_length: float = 3.0):
    if not 0.0 < noise_density < 1.0:
      raise ValueError(f'SpanCorruption: noise_density must be in (0, 1), got {noise_density}')
    if mean_noise_span_length < 1.0:
      raise ValueError('SpanCorruption: mean_noise_span_length must be >= 1, got '
                       f'{mean_noise_span_length}')
    self.noise_density = noise_density
    self.mean_noise_span_length = mean_noise_span_length

  def __repr__(self):
    return (f'SpanCorruption(noise_density={self.noise_density}, '
            f'mean_noise_span_length={self.mean_noise_span_length})')

  def raw_length(self, input_length: int, target_length: int) -> int:
    return raw_length_for(input_length, target_length, self.noise_density,
                          self.mean_noise_span_length)

  def corrupt(self, windows, *, vocab_size: int, eos_id: int, seed: int):
    """A tf.data.Dataset of [raw_length] int32 windows -> {'inputs', 'targets', 'weights'}."""
    from sparse_trax.data import tf_setup  # pylint: disable=import-outside-toplevel
    tf = tf_setup.tensorflow()
    noise_density, span_length = self.noise_density, self.mean_noise_span_length

    def corrupt_one(index, window):
      inputs, targets = span_corruption(window, vocab_size=vocab_size,
                                        noise_density=noise_density,
                                        mean_noise_span_length=span_length,
                                        seed=[seed, int(index)])
      eos = np.array([eos_id], np.int32)
      return (np.concatenate([inputs, eos]).astype(np.int32),
              np.concatenate([targets, eos]).astype(np.int32))

    def to_example(index, window):
      inputs, targets = tf.numpy_function(corrupt_one, [index, window], [tf.int32, tf.int32],
                                          stateful=False)
      inputs.set_shape([None])
      targets.set_shape([None])
      return {'inputs': inputs, 'targets': targets,
              'weights': tf.ones_like(targets, tf.float32)}
    return windows.enumerate().map(to_example)
