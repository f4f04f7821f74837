"""Checkpoints with orbax: atomic saves, the last n kept, corrupt ones skipped.

Orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-write never leaves a checkpoint that looks
whole. We also record a SHA-256 of every array with the step: a checkpoint
whose files were damaged later fails the check on restore, and the run falls
back to the one before it with a warning naming the directory.
"""

import hashlib
import os
import warnings
from typing import Any, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp


def tree_checksum(tree) -> str:
  """SHA-256 over the bytes, shapes and dtypes of a pytree's arrays."""
  digest = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(tree):
    array = np.asarray(leaf)
    digest.update(f'{array.dtype}{array.shape}'.encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()


class Checkpointer:
  """Saves and restores (train_state pytree, metadata dict) per step.

  Args:
    directory: where step directories go (created if missing).
    keep: how many of the latest checkpoints to keep.
  """

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    os.makedirs(self.directory, exist_ok=True)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                             enable_async_checkpointing=False,
                                             cleanup_tmp_directories=True))

  def steps(self):
    return sorted(self._manager.all_steps())

  def save(self, step: int, train_state, metadata: dict) -> None:
    metadata = dict(metadata, step=int(step), checksum=tree_checksum(train_state))
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(train_state), meta=ocp.args.JsonSave(metadata)))
    self._manager.wait_until_finished()

  def restore_latest(self, abstract_state) -> Optional[Tuple[Any, dict]]:
    """The newest checkpoint that loads and passes its checksum, else None.

    Args:
      abstract_state: the train state's structure (arrays or ShapeDtypeStructs).
    """
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
    for step in reversed(self.steps()):
      path = os.path.join(self.directory, str(step))
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        state, metadata = restored.state, restored.meta
        if tree_checksum(state) != metadata.get('checksum'):
          raise ValueError('checksum mismatch: the arrays differ from what was saved')
      except Exception as e:  # pylint: disable=broad-except
        aside = self._move_aside(step)
        warnings.warn(f'checkpoint {path} is corrupt or truncated and was skipped '
                      f'({type(e).__name__}: {str(e)[:300]}); moved to {aside}; '
                      f'trying an older one')
        continue
      return state, metadata
    return None

  def _move_aside(self, step: int) -> str:
    """Moves a bad step directory out of the manager's way (the step is redone)."""
    aside = os.path.join(os.path.dirname(self.directory),
                         f'{os.path.basename(self.directory)}_corrupt', str(step))
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    if os.path.exists(aside):
      aside = f'{aside}.{os.getpid()}'
    os.replace(os.path.join(self.directory, str(step)), aside)
    self._manager.reload()
    return aside

  def close(self):
    self._manager.close()
