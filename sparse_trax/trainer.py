"""The `trainer` entrypoint: train and decode an experiment configured by gin.

  trainer --config_file gin/quickstart.gin --output_dir /tmp/run \\
          [--config_file more.gin] [--config 'train.n_steps = 100']

The gin files and bindings are parsed before anything else runs, so a typo
fails at once with gin's message naming the binding and the file; a macro
bound on the command line or in a given file but never used (a misspelt
`D_MODLE = 64`) is an error too (in an included file, a warning). Includes
resolve from the including file's folder first (`gin_files`). The operative
config is written to <output_dir>/config.gin before the first step; a rerun
on the same folder resumes only if its config changes nothing but schedule
settings (`config_changes`), recorded in config.<step>.gin.

Errors print one message (`trainer: error: ...`) and exit with status 1;
`--debug` shows the traceback. Ctrl-C (SIGINT) or SIGTERM saves a checkpoint
at the step reached (when training) and exits with 130 / 143 after one line.

Several hosts: run the same command in one process per host with
`--distributed` (the cluster is detected: Cloud TPU, Slurm, Open MPI) or with
`--coordinator_address HOST:PORT --num_processes N --process_id I`; the
trainer calls `jax.distributed.initialize` before anything else touches JAX.
Process 0 writes and prints for all; an error in any process ends it at once
(it does not wait for the others at JAX's shutdown barrier), and the others
fail at their next collective or after `--heartbeat_timeout` seconds.
"""

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import traceback
from typing import Optional, Sequence

from sparse_trax import interrupts


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='trainer', description='Train a sparse_trax model configured by gin, then decode a sample.')
  parser.add_argument('--config_file', action='append', default=[], required=True,
                      help='a gin file (repeatable; later files override earlier ones)')
  parser.add_argument('--config', action='append', default=[],
                      help="a gin binding, e.g. 'train.n_steps = 100' (repeatable)")
  parser.add_argument('--output_dir', required=True,
                      help='checkpoints, metrics.jsonl and config.gin go here; '
                           'rerunning with the same folder resumes')
  parser.add_argument('--debug', action='store_true',
                      help='on an error, print the whole traceback (default: the message)')
  cluster = parser.add_argument_group(
      'several hosts', 'connect one trainer process per host (jax.distributed.initialize)')
  cluster.add_argument('--distributed', action='store_true',
                       help='connect the processes of a detected cluster (Cloud TPU, Slurm, MPI)')
  cluster.add_argument('--coordinator_address', help='HOST:PORT of process 0')
  cluster.add_argument('--num_processes', type=int, help='how many processes in all')
  cluster.add_argument('--process_id', type=int, help='this process, 0 .. num_processes - 1')
  cluster.add_argument('--heartbeat_timeout', type=int, default=100,
                       help='seconds without word from a process before the others fail '
                            '(default 100)')
  args = parser.parse_args(argv)
  explicit = (args.coordinator_address, args.num_processes, args.process_id)
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    parser.error('--coordinator_address, --num_processes and --process_id go together')
  return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
  """Parses the command line, then trains and decodes (`experiment.run`)."""
  args = parse_args(argv)
  if args.debug:
    os.environ['SPARSE_TRAX_TF_LOGS'] = '1'    # TensorFlow's start-up lines too
  for config_file in args.config_file:
    if not os.path.isfile(config_file):
      raise SystemExit(f'trainer: gin file {config_file!r} does not exist')
  # Syntax errors and misspelt macros need no registered configurable: they are
  # reported before JAX is imported (unknown names after, by gin's real parse).
  from sparse_trax import gin_files  # pylint: disable=import-outside-toplevel
  gin_files.check_text(args.config_file, args.config)
  # The training stack is imported only now (JAX and gin's registrations; TensorFlow
  # when the first dataset is built): `--help` and argument errors answer at once.
  from sparse_trax import experiment  # pylint: disable=import-outside-toplevel
  return experiment.run(args)


@contextlib.contextmanager
def _private_temp_folder():
  """The run's temporary files (TensorFlow's autograph modules, tfds' preparation
  folders) go to a folder of its own, removed when it ends."""
  folder = tempfile.mkdtemp(prefix='sparse_trax_trainer_')
  previous_tempdir, previous_env = tempfile.tempdir, os.environ.get('TMPDIR')
  tempfile.tempdir = folder
  os.environ['TMPDIR'] = folder
  try:
    yield folder
  finally:
    tempfile.tempdir = previous_tempdir
    if previous_env is None:
      os.environ.pop('TMPDIR', None)
    else:
      os.environ['TMPDIR'] = previous_env
    shutil.rmtree(folder, ignore_errors=True)


def _report_interrupt(error: KeyboardInterrupt) -> int:
  """One line for an interruption; returns the exit status (130 SIGINT, 143 SIGTERM)."""
  if not isinstance(error, interrupts.Interrupted):
    error = interrupts.Interrupted(signal.SIGINT)
  print(f'trainer: {error.message}', file=sys.stderr)
  return error.exit_status


def console_main(argv: Optional[Sequence[str]] = None) -> int:
  """The `trainer` console script: errors as one message, exit status 1.

  Returns the exit status (0: trained and decoded).
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  signals = interrupts.RaiseOnSignal()
  try:
    with signals, _private_temp_folder():
      main(argv)
    if signals.received is not None:
      # The KeyboardInterrupt was swallowed where Python ignores exceptions (a gc
      # callback during an import): still an interruption.
      return _report_interrupt(interrupts.Interrupted(signals.received))
  except KeyboardInterrupt as e:
    return _report_interrupt(e)
  except Exception as e:  # pylint: disable=broad-except
    if signals.received is not None:
      # A library turned the signal into its own error (tf.data: "INTERNAL: KeyboardInterrupt").
      return _report_interrupt(interrupts.Interrupted(signals.received))
    if '--debug' in argv:
      traceback.print_exc()
    # gin appends "  In call to configurable 'train' (<function ...>)" lines: the message
    # names its owner already.
    message = '\n'.join(line for line in (str(e) or type(e).__name__).splitlines()
                        if not line.strip().startswith('In call to configurable'))
    jax = sys.modules.get('jax')     # (not imported when the command line was wrong)
    several = (jax is not None and jax.distributed.is_initialized() and
               jax.process_count() > 1)
    if several:
      message = (f'process {jax.process_index()} of {jax.process_count()}: {message}\n'
                 '(if another process of this run stopped first, its output says why)')
    print(f'trainer: error: {message}', file=sys.stderr)
    if '--debug' not in argv:
      print('(run with --debug for the traceback)', file=sys.stderr)
    if several:
      # A normal exit waits at jax.distributed's shutdown barrier for every
      # process, which a dead or failed peer never reaches: leave at once (the
      # peers' next collective then fails too).
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(1)  # pylint: disable=protected-access
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(console_main())
