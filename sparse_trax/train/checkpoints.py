"""Checkpoints with orbax: atomic saves, the last n kept, damaged ones skipped, nothing destroyed.

A step's checkpoint holds two orbax items, 'weights' and 'train' (model
state, optimizer state, rng), and a JSON 'meta' item: the step, the data
position, the model's input signature and a SHA-256 of each item's arrays.
Orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-write never leaves a checkpoint that looks
whole.

After a save, process 0 records every file of the step with its size and
SHA-256 (`files.sha256.json`); restoring checks them before orbax reads
anything, so a truncated or altered file is found in one line instead of
inside TensorStore's readers.

Restoring tells two failures apart:
  * a damaged checkpoint (a file differs from the record, its files cannot
    be parsed, or its arrays fail the checksum): skipped with one warning
    naming it, what was wrong and the step used instead. Only the trainer (`set_aside_corrupt=True`) moves it to
    `checkpoints_corrupt/`, so that the step can be redone;
  * an incompatible one (its tree, shapes or dtypes differ from the model's):
    `IncompatibleCheckpointError`, naming the first differing path with both
    shapes. Nothing is moved or skipped: the run was made with another
    config.
Reading (`restore_latest`, `restore_weights`, `load_weights`) never moves or
deletes anything.
"""

import hashlib
import json
import os
import warnings
from typing import Any, Optional, Tuple

import jax
import numpy as np

from sparse_trax.train import checksums
from sparse_trax.train import parallel

FORMAT = 2          # 'weights' + 'train' + 'meta' items
FILE_RECORD = 'files.sha256.json'    # relative path -> [size, sha256] of a step's files


class IncompatibleCheckpointError(ValueError):
  """A checkpoint that is whole but does not fit the model it is restored for."""


class CorruptCheckpointError(ValueError):
  """A checkpoint whose files cannot be parsed or whose arrays fail their checksum."""


def _path_name(path) -> str:
  """'weights/3/1/w' for a jax key path (tuples and lists alike)."""
  parts = []
  for key in path:
    for attribute in ('key', 'idx', 'name'):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
  return '/'.join(parts)


def _layout(tree, prefix: str) -> dict:
  """path -> (shape, dtype) of every array leaf of a tree (arrays or metadata)."""
  layout = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    layout[f'{prefix}/{_path_name(path)}'] = (tuple(leaf.shape),
                                                          str(np.dtype(leaf.dtype)))
  return layout


def compare_layouts(saved: dict, wanted: dict) -> Optional[str]:
  """None if the layouts agree, else a sentence naming the first difference."""
  for path, (shape, dtype) in wanted.items():
    if path not in saved:
      return f'the model has {path} {shape} {dtype}, which the checkpoint lacks'
    if saved[path] != (shape, dtype):
      return (f'{path} is {saved[path][0]} {saved[path][1]} in the checkpoint but '
              f'{shape} {dtype} in the model')
  for path, (shape, dtype) in saved.items():
    if path not in wanted:
      return f'the checkpoint has {path} {shape} {dtype}, which the model lacks'
  return None


def _items(state: dict, always_train: bool = False) -> dict:
  """A train state as checkpoint items: {'weights': ..., 'train': <the other entries>}
  ('train' left out for a weights-only state, unless `always_train`)."""
  items = {'weights': state['weights']}
  rest = {k: v for k, v in state.items() if k != 'weights'}
  if rest or always_train:
    items['train'] = rest
  return items


