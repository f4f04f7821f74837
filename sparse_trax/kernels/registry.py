"""Registers the compiled kernels' handlers with XLA, once, at import.

`BUILT` is True when `pip install -e .` compiled `cc/` into `_cpu_kernels` and its
handlers were registered (CPU only); False where no compiler was available.
"""

import importlib.util

import jax


def _register() -> bool:
  if importlib.util.find_spec('sparse_trax.kernels._cpu_kernels') is None:
    return False
  from sparse_trax.kernels import _cpu_kernels  # pylint: disable=import-outside-toplevel,no-name-in-module
  for name, handler in _cpu_kernels.registrations().items():
    jax.ffi.register_ffi_target(name, handler, platform='cpu')
  return True


BUILT = _register()
