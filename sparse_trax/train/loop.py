"""The training loop: `Loop` (a run you can step, as Trax's `training.Loop`) and `train`.

A run writes into `output_dir`:
  checkpoints/<step>/   orbax checkpoints (the last `keep_checkpoints`)
  metrics.jsonl         one JSON object per logged train step and per eval
  config.gin            the operative gin config (written by the trainer;
                        config.<step>.gin for each resume with other
                        schedule settings)
  trainer.lock          while a run holds the folder: its pid and host

Making a `Loop` on a folder that holds a run resumes it from the newest good
checkpoint: step, weights, optimizer state, rng and data position. The
step's rng is `fold_in(rng, step)` and the data stream is skipped to the
recorded position, so the resumed steps compute exactly what an
uninterrupted run would. A run refuses to resume with another model's
weight layout, or another tokenizer than the one it was trained with.

In a notebook:

  loop = Loop(TransformerLM, inputs, '/tmp/run', n_steps=1000, eval_every=100)
  loop.run(200)          # 200 steps: evaluates and checkpoints at the intervals
  loop.weights           # look, decode, plot...
  loop.run(200)          # ... and go on; the same as run(400) in one go
  loop.close()
"""

import dataclasses
import os
import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from sparse_trax import arguments
from sparse_trax.train import checkpoints
from sparse_trax.train import decode_eval
from sparse_trax.train import folder_lock
from sparse_trax import interrupts
from sparse_trax.train import optimizers
from sparse_trax.train import parallel
from sparse_trax.train import run_files
from sparse_trax.train import steps
from sparse_trax.train.steps import COMPUTE_DTYPES


class TokenizerMismatchError(checkpoints.IncompatibleCheckpointError):
  """A run resumed with another tokenizer than the one it was trained with."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The settings of a training run, checked once at construction.

  Attributes:
    optimizer: a function learning_rate -> optax.GradientTransformation.
    learning_rate: a number or a schedule step -> rate.
    clip_gradient_norm: global gradient-norm clipping (None: off).
    n_steps: total training steps (`train` trains up to this; `Loop.run`
      takes its own count).
    eval_every, checkpoint_every, log_every: intervals in steps.
    keep_checkpoints: how many of the latest checkpoints to keep.
    seed: seeds the weights and the per-step rngs.
    decode_length: tokens decoded for the sample `train` prints at the end
      (0: none).
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
      task) and report ROUGE-1, ROUGE-2 and ROUGE-Lsum.
    rouge_decode_length: tokens decoded per eval example for ROUGE.
    rouge_beam_size: 1 decodes greedily; more runs beam search.
    rouge_batch_size: eval examples decoded at once for ROUGE (1: each from
      its unpadded source, which every model accepts; more pads the sources,
      for models that mask padding).
  """

  optimizer: Callable = optimizers.Adam
  learning_rate: object = 1e-3
  clip_gradient_norm: Optional[float] = 1.0
  n_steps: int = 1000
  eval_every: int = 200
  checkpoint_every: int = 200
  keep_checkpoints: int = 3
  log_every: int = 10
  seed: int = 0
  decode_length: int = 32
  decode_temperature: float = 0.0
  progress_bar: bool = True
  n_devices: Optional[int] = None
  weight_sharding: str = 'replicated'
  compute_dtype: str = 'float32'
  eval_rouge: bool = False
  rouge_decode_length: int = 128
  rouge_beam_size: int = 1
  rouge_batch_size: int = 1

  def __post_init__(self):
    owner = 'train'
    for name in ('eval_rouge', 'progress_bar'):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f'{owner}: {name} must be True or False, got {getattr(self, name)!r}')
    for name in ('n_steps', 'eval_every', 'checkpoint_every', 'keep_checkpoints', 'log_every',
                 'rouge_decode_length', 'rouge_beam_size', 'rouge_batch_size'):
      arguments.check_int(owner, name, getattr(self, name))
    arguments.check_int(owner, 'seed', self.seed, minimum=0)
    arguments.check_int(owner, 'decode_length', self.decode_length, minimum=0)
    arguments.check_number(owner, 'decode_temperature', self.decode_temperature, minimum=0.0)
    arguments.check_int(owner, 'n_devices', self.n_devices, optional=True)
    arguments.check_choice(owner, 'weight_sharding', self.weight_sharding,
                           ('replicated', 'sharded'))
    arguments.check_choice(owner, 'compute_dtype', self.compute_dtype, COMPUTE_DTYPES)
    if not callable(self.optimizer):
      raise ValueError(f'{owner}: optimizer must be a function learning_rate -> optax '
                       f'transformation (e.g. Adam), got {self.optimizer!r}')
    if not callable(self.learning_rate):
      arguments.check_number(owner, 'learning_rate', self.learning_rate, minimum=0.0,
                             exclusive_minimum=True)
    arguments.check_number(owner, 'clip_gradient_norm', self.clip_gradient_norm, minimum=0.0,
                           exclusive_minimum=True, optional=True)


