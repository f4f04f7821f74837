"""ROUGE as the trainer reports it equals rouge-score called directly."""

import numpy as np
import pytest
from rouge_score import rouge_scorer

from sparse_trax.train import rouge

PAIRS = [
    ('the cat sat on the mat . it was happy .', 'the cat was on the mat . happy it was .'),
    ('a quick brown fox jumps', 'the quick brown fox jumped over the lazy dog'),
    ('summaries are short . papers are long .', 'papers are long . summaries are short .'),
    ('nothing in common', 'entirely different words here'),
]


def test_rouge_equals_rouge_score_called_directly():
  predictions, references = [p for p, _ in PAIRS], [r for _, r in PAIRS]
  ours = rouge.rouge_scores(predictions, references)
  scorer = rouge_scorer.RougeScorer(['rouge1', 'rouge2', 'rougeLsum'], use_stemmer=True)
  for name in ('rouge1', 'rouge2', 'rougeLsum'):
    direct = [scorer.score(r.replace(' . ', ' .\n'), p.replace(' . ', ' .\n'))[name].fmeasure
              for p, r in PAIRS]
    assert ours[name] == pytest.approx(100 * np.mean(direct))
  # Sentence order matters to ROUGE-L over the whole text, not to the summary-level Lsum.
  order = rouge.rouge_scores([PAIRS[2][0]], [PAIRS[2][1]])
  assert order['rougeLsum'] == pytest.approx(100.0) and order['rouge1'] == pytest.approx(100.0)
  assert rouge.rouge_scores(['same words'], ['same words'])['rouge2'] == pytest.approx(100.0)
  assert rouge.rouge_scores([PAIRS[3][0]], [PAIRS[3][1]])['rouge1'] == 0.0


def test_rouge_needs_matching_lists():
  with pytest.raises(ValueError, match='2 predictions but 1 references'):
    rouge.rouge_scores(['a', 'b'], ['a'])


class _DigitsTokenizer:
  """Ids as space-separated numbers (ids 0 and 1, padding and EOS, left out)."""
  eos_id = 1

  def decode(self, ids):
    return ' '.join(str(int(i)) for i in ids if int(i) > 1)


def test_batched_rouge_decoding_equals_one_source_at_a_time():
  import functools  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from sparse_trax import models  # pylint: disable=import-outside-toplevel
  from sparse_trax.train import decode_eval, steps  # pylint: disable=import-outside-toplevel
  model_fn = functools.partial(models.Transformer, d_model=16, d_ff=32, n_encoder_layers=1,
                               n_decoder_layers=1, n_heads=2, max_len=32, dropout=0.0)
  vocab = 12
  weights, _ = steps.build_model(model_fn, 'eval', vocab).init(
      (jax.ShapeDtypeStruct((1, 8), jnp.int32), jax.ShapeDtypeStruct((1, 6), jnp.int32)),
      rng=jax.random.key(0))
  rng = np.random.default_rng(0)
  sources = np.zeros((5, 8), np.int32)
  for row, length in enumerate((8, 3, 5, 1, 6)):
    sources[row, :length] = rng.integers(2, vocab, length)
  targets = rng.integers(2, vocab, (5, 6)).astype(np.int32)
  batch = {'inputs': sources, 'targets': targets,
           'weights': np.ones((5, 6), np.float32) * (np.arange(5) < 4)[:, None]}  # row 4: padding
  predict = steps.build_model(model_fn, 'predict', vocab)
  one, batched = (decode_eval.decode_rouge(predict, weights, [batch], _DigitsTokenizer(), 6,
                                           1, batch_size) for batch_size in (1, 3))
  assert one == batched and one['eval_rouge_examples'] == 4
