"""The one place TensorFlow is imported: quiet start-up, and no GPU for TF.

JAX owns the accelerators; TensorFlow only runs the input pipeline on the CPU.

TensorFlow's shared libraries print start-up lines from C++ before any log
level applies (the oneDNN note and "Could not find cuda drivers", once per
library, and "failed call to cuInit" on a machine without a GPU). They are
dropped here: the imports run with the process's stderr (file descriptor 2)
sent to a temporary file, and every line that is not one of those known
notes is written back. `SPARSE_TRAX_TF_LOGS=1` (the trainer's `--debug` sets
it) shows them all.
"""

import contextlib
import os
import re
import sys
import tempfile

from sparse_trax import extras

extras.require('sparse_trax.data', extras.TRAIN_MODULES, 'train')

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


with start_up_notes_dropped():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position
  import tensorflow_text  # pylint: disable=g-import-not-at-top,wrong-import-position,unused-import
  tf.config.set_visible_devices([], 'GPU')   # (initializes TF's devices: cuInit)

tfds.disable_progress_bar()   # our trainer shows its own progress bar

__all__ = ['tf']
