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
