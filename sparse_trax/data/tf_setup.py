"""The one place TensorFlow is imported: quiet logs, and no GPU for TF.

JAX owns the accelerators; TensorFlow only runs the input pipeline on the CPU.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

tf.config.set_visible_devices([], 'GPU')
tfds.disable_progress_bar()   # our trainer shows its own progress bar

__all__ = ['tf']