def tokenizer_digest(tokenizer) -> Optional[str]:
  """What identifies a built tokenizer (its `digest`; None if it has none)."""
  return getattr(tokenizer, 'digest', None)


def _remove_empty_folders(folder: str) -> None:
  """Removes `folder` if it holds nothing but empty folders."""
  for root, _, names in os.walk(folder, topdown=False):
    if names:
      return
    try:
      os.rmdir(root)
    except OSError:
      return


class Loop:
  """A training run in an output folder, stepped by `run(n_steps)`.

  Building a Loop does everything but train: it takes the folder's lock,
  builds the tokenizer, the train and eval models, the optimizer and the
  jitted steps, checks the data, and resumes from the folder's newest good
  checkpoint when there is one. Nothing in the folder is written before the
  resume is known to be sound (same weight layout, same tokenizer, and
  `on_resume` passed).

  Args:
    model: a model function taking `mode` (and vocabulary sizes, filled in
      from the tokenizer), e.g. `TransformerLM` or a `functools.partial`.
      A model taking one input (`n_in == 1`) is trained as a language model
      on the batches' targets, one taking two as an encoder-decoder on
      (inputs, targets).
    inputs: a `sparse_trax.data.Inputs`.
    output_dir: the run's folder (created if missing).
    config: a `TrainConfig`; or give its fields as keyword `settings`.
    on_resume: called with the step the run resumes from (None: a fresh
      start) once everything is built, before anything is written in the
      folder; raise there to refuse (the trainer compares configurations).
    **settings: `TrainConfig` fields, when `config` is not given.

  Raises:
    FolderLockedError: another trainer holds the folder.
    IncompatibleCheckpointError: the folder's checkpoint does not fit the
      model (TokenizerMismatchError: it was trained with another tokenizer).
    ValueError: a bad setting, or data that gives no batch (one line each).
  """

  def __init__(self, model: Callable, inputs, output_dir: str,
               config: Optional[TrainConfig] = None, *,
               on_resume: Optional[Callable[[Optional[int]], None]] = None, **settings):
    if config is None:
      config = TrainConfig(**settings)
    elif settings:
      raise TypeError(f'Loop: give either config or settings, not both (got {sorted(settings)})')
    elif not isinstance(config, TrainConfig):
      raise TypeError(f'Loop: config must be a TrainConfig, got {type(config).__name__}')
    if not callable(model):
      raise TypeError(f'Loop: model must be a model function (e.g. TransformerLM), got '
                      f'{model!r}')
    self.config = config
    self.model_fn = model
    self.inputs = inputs
    self.output_dir = os.path.abspath(output_dir)
    self.main_process = jax.process_index() == 0     # the one that writes and prints
    self.metrics_path = os.path.join(self.output_dir, 'metrics.jsonl')
    self.last_eval: Optional[dict] = None
    self._checkpointer = None
    self._predict_model = None
    self._batches = None
    self._closed = False
    created = not os.path.exists(self.output_dir)
    self._lock = folder_lock.FolderLock(self.output_dir) if self.main_process else None
    if self._lock is not None:
      self._lock.acquire()
      if self._lock.took_over:
        print(f'Taking over the output folder from a trainer that stopped without releasing '
              f'it ({folder_lock.describe_owner(self._lock.took_over)}).', file=sys.stderr)
    else:
      os.makedirs(self.output_dir, exist_ok=True)
    try:
      self._build(on_resume)
    except BaseException:
      self.close()
      if created and self.main_process:
        _remove_empty_folders(self.output_dir)
      raise

  # ------------------------------------------------------------------ building

  def _build(self, on_resume) -> None:
    config, inputs = self.config, self.inputs
    # With several processes, process 0 prepares the data and trains the tokenizer
    # (into caches the processes share) before the others read them.
    self.vocab_size = parallel.main_process_first(lambda: inputs.tokenizer.vocab_size,
                                                  'tokenizer ready')
    self.train_model = steps.build_model(self.model_fn, 'train', self.vocab_size)
    self.eval_model = steps.build_model(self.model_fn, 'eval', self.vocab_size)
    self.lm = self.train_model.n_in == 1
    if config.eval_rouge and self.lm:
      raise ValueError('train: eval_rouge needs an encoder-decoder model (inputs -> targets); '
                       f'{self.train_model.name} is a language model')
    tx = optimizers.with_gradient_clipping(config.optimizer(config.learning_rate),
                                           config.clip_gradient_norm)
    self._placement = placement = parallel.Placement(config.n_devices, config.weight_sharding)
    if placement.n_devices > 1 and self.main_process:
      print(f'Training data-parallel on {placement.n_devices} devices '
            f'({jax.devices()[0].device_kind}'
            f'{f", {jax.process_count()} processes" if jax.process_count() > 1 else ""}), '
            f'weights {config.weight_sharding}.')

    # The first batch, or the reason there is no train or eval batch.
    first_batch = parallel.main_process_first(lambda: inputs.check(lm=self.lm),
                                              'data prepared')
    if first_batch['targets'].shape[0] % placement.n_devices:
      raise ValueError(f'the batch size {first_batch["targets"].shape[0]} is not a multiple '
                       f'of the {placement.n_devices} devices trained on; change the batch '
                       'size or set train.n_devices')
    model_signature = steps.signature(steps.model_inputs(first_batch, self.lm))
    # One compiled program (the same values as the eager init, bit for bit; the
    # quickstart's init 1.9 -> 1.7 s, a small all-sparse model's 3.4 -> 2.6 s).
    weights, model_state = jax.jit(lambda key: self.train_model.init(model_signature, rng=key))(
        jax.random.key(config.seed))
    output_signature = self.train_model.output_signature(model_signature)
    if output_signature.shape[-1] != self.vocab_size:
      raise ValueError(f'the model outputs {output_signature.shape[-1]} logits per token but '
                       f'the tokenizer has {self.vocab_size} ids')
    weights = placement.weights(weights)
    train_state = {'weights': weights, 'model_state': placement.replicate(model_state),
                   'opt_state': placement.weights(tx.init(weights)),
                   'rng': placement.replicate(
                       jax.random.key_data(jax.random.key(config.seed)))}
    self._checkpointer = checkpointer = checkpoints.Checkpointer(
        os.path.join(self.output_dir, 'checkpoints'), keep=config.keep_checkpoints)
    try:
      restored = checkpointer.restore_latest(train_state, set_aside_corrupt=True)
    except checkpoints.IncompatibleCheckpointError as e:
      raise checkpoints.IncompatibleCheckpointError(
          f'{e}. The output folder {self.output_dir} holds another run: pass another '
          '--output_dir, or restore the config it was made with '
          f'({os.path.join(self.output_dir, "config.gin")}). Nothing was changed.') from None
    self.tokenizer_digest = tokenizer_digest(inputs.tokenizer)
    start_step, position = 0, 0
    if restored is not None:
      train_state, metadata = restored
      start_step, position = metadata['step'], metadata['data_position']
      trained_with = metadata.get('tokenizer')
      if trained_with is not None and trained_with != self.tokenizer_digest:
        raise TokenizerMismatchError(
            f'checkpoint {checkpointer.directory}/{start_step} was trained with tokenizer '
            f'{trained_with[:12]} but the configured data builds tokenizer '
            f'{str(self.tokenizer_digest)[:12]} (other training text or settings); resuming '
            f'would feed the model other ids. Pass another --output_dir, or the data the run '
            'was made with. Nothing was changed.')
    if on_resume is not None:
      on_resume(start_step if restored is not None else None)
    if restored is not None and self.main_process:
      print(f'Resuming from step {start_step} ({checkpointer.directory}/{start_step}).')
    if self.main_process:
      run_files.truncate_metrics(self.metrics_path, start_step)
    self._input_signature = checkpoints.signature_to_json(model_signature)
    self.unigram_log_perplexity = inputs.unigram_log_perplexity(lm=self.lm)

    shardings = jax.tree_util.tree_map(
        lambda x: x.sharding, (train_state['weights'], train_state['model_state'],
                               train_state['opt_state']))
    batch_shardings = jax.tree_util.tree_map(lambda x: x.sharding,
                                             placement.batch(first_batch))
    self._train_step = steps.make_train_step(self.train_model, tx, self.lm,
                                             shardings + (batch_shardings,),
                                             compute_dtype=config.compute_dtype)
    self._eval_step = steps.make_eval_step(self.eval_model, self.lm)
    self._rng = jax.random.wrap_key_data(jnp.asarray(train_state['rng']))
    self._weights, self._model_state = train_state['weights'], train_state['model_state']
    self._opt_state = train_state['opt_state']
    self._step, self._position = start_step, position
    self._saved_step = start_step if restored is not None else None

  # ------------------------------------------------------------------ reading

  @property
  def step(self) -> int:
    """Training steps taken (including those of the run this one resumed)."""
    return self._step

  @property
  def weights(self):
    """The current weights (the model's `init` layout)."""
    return self._weights

  @property
  def model_state(self):
    return self._model_state

  @property
  def predict_model(self):
    """The predict-mode model, built once per Loop (decoders key compiled code on it)."""
    if self._predict_model is None:
      self._predict_model = steps.build_model(self.model_fn, 'predict', self.vocab_size)
    return self._predict_model

  # ------------------------------------------------------------------ acting

  def run(self, n_steps: int) -> Optional[dict]:
    """Trains `n_steps` more steps.

    Evaluates every `eval_every` steps, checkpoints every `checkpoint_every`
    steps, and does both after the last step of the call, so that two calls
    run(a); run(b) train exactly as one run(a + b).

    Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves a checkpoint
    at it and raises `interrupts.Interrupted` (a KeyboardInterrupt) saying
    where it is; a second signal stops at once.

    Returns:
      The last eval record (the one after the last step), or None for 0 steps.
    """
    self._check_open('run')
    arguments.check_int('Loop.run', 'n_steps', n_steps, minimum=0)
    config = self.config
    target = self._step + n_steps
    # The bar rewrites its line with carriage returns: on a terminal only (in a log file
    # it left thousands of updates); elsewhere a plain line every log_every steps.
    show_bar = config.progress_bar and self.main_process and sys.stderr.isatty()
    bar = tqdm.tqdm(total=target, initial=self._step, disable=not show_bar,
                    desc='training', unit='step', dynamic_ncols=True)
    tokens, clock = 0, time.perf_counter()
    try:   # the bar ends its line before any error message
      with interrupts.DeferSignals() as signals:
        for step in range(self._step + 1, target + 1):
          batch = next(self._train_batches())
          self._weights, self._model_state, self._opt_state, metrics = self._train_step(
              self._weights, self._model_state, self._opt_state, self._placement.batch(batch),
              jax.random.fold_in(self._rng, step))
          self._position += 1
          loss = float(metrics['loss'])
          if not np.isfinite(loss):
            kept = self._checkpointer.steps()
            raise FloatingPointError(
                f'the training loss is {loss} at step {step}; stopping. The last good '
                f'checkpoint is kept: {self._checkpointer.directory}/'
                f'{kept[-1] if kept else "(none yet)"}')
          self._step = step
          tokens += batch['targets'].size
          bar.update(1)
          if step % config.log_every == 0 or step == target:
            rate = tokens / max(time.perf_counter() - clock, 1e-9)
            bar.set_postfix(loss=f'{loss:.3f}', tokens_per_s=f'{rate:,.0f}')
            if self.main_process and not show_bar:
              print(f'step {step}: loss {loss:.4f}, {rate:,.0f} tokens/s', flush=True)
            if self.main_process:
              run_files.append_jsonl(self.metrics_path, {
                  'step': step, 'loss': loss, 'tokens_per_s': rate,
                  'accuracy': float(metrics['accuracy']),
                  'gradient_norm': float(metrics['gradient_norm'])})
            tokens, clock = 0, time.perf_counter()
          if step % config.eval_every == 0 or step == target:
            self.evaluate()
          if step % config.checkpoint_every == 0 or step == target:
            self.save_checkpoint()
          if signals.received is not None:
            path = self.save_checkpoint()
            raise interrupts.Interrupted(
                signals.received,
                f'interrupted ({interrupts.signal_name(signals.received)}) at step {step}; '
                f'checkpoint saved: {path}; rerun the same command to resume')
    finally:
      bar.close()
    return self.last_eval if n_steps else None

  def evaluate(self, log: bool = True) -> dict:
    """Evaluates the current weights on the eval split (and ROUGE when configured).

    Args:
      log: append the record to metrics.jsonl and print its line.

    Returns:
      {'eval_loss', 'eval_log_perplexity', 'eval_accuracy',
       'eval_sequence_accuracy', 'step', 'unigram_log_perplexity'} (and
      'eval_rouge1', ... with `eval_rouge`).
    """
    self._check_open('evaluate')
    placement, lm = self._placement, self.lm
    eval_batches = (placement.batch(b) for b in self.inputs.eval_batches(lm=lm))
    record = dict(steps.evaluate(self.eval_model, self._eval_step, self._weights,
                                 eval_batches, lm),
                  step=self._step, unigram_log_perplexity=self.unigram_log_perplexity)
    if self.config.eval_rouge:
      local_weights = parallel.process_local(self._weights)   # (a collective: every process)
      if self.main_process:
        record.update(decode_eval.decode_rouge(
            self.predict_model, local_weights, self.inputs.eval_batches(lm=lm),
            self.inputs.tokenizer, self.config.rouge_decode_length,
            self.config.rouge_beam_size, self.config.rouge_batch_size))
    if log and self.main_process:
      run_files.append_jsonl(self.metrics_path, record)
      unigram = self.unigram_log_perplexity
      tqdm.tqdm.write(f'step {self._step}: eval log-perplexity '
                      f'{record["eval_log_perplexity"]:.4f} (unigram baseline {unigram:.4f}), '
                      f'accuracy {record["eval_accuracy"]:.4f}' +
                      (f', ROUGE-1/2/Lsum {record["eval_rouge1"]:.2f} / '
                       f'{record["eval_rouge2"]:.2f} / {record["eval_rougeLsum"]:.2f}'
                       if 'eval_rouge1' in record else ''))
    self.last_eval = record
    return record

  def save_checkpoint(self) -> str:
    """Saves the run at the current step (once per step); returns the checkpoint's path."""
    self._check_open('save_checkpoint')
    path = os.path.join(self._checkpointer.directory, str(self._step))
    if self._saved_step == self._step:
      return path
    self._checkpointer.save(
        self._step, {'weights': self._weights, 'model_state': self._model_state,
                     'opt_state': self._opt_state, 'rng': jax.random.key_data(self._rng)},
        {'data_position': self._position, 'seed': self.config.seed,
         'input_signature': self._input_signature, 'tokenizer': self.tokenizer_digest})
    self._saved_step = self._step
    return path

  def decode_sample(self, length: Optional[int] = None,
                    temperature: Optional[float] = None) -> Optional[dict]:
    """Decodes from the start of the first eval example with the current weights.

    Args:
      length: tokens to decode (default: the config's decode_length).
      temperature: 0 for greedy (default: the config's decode_temperature).

    Returns:
      {'prompt': str, 'continuation': str} in process 0; None in the others
      (every process must call it: it gathers the weights).
    """
    self._check_open('decode_sample')
    length = self.config.decode_length if length is None else length
    temperature = self.config.decode_temperature if temperature is None else temperature
    arguments.check_int('Loop.decode_sample', 'length', length)
    arguments.check_number('Loop.decode_sample', 'temperature', temperature, minimum=0.0)
    # Process 0 decodes alone, from a copy of the weights it holds whole (gathering
    # weights sharded over processes needs every process).
    local_weights = parallel.process_local(self._weights)
    local_rng = jax.random.wrap_key_data(parallel.process_local(jax.random.key_data(self._rng)))
    if not self.main_process:
      return None
    return decode_eval.decode_sample(
        self.predict_model, local_weights, next(self.inputs.eval_batches(lm=self.lm)),
        self.inputs.tokenizer, self.lm, length, temperature,
        jax.random.fold_in(local_rng, self._step + 1))

  def close(self) -> None:
    """Lets go of the checkpoint manager and the folder's lock (the run stays resumable)."""
    if self._closed:
      return
    self._closed = True
    if self._checkpointer is not None:
      self._checkpointer.close()
    if self._lock is not None:
      self._lock.release()

  def __enter__(self) -> 'Loop':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # ------------------------------------------------------------------ private

  def _train_batches(self):
    if self._batches is None:
      self._batches = self.inputs.train_batches(self._position, lm=self.lm)
    return self._batches

  def _check_open(self, what: str) -> None:
    if self._closed:
      raise RuntimeError(f'Loop.{what}: this Loop is closed; make a new Loop on '
                         f'{self.output_dir} to go on (it resumes)')


