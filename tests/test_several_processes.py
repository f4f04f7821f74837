"""Two trainer processes on one machine through jax.distributed (loopback, gloo).

Each process has one CPU device; together they train data-parallel over a
2-device mesh. Compared with one process training the same global batch.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import sparse_trax.models as models
from sparse_trax.train import checkpoints
from test_trainer import (REPO, read_metrics, run_trainer, text_files,  # pylint: disable=unused-import
                          tiny_config, train_losses)

TIMEOUT = 180      # seconds any one run of the two processes may take


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class TwoProcesses:
  """Starts `trainer` twice (process 0 and 1), each with its own log file."""

  def __init__(self, folder, config, output_dir, *extra):
    port = _free_port()
    self.logs = [os.path.join(folder, f'{os.path.basename(output_dir)}.{i}.log') for i in (0, 1)]
    self.processes = []
    for process_id in (0, 1):
      # Each process its own compilation cache (a rerun's process i reads what the first
      # run's process i wrote): with one folder, process 1 could read an entry while
      # process 0 writes it (JAX's file cache writes without a lock), and JAX would print
      # a warning in process 1's log, which must stay quiet.
      cache = os.path.join(os.environ['JAX_COMPILATION_CACHE_DIR'], f'two_processes.{process_id}')
      env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO,
                 JAX_COMPILATION_CACHE_DIR=cache)
      with open(self.logs[process_id], 'w', encoding='utf-8') as log:
        self.processes.append(subprocess.Popen(
            [sys.executable, '-m', 'sparse_trax.trainer', '--config_file', config,
             '--output_dir', output_dir, '--coordinator_address', f'127.0.0.1:{port}',
             '--num_processes', '2', '--process_id', str(process_id),
             '--heartbeat_timeout', '10', *extra],
            env=env, stdout=log, stderr=subprocess.STDOUT))

  def log(self, process_id) -> str:
    with open(self.logs[process_id], encoding='utf-8') as f:
      return f.read()

  def wait(self, timeout=TIMEOUT):
    """Both exit codes; kills whatever still runs at the deadline."""
    deadline = time.time() + timeout
    codes = []
    for process in self.processes:
      try:
        codes.append(process.wait(timeout=max(1.0, deadline - time.time())))
      except subprocess.TimeoutExpired:
        codes.append(None)
    self.kill()
    return codes

  def kill(self, process_ids=(0, 1)):
    for i in process_ids:
      if self.processes[i].poll() is None:
        self.processes[i].send_signal(signal.SIGKILL)
        self.processes[i].wait()


@pytest.fixture
def started(request):
  """Runs of two processes made by a test, every process ended when it ends."""
  runs = []
  request.addfinalizer(lambda: [run.kill() for run in runs])
  return runs


def _wait_for(path, run, timeout=TIMEOUT):
  deadline = time.time() + timeout
  while not os.path.isdir(path):
    if time.time() > deadline or any(p.poll() is not None for p in run.processes):
      raise AssertionError(f'{path} never appeared:\n{run.log(0)[-3000:]}')
    time.sleep(0.05)


def _all_losses(output_dir):
  """Train losses by step and eval losses by step."""
  records = read_metrics(output_dir)
  return (train_losses(output_dir),
          {r['step']: r['eval_loss'] for r in records if 'eval_loss' in r})


@pytest.mark.slow
def test_two_processes_train_like_one_survive_a_kill_and_shard(tmp_path, text_files, started):
  """Replicated weights until, after a checkpoint, process 1 is SIGKILLed (process 0
  must then fail within seconds); the rerun resumes with weights sharded over the
  processes. Every loss equals one process's; the sharded checkpoint's checksums
  (summed from each process's shards) equal those of the whole arrays (load_weights
  checks them in this process)."""
  steps = 10
  config = tiny_config(str(tmp_path), text_files, n_steps=steps, eval_every=5,
                       checkpoint_every=2, decode_length=4)
  reference_dir = str(tmp_path / 'reference')
  run_trainer('--config_file', config, '--output_dir', reference_dir)
  reference_train, reference_eval = _all_losses(reference_dir)

  output_dir = str(tmp_path / 'two')
  run = TwoProcesses(str(tmp_path), config, output_dir)
  started.append(run)
  _wait_for(os.path.join(output_dir, 'checkpoints', '4'), run)
  # Process 1 is SIGKILLed; process 0 fails at its next collective, clearly and soon.
  killed = time.time()
  run.kill([1])
  codes = run.wait(timeout=60)
  assert codes[0] not in (0, None), f'process 0 ended with {codes[0]}'
  assert time.time() - killed < 30
  assert 'trainer: error: process 0 of 2' in run.log(0), run.log(0)[-3000:]
  killed_at = max(train_losses(output_dir))
  assert killed_at < steps, 'the kill must land mid-training'
  rerun = TwoProcesses(str(tmp_path), config, output_dir,
                       '--config', "train.weight_sharding = 'sharded'")
  started.append(rerun)
  assert rerun.wait() == [0, 0], rerun.log(0)[-3000:] + rerun.log(1)[-3000:]
  main_log, other_log = rerun.log(0), rerun.log(1)
  assert 'Resuming from step' in main_log and 'Decoded sample' in main_log
  assert 'on 2 devices (cpu, 2 processes), weights sharded' in main_log
  # Process 1 prints no progress, sample or warning (only the transport's own line).
  for quiet in ('training', 'Decoded sample', 'Warning', 'step '):
    assert quiet not in other_log, other_log[-2000:]
  resumed_train, resumed_eval = _all_losses(output_dir)
  assert sorted(resumed_train) == list(range(1, steps + 1))
  np.testing.assert_allclose([resumed_train[s] for s in range(1, steps + 1)],
                             [reference_train[s] for s in range(1, steps + 1)], rtol=2e-6)
  np.testing.assert_allclose([resumed_eval[s] for s in sorted(reference_eval)],
                             [reference_eval[s] for s in sorted(reference_eval)], rtol=2e-6)
  model = models.TransformerLM(vocab_size=258, d_model=16, d_ff=32, n_layers=1, n_heads=2,
                               max_len=64, dropout=0.1, mode='eval')
  weights = checkpoints.load_weights(output_dir, model)
  reference_weights = checkpoints.load_weights(reference_dir, model)
  for ours, theirs in zip(jax.tree_util.tree_leaves(weights),
                          jax.tree_util.tree_leaves(reference_weights)):
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
