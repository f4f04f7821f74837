"""What changed between two operative gin configs, and whether a run may resume across it.

A run's folder keeps the operative config it was made with (`config.gin`,
then `config.<step>.gin` for each resume with other allowed settings). On
resume the trainer compares the newest of them with the new operative
config, binding by binding, macros resolved to their values:

  * a change to a schedule-only setting (`SCHEDULE_ONLY`: how long, how
    often to evaluate, checkpoint and log, what to decode at the end, where
    to run) is allowed and recorded in `config.<step>.gin`;
  * any other change (the model, the data, the tokenizer, the optimizer,
    the seed) stops the run before anything is written, listing each
    differing binding as `old -> new`.
"""

import dataclasses
import os
import re
from typing import Dict, List, Optional, Tuple

from gin import config_parser

# configurable.parameter names whose change leaves the trained model and its data as they were.
SCHEDULE_ONLY = frozenset({
    'train.n_steps', 'train.eval_every', 'train.checkpoint_every', 'train.keep_checkpoints',
    'train.log_every', 'train.progress_bar', 'train.decode_length', 'train.decode_temperature',
    'train.eval_rouge', 'train.rouge_decode_length', 'train.rouge_beam_size',
    'train.rouge_batch_size', 'train.n_devices', 'train.weight_sharding',
    'Inputs.n_eval_batches'})

CONFIG_FILE = 'config.gin'
_STEP_FILE = re.compile(r'^config\.(\d+)\.gin$')


@dataclasses.dataclass(frozen=True)
class Change:
  """One binding that differs: `name` (scope/configurable.parameter), old and new values
  as gin text ('(unset)' where one side lacks it)."""
  name: str
  old: str
  new: str

  @property
  def schedule_only(self) -> bool:
    return self.name.rsplit('/', 1)[-1] in SCHEDULE_ONLY

  def __str__(self):
    return f'{self.name}: {self.old} -> {self.new}'


class ConfigChangedError(ValueError):
  """A resume whose configuration changes the model, the data or the tokenizer."""


class _Reference:
  """A parsed `@name` / `@name()` or `%MACRO`, kept as text."""

  def __init__(self, text: str):
    self.text = text

  def __repr__(self):
    return self.text


class _Delegate(config_parser.ParserDelegate):

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return _Reference(f'@{scoped_configurable_name}{"()" if evaluate else ""}')

  def macro(self, macro_name):
    return _Reference(f'%{macro_name}')


def bindings(config_text: str) -> Dict[str, str]:
  """'scope/configurable.parameter' -> value as gin text, macros resolved.

  Macro definitions themselves are left out: they show through the bindings
  that use them.
  """
  raw: Dict[str, object] = {}
  macros: Dict[str, object] = {}
  parser = config_parser.ConfigParser(config_text, _Delegate())
  for statement in parser:
    if not isinstance(statement, config_parser.BindingStatement):
      continue
    selector = statement.selector.rsplit('.', 1)[-1]
    scope = f'{statement.scope}/' if statement.scope else ''
    if not statement.arg_name:            # a macro: NAME = value (gin's 'gin.macro')
      macros[f'{scope}{selector}'] = statement.value
      continue
    raw[f'{scope}{selector}.{statement.arg_name}'] = statement.value

  def resolve(value, depth=0):
    if isinstance(value, _Reference) and value.text.startswith('%') and depth < 16:
      name = value.text[1:]
      if name in macros:
        return resolve(macros[name], depth + 1)
    if isinstance(value, (list, tuple)):
      items = [resolve(v, depth + 1) for v in value]
      return type(value)(items)
    if isinstance(value, dict):
      return {k: resolve(v, depth + 1) for k, v in value.items()}
    return value
  return {name: repr(resolve(value)) for name, value in raw.items()}


def changes(old_text: str, new_text: str) -> List[Change]:
  """The bindings that differ between two configs, in name order."""
  old, new = bindings(old_text), bindings(new_text)
  found = []
  for name in sorted(set(old) | set(new)):
    if old.get(name) != new.get(name):
      found.append(Change(name, old.get(name, '(unset)'), new.get(name, '(unset)')))
  return found


def latest_config(output_dir: str) -> Optional[Tuple[str, str]]:
  """(path, text) of the newest config a run folder holds, or None."""
  candidates = []
  if os.path.exists(os.path.join(output_dir, CONFIG_FILE)):
    candidates.append((0, CONFIG_FILE))
  for name in os.listdir(output_dir) if os.path.isdir(output_dir) else ():
    match = _STEP_FILE.match(name)
    if match:
      candidates.append((int(match.group(1)), name))
  if not candidates:
    return None
  path = os.path.join(output_dir, max(candidates)[1])
  with open(path, encoding='utf-8') as f:
    return path, f.read()


def _write(path: str, text: str) -> None:
  temporary = f'{path}.tmp{os.getpid()}'
  with open(temporary, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(temporary, path)


def record_config(output_dir: str, resume_step: Optional[int], config_text: str,
                  write: bool = True) -> Optional[str]:
  """Checks a run's new operative config against its folder's, and records it.

  Args:
    output_dir: the run's folder.
    resume_step: the step it resumes from (None: a fresh start).
    config_text: the new operative config (`gin.operative_config_str()`).
    write: False checks only (the processes of a run other than process 0).

  Returns:
    The path written: config.gin for a fresh start (replacing a config no
    checkpoint was saved with), config.<step>.gin for a resume with changed
    schedule settings, None for a resume with the same configuration.

  Raises:
    ConfigChangedError: the resume changes something besides `SCHEDULE_ONLY`
      settings; the message lists every differing binding. Nothing is written.
  """
  if resume_step is None:
    if not write:
      return None
    for name in os.listdir(output_dir):
      if _STEP_FILE.match(name):
        os.remove(os.path.join(output_dir, name))     # from a run that saved no checkpoint
    path = os.path.join(output_dir, CONFIG_FILE)
    _write(path, config_text)
    return path
  previous = latest_config(output_dir)
  if previous is None:                 # trained through the Python API: nothing to compare
    if not write:
      return None
    path = os.path.join(output_dir, CONFIG_FILE)
    _write(path, config_text)
    return path
  previous_path, previous_text = previous
  found = changes(previous_text, config_text)
  refused = [change for change in found if not change.schedule_only]
  if refused:
    listed = '\n'.join(f'  {change}' for change in refused)
    raise ConfigChangedError(
        f'the output folder {output_dir} holds a run (step {resume_step}) made with another '
        f'configuration ({os.path.basename(previous_path)}); these bindings change the model, '
        f'the data or the optimizer:\n{listed}\n'
        'Pass another --output_dir, or rerun with the run\'s configuration (only '
        'n_steps, eval/checkpoint/log intervals and decoding settings may change). '
        'Nothing was changed.')
  if not found or not write:
    return None
  path = os.path.join(output_dir, f'config.{resume_step}.gin')
  _write(path, config_text)
  return path