def train(output_dir: str, model: Callable, inputs, optimizer: Callable = optimizers.Adam,
          learning_rate=1e-3, clip_gradient_norm: Optional[float] = 1.0, n_steps: int = 1000,
          eval_every: int = 200, checkpoint_every: int = 200, keep_checkpoints: int = 3,
          log_every: int = 10, seed: int = 0, decode_length: int = 32,
          decode_temperature: float = 0.0, progress_bar: bool = True,
          n_devices: Optional[int] = None, weight_sharding: str = 'replicated',
          compute_dtype: str = 'float32', eval_rouge: bool = False,
          rouge_decode_length: int = 128, rouge_beam_size: int = 1,
          rouge_batch_size: int = 1,
          on_start: Optional[Callable[[], None]] = None,
          on_resume: Optional[Callable[[Optional[int]], None]] = None) -> dict:
  """Trains `model` on `inputs` up to `n_steps`, evaluating, checkpointing and resuming.

  A `Loop` run to `n_steps`, then a decoded sample. The settings are
  `TrainConfig`'s fields (see there); besides them:

  Args:
    output_dir: where checkpoints, metrics.jsonl (and config.gin) go.
    model: a model function taking `mode` (and vocabulary sizes, filled in
      from the tokenizer), e.g. TransformerLM.
    inputs: a `sparse_trax.data.Inputs`.
    on_start: called once everything is built, before the first step.
    on_resume: see `Loop`.

  Returns:
    A dict: the final eval metrics, the unigram baseline, the decoded
    'sample' and the trained 'weights' (to decode or evaluate further).

  With several processes (after `jax.distributed.initialize()`) every process
  runs this with the same arguments; only process 0 writes metrics.jsonl,
  prints and decodes the sample ('sample' is in its result only).
  """
  config = TrainConfig(
      optimizer=optimizer, learning_rate=learning_rate, clip_gradient_norm=clip_gradient_norm,
      n_steps=n_steps, eval_every=eval_every, checkpoint_every=checkpoint_every,
      keep_checkpoints=keep_checkpoints, log_every=log_every, seed=seed,
      decode_length=decode_length, decode_temperature=decode_temperature,
      progress_bar=progress_bar, n_devices=n_devices, weight_sharding=weight_sharding,
      compute_dtype=compute_dtype, eval_rouge=eval_rouge,
      rouge_decode_length=rouge_decode_length, rouge_beam_size=rouge_beam_size,
      rouge_batch_size=rouge_batch_size)
  with Loop(model, inputs, output_dir, config, on_resume=on_resume) as loop:
    if on_start is not None:
      on_start()
    if loop.step < n_steps:
      record = loop.run(n_steps - loop.step)
    else:                       # nothing to train (a finished run rerun): log nothing
      record = loop.evaluate(log=False)
    result = dict(record, weights=loop.weights)
    if decode_length > 0:
      sample = loop.decode_sample()
      if sample is not None:
        print(f'Decoded sample (temperature {decode_temperature}):\n'
              f'  prompt:       {sample["prompt"]!r}\n'
              f'  continuation: {sample["continuation"]!r}')
        result['sample'] = sample
  return result
