"""Decoding during training: the sample printed at the end, and ROUGE over the eval set."""

import numpy as np

from sparse_trax import decoding
from sparse_trax.train import rouge


def unpadded(source: np.ndarray) -> np.ndarray:
  """A right-padded source row [length] without its padding (at least one token)."""
  return source[:max(1, int(np.sum(source != 0)))]


def decode_sample(model, weights, batch, tokenizer, lm: bool, length: int,
                  temperature: float, rng) -> dict:
  """Decodes from the start of a batch's first example; returns the texts.

  Args:
    model: the predict-mode model (built once per run: the jitted decoders
      key their compiled programs on it).
    weights: its weights.
    batch: an eval batch ('targets', 'weights', and 'inputs' unless `lm`).
    tokenizer: turns ids back into text.
    lm: a language model (the prompt is the start of the targets) or an
      encoder-decoder (the first unpadded source is the input).
    length: tokens to decode.
    temperature: 0 for greedy.
    rng: the sampling key.

  Returns:
    {'prompt': str, 'continuation': str}.
  """
  kwargs = dict(max_length=length, temperature=temperature, eos_id=tokenizer.eos_id, rng=rng)
  if lm:
    targets, weights_row = batch['targets'][0], batch['weights'][0]
    prompt_length = int(np.argmax(weights_row > 0)) or min(16, targets.size)
    prompt = targets[None, :prompt_length]
    tokens = decoding.autoregressive_sample(model, weights, prompt, **kwargs)
  else:
    # One unpadded source (some encoder-decoders, like Terraformer, need it so).
    prompt = unpadded(batch['inputs'][0])[None]
    tokens = decoding.autoregressive_sample(model, weights, inputs=prompt, **kwargs)
  prompt_text = tokenizer.decode(prompt[0])
  if not lm:
    return {'prompt': prompt_text, 'continuation': tokenizer.decode(tokens[0])}
  # Decode prompt and continuation together, so the text at the seam is right.
  full_text = tokenizer.decode(np.concatenate([prompt[0], tokens[0]]))
  return {'prompt': prompt_text, 'continuation': full_text[len(prompt_text):]}


def decode_rouge(model, weights, batches, tokenizer, decode_length: int,
                 beam_size: int, batch_size: int = 1) -> dict:
  """ROUGE-1, -2 and -Lsum of the eval set's decoded targets (an encoder-decoder).

  The eval examples are decoded `batch_size` at a time (greedy, or beam
  search with `beam_size` > 1) up to `decode_length` tokens or the end of
  sequence, and scored against their target texts (`rouge.rouge_scores`).
  With `batch_size` 1 each source is fed unpadded, which every model
  accepts (Terraformer's concatenation decoder needs it); larger batches pad
  the sources to the longest of the batch, for models that mask padding
  (Transformer, ScalingTransformer).

  `model` is the predict-mode model, built once per run.

  Returns:
    {'eval_rouge1', 'eval_rouge2', 'eval_rougeLsum', 'eval_rouge_examples'}.
  """
  sources, references = [], []
  for batch in batches:
    for row in range(batch['inputs'].shape[0]):
      target_weights = batch['weights'][row] > 0
      if not target_weights.any():            # a padding row of the last batch
        continue
      sources.append(unpadded(batch['inputs'][row]))
      references.append(tokenizer.decode(batch['targets'][row][target_weights]))
  predictions = []
  for start in range(0, len(sources), batch_size):
    group = sources[start:start + batch_size]
    padded = np.zeros((len(group), max(s.size for s in group)), np.int32)
    for row, source in enumerate(group):
      padded[row, :source.size] = source
    if beam_size > 1:
      sequences, _ = decoding.beam_search(model, weights, inputs=padded, beam_size=beam_size,
                                          max_length=decode_length, eos_id=tokenizer.eos_id)
      tokens = sequences[:, 0]
    else:
      tokens = decoding.autoregressive_sample(model, weights, inputs=padded,
                                              max_length=decode_length,
                                              eos_id=tokenizer.eos_id)
    predictions.extend(tokenizer.decode(row) for row in tokens)
  scores = rouge.rouge_scores(predictions, references)
  record = {f'eval_{name}': value for name, value in scores.items()}
  record['eval_rouge_examples'] = len(predictions)
  return record
