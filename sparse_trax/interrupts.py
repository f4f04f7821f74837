"""Ctrl-C and SIGTERM as one exception, raised where the run can save its work.

Two scopes, each installing its handlers on entry and restoring the previous
ones on exit (only in the main thread; elsewhere signals are left alone):

  * `RaiseOnSignal`: SIGINT or SIGTERM raises `Interrupted` at once, and
    remembers that it came (so that an error a library made of it, like
    tf.data's "INTERNAL: KeyboardInterrupt", is still reported as the
    interruption). The trainer wraps a whole run in it.
  * `DeferSignals`: inside the training steps, the first SIGINT or SIGTERM
    is only recorded (`received`); the loop finishes its step, saves a
    checkpoint and raises `Interrupted`. A second one raises at once.
"""

import signal
import sys
import threading
from typing import Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
  """A run stopped by SIGINT (Ctrl-C) or SIGTERM.

  Attributes:
    signum: the signal's number.
    exit_status: 128 + signum (130 for SIGINT, 143 for SIGTERM).
  """

  def __init__(self, signum: int, message: Optional[str] = None):
    self.signum = signum
    self.exit_status = 128 + signum
    self.message = message or f'interrupted ({signal_name(signum)})'
    super().__init__(self.message)

  def __str__(self):
    return self.message


def signal_name(signum: int) -> str:
  return signal.Signals(signum).name


def _in_main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


class _SignalScope:
  """Installs `_handle` for SIGINT and SIGTERM while entered."""

  def __init__(self):
    self.received: Optional[int] = None
    self._previous = {}

  def _handle(self, signum, frame):
    raise NotImplementedError

  def __enter__(self):
    if _in_main_thread():
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}


class RaiseOnSignal(_SignalScope):
  """SIGINT / SIGTERM raise `Interrupted` at once; `received` remembers the signal.

  Where Python cannot raise it (the signal landed in a gc callback or a
  finalizer, whose exceptions it prints as "Exception ignored in ..."), the
  print is left out: `received` still says it came, and the caller reports it.
  """

  def __enter__(self):
    super().__enter__()
    self._previous_unraisable = sys.unraisablehook
    sys.unraisablehook = self._unraisable
    return self

  def __exit__(self, *exc):
    sys.unraisablehook = self._previous_unraisable
    super().__exit__(*exc)

  def _unraisable(self, unraisable):
    if not isinstance(unraisable.exc_value, Interrupted):
      self._previous_unraisable(unraisable)

  def _handle(self, signum, frame):
    del frame
    self.received = signum
    raise Interrupted(signum)


class DeferSignals(_SignalScope):
  """The first SIGINT / SIGTERM is recorded in `received`; a second raises at once.

  A signal that an enclosing `RaiseOnSignal` received, but whose exception
  Python swallowed (raised inside a gc callback, where exceptions are only
  printed), counts as received here: the loop stops at its next step.
  """

  def __enter__(self):
    super().__enter__()
    for previous in self._previous.values():
      outer = getattr(previous, '__self__', None)
      if isinstance(outer, _SignalScope) and outer.received is not None:
        self.received = outer.received
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:
      raise Interrupted(signum, f'interrupted again ({signal_name(signum)}) before the '
                                'checkpoint was saved')
    self.received = signum
