"""Runs that cannot silently go wrong (#25): the Loop stepped from Python, one
trainer per folder, resumes refused across model, data or tokenizer changes.

(Ctrl-C / SIGTERM saving a checkpoint and a damaged checkpoint's few log lines
are checked with real processes in test_trainer.py's kill-and-resume test.)
"""

import functools
import os
import signal
import subprocess
import sys
import threading
import time
import types

import gin
import numpy as np
import pytest

from sparse_trax import config_changes, data, interrupts, models, trainer
from sparse_trax.train import Loop, TrainConfig, folder_lock, loop as loop_module
from test_trainer import _snapshot as snapshot  # pylint: disable=unused-import
from test_trainer import run_trainer, text_files, tiny_config, train_losses  # pylint: disable=unused-import

MODEL = functools.partial(models.TransformerLM, d_model=16, d_ff=32, n_layers=1, n_heads=2,
                          max_len=64, dropout=0.1)


def byte_inputs(text_files, tokenizer=None):
  return data.Inputs(data.TextFiles([text_files[0]], [text_files[1]]),
                     tokenizer or data.ByteTokenizer(), max_length=16, batch_size=4,
                     n_eval_batches=1)


def test_loop_run_twice_equals_one_run_of_the_sum(tmp_path, text_files):
  settings = dict(eval_every=100, checkpoint_every=100, log_every=1, progress_bar=False)
  stepped = str(tmp_path / 'stepped')
  with Loop(MODEL, byte_inputs(text_files), stepped, **settings) as run:
    assert run.step == 0
    first = run.run(3)
    assert run.step == 3 and first['step'] == 3            # evaluates after a run's last step
    weights_after_3 = run.weights
    assert np.isfinite(run.evaluate(log=False)['eval_loss'])
    run.run(4)
    assert run.step == 7
    assert weights_after_3 is not run.weights
    sample = run.decode_sample(length=3)
    assert set(sample) == {'prompt', 'continuation'}
  assert sorted(os.listdir(os.path.join(stepped, 'checkpoints'))) == ['3', '7']
  straight = str(tmp_path / 'straight')
  with Loop(MODEL, byte_inputs(text_files), straight, **settings) as run:
    run.run(7)
  np.testing.assert_array_equal([train_losses(stepped)[s] for s in range(1, 8)],
                                [train_losses(straight)[s] for s in range(1, 8)])
  # A new Loop on the folder resumes where the last one stopped; a closed one says so.
  with Loop(MODEL, byte_inputs(text_files), stepped, **settings) as resumed:
    assert resumed.step == 7
  with pytest.raises(RuntimeError, match='this Loop is closed; make a new Loop'):
    resumed.run(1)


def test_train_config_checks_once_and_loop_takes_it_or_settings(tmp_path, text_files):
  with pytest.raises(ValueError, match='train: eval_every must be >= 1, got 0'):
    TrainConfig(eval_every=0)
  with pytest.raises(ValueError, match='train: optimizer must be a function'):
    TrainConfig(optimizer='adam')
  with pytest.raises(TypeError, match='give either config or settings'):
    Loop(MODEL, byte_inputs(text_files), str(tmp_path / 'x'), TrainConfig(), n_steps=3)
  assert not os.path.exists(tmp_path / 'x')
  # A data failure after the folder was made leaves no empty folder behind.
  short = tmp_path / 'short.txt'
  short.write_text('a few words\n', encoding='utf-8')
  inputs = data.Inputs(data.TextFiles([text_files[0]], [str(short)]), data.ByteTokenizer(),
                       max_length=16, batch_size=4)
  with pytest.raises(ValueError, match='eval split'):
    Loop(MODEL, inputs, str(tmp_path / 'y'))
  assert not os.path.exists(tmp_path / 'y')