def _orbax():
  """`orbax.checkpoint`, imported on first use (0.2 s of the trainer's start-up)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  return ocp


def _abstract(tree):
  return jax.tree_util.tree_map(_orbax().utils.to_shape_dtype_struct, tree)


class Checkpointer:
  """Saves and restores (train state, metadata) per step.

  The train state is a dict with 'weights' and any other entries (model
  state, optimizer state, rng); 'weights' is stored as its own item, so it
  can be read without knowing the optimizer (`restore_weights`).

  Args:
    directory: where step directories go.
    keep: how many of the latest checkpoints to keep.
    read_only: open an existing directory for reading only (nothing is
      created, cleaned up or written).
  """

  def __init__(self, directory: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    if read_only and not os.path.isdir(self.directory):
      raise FileNotFoundError(f'no checkpoint directory {self.directory}')
    if not read_only:
      os.makedirs(self.directory, exist_ok=True)
    # Read-only is enforced here (`save` refuses); orbax's own read_only mode logs three
    # warnings per manager, so its manager is opened without creating, cleaning up or
    # deleting anything instead (max_to_keep None: it never deletes).
    ocp = _orbax()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep, enable_async_checkpointing=False,
            cleanup_tmp_directories=not read_only, create=not read_only),
        item_handlers={'weights': ocp.StandardCheckpointHandler(),
                       'train': ocp.StandardCheckpointHandler(),
                       'meta': ocp.JsonCheckpointHandler()})

  def steps(self):
    return sorted(self._manager.all_steps())

  def save(self, step: int, train_state: dict, metadata: dict) -> None:
    """Saves a train state {'weights': ..., <other entries>} and JSON metadata."""
    if self.read_only:
      raise ValueError(f'{self.directory} was opened read-only')
    items = _items(train_state, always_train=True)
    metadata = dict(metadata, step=int(step), format=FORMAT, checksum_method=checksums.METHOD,
                    checksums={item: checksums.tree_checksum(tree)
                               for item, tree in items.items()})
    ocp = _orbax()
    self._manager.save(step, args=ocp.args.Composite(
        meta=ocp.args.JsonSave(metadata),
        **{item: ocp.args.StandardSave(tree) for item, tree in items.items()}))
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      _write_file_record(self._step_dir(step))
    parallel.barrier(f'checkpoint {step} recorded')

  def check_files(self, step: int) -> None:
    """Raises CorruptCheckpointError if a file of the step differs from its record.

    Steps saved without a record (by earlier versions, or killed between
    orbax's commit and the record) pass: their arrays' checksums still apply.
    """
    step_dir = self._step_dir(step)
    record_path = os.path.join(step_dir, FILE_RECORD)
    if not os.path.exists(record_path):
      return
    try:
      with open(record_path, encoding='utf-8') as f:
        record = json.load(f)
    except ValueError as e:
      raise CorruptCheckpointError(f'checkpoint {step_dir}: its file record {FILE_RECORD} '
                                   f'cannot be parsed ({e})') from None
    for relative, (size, digest) in sorted(record.items()):
      path = os.path.join(step_dir, relative)
      if not os.path.exists(path):
        raise CorruptCheckpointError(f'checkpoint {step_dir}: {relative} is missing')
      actual = os.path.getsize(path)
      if actual != size:
        raise CorruptCheckpointError(f'checkpoint {step_dir}: {relative} is {actual} bytes, '
                                     f'{size} when saved (truncated or overwritten)')
      if _file_sha256(path) != digest:
        raise CorruptCheckpointError(f'checkpoint {step_dir}: {relative} differs from what '
                                     'was saved (SHA-256 mismatch)')

  def metadata(self, step: int) -> dict:
    """A step's JSON metadata; CorruptCheckpointError if it cannot be read."""
    self.check_files(step)
    ocp = _orbax()
    try:
      metadata = self._manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))['meta']
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(f'checkpoint {self._step_dir(step)}: its metadata cannot '
                                   f'be read ({_first_line(e)})') from e
    if metadata.get('format') != FORMAT:
      raise IncompatibleCheckpointError(
          f'checkpoint {self._step_dir(step)} was written by another sparse_trax version '
          f'(format {metadata.get("format", 1)}, this one reads {FORMAT})')
    return metadata

  def check_fits(self, step: int, abstract_state: dict) -> dict:
    """Raises IncompatibleCheckpointError unless the step's tree, shapes and dtypes
    are those of `abstract_state` (CorruptCheckpointError if unreadable).

    Returns the step's metadata.
    """
    metadata = self.metadata(step)
    items = _items(abstract_state)
    try:
      stored = self._manager.item_metadata(step)
      saved = {}
      for item in items:
        saved.update(_layout(stored[item].tree, item))
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(f'checkpoint {self._step_dir(step)}: its items cannot be '
                                   f'parsed ({_first_line(e)})') from e
    wanted = {}
    for item, tree in items.items():
      wanted.update(_layout(tree, item))
    difference = compare_layouts(saved, wanted)
    if difference is not None:
      raise IncompatibleCheckpointError(
          f'checkpoint {self._step_dir(step)} does not fit the configured model: {difference}')
    return metadata

  def restore(self, step: int, abstract_state: dict) -> Tuple[Any, dict]:
    """The train state and metadata of one step.

    Args:
      step: a saved step.
      abstract_state: the train state's structure (arrays or
        ShapeDtypeStructs, with shardings where they matter); a dict with
        'weights' only restores only the weights.

    Raises:
      IncompatibleCheckpointError: the checkpoint's layout differs.
      CorruptCheckpointError: its files cannot be parsed or fail the checksum.
    """
    metadata = self.check_fits(step, abstract_state)
    items = _items(abstract_state)
    ocp = _orbax()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**{
          item: ocp.args.StandardRestore(_abstract(tree)) for item, tree in items.items()}))
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(f'checkpoint {self._step_dir(step)} cannot be read '
                                   f'({_first_line(e)})') from e
    # Checkpoints saved before the method was recorded hashed whole arrays' bytes.
    checksum = (checksums.tree_checksum if metadata.get('checksum_method') == checksums.METHOD
                else checksums.legacy_tree_checksum)
    for item in items:
      if checksum(restored[item]) != metadata['checksums'][item]:
        raise CorruptCheckpointError(f'checkpoint {self._step_dir(step)}: the {item!r} arrays '
                                     'differ from what was saved (checksum mismatch)')
    state = {'weights': restored['weights']}
    if 'train' in items:
      state.update(restored['train'])
    return state, metadata

  def restore_latest(self, abstract_state: dict, set_aside_corrupt: bool = False
                     ) -> Optional[Tuple[Any, dict]]:
    """The newest checkpoint that loads and passes its checksums, else None.

    A damaged checkpoint is skipped with a warning naming it (and moved to
    `<directory>_corrupt/` only with `set_aside_corrupt=True`, which the
    trainer passes so that the step can be redone). An incompatible one
    raises `IncompatibleCheckpointError` and nothing is skipped or moved.

    Args:
      abstract_state: see `restore`.
      set_aside_corrupt: move damaged checkpoints out of the directory.
    """
    damaged = []
    found = None
    for step in reversed(self.steps()):
      try:
        found = self.restore(step, abstract_state)
        break
      except CorruptCheckpointError as e:
        note = 'skipped'
        if set_aside_corrupt:
          note = f'moved to {self._move_aside(step)}'
        damaged.append(f'{e}; it is damaged and was {note}')
    instead = f'using step {found[1]["step"]} instead' if found else 'no checkpoint is left'
    for message in damaged:
      warnings.warn(f'{message}; {instead}', stacklevel=2)
    return found

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _move_aside(self, step: int) -> str:
    """Moves a damaged step directory out of the manager's way (the step is redone).

    With several processes (which all find the same damage: the checksums are
    summed over processes) process 0 moves it and the others wait for it.
    """
    aside = os.path.join(os.path.dirname(self.directory),
                         f'{os.path.basename(self.directory)}_corrupt', str(step))
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      if os.path.exists(aside):
        aside = f'{aside}.{os.getpid()}'
      os.replace(self._step_dir(step), aside)
    parallel.barrier(f'checkpoint {step} moved aside')
    self._manager.reload()
    return aside

  def close(self):
    self._manager.close()


