"""Data sources: text examples as a `tf.data.Dataset` of {'inputs'?, 'targets'} strings.

A source has a `name`, says whether its examples have `inputs` (a
sequence-to-sequence task) or only `targets` (plain text), gives a dataset
per split ('train' or 'eval'), and a `fingerprint()` of its training split:
a string that changes when the training text does (files' contents, a TFDS
dataset's name and version, a task's settings), so that caches built from
the text (tokenizers) are keyed by it. Nothing here downloads: TFDS datasets
must already be prepared in `data_dir`.
"""

from __future__ import annotations   # `tf.data.Dataset` in annotations, TF imported on use

import contextlib
import hashlib
import io
import logging
import os
import sys
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from sparse_trax.data import corpus
from sparse_trax.data import tf_setup

if TYPE_CHECKING:
  import tensorflow as tf


def default_data_dir() -> str:
  """$SPARSE_TRAX_DATA_DIR, else ~/.cache/sparse_trax."""
  return os.environ.get('SPARSE_TRAX_DATA_DIR',
                        os.path.join(os.path.expanduser('~'), '.cache', 'sparse_trax'))


def file_digest(paths: Sequence[str]) -> str:
  """SHA-256 (hex) of files' contents in order, each prefixed by its length."""
  digest = hashlib.sha256()
  for path in paths:
    digest.update(str(os.path.getsize(path)).encode() + b'\0')
    with open(path, 'rb') as f:
      for chunk in iter(lambda f=f: f.read(1 << 20), b''):
        digest.update(chunk)
  return digest.hexdigest()


@contextlib.contextmanager
def _tfds_preparation_quiet():
  """tfds' notes while it builds the shipped corpus left out: absl warnings ("Variant
  folder ... has no dataset_info.json", for a folder not built yet) and what it prints
  ("Downloading and preparing dataset Unknown size ...": nothing is downloaded). Errors
  still show, and raise."""
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    absl_logger.setLevel(level)


class ShippedCorpus:
  """The King James Bible (shipped with the install), built offline with tfds."""

  has_inputs = False

  def __init__(self, data_dir: Optional[str] = None):
    self.data_dir = data_dir or default_data_dir()
    self.name = 'king_james_bible'

  def fingerprint(self) -> str:
    """The builder's version and the shipped text file's SHA-256."""
    return (f'{self.name}:{corpus.VERSION}:'
            f'{file_digest([corpus.kjv_module_path()])}')

  def dataset(self, split: str) -> tf.data.Dataset:
    from sparse_trax.data import kjv_builder  # pylint: disable=import-outside-toplevel
    tfds = tf_setup.datasets()
    with _tfds_preparation_quiet():
      builder = kjv_builder.KingJamesBible(data_dir=self.data_dir)
      if not builder.is_prepared():
        print(f'Preparing the shipped corpus in {self.data_dir} (once)...', file=sys.stderr,
              flush=True)
      builder.download_and_prepare()   # generates from the local file; no download
    tfds_split = {'train': 'train', 'eval': 'validation'}[split]
    # No autocache: the pipeline may stop reading early (it skips, takes).
    read_config = tfds.ReadConfig(try_autocache=False)
    return builder.as_dataset(split=tfds_split, shuffle_files=False,
                              read_config=read_config).map(
        lambda ex: {'targets': ex['text']})