def _holder(folder):
  """A process holding the folder's lock (FolderLock loaded alone: no jax import)."""
  code = (f'import importlib.util, sys, time\n'
          f'spec = importlib.util.spec_from_file_location("fl", {folder_lock.__file__!r})\n'
          f'fl = importlib.util.module_from_spec(spec); spec.loader.exec_module(fl)\n'
          f'fl.FolderLock({folder!r}).acquire(); print("held", flush=True); time.sleep(60)\n')
  process = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
  assert process.stdout.readline().strip() == 'held'
  return process


def test_second_trainer_is_refused_and_a_killed_owner_is_taken_over(tmp_path, text_files,
                                                                  capsys):
  folder = str(tmp_path / 'run')
  config = tiny_config(str(tmp_path), text_files, n_steps=2, decode_length=0)
  holder = _holder(folder)
  try:
    gin.clear_config()
    status = trainer.console_main(['--config_file', config, '--output_dir', folder])
    gin.clear_config()
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert err[0].startswith(f'trainer: error: the output folder {folder} is in use by another '
                             f'trainer: pid {holder.pid} on host '), err
    assert sorted(os.listdir(folder)) == [folder_lock.OWNER_FILE]    # nothing else written
  finally:
    holder.kill()
    holder.wait()
  # The killed owner's lock went with it; its owner file is reported and replaced.
  run_trainer('--config_file', config, '--output_dir', folder)
  assert 'Taking over the output folder' in capsys.readouterr().err
  assert sorted(train_losses(folder)) == [1, 2]
  assert not os.path.exists(os.path.join(folder, folder_lock.OWNER_FILE))   # released


def test_changed_heads_refused_with_every_binding_and_nothing_written(tmp_path, text_files):
  """N_HEADS 2 -> 4 keeps every weight's shape: only the configuration tells them apart."""
  config = tiny_config(str(tmp_path), text_files, n_steps=4, decode_length=0)
  out = str(tmp_path / 'run')
  run_trainer('--config_file', config, '--output_dir', out)
  before = snapshot(str(tmp_path))
  with pytest.raises(config_changes.ConfigChangedError) as info:
    run_trainer('--config_file', config, '--output_dir', out, '--config', 'N_HEADS = 4',
                '--config', 'train.seed = 3', '--config', 'train.n_steps = 6')
  message = str(info.value)
  assert '  TransformerLM.n_heads: 2 -> 4\n' in message and '  train.seed: 0 -> 3\n' in message
  assert 'n_steps' not in message.split('Pass another')[0]      # schedule: allowed
  assert 'Nothing was changed' in message
  assert snapshot(str(tmp_path)) == before
  # A schedule-only change resumes, keeping config.gin and recording config.4.gin.
  run_trainer('--config_file', config, '--output_dir', out, '--config', 'train.n_steps = 6',
              '--config', 'train.eval_every = 3')
  assert sorted(train_losses(out)) == list(range(1, 7))
  after = snapshot(out)
  assert after['config.gin'] == before['run/config.gin']
  assert b'train.n_steps = 6' in after['config.4.gin'] and 'config.6.gin' not in after
  assert [str(c) for c in config_changes.changes(after['config.gin'].decode(),
                                                 after['config.4.gin'].decode())] == [
                                                     'train.eval_every: 6 -> 3',
                                                     'train.n_steps: 4 -> 6']


