"""Reading Trax 1.4.1 checkpoint files without Trax, and without running their code.

Trax writes two kinds of files:
  * `trax.supervised.training.Loop` checkpoints: `<name>.pkl.gz` (a gzipped
    pickle of a dict: step, flat state, input signature, history) beside
    `<name>.weights.npy.gz` (the flat weights, one `np.save` record after
    another, no pickle);
  * `Layer.save_to_file(path)`: one gzipped pickle of a dict holding
    'flat_weights' (and 'flat_state', 'input_signature').

A pickle can name any importable function and call it while it loads. The
unpickler here resolves only the few names such files use (numpy's array
reconstruction, jax's array reconstruction, Trax's `ShapeDtype`) and maps
each to a harmless stand-in or numpy itself; any other name raises
`UnsafeCheckpointError` before anything is called.
"""

import dataclasses
import gzip
import io
import os
import pickle
from typing import Any, List, Optional, Tuple

import numpy as np


class UnsafeCheckpointError(pickle.UnpicklingError):
  """A pickle naming something other than arrays, plain containers and Trax's shapes."""


class ShapeDtype:
  """Stands in for `trax.shapes.ShapeDtype` (shape and dtype, nothing else)."""

  def __init__(self, shape=(), dtype=np.float32):
    self.shape = tuple(shape)
    self.dtype = np.dtype(dtype)

  def __setstate__(self, state):
    # Trax's class has __slots__: its state pickles as (None, {'shape': ..., 'dtype': ...}).
    if isinstance(state, tuple):
      state = {**(state[0] or {}), **(state[1] or {})}
    self.shape = tuple(state.get('shape', ()))
    self.dtype = np.dtype(state.get('dtype', np.float32))

  def __repr__(self):
    return f'ShapeDtype({self.shape}, {self.dtype})'


def _reconstruct_jax_array(fun, args, array_state, aval_state):
  """Stands in for `jax._src.array._reconstruct_array`: a numpy array instead.

  `fun` has already been resolved by the restricted unpickler (numpy's
  `_reconstruct`), so nothing else can be called here.
  """
  del aval_state
  if fun is not _NUMPY_RECONSTRUCT:
    raise UnsafeCheckpointError(f'a jax array in the pickle is rebuilt by {fun!r}, '
                                'not by numpy')
  value = fun(*args)
  value.__setstate__(array_state)
  return value


_NUMPY_RECONSTRUCT = np.zeros(1).__reduce__()[0]     # how numpy arrays pickle
_NUMPY_SCALAR = np.float32(0).__reduce__()[0]         # how numpy scalars pickle
_NUMPY_FROM_BUFFER = np.zeros(1).__reduce_ex__(5)[0]  # how arrays pickle by protocol 5

# (module, name) -> what it means here. Nothing else is resolved.
_ALLOWED = {
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('numpy.core.multiarray', '_reconstruct'): _NUMPY_RECONSTRUCT,
    ('numpy._core.multiarray', '_reconstruct'): _NUMPY_RECONSTRUCT,
    ('numpy.core.multiarray', 'scalar'): _NUMPY_SCALAR,
    ('numpy._core.multiarray', 'scalar'): _NUMPY_SCALAR,
    # Pickle protocol 5 (Trax's save_to_file) sends arrays as buffers.
    ('numpy.core.numeric', '_frombuffer'): _NUMPY_FROM_BUFFER,
    ('numpy._core.numeric', '_frombuffer'): _NUMPY_FROM_BUFFER,
    ('jax._src.array', '_reconstruct_array'): _reconstruct_jax_array,
    ('trax.shapes', 'ShapeDtype'): ShapeDtype,
    ('collections', 'OrderedDict'): dict,
}
# numpy's scalar types (a ShapeDtype's dtype may pickle as `numpy.int32`).
_ALLOWED.update({('numpy', name): getattr(np, name) for name in (
    'bool_', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64',
    'float16', 'float32', 'float64', 'complex64', 'complex128')})


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the names in `_ALLOWED`; refuses the rest by name."""

  def find_class(self, module: str, name: str):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise UnsafeCheckpointError(
          f'the checkpoint names {module}.{name}, which a Trax checkpoint does not need '
          '(only numpy arrays, plain containers and trax.shapes.ShapeDtype are read): '
          'refusing to load it, since unpickling it could run code') from None


def restricted_loads(data: bytes) -> Any:
  """Unpickles `data`, resolving only numpy/jax arrays and Trax's ShapeDtype."""
  return _RestrictedUnpickler(io.BytesIO(data)).load()


