"""The training loop: jitted steps, evaluation, metrics, checkpoints, a decoded sample.

A run writes into `output_dir`:
  checkpoints/<step>/   orbax checkpoints (the last `keep_checkpoints`)
  metrics.jsonl         one JSON object per logged train step and per eval
  config.gin            the operative gin config (written by the trainer)

Rerunning with the same output_dir resumes from the newest good checkpoint:
step, weights, optimizer state, rng and data position. The step's rng is
`fold_in(rng, step)` and the data stream is skipped to the recorded position,
so the resumed steps compute exactly what an uninterrupted run would.
"""

import inspect
import json
import os
import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from sparse_trax import arguments
from sparse_trax import decoding
from sparse_trax.layers import losses
from sparse_trax.train import checkpoints
from sparse_trax.train import optimizers
from sparse_trax.train import parallel
from sparse_trax.train import rouge


def build_model(model_fn: Callable, mode: str, vocab_size: int):
  """Calls a model function, filling in vocabulary sizes from the tokenizer."""
  parameters = inspect.signature(model_fn).parameters
  kwargs = {name: vocab_size for name in ('vocab_size', 'input_vocab_size', 'output_vocab_size')
            if name in parameters}
  return model_fn(mode=mode, **kwargs)


def model_inputs(batch, lm: bool):
  """What the model takes from a batch: targets (an LM), or (inputs, targets)."""
  return batch['targets'] if lm else (batch['inputs'], batch['targets'])


def _signature(batch):
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)


COMPUTE_DTYPES = ('float32', 'bfloat16')


