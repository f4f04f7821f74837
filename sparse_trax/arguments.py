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


# Arguments that may be 0 (0 turns the feature off); other ints must be >= 1.
_MAY_BE_ZERO = frozenset({'ff_sparsity', 'loss_sparsity', 'ff_use_sru', 'n_encoder_layers',
                          'n_chunks_before', 'n_carry', 'n_chunks_after', 'input_length',
                          'position', 'pad_id', 'n_in', 'n_out', 'seed', 'hash_seed'})
# Ints and floats of any sign (an axis counts from the end; a bias may be negative).
_ANY_SIGN = frozenset({'axis', 'forget_bias'})
# Floats that are probabilities of dropping: in [0, 1).
_RATES = frozenset({'rate'})


def check_annotated(owner: str, fn, arguments: dict) -> None:
  """Checks arguments against a function's annotations, failing with one line.

  int -> an int >= 1 (>= 0 for the switches in `_MAY_BE_ZERO`, any for
  `_ANY_SIGN`); float -> a number >= 0 ('dropout' and 'rate' in [0, 1));
  str -> a str ('mode' one of the modes); bool -> a bool; Optional[...] may
  also be None. Arguments without an annotation are not checked.

  Args:
    owner: what the message names (a model function or a layer class).
    fn: the function whose annotations are read (`__init__` of a layer).
    arguments: its arguments, e.g. `locals()` at the top of its body.
  """
  hints = typing.get_type_hints(fn)
  for name, value in arguments.items():
    hint = hints.get(name)
    if hint is None or name == 'return':
      continue
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if optional:
      if value is None:
        continue
      hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is int:
      minimum = None if name in _ANY_SIGN else 0 if name in _MAY_BE_ZERO else 1
      check_int(owner, name, value, minimum)
    elif hint is float:
      if name in _ANY_SIGN:
        check_number(owner, name, value)
      else:
        check_number(owner, name, value, 0.0,
                     1.0 if 'dropout' in name or name in _RATES else None)
    elif hint is bool and not isinstance(value, bool):
      raise ValueError(f'{owner}: {name} must be True or False, got {_describe(value)}')
    elif hint is str:
      if not isinstance(value, str):
        raise ValueError(f'{owner}: {name} must be a str, got {_describe(value)}')
      if name == 'mode':
        check_choice(owner, name, value, ('train', 'eval', 'predict'))


def check_model_arguments(model_fn, arguments: dict) -> None:
  """Checks a model function's arguments against its annotations (`check_annotated`).

  Args:
    model_fn: the model function (its annotations and name are read).
    arguments: its arguments, e.g. `locals()` at the top of its body.
  """
  check_annotated(model_fn.__name__, model_fn, arguments)


def check_layer_arguments(layer, init, arguments: dict) -> None:
  """Checks a layer constructor's arguments against its annotations (`check_annotated`).

  Call first thing in `__init__`:
  `arguments.check_layer_arguments(self, Dense.__init__, locals())`; the
  message names the layer's class.
  """
  check_annotated(type(layer).__name__, init, arguments)


def first_out_of_range(ids, size: int) -> Optional[Tuple[Tuple[int, ...], int]]:
  """(index, id) of the first entry of an id array outside [0, size), else None (on the host)."""
  ids = np.asarray(ids)
  bad = np.argwhere((ids < 0) | (ids >= size))
  if not bad.size:
    return None
  where = tuple(int(i) for i in bad[0])
  return where, int(ids[where])