class TFDSSource:
  """A TFDS dataset by name (`c4/en`, `lm1b`, `scientific_papers/arxiv`, ...).

  Args:
    name: the TFDS name, with config and version if needed.
    data_dir: where the prepared dataset lives (nothing is downloaded).
    target_key: feature holding the text to predict.
    input_key: feature holding the inputs of a sequence-to-sequence task.
    train_split, eval_split: TFDS split names.
  """

  def __init__(self, name: str, data_dir: Optional[str] = None, target_key: str = 'text',
               input_key: Optional[str] = None, train_split: str = 'train',
               eval_split: str = 'validation'):
    self.name = name.replace('/', '_')
    self.tfds_name = name
    self.data_dir = data_dir
    self.target_key = target_key
    self.input_key = input_key
    self.has_inputs = input_key is not None
    self.splits = {'train': train_split, 'eval': eval_split}

  def fingerprint(self) -> str:
    """The dataset's name, prepared version, train split and features."""
    return (f'tfds:{self.tfds_name}:{self._builder().version}:{self.splits["train"]}:'
            f'{self.input_key}:{self.target_key}')

  def _builder(self):
    tfds = tf_setup.datasets()
    try:
      return tfds.builder(self.tfds_name, data_dir=self.data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      first_line = str(e).strip().splitlines()[0]
      raise ValueError(f'unknown TFDS dataset {self.tfds_name!r}: {first_line}') from e

  def dataset(self, split: str) -> tf.data.Dataset:
    tfds = tf_setup.datasets()
    try:
      ds = tfds.load(self.tfds_name, split=self.splits[split], data_dir=self.data_dir,
                     download=False, shuffle_files=False)
    except tfds.core.registered.DatasetNotFoundError as e:
      first_line = str(e).strip().splitlines()[0]
      raise ValueError(f'unknown TFDS dataset {self.tfds_name!r}: {first_line}') from e
    except AssertionError as e:   # tfds: "Dataset ...: could not find data in ..."
      raise FileNotFoundError(
          f'TFDS dataset {self.tfds_name!r} is not prepared in data_dir '
          f'{self.data_dir!r}; sparse_trax never downloads: prepare it with '
          f'`tfds build {self.tfds_name} --data_dir=...` where there is network. ({e})') from e
    input_key, target_key = self.input_key, self.target_key

    def select(ex):
      if target_key not in ex or (input_key and input_key not in ex):
        raise KeyError(f'TFDS dataset {self.tfds_name!r} has features {list(ex)}; '
                       f'asked for target_key={target_key!r}, input_key={input_key!r}')
      out = {'targets': ex[target_key]}
      if input_key:
        out['inputs'] = ex[input_key]
      return out
    return ds.map(select)


class TextFiles:
  """Local text files, one example per non-empty line.

  Args:
    train_files: paths read for the 'train' split.
    eval_files: paths read for the 'eval' split.
  """

  has_inputs = False

  def __init__(self, train_files: Sequence[str], eval_files: Sequence[str],
               name: str = 'text_files'):
    self.files = {'train': list(train_files), 'eval': list(eval_files)}
    self.name = name
    for path in self.files['train'] + self.files['eval']:
      if not os.path.isfile(path):
        raise FileNotFoundError(f'TextFiles: data file {path!r} does not exist')

  def fingerprint(self) -> str:
    """The SHA-256 of the training files' contents, in order."""
    return f'text_files:{file_digest(self.files["train"])}'

  def dataset(self, split: str) -> tf.data.Dataset:
    tf = tf_setup.tensorflow()
    lines = tf.data.TextLineDataset(self.files[split])
    lines = lines.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
    return lines.map(lambda line: {'targets': line})


class _DigitTask:
  """Base of the synthetic digit tasks: seeded generators of string pairs."""

  has_inputs = True
  name = 'digits'

  def __init__(self, train_min_digits: int = 1, train_max_digits: int = 128,
               eval_min_digits: int = 256, eval_max_digits: int = 300,
               n_eval_examples: int = 256, seed: int = 0):
    if not 1 <= train_min_digits <= train_max_digits:
      raise ValueError('need 1 <= train_min_digits <= train_max_digits')
    if not 1 <= eval_min_digits <= eval_max_digits:
      raise ValueError('need 1 <= eval_min_digits <= eval_max_digits')
    self.lengths = {'train': (train_min_digits, train_max_digits),
                    'eval': (eval_min_digits, eval_max_digits)}
    self.n_eval_examples = n_eval_examples
    self.seed = seed

  def example(self, rng: np.random.Generator, min_digits: int, max_digits: int):
    raise NotImplementedError

  def fingerprint(self) -> str:
    """The task and the settings of its (generated) training split."""
    return f'{type(self).__name__}:{self.lengths["train"]}:{self.seed}'

  def examples(self, split: str):
    """Yields (inputs, targets) strings; endless for 'train', finite for 'eval'."""
    rng = np.random.default_rng([self.seed, 0 if split == 'train' else 1])
    low, high = self.lengths[split]
    count = 0
    while split == 'train' or count < self.n_eval_examples:
      yield self.example(rng, low, high)
      count += 1

  def dataset(self, split: str) -> tf.data.Dataset:
    tf = tf_setup.tensorflow()
    signature = {'inputs': tf.TensorSpec((), tf.string),
                 'targets': tf.TensorSpec((), tf.string)}
    def generate():
      for inputs, targets in self.examples(split):
        yield {'inputs': inputs, 'targets': targets}
    return tf.data.Dataset.from_generator(generate, output_signature=signature)


def random_digits(rng: np.random.Generator, min_digits: int, max_digits: int) -> str:
  """A decimal number's digits, little-endian (least significant first), no leading zero."""
  n = int(rng.integers(min_digits, max_digits + 1))
  digits = rng.integers(0, 10, size=n)
  if n > 1 and digits[-1] == 0:
    digits[-1] = int(rng.integers(1, 10))
  return ''.join(str(d) for d in digits)


class AdditionTask(_DigitTask):
  """Long addition, digits little-endian: inputs '123+45=' -> targets '573' (321 + 54 = 375).

  Each operand has between min and max digits of its split's range.
  """

  name = 'addition'

  def example(self, rng, min_digits, max_digits):
    x = random_digits(rng, min_digits, max_digits)
    y = random_digits(rng, min_digits, max_digits)
    total = int(x[::-1]) + int(y[::-1])
    return f'{x}+{y}=', str(total)[::-1]


class CopyTask(_DigitTask):
  """Copy a decimal digit sequence: inputs '40917=' -> targets '40917'."""

  name = 'copy'

  def example(self, rng, min_digits, max_digits):
    n = int(rng.integers(min_digits, max_digits + 1))
    digits = ''.join(str(d) for d in rng.integers(0, 10, size=n))
    return f'{digits}=', digits
