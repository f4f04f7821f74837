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
               seed: int = 0) -> np.ndarray:
  """[length] bool, True on the dropped tokens (T5's random_spans_noise_mask)."""
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
                    mean_noise_span_length: float = 3.0, seed: int = 0
                    ) -> Tuple[np.ndarray, np.ndarray]:
  """T5 span corruption of one example: (inputs, targets), 1-D int arrays.

  Args:
    tokens: [length] token ids (no padding); ids at the top of the vocabulary
      must be free for the sentinels (as many as there are spans).
    vocab_size: the vocabulary size; sentinels are vocab_size - 1, - 2, ...
    noise_density: the fraction of tokens dropped.
    mean_noise_span_length: the mean length of a dropped span.
    seed: seeds the spans (the same seed, the same spans).

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
