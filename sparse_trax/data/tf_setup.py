"""The one place TensorFlow is imported: on first use, quietly, and with no GPU for TF.

JAX owns the accelerators; TensorFlow only runs the input pipeline on the CPU.
`sparse_trax.data` imports without TensorFlow (so the trainer's argument and gin
errors answer before it loads, and gin can register the data configurables);
the pipeline's functions call `tensorflow()` / `datasets()` / `text()` when they
build a dataset, and the first call imports all three (about 4 s).

TensorFlow's shared libraries print start-up lines from C++ before any log
level applies (the oneDNN note and "Could not find cuda drivers", once per
library, and "failed call to cuInit" on a machine without a GPU). They are
dropped here: the imports run with the process's stderr (file descriptor 2)
sent to a temporary file, and every line that is not one of those known
notes is written back. `SPARSE_TRAX_TF_LOGS=1` (the trainer's `--debug` sets
it) shows them all.
"""

import contextlib
import functools
import os
import re
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# TensorFlow's start-up notes on a CPU machine (matched anywhere in a line).
START_UP_NOTES = re.compile(
    r'All log messages before absl::InitializeLog\(\) is called are written to STDERR'
    r'|port\.cc:\d+\] oneDNN custom operations are on'
    r'|cudart_stub\.cc:\d+\] Could not find cuda drivers'
    r'|cuda_platform\.cc:\d+\] failed call to cuInit'
    r'|Unable to register cu(DNN|FFT|BLAS) factory'
    r'|computation_placer\.cc:\d+\] computation placer already registered'
    r'|TF-TRT Warning: Could not find TensorRT')


@contextlib.contextmanager
def start_up_notes_dropped():
  """Runs the block with fd 2 captured; writes back every line but TensorFlow's notes."""
  if os.environ.get('SPARSE_TRAX_TF_LOGS') == '1':
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [line for line in captured.read().decode('utf-8', 'replace').splitlines(True)
              if not START_UP_NOTES.search(line)]
      if kept:
        sys.stderr.write(''.join(kept))
        sys.stderr.flush()


@functools.cache   # the imports and settings run once per process
def _import_once() -> None:
  """Imports TensorFlow, tensorflow-datasets and tensorflow-text with their start-up
  notes dropped, hides the GPUs from TensorFlow and turns off tfds's progress bars."""
  with start_up_notes_dropped():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    import tensorflow_text  # pylint: disable=import-outside-toplevel,unused-import
    tf.config.set_visible_devices([], 'GPU')   # (initializes TF's devices: cuInit)
  tfds.disable_progress_bar()   # our trainer shows its own progress bar


def tensorflow():
  """The `tensorflow` module, imported (quietly, once) on the first call."""
  _import_once()
  return sys.modules['tensorflow']


def datasets():
  """The `tensorflow_datasets` module, imported with TensorFlow on the first call."""
  _import_once()
  return sys.modules['tensorflow_datasets']


def text():
  """The `tensorflow_text` module, imported with TensorFlow on the first call."""
  _import_once()
  return sys.modules['tensorflow_text']
