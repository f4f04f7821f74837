"""One trainer per output folder: an OS lock on the folder, with the owner named.

The lock is `flock` on the folder itself, so the kernel releases it when the
owning process ends however it ends (SIGKILL included): a killed trainer
never leaves a lock that blocks the next run. Beside it, `trainer.lock` names
the owner (pid, host, start time) for the message a second trainer prints;
it is removed on release, and a leftover one (from a killed process) is
reported as taken over.

Works on local file systems (Linux, macOS); on a network file system without
`flock` support the lock may not be exclusive between hosts.
"""

import datetime
import fcntl
import json
import os
import socket
import sys
from typing import Optional

OWNER_FILE = 'trainer.lock'


class FolderLockedError(RuntimeError):
  """Another process holds the output folder."""


def describe_owner(owner: Optional[dict]) -> str:
  if not owner:
    return 'another process (its owner file is not written yet)'
  return (f'pid {owner.get("pid")} on host {owner.get("host")!r} '
          f'(since {owner.get("started", "?")})')


def _read_owner(path: str) -> Optional[dict]:
  try:
    with open(path, encoding='utf-8') as f:
      return json.loads(f.read() or 'null')
  except (OSError, ValueError):
    return None


class FolderLock:
  """An exclusive lock on a run's output folder, held from `acquire` to `release`.

  Args:
    folder: the output folder (created if missing).

  Raises (from `acquire`):
    FolderLockedError: another live process holds the folder; the message
      names its pid and host.
  """

  def __init__(self, folder: str):
    self.folder = os.path.abspath(folder)
    self.owner_path = os.path.join(self.folder, OWNER_FILE)
    self._fd = None
    self.took_over = None      # the owner record of a killed process, if one was left

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> 'FolderLock':
    if self.held:
      return self
    os.makedirs(self.folder, exist_ok=True)
    fd = os.open(self.folder, os.O_RDONLY)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      owner = _read_owner(self.owner_path)
      raise FolderLockedError(
          f'the output folder {self.folder} is in use by another trainer: '
          f'{describe_owner(owner)}; wait for it, stop it, or pass another --output_dir'
      ) from None
    self._fd = fd
    self.took_over = _read_owner(self.owner_path)   # left by a process that died holding it
    record = {'pid': os.getpid(), 'host': socket.gethostname(),
              'started': datetime.datetime.now().isoformat(timespec='seconds'),
              'command': ' '.join(sys.argv)}
    temporary = f'{self.owner_path}.{os.getpid()}'
    with open(temporary, 'w', encoding='utf-8') as f:
      f.write(json.dumps(record) + '\n')
    os.replace(temporary, self.owner_path)
    return self

  def release(self) -> None:
    if not self.held:
      return
    try:
      os.remove(self.owner_path)
    except FileNotFoundError:
      pass
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