@dataclasses.dataclass
class TraxCheckpoint:
  """What a Trax checkpoint holds, as numpy.

  Attributes:
    flat_weights: the model's weight arrays in Trax's order (depth-first over
      the layer tree, empty weights left out).
    flat_state: the state arrays in the same order (may be empty).
    input_signature: the input ShapeDtypes it was saved with, or None.
    step: the training step (Loop checkpoints), or None.
    path: the file read.
  """
  flat_weights: List[np.ndarray]
  flat_state: List[Any]
  input_signature: Optional[Tuple[ShapeDtype, ...]]
  step: Optional[int]
  path: str


def _read_gzip(path: str, what: str) -> bytes:
  """A gzipped file's contents; ValueError naming the file if it is not whole gzip."""
  try:
    with gzip.open(path, 'rb') as f:
      return f.read()
  except EOFError as e:
    raise ValueError(f'{path} is truncated ({what}; {e})') from None
  except OSError as e:
    raise ValueError(f'{path} is not {what} ({e})') from None


def _read_npy_records(path: str) -> List[np.ndarray]:
  """The arrays of a `.npy.gz` file written by Trax's `np_to_file` (no pickle)."""
  arrays = []
  with io.BytesIO(_read_gzip(path, 'a gzipped Trax weights file')) as f:
    while True:
      try:
        arrays.append(np.load(f, allow_pickle=False))
      except EOFError:
        break
      except ValueError as e:
        if 'empty file' in str(e).lower() or 'no data' in str(e).lower():
          break
        raise
  return arrays


def read_checkpoint(path: str) -> TraxCheckpoint:
  """Reads a Trax 1.4.1 checkpoint: a Loop's `model.pkl.gz` (with its
  `model.weights.npy.gz` beside it) or a `Layer.save_to_file` file.

  Raises:
    FileNotFoundError: the file (or a Loop checkpoint's weights file) is missing.
    UnsafeCheckpointError: the pickle names anything beyond arrays, plain
      containers and Trax's ShapeDtype.
    ValueError: the file is not a Trax checkpoint.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no Trax checkpoint at {path}')
  data = _read_gzip(path, 'a gzipped Trax checkpoint')
  try:
    contents = restricted_loads(data)
  except UnsafeCheckpointError:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError) as e:
    raise ValueError(f'{path} is not a whole Trax checkpoint: its pickle cannot be read '
                     f'({type(e).__name__}: {e})') from None
  if not isinstance(contents, dict) or 'flat_weights' not in contents:
    raise ValueError(f'{path} is not a Trax checkpoint: expected a dict with '
                     f"'flat_weights', got {type(contents).__name__}")
  flat_weights = contents['flat_weights']
  if isinstance(flat_weights, int):       # a Loop checkpoint: weights in their own file
    weights_path = (path[:-len('.pkl.gz')] + '.weights.npy.gz' if path.endswith('.pkl.gz')
                    else path + '.npy')
    if not os.path.isfile(weights_path):
      raise FileNotFoundError(f'{path} keeps its weights in {weights_path}, which is missing')
    flat_weights = _read_npy_records(weights_path)
  signature = contents.get('input_signature')
  if signature is not None and not isinstance(signature, (tuple, list)):
    signature = (signature,)
  return TraxCheckpoint(
      flat_weights=[np.asarray(w) for w in flat_weights],
      flat_state=list(contents.get('flat_state') or []),
      input_signature=None if signature is None else tuple(signature),
      step=contents.get('step'), path=path)
