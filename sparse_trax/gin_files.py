"""Reading experiment gin files: includes resolved from the including file, unused macros found.

Gin resolves `include 'x.gin'` against one global list of search paths, so a
file that lives elsewhere (say `/tmp/mine.gin` including
`/repo/gin/quickstart.gin` by absolute path) breaks the nested includes of the
file it includes. Here every file gin opens is read through a file reader
registered with gin (`gin.config.register_file_reader`): it rewrites each of
the file's include statements to the file that resolves first from

  1. the including file's own folder,
  2. the including file's nearest ancestor folder named 'gin',

and leaves an include that neither holds to gin's search paths (and gin's own
error). Line numbers are kept, and gin's messages name the real file.

`unused_macros` walks the same include graph and lists the macros bound but
never referenced (`D_MODLE = 64` when the files say `%D_MODEL`);
`check_text` raises for gin syntax errors and unused top-level macros without
any configurable registered, so the trainer reports them before it imports JAX.
"""

import contextlib
import io
import os
import re
import tokenize
from typing import List, NamedTuple, Optional, Sequence, Tuple

import gin
from gin import config_parser

# An include rewritten by this module names its resolved file after this prefix; the prefix
# makes the name relative (gin then asks its file readers, and ours answers).
RESOLVED_PREFIX = 'sparse_trax-resolved:'


def _nearest_gin_folder(folder: str) -> Optional[str]:
  while folder != os.path.dirname(folder):
    if os.path.basename(folder) == 'gin':
      return folder
    folder = os.path.dirname(folder)
  return None


def resolve_include(name: str, including_file: Optional[str]) -> Optional[str]:
  """The file an include statement names, from the including file's point of view.

  Args:
    name: the string after `include`.
    including_file: the absolute path of the file holding the statement (None
      for the command line).

  Returns:
    An absolute path, or None when neither the including file's folder nor its
    nearest 'gin' ancestor holds it (gin's search paths decide then).
  """
  if name.startswith(RESOLVED_PREFIX):
    return name[len(RESOLVED_PREFIX):]
  if os.path.isabs(name):
    return name if os.path.isfile(name) else None
  if including_file is None:
    return None
  folder = os.path.dirname(including_file)
  for base in (folder, _nearest_gin_folder(folder)):
    if base is not None and os.path.isfile(os.path.join(base, name)):
      return os.path.abspath(os.path.join(base, name))
  return None


class _RecordingDelegate(config_parser.ParserDelegate):
  """Parses without resolving anything; records the macros a file references."""

  def __init__(self):
    self.macros = []

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return None

  def macro(self, macro_name):
    self.macros.append(macro_name)
    return None


class Statements(NamedTuple):
  """What one gin file (or the command line's bindings) holds."""
  includes: List[Tuple[str, int]]              # (name as written, line number)
  macro_bindings: List[Tuple[str, int]]        # (macro name, line number)
  macro_references: List[str]


class GinSyntaxError(ValueError):
  """A gin file or binding that gin's parser cannot read; the message names where."""


def read_statements(text: str, filename: Optional[str]) -> Statements:
  """Parses gin text with gin's own parser, resolving nothing.

  Raises:
    GinSyntaxError: naming the file (or `--config` for bindings), the line, and
      that line's text.
  """
  source = io.StringIO(text)
  source.name = filename
  delegate = _RecordingDelegate()
  includes, bindings = [], []
  try:
    for statement in config_parser.ConfigParser(source, delegate):
      if isinstance(statement, config_parser.IncludeStatement):
        includes.append((statement.filename, statement.location.line_num))
      elif isinstance(statement, config_parser.BindingStatement) and not statement.arg_name:
        name = (f'{statement.scope}/{statement.selector}' if statement.scope
                else statement.selector)
        bindings.append((name, statement.location.line_num))
  except (SyntaxError, tokenize.TokenError) as e:
    if isinstance(e, SyntaxError):
      message, line_num = e.msg, e.lineno
    else:   # the tokenizer: ('EOF in multi-line statement', (line, column))
      message, line_num = e.args[0], e.args[1][0]
    lines = text.splitlines()
    shown = (f'\n    {lines[line_num - 1].strip()}'
             if line_num and 0 < line_num <= len(lines) and lines[line_num - 1].strip() else '')
    where = f'line {line_num}'
    if message.startswith('EOF in multi-line'):
      where, message, shown = 'at its end', message + ' (an unclosed bracket or string)', ''
    raise GinSyntaxError(f'gin syntax error in {filename or "--config"}, {where}: '
                         f'{message}{shown}') from e
  return Statements(includes, bindings, delegate.macros)


