"""ROUGE of decoded texts against references, as T5 reports it, with `rouge-score`.

ROUGE-1, ROUGE-2 and ROUGE-Lsum F-measures (Porter stemming), each the mean
over examples, times 100. For ROUGE-Lsum (the summary-level longest common
subsequence) sentences are split on newlines: as T5 does, " . " is turned
into " .\\n" first.
"""

from typing import Dict, Sequence

import numpy as np

ROUGE_TYPES = ('rouge1', 'rouge2', 'rougeLsum')


def _prepare(summary: str) -> str:
  """Sentences on their own lines (T5's `_prepare_summary`), for ROUGE-Lsum."""
  return summary.replace(' . ', ' .\n')


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> Dict[str, float]:
  """{'rouge1', 'rouge2', 'rougeLsum'}: mean F-measures x 100 over the pairs.

  Args:
    predictions: decoded texts.
    references: the reference texts, one per prediction.
  """
  from rouge_score import rouge_scorer  # pylint: disable=import-outside-toplevel
  if len(predictions) != len(references):
    raise ValueError(f'{len(predictions)} predictions but {len(references)} references')
  if not predictions:
    raise ValueError('ROUGE needs at least one prediction')
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
  totals = {name: [] for name in ROUGE_TYPES}
  for prediction, reference in zip(predictions, references):
    scores = scorer.score(_prepare(reference), _prepare(prediction))
    for name in ROUGE_TYPES:
      totals[name].append(scores[name].fmeasure)
  return {name: 100.0 * float(np.mean(values)) for name, values in totals.items()}