def _first_line(error: Exception, limit: int = 240) -> str:
  """An exception as one short line (TensorStore's carry whole JSON specs)."""
  text = (str(error).strip().splitlines() or [''])[0]
  text = f'{type(error).__name__}: {text}'
  return text if len(text) <= limit else text[:limit] + '...'


def _file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _write_file_record(step_dir: str) -> None:
  """Writes FILE_RECORD: every file under a saved step with its size and SHA-256."""
  record = {}
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      relative = os.path.relpath(path, step_dir)
      if relative != FILE_RECORD:
        record[relative] = [os.path.getsize(path), _file_sha256(path)]
  temporary = os.path.join(step_dir, f'{FILE_RECORD}.tmp{os.getpid()}')
  with open(temporary, 'w', encoding='utf-8') as f:
    json.dump(record, f, sort_keys=True)
  os.replace(temporary, os.path.join(step_dir, FILE_RECORD))


def signature_to_json(signature) -> list:
  """A model's input signature (a ShapeDtypeStruct or a tuple of them) as JSON."""
  items = signature if isinstance(signature, (tuple, list)) else (signature,)
  return [[list(item.shape), str(np.dtype(item.dtype))] for item in items]


def signature_from_json(items: list):
  """The inverse of `signature_to_json` (a bare ShapeDtypeStruct for one item)."""
  structs = tuple(jax.ShapeDtypeStruct(tuple(shape), dtype) for shape, dtype in items)
  return structs[0] if len(structs) == 1 else structs


