"""An experiment configured by gin: parse the files and bindings, connect hosts, train.

The `trainer` entrypoint (`sparse_trax.trainer`) parses its command line and
then calls `run` here; this module brings in the training stack (JAX, gin's
registrations of every layer, model and data source), which `trainer --help`
never imports. TensorFlow is imported when the first dataset is built, after the
gin files and bindings are checked.
"""

import logging
import os
import warnings
from typing import Sequence

import gin
import jax

from sparse_trax import config_changes
from sparse_trax import gin_config  # registers every configurable
from sparse_trax import gin_files


def _gin_search_paths(config_files: Sequence[str]):
  """Each config file's folder and its nearest ancestor folder named 'gin'."""
  paths = []
  for config_file in config_files:
    folder = os.path.dirname(os.path.abspath(config_file))
    paths.append(folder)
    while folder != os.path.dirname(folder):
      if os.path.basename(folder) == 'gin':
        paths.append(folder)
        break
      folder = os.path.dirname(folder)
  return list(dict.fromkeys(paths))


class _HideGinResourceMisses(logging.Filter):
  """gin logs an ERROR for every search path that does not hold an included file
  (its package-resource reader), even when the next path does: hide those."""

  def filter(self, record):
    return not record.getMessage().startswith('Path not found:')


_HIDE_GIN_RESOURCE_MISSES = _HideGinResourceMisses()


def parse_gin_config(config_files: Sequence[str], bindings: Sequence[str] = (),
                     finalize_config: bool = True, check_unused_macros: bool = True) -> None:
  """Parses gin files and bindings, with includes resolved as the trainer does.

  An include resolves from the including file's folder, then that folder's
  nearest ancestor named 'gin' (`gin_files.resolve_include`), then the given
  files' folders and their 'gin' ancestors. Raises gin's error (naming the
  binding and the file) on an unknown configurable or parameter, and a
  ValueError for a macro bound on the command line or in a given file but
  never referenced (one bound only in an included file gets a warning).
  """
  logging.getLogger().addFilter(_HIDE_GIN_RESOURCE_MISSES)
  for path in _gin_search_paths(config_files):
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings([gin_files.resolved_name(f) for f in config_files],
                                      list(bindings), finalize_config=finalize_config)
  if check_unused_macros:
    for binding in gin_files.check_text(config_files, bindings):
      warnings.warn(f'gin macro {binding.name} is bound ({binding.where}) but never used')


def connect_hosts(args) -> None:
  """Calls jax.distributed.initialize when the flags ask for several hosts.

  A process that loses a peer fails within `--heartbeat_timeout` seconds
  rather than waiting forever. Processes other than 0 then show only errors
  (no warnings, no progress: process 0 reports for all).
  """
  if args.coordinator_address is not None:
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                               heartbeat_timeout_seconds=args.heartbeat_timeout)
  elif args.distributed:
    jax.distributed.initialize(heartbeat_timeout_seconds=args.heartbeat_timeout)
  if jax.process_index() != 0:
    warnings.simplefilter('ignore')
    logging.getLogger().setLevel(logging.ERROR)


def run(args) -> dict:
  """Trains and decodes the experiment of parsed `trainer` arguments (whose gin files
  `trainer.main` found); returns `train`'s result."""
  parse_gin_config(args.config_file, args.config)
  connect_hosts(args)

  def check_and_record_config(resume_step):
    # Everything configurable has been called by now: the operative config is whole.
    config_changes.record_config(args.output_dir, resume_step, gin.operative_config_str(),
                                 write=jax.process_index() == 0)

  train = gin.get_configurable('train')
  return train(output_dir=args.output_dir, on_resume=check_and_record_config)