def test_resume_with_another_tokenizer_is_refused(tmp_path, text_files):
  """A run's checkpoints record its tokenizer: other training text is another tokenizer."""
  cache = str(tmp_path / 'tokenizers')
  out = str(tmp_path / 'run')
  sentencepiece = lambda: data.SentencePieceTokenizer(80, cache_dir=cache)
  settings = dict(eval_every=100, checkpoint_every=100, progress_bar=False)
  with Loop(MODEL, byte_inputs(text_files, sentencepiece()), out, **settings) as run:
    run.run(2)
  before = snapshot(out)
  other_text = tmp_path / 'other.txt'
  other_text.write_text('\n'.join(f'{n} and {n + 1} and {n + 2}' for n in range(600)),
                        encoding='utf-8')
  with pytest.raises(loop_module.TokenizerMismatchError,
                     match='was trained with tokenizer [0-9a-f]{12} but the configured data '
                           'builds tokenizer [0-9a-f]{12}'):
    Loop(MODEL, byte_inputs((str(other_text), text_files[1]), sentencepiece()), out,
         **settings)
  assert snapshot(out) == before
  # The data it was made with resumes.
  with Loop(MODEL, byte_inputs(text_files, sentencepiece()), out, **settings) as resumed:
    assert resumed.step == 2


def test_sigterm_during_run_saves_the_step_reached_and_the_rerun_goes_on(tmp_path, text_files):
  """SIGTERM (preemption) inside Loop.run: the step ends, a checkpoint is saved at it,
  Interrupted says where (exit status 143); a new Loop resumes there. (Ctrl-C, SIGINT,
  is checked with real trainer processes in test_trainer.py.)"""
  settings = dict(eval_every=1000, checkpoint_every=1000, log_every=1, progress_bar=False)
  out = str(tmp_path / 'run')
  with Loop(MODEL, byte_inputs(text_files), out, **settings) as run:
    run.run(1)                                      # compiled: the signal lands mid-run
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
      with pytest.raises(interrupts.Interrupted) as info:
        run.run(100_000)
    finally:
      timer.cancel()
    reached = run.step
  assert info.value.exit_status == 143 and 1 < reached < 100_001
  checkpoint = os.path.join(out, 'checkpoints', str(reached))
  assert str(info.value) == (f'interrupted (SIGTERM) at step {reached}; checkpoint saved: '
                             f'{checkpoint}; rerun the same command to resume')
  assert os.path.isdir(checkpoint) and max(train_losses(out)) == reached
  with Loop(MODEL, byte_inputs(text_files), out, **settings) as resumed:
    assert resumed.step == reached
    resumed.run(1)
  assert max(train_losses(out)) == reached + 1


def test_signal_scopes_raise_defer_and_carry_a_swallowed_signal():
  before = signal.getsignal(signal.SIGINT)    # (SIG_IGN where pytest was started with '&')
  with interrupts.RaiseOnSignal() as outer:
    with pytest.raises(interrupts.Interrupted) as info:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(1)             # (the handler runs at the next bytecode)
    assert info.value.exit_status == 143 and outer.received == signal.SIGTERM
    with interrupts.DeferSignals() as deferred:   # the outer one's signal counts here
      assert deferred.received == signal.SIGTERM
    outer.received = None
    with interrupts.DeferSignals() as deferred:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.1)
      assert deferred.received == signal.SIGINT                # recorded, not raised
      with pytest.raises(interrupts.Interrupted, match='interrupted again'):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
  assert signal.getsignal(signal.SIGINT) is before   # restored


def test_an_interrupt_python_could_not_raise_is_not_printed():
  """A signal landing in a gc callback: Python prints "Exception ignored in ..." with a
  traceback through sys.unraisablehook; inside RaiseOnSignal an Interrupted is left out
  (the trainer reports it), anything else goes on to the hook before."""
  def unraisable(error):
    return types.SimpleNamespace(exc_type=type(error), exc_value=error, exc_traceback=None,
                                 err_msg='Exception ignored in', object=None)
  forwarded = []
  before = sys.unraisablehook
  sys.unraisablehook = forwarded.append
  try:
    with interrupts.RaiseOnSignal():
      sys.unraisablehook(unraisable(interrupts.Interrupted(signal.SIGINT)))
      sys.unraisablehook(unraisable(ValueError('something else')))
    assert [type(u.exc_value).__name__ for u in forwarded] == ['ValueError']
    assert sys.unraisablehook == forwarded.append          # restored
  finally:
    sys.unraisablehook = before