def load_weights(output_dir: str, model, step: Optional[int] = None,
                 return_step: bool = False):
  """The trained weights of a run, for `model` in any mode ('train', 'eval', 'predict').

  Reads `<output_dir>/checkpoints` without changing anything there, and
  prints nothing when the checkpoint is sound (a damaged one gets one
  warning naming it, what was wrong and the step used instead).

  Args:
    output_dir: a training run's output folder (`trainer --output_dir`).
    model: the run's model, in any mode (for example
      `TransformerLM(..., mode='predict')` to decode); its weights' tree,
      shapes and dtypes must be the run's.
    step: which checkpoint (default: the latest one that passes its
      checksums).
    return_step: also return the step the weights are from.

  Returns:
    The weights pytree, as `model.init` would lay it out; with
    `return_step`, (weights, step).

  Raises:
    FileNotFoundError: no checkpoint in the folder (or no such step).
    IncompatibleCheckpointError: `model` is not the run's model (names the
      first differing weight and both shapes).
    CorruptCheckpointError: the asked-for step is damaged, or every one is.
  """
  directory = os.path.join(output_dir, 'checkpoints')
  checkpointer = Checkpointer(directory, read_only=True)
  try:
    steps = checkpointer.steps()
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {directory}')
    if step is not None and step not in steps:
      raise FileNotFoundError(f'no checkpoint of step {step} in {directory}; '
                              f'there are steps {steps}')
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    damaged = []
    for candidate in ([step] if step is not None else reversed(steps)):
      try:
        metadata = checkpointer.metadata(candidate)
        signature = signature_from_json(
            [[[1] + shape[1:], dtype] for shape, dtype in metadata['input_signature']])
        abstract = jax.eval_shape(lambda s=signature: model.init(s, rng=jax.random.key(0))[0])
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)
        weights = checkpointer.restore(candidate, {'weights': abstract})[0]['weights']
      except CorruptCheckpointError as e:
        if step is not None:
          raise
        damaged.append(f'{e}; it is damaged and was skipped')
        continue
      for message in damaged:
        warnings.warn(f'{message}; using step {candidate} instead', stacklevel=2)
      return (weights, candidate) if return_step else weights
    raise CorruptCheckpointError(f'every checkpoint in {directory} is damaged: ' +
                                 ' | '.join(damaged))
  finally:
    checkpointer.close()