def cast_floating(tree, dtype):
  """Every floating array of a pytree cast to `dtype` (integers and keys kept)."""
  return jax.tree_util.tree_map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def make_train_step(model, optimizer: optax.GradientTransformation, lm: bool,
                    shardings: Optional[tuple] = None, compute_dtype: str = 'float32'):
  """A jitted step: (weights, model_state, opt_state, batch, rng) -> (..., metrics).

  `shardings`: optional (weights, model_state, opt_state, batch) pytrees of
  shardings (see `parallel.Placement`); outputs keep their inputs' shardings.
  `compute_dtype` 'bfloat16' runs the forward and backward pass on bfloat16
  copies of the weights (the layers then compute in bfloat16, with float32
  softmax, normalization statistics, SRU carry and loss); the weights, their
  gradients and the optimizer state stay float32.
  """
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f'compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}')

  def loss_fn(weights, model_state, batch, rng):
    if compute_dtype != 'float32':
      weights = cast_floating(weights, compute_dtype)   # gradients flow back to float32
    logits, model_state = model.apply(weights, model_state, model_inputs(batch, lm), rng=rng)
    loss = losses.weighted_cross_entropy(logits, batch['targets'], batch['weights'])
    return loss, (model_state, logits)

  def step(weights, model_state, opt_state, batch, rng):
    (loss, (model_state, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        weights, model_state, batch, rng)
    updates, opt_state = optimizer.update(grads, opt_state, weights)
    weights = optax.apply_updates(weights, updates)
    metrics = {'loss': loss, 'gradient_norm': optax.tree.norm(grads),
               'accuracy': losses.weighted_accuracy(logits, batch['targets'], batch['weights'])}
    return weights, model_state, opt_state, metrics
  if shardings is None:
    return jax.jit(step)
  weights_sh, state_sh, opt_sh, batch_sh = shardings
  mesh = jax.tree_util.tree_leaves(weights_sh)[0].mesh
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(step, in_shardings=(weights_sh, state_sh, opt_sh, batch_sh, replicated),
                 out_shardings=(weights_sh, state_sh, opt_sh, replicated))


def make_eval_step(model, lm: bool):
  """A jitted step: (weights, model_state, batch) -> summed (nll, correct, weight,
  correct sequences, sequences)."""
  @jax.jit
  def step(weights, model_state, batch):
    logits, _ = model.apply(weights, model_state, model_inputs(batch, lm))
    w = batch['weights']
    total = jnp.sum(w)
    nll = losses.weighted_cross_entropy(logits, batch['targets'], w) * total
    correct = losses.weighted_accuracy(logits, batch['targets'], w) * total
    sequences = jnp.sum(jnp.any(w > 0, axis=1))
    right_sequences = losses.sequence_accuracy(logits, batch['targets'], w) * sequences
    return nll, correct, total, right_sequences, sequences
  return step


def evaluate(eval_model, eval_step, weights, batches, lm: bool) -> dict:
  """Eval loss (= log-perplexity, nats per token) and accuracy over all batches.

  The eval model gets its own state (layers may keep different state per mode).
  """
  sums = np.zeros(5)
  eval_state = None
  for batch in batches:
    if eval_state is None:
      eval_state = decoding.initial_state(eval_model, _signature(model_inputs(batch, lm)))
    sums += np.array([float(v) for v in eval_step(weights, eval_state, batch)])
  nll, correct, total, right_sequences, sequences = sums
  if total == 0:
    raise ValueError('the eval split gave no weighted tokens')
  return {'eval_loss': nll / total, 'eval_log_perplexity': nll / total,
          'eval_accuracy': correct / total,
          'eval_sequence_accuracy': right_sequences / max(sequences, 1.0)}


def unpadded(source: np.ndarray) -> np.ndarray:
  """A right-padded source row [length] without its padding (at least one token)."""
  return source[:max(1, int(np.sum(source != 0)))]


def decode_sample(model_fn, vocab_size, weights, batch, tokenizer, lm: bool, length: int,
                  temperature: float, rng) -> dict:
  """Decodes from the start of the first eval example; returns the texts."""
  model = build_model(model_fn, 'predict', vocab_size)
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


def decode_rouge(model_fn, vocab_size, weights, batches, tokenizer, decode_length: int,
                 beam_size: int, batch_size: int = 1) -> dict:
  """ROUGE-1, -2 and -Lsum of the eval set's decoded targets (an encoder-decoder).

  The eval examples are decoded `batch_size` at a time (greedy, or beam
  search with `beam_size` > 1) up to `decode_length` tokens or the end of
  sequence, and scored against their target texts (`rouge.rouge_scores`).
  With `batch_size` 1 each source is fed unpadded, which every model
  accepts (Terraformer's concatenation decoder needs it); larger batches pad
  the sources to the longest of the batch, for models that mask padding
  (Transformer, ScalingTransformer).

  Returns:
    {'eval_rouge1', 'eval_rouge2', 'eval_rougeLsum', 'eval_rouge_examples'}.
  """
  model = build_model(model_fn, 'predict', vocab_size)
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


def _append_jsonl(path: str, record: dict) -> None:
  with open(path, 'a', encoding='utf-8') as f:
    f.write(json.dumps(record) + '\n')


def truncate_metrics(path: str, last_step: int) -> None:
  """Drops the records of steps after `last_step` (a run resumed from that step
  redoes them), so that metrics.jsonl keeps one record per step and kind.

  A torn last line (a kill mid-write) is dropped too. Rewrites atomically.
  """
  if not os.path.exists(path):
    return
  kept = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if record.get('step', 0) <= last_step:
        kept.append(line if line.endswith('\n') else line + '\n')
  temporary = f'{path}.tmp'
  with open(temporary, 'w', encoding='utf-8') as f:
    f.writelines(kept)
  os.replace(temporary, path)


def check_train_arguments(n_steps, eval_every, checkpoint_every, keep_checkpoints, log_every,
                          seed, decode_length, decode_temperature, n_devices, weight_sharding,
                          compute_dtype, learning_rate, clip_gradient_norm,
                          eval_rouge=False, rouge_decode_length=128, rouge_beam_size=1,
                          rouge_batch_size=1) -> None:
  """One-line errors for bad `train` arguments (see `train`)."""
  if not isinstance(eval_rouge, bool):
    raise ValueError(f'train: eval_rouge must be True or False, got {eval_rouge!r}')
  arguments.check_int('train', 'rouge_decode_length', rouge_decode_length)
  arguments.check_int('train', 'rouge_beam_size', rouge_beam_size)
  arguments.check_int('train', 'rouge_batch_size', rouge_batch_size)
  for name, value in (('n_steps', n_steps), ('eval_every', eval_every),
                      ('checkpoint_every', checkpoint_every),
                      ('keep_checkpoints', keep_checkpoints), ('log_every', log_every)):
    arguments.check_int('train', name, value)
  arguments.check_int('train', 'seed', seed, minimum=0)
  arguments.check_int('train', 'decode_length', decode_length, minimum=0)
  arguments.check_number('train', 'decode_temperature', decode_temperature, minimum=0.0)
  arguments.check_int('train', 'n_devices', n_devices, optional=True)
  arguments.check_choice('train', 'weight_sharding', weight_sharding, ('replicated', 'sharded'))
  arguments.check_choice('train', 'compute_dtype', compute_dtype, COMPUTE_DTYPES)
  if not callable(learning_rate):
    arguments.check_number('train', 'learning_rate', learning_rate, minimum=0.0,
                           exclusive_minimum=True)
  arguments.check_number('train', 'clip_gradient_norm', clip_gradient_norm, minimum=0.0,
                         exclusive_minimum=True, optional=True)


def train(output_dir: str, model: Callable, inputs, optimizer: Callable = optimizers.Adam,
          learning_rate=1e-3, clip_gradient_norm: Optional[float] = 1.0, n_steps: int = 1000,
          eval_every: int = 200, checkpoint_every: int = 200, keep_checkpoints: int = 3,
          log_every: int = 10, seed: int = 0, decode_length: int = 32,
          decode_temperature: float = 0.0, progress_bar: bool = True,
          n_devices: Optional[int] = None, weight_sharding: str = 'replicated',
          compute_dtype: str = 'float32', eval_rouge: bool = False,
          rouge_decode_length: int = 128, rouge_beam_size: int = 1,
          rouge_batch_size: int = 1,
          on_start: Optional[Callable[[], None]] = None) -> dict:
  """Trains `model` on `inputs`, evaluating, checkpointing and resuming.

  Args:
    output_dir: where checkpoints, metrics.jsonl (and config.gin) go.
    model: a model function taking `mode` (and vocabulary sizes, filled in
      from the tokenizer), e.g. TransformerLM.
    inputs: a `sparse_trax.data.Inputs`.
    optimizer: a function learning_rate -> optax.GradientTransformation.
    learning_rate: a number or a schedule step -> rate.
    clip_gradient_norm: global gradient-norm clipping (None: off).
    n_steps: total training steps (a resumed run trains up to this).
    eval_every, checkpoint_every, log_every: intervals in steps.
    keep_checkpoints: how many of the latest checkpoints to keep.
    seed: seeds the weights and the per-step rngs.
    decode_length: tokens decoded for the sample printed at the end (0: none).
    decode_temperature: 0 for greedy.
    progress_bar: show a tqdm bar (step, loss, tokens/s) when stderr is a
      terminal; otherwise (a log file, a pipe) and with False, one plain line
      per `log_every` steps (`step N: loss L, R tokens/s`).
    n_devices: devices to train on, data-parallel (default: all local and,
      after `jax.distributed.initialize()`, remote ones); the batch size must
      be a multiple of it.
    weight_sharding: 'replicated' (every device holds all weights) or
      'sharded' (each array split over the devices; for large models).
    compute_dtype: 'float32', or 'bfloat16': training steps compute on
      bfloat16 copies of the float32 weights (optimizer state and
      checkpoints stay float32; eval runs in float32).
    eval_rouge: at each eval, also decode the eval set (an encoder-decoder
      task) and report ROUGE-1, ROUGE-2 and ROUGE-Lsum (`decode_rouge`).
    rouge_decode_length: tokens decoded per eval example for ROUGE.
    rouge_beam_size: 1 decodes greedily; more runs beam search.
    rouge_batch_size: eval examples decoded at once for ROUGE (1: each from
      its unpadded source, which every model accepts; more pads the sources,
      for models that mask padding).
    on_start: called once everything is built, before the first step.

  Returns:
    A dict: the final eval metrics, the unigram baseline, the decoded
    'sample' and the trained 'weights' (to decode or evaluate further).

  With several processes (after `jax.distributed.initialize()`) every process
  runs this with the same arguments; only process 0 writes metrics.jsonl,
  prints and decodes the sample ('sample' is in its result only).
  """
  check_train_arguments(n_steps, eval_every, checkpoint_every, keep_checkpoints, log_every,
                        seed, decode_length, decode_temperature, n_devices, weight_sharding,
                        compute_dtype, learning_rate, clip_gradient_norm, eval_rouge,
                        rouge_decode_length, rouge_beam_size, rouge_batch_size)
  os.makedirs(output_dir, exist_ok=True)
  metrics_path = os.path.join(output_dir, 'metrics.jsonl')
  # With several processes, process 0 prepares the data and trains the tokenizer
  # (into caches the processes share) before the others read them.
  vocab_size = parallel.main_process_first(lambda: inputs.tokenizer.vocab_size,
                                           'tokenizer ready')
  train_model = build_model(model, 'train', vocab_size)
  eval_model = build_model(model, 'eval', vocab_size)
  lm = train_model.n_in == 1
  if eval_rouge and lm:
    raise ValueError('train: eval_rouge needs an encoder-decoder model (inputs -> targets); '
                     f'{train_model.name} is a language model')
  tx = optimizers.with_gradient_clipping(optimizer(learning_rate), clip_gradient_norm)
  placement = parallel.Placement(n_devices, weight_sharding)
  main_process = jax.process_index() == 0     # the one that writes and prints
  if placement.n_devices > 1 and main_process:
    print(f'Training data-parallel on {placement.n_devices} devices '
          f'({jax.devices()[0].device_kind}'
          f'{f", {jax.process_count()} processes" if jax.process_count() > 1 else ""}), '
          f'weights {weight_sharding}.')

  # The first batch, or the reason there is no train or eval batch.
  first_batch = parallel.main_process_first(lambda: inputs.check(lm=lm), 'data prepared')
  if first_batch['targets'].shape[0] % placement.n_devices:
    raise ValueError(f'the batch size {first_batch["targets"].shape[0]} is not a multiple of '
                     f'the {placement.n_devices} devices trained on; change the batch size '
                     f'or set train.n_devices')
  weights, model_state = train_model.init(_signature(model_inputs(first_batch, lm)),
                                          rng=jax.random.key(seed))
  output_signature = train_model.output_signature(_signature(model_inputs(first_batch, lm)))
  if output_signature.shape[-1] != vocab_size:
    raise ValueError(f'the model outputs {output_signature.shape[-1]} logits per token but '
                     f'the tokenizer has {vocab_size} ids')
  weights = placement.weights(weights)
  model_state = placement.replicate(model_state)
  train_state = {'weights': weights, 'model_state': model_state,
                 'opt_state': placement.weights(tx.init(weights)),
                 'rng': placement.replicate(jax.random.key_data(jax.random.key(seed)))}
  checkpointer = checkpoints.Checkpointer(os.path.join(output_dir, 'checkpoints'),
                                          keep=keep_checkpoints)
  try:
    restored = checkpointer.restore_latest(train_state, set_aside_corrupt=True)
  except checkpoints.IncompatibleCheckpointError as e:
    checkpointer.close()
    raise checkpoints.IncompatibleCheckpointError(
        f'{e}. The output folder {output_dir} holds another run: pass another --output_dir, '
        f'or restore the config it was made with ({os.path.join(output_dir, "config.gin")}). '
        'Nothing was changed.') from None
  start_step, position = 0, 0
  if restored is not None:
    train_state, metadata = restored
    start_step, position = metadata['step'], metadata['data_position']
    if main_process:
      print(f'Resuming from step {start_step} ({checkpointer.directory}/{start_step}).')
  if main_process:
    truncate_metrics(metrics_path, start_step)
  input_signature = checkpoints.signature_to_json(_signature(model_inputs(first_batch, lm)))
  unigram = inputs.unigram_log_perplexity(lm=lm)

  shardings = jax.tree_util.tree_map(
      lambda x: x.sharding, (train_state['weights'], train_state['model_state'],
                             train_state['opt_state']))
  batch_shardings = jax.tree_util.tree_map(
      lambda x: x.sharding, placement.batch(first_batch))
  train_step = make_train_step(train_model, tx, lm, shardings + (batch_shardings,),
                               compute_dtype=compute_dtype)
  eval_step = make_eval_step(eval_model, lm)
  rng = jax.random.wrap_key_data(jnp.asarray(train_state['rng']))
  weights, model_state = train_state['weights'], train_state['model_state']
  opt_state = train_state['opt_state']
  batches = inputs.train_batches(position, lm=lm)
  if on_start is not None:
    on_start()

  def save(step):
    checkpointer.save(step, {'weights': weights, 'model_state': model_state,
                             'opt_state': opt_state, 'rng': jax.random.key_data(rng)},
                      {'data_position': position, 'seed': seed,
                       'input_signature': input_signature})

  def run_eval(step, log=True):
    eval_batches = (placement.batch(b) for b in inputs.eval_batches(lm=lm))
    record = dict(evaluate(eval_model, eval_step, weights, eval_batches, lm),
                  step=step, unigram_log_perplexity=unigram)
    if eval_rouge:
      local_weights = parallel.process_local(weights)   # (a collective: every process)
      if main_process:
        record.update(decode_rouge(model, vocab_size, local_weights,
                                   inputs.eval_batches(lm=lm), inputs.tokenizer,
                                   rouge_decode_length, rouge_beam_size, rouge_batch_size))
    if log and main_process:
      _append_jsonl(metrics_path, record)
    if main_process:
      tqdm.tqdm.write(f'step {step}: eval log-perplexity {record["eval_log_perplexity"]:.4f} '
                      f'(unigram baseline {unigram:.4f}), '
                      f'accuracy {record["eval_accuracy"]:.4f}' +
                      (f', ROUGE-1/2/Lsum {record["eval_rouge1"]:.2f} / '
                       f'{record["eval_rouge2"]:.2f} / {record["eval_rougeLsum"]:.2f}'
                       if 'eval_rouge1' in record else ''))
    return record

  # The bar rewrites its line with carriage returns: on a terminal only (in a log file it
  # left thousands of updates); elsewhere a plain line every log_every steps.
  show_bar = progress_bar and main_process and sys.stderr.isatty()
  bar = tqdm.tqdm(total=n_steps, initial=start_step, disable=not show_bar,
                  desc='training', unit='step', dynamic_ncols=True)
  record, tokens, clock = None, 0, time.perf_counter()
  try:   # the bar ends its line before any error message
    for step in range(start_step + 1, n_steps + 1):
      batch = next(batches)
      position += 1
      weights, model_state, opt_state, metrics = train_step(
          weights, model_state, opt_state, placement.batch(batch), jax.random.fold_in(rng, step))
      loss = float(metrics['loss'])
      if not np.isfinite(loss):
        kept = checkpointer.steps()
        raise FloatingPointError(
            f'the training loss is {loss} at step {step}; stopping. The last good checkpoint '
            f'is kept: {checkpointer.directory}/{kept[-1] if kept else "(none yet)"}')
      tokens += batch['targets'].size
      bar.update(1)
      if step % log_every == 0 or step == n_steps:
        rate = tokens / max(time.perf_counter() - clock, 1e-9)
        bar.set_postfix(loss=f'{loss:.3f}', tokens_per_s=f'{rate:,.0f}')
        if main_process and not show_bar:
          print(f'step {step}: loss {loss:.4f}, {rate:,.0f} tokens/s', flush=True)
        if main_process:
          _append_jsonl(metrics_path, {'step': step, 'loss': loss, 'tokens_per_s': rate,
                                       'accuracy': float(metrics['accuracy']),
                                       'gradient_norm': float(metrics['gradient_norm'])})
        tokens, clock = 0, time.perf_counter()
      if step % eval_every == 0 or step == n_steps:
        record = run_eval(step)
      if step % checkpoint_every == 0 or step == n_steps:
        save(step)
  finally:
    bar.close()
  if record is None:            # nothing trained (a finished run rerun): log nothing
    record = run_eval(start_step, log=False)
  result = dict(record, weights=weights)
  if decode_length > 0:
    # Process 0 decodes alone, from a copy of the weights it holds whole (gathering
    # weights sharded over processes needs every process).
    local_weights = parallel.process_local(weights)
    local_rng = jax.random.wrap_key_data(parallel.process_local(jax.random.key_data(rng)))
  if decode_length > 0 and main_process:
    sample = decode_sample(model, vocab_size, local_weights, next(inputs.eval_batches(lm=lm)),
                           inputs.tokenizer, lm, decode_length, decode_temperature,
                           jax.random.fold_in(local_rng, n_steps + 1))
    print(f'Decoded sample (temperature {decode_temperature}):\n'
          f'  prompt:       {sample["prompt"]!r}\n'
          f'  continuation: {sample["continuation"]!r}')
    result['sample'] = sample
  checkpointer.close()
  return result
