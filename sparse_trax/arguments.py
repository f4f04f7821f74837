"""Checks of user-facing arguments, each failing with one line naming the argument and value.

Used at construction by `train`, `Inputs` and the model functions, so that a
bad gin binding (`n_steps = -5`, `BATCH_SIZE = 0`, `D_MODEL = 64.5`,
`n_heads = '4'`) fails at once with a message, not deep inside a library.
"""

import numbers
import typing
from typing import Any, Iterable, Optional, Tuple

import numpy as np


def _describe(value: Any) -> str:
  return f'{value!r} (a {type(value).__name__})'


def check_int(owner: str, name: str, value: Any, minimum: Optional[int] = 1,
              optional: bool = False) -> None:
  """Raises ValueError unless `value` is an int >= minimum (or None when optional)."""
  if value is None and optional:
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f'{owner}: {name} must be an int, got {_describe(value)}')
  if minimum is not None and value < minimum:
    raise ValueError(f'{owner}: {name} must be >= {minimum}, got {value}')


def check_number(owner: str, name: str, value: Any, minimum: Optional[float] = None,
                 below: Optional[float] = None, optional: bool = False,
                 exclusive_minimum: bool = False) -> None:
  """Raises ValueError unless `value` is a real number in [minimum, below)."""
  if value is None and optional:
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f'{owner}: {name} must be a number, got {_describe(value)}')
  if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
    relation = '>' if exclusive_minimum else '>='
    raise ValueError(f'{owner}: {name} must be {relation} {minimum}, got {value}')
  if below is not None and value >= below:
    raise ValueError(f'{owner}: {name} must be < {below}, got {value}')


def check_choice(owner: str, name: str, value: Any, choices: Iterable) -> None:
  choices = tuple(choices)
  if value not in choices:
    raise ValueError(f'{owner}: {name} must be one of {choices}, got {_describe(value)}')


# Model arguments that may be 0 (0 turns the feature off); other ints must be >= 1.
_MAY_BE_ZERO = frozenset({'ff_sparsity', 'loss_sparsity', 'ff_use_sru', 'n_encoder_layers',
                          'n_chunks_before'})


def check_model_arguments(model_fn, arguments: dict) -> None:
  """Checks a model function's arguments against its annotations.

  int -> an int >= 1 (>= 0 for the switches in `_MAY_BE_ZERO`); float -> a
  number ('dropout' in [0, 1)); str -> a str ('mode' one of the modes);
  bool -> a bool; Optional[...] may also be None.

  Args:
    model_fn: the model function (its annotations and name are read).
    arguments: its arguments, e.g. `locals()` at the top of its body.
  """
  owner = model_fn.__name__
  hints = typing.get_type_hints(model_fn)
  for name, value in arguments.items():
    hint = hints.get(name)
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if optional:
      if value is None:
        continue
      hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is int:
      check_int(owner, name, value, 0 if name in _MAY_BE_ZERO else 1)
    elif hint is float:
      check_number(owner, name, value, 0.0, 1.0 if 'dropout' in name else None)
    elif hint is bool and not isinstance(value, bool):
      raise ValueError(f'{owner}: {name} must be True or False, got {_describe(value)}')
    elif hint is str:
      if not isinstance(value, str):
        raise ValueError(f'{owner}: {name} must be a str, got {_describe(value)}')
      if name == 'mode':
        check_choice(owner, name, value, ('train', 'eval', 'predict'))


def first_out_of_range(ids, size: int) -> Optional[Tuple[Tuple[int, ...], int]]:
  """(index, id) of the first entry of an id array outside [0, size), else None (on the host)."""
  ids = np.asarray(ids)
  bad = np.argwhere((ids < 0) | (ids >= size))
  if not bad.size:
    return None
  where = tuple(int(i) for i in bad[0])
  return where, int(ids[where])