def _with_resolved_includes(text: str, path: str) -> str:
  """The file's text with each resolvable include naming its resolved file."""
  lines = text.splitlines(keepends=True)
  for name, line_num in read_statements(text, path).includes:
    resolved = resolve_include(name, path)
    if resolved is None or name.startswith(RESOLVED_PREFIX):
      continue
    line = lines[line_num - 1]
    quoted = re.search(r"""(['"])(?:\\.|(?!\1).)*\1""", line)
    lines[line_num - 1] = (line[:quoted.start()] + repr(RESOLVED_PREFIX + resolved) +
                           line[quoted.end():])
  return ''.join(lines)


def _is_resolved_name(path: str) -> bool:
  return RESOLVED_PREFIX in path


@contextlib.contextmanager
def _open_resolved(path: str):
  real = path[path.index(RESOLVED_PREFIX) + len(RESOLVED_PREFIX):]
  with open(real, encoding='utf-8') as f:
    text = f.read()
  source = io.StringIO(_with_resolved_includes(text, real))
  source.name = real
  yield source


gin.config.register_file_reader(_open_resolved, _is_resolved_name)


def resolved_name(config_file: str) -> str:
  """The name to give gin for a top-level config file, so its includes resolve here."""
  return RESOLVED_PREFIX + os.path.abspath(config_file)


class MacroBinding(NamedTuple):
  name: str
  where: str       # 'file:line' or '--config'
  top_level: bool  # bound on the command line or in a file given there


def unused_macros(config_files: Sequence[str], bindings: Sequence[str] = ()
                  ) -> List[MacroBinding]:
  """The macros bound in the files (and their includes) or bindings, never referenced.

  Args:
    config_files: the top-level gin files.
    bindings: the command line's bindings.

  Returns:
    One `MacroBinding` per unreferenced macro binding, in reading order.
  """
  bound: List[MacroBinding] = []
  referenced = set()
  seen = set()

  def walk(path: str, top_level: bool):
    if path in seen:
      return
    seen.add(path)
    with open(path, encoding='utf-8') as f:
      statements = read_statements(f.read(), path)
    bound.extend(MacroBinding(name, f'{path}:{line}', top_level)
                 for name, line in statements.macro_bindings)
    referenced.update(statements.macro_references)
    for name, _ in statements.includes:
      resolved = resolve_include(name, path)
      if resolved is not None:
        walk(resolved, False)

  for config_file in config_files:
    walk(os.path.abspath(config_file), True)
  command_line = read_statements('\n'.join(bindings), None)
  bound.extend(MacroBinding(name, '--config', True) for name, _ in command_line.macro_bindings)
  referenced.update(command_line.macro_references)
  return [binding for binding in bound if binding.name not in referenced]


def check_text(config_files: Sequence[str], bindings: Sequence[str] = ()
               ) -> List[MacroBinding]:
  """Raises for what is wrong in the text alone, before anything is registered.

  Parses every file (and its resolvable includes) and the bindings with gin's
  parser: a syntax error raises `GinSyntaxError` naming the file and line. A
  macro bound on the command line or in a given file and never referenced
  raises ValueError. Unknown configurables and parameters are left to gin's
  real parse (`experiment.parse_gin_config`), which needs them registered.

  Returns:
    The macros bound only in included files and never referenced (`unused_macros`'s
    others: callers warn about them).
  """
  unused = unused_macros(config_files, bindings)
  mistakes = [b for b in unused if b.top_level]
  if mistakes:
    named = ', '.join(f'{b.name} ({b.where})' for b in mistakes)
    raise ValueError(f'gin macro {named} is bound but never used: no %{mistakes[0].name} '
                     'in the config; is it misspelt?')
  return unused
