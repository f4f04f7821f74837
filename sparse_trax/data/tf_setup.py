"""The one place TensorFlow is imported: on first use, quietly, and with no GPU for TF.

JAX owns the accelerators; TensorFlow only runs the input pipeline on the CPU.
`sparse_trax.data` imports without TensorFlow (so the trainer's argument and gin
errors answer before it loads, and gin can register the data configurables);
the pipeline's functions call `tensorflow()` when they build a dataset (about
4 s the first time), `datasets()` for tfds sources and `text()` for SentencePiece.

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


@functools.cache   # once per process
def tensorflow():
  """The `tensorflow` module, imported on the first call (quietly), its GPUs hidden."""
  with start_up_notes_dropped():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.set_visible_devices([], 'GPU')   # (initializes TF's devices: cuInit)
  return tf


@functools.cache
def datasets():
  """The `tensorflow_datasets` module (after TensorFlow), its progress bars off."""
  tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  tfds.disable_progress_bar()   # our trainer shows its own progress bar
  return tfds


@functools.cache
def text():
  """The `tensorflow_text` module (after TensorFlow): SentencePiece's ops. Only a
  SentencePiece tokenizer needs it (it imports Keras layers: 0.3 s)."""
  tensorflow()
  with start_up_notes_dropped():
    import tensorflow_text  # pylint: disable=import-outside-toplevel
  return tensorflow_text
