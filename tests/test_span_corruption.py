"""T5 span corruption: counts by T5's formulas, exact reassembly, determinism."""

import numpy as np
import pytest

from sparse_trax.data import corruption as sc

VOCAB = 1000


def _spans(mask):
  return int(np.sum(mask & ~np.concatenate([[False], mask[:-1]])))


@pytest.mark.parametrize('density, span', [(0.15, 3.0), (0.3, 2.0), (0.5, 1.0), (0.05, 8.0)])
def test_noise_tokens_and_spans_follow_t5s_formulas(density, span):
  for length in list(range(1, 60)) + [100, 255, 512, 1000]:
    want_tokens, want_spans = sc.noise_counts(length, density, span)
    n = max(length, 2)
    assert want_tokens == min(max(int(round(n * density)), 1), n - 1)
    assert want_spans == max(int(round(want_tokens / span)), 1)
    for seed in range(3):
      mask = sc.noise_mask(length, density, span, seed)
      assert mask.shape == (length,)
      if length >= 2:
        assert int(mask.sum()) == want_tokens
        if length - want_tokens >= want_spans:
          assert _spans(mask) == want_spans
        else:                    # too few kept tokens to separate them: spans merge (T5 too)
          assert 1 <= _spans(mask) < want_spans
        assert not mask[0]       # a kept span comes first, as in T5


def test_inputs_and_targets_reassemble_the_text_exactly():
  rng = np.random.default_rng(0)
  for length in (1, 2, 3, 7, 50, 512):
    tokens = rng.integers(2, VOCAB - 200, size=length).astype(np.int32)
    for seed in range(4):
      inputs, targets = sc.span_corruption(tokens, vocab_size=VOCAB, seed=seed)
      _, n_spans = sc.noise_counts(length)
      assert inputs.dtype == tokens.dtype == targets.dtype
      np.testing.assert_array_equal(
          sc.reassemble(inputs, targets, vocab_size=VOCAB, n_sentinels=n_spans + 1), tokens)


def test_sentinels_count_down_from_the_top_of_the_vocabulary():
  tokens = np.arange(10, 40, dtype=np.int32)
  inputs, targets = sc.span_corruption(tokens, vocab_size=VOCAB, seed=1)
  _, n_spans = sc.noise_counts(30)
  assert [t for t in inputs if t >= VOCAB - 50] == list(range(VOCAB - 1, VOCAB - 1 - n_spans, -1))
  assert targets[0] == VOCAB - 1
  assert len(inputs) + len(targets) == 30 + 2 * n_spans


def test_deterministic_per_seed():
  tokens = np.arange(5, 205, dtype=np.int32)
  first = sc.span_corruption(tokens, vocab_size=VOCAB, seed=7)
  again = sc.span_corruption(tokens, vocab_size=VOCAB, seed=7)
  other = sc.span_corruption(tokens, vocab_size=VOCAB, seed=8)
  np.testing.assert_array_equal(first[0], again[0])
  np.testing.assert_array_equal(first[1], again[1])
  assert not np.array_equal(first[0], other[0])


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match='1-D'):
    sc.span_corruption(np.zeros((2, 3), np.int32), vocab_size=VOCAB)
  with pytest.raises(ValueError, match='noise_density'):
    sc.span_corruption(np.arange(5), vocab_size=VOCAB, noise_density=1.5)
