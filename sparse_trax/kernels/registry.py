"""Loads the kernels compiled for this CPU and registers their handlers with XLA, once.

`pip install -e .` compiles `cc/` once per x86-64 level into
`_cpu_kernels_avx512` (x86-64-v4), `_cpu_kernels_avx2` (x86-64-v3) and
`_cpu_kernels_baseline` (elsewhere, such as arm64: the baseline alone). At
import the best level that was built and that this CPU runs (its flags in
/proc/cpuinfo; elsewhere only the baseline is assumed) is loaded.
`SPARSE_TRAX_KERNEL_ISA=avx512|avx2|baseline` forces one (an error if it was
not built or this CPU lacks its instructions): the tests compare each level
this machine runs with the references. `SPARSE_TRAX_KERNELS=0` (see
`policy`) runs no kernel at all.

`ISA` is the level loaded, None where none was built; `BUILT` says whether
the handlers are registered.
"""

import importlib
import importlib.util
import os
from typing import FrozenSet, Mapping, Optional, Tuple

import jax

ISAS: Tuple[str, ...] = ('avx512', 'avx2', 'baseline')     # best first
FORCE_VARIABLE = 'SPARSE_TRAX_KERNEL_ISA'
# The CPU flags (as /proc/cpuinfo names them) each level's code may use.
NEEDS = {'avx512': frozenset({'avx512f', 'avx512bw', 'avx512cd', 'avx512dq', 'avx512vl',
                              'avx2', 'fma', 'bmi2', 'f16c', 'movbe'}),
         'avx2': frozenset({'avx2', 'fma', 'bmi1', 'bmi2', 'f16c', 'movbe'}),
         'baseline': frozenset()}


def cpu_flags(path: str = '/proc/cpuinfo') -> FrozenSet[str]:
  """The CPU's feature flags (Linux); empty where they cannot be read."""
  if not os.path.exists(path):
    return frozenset()
  with open(path, encoding='utf-8', errors='replace') as f:
    for line in f:
      if line.startswith('flags'):
        return frozenset(line.split(':', 1)[1].split())
  return frozenset()


def module_name(isa: str) -> str:
  return f'sparse_trax.kernels._cpu_kernels_{isa}'


def built_isas() -> Tuple[str, ...]:
  """The levels `pip install` compiled here, best first."""
  return tuple(isa for isa in ISAS if importlib.util.find_spec(module_name(isa)) is not None)


def choose_isa(built: Tuple[str, ...], flags: FrozenSet[str],
               environ: Mapping[str, str]) -> Optional[str]:
  """The level to load: the forced one (checked), else the best built one the CPU runs."""
  forced = environ.get(FORCE_VARIABLE, '').strip()
  if forced:
    if forced not in ISAS:
      raise ValueError(f'{FORCE_VARIABLE}={forced!r}: choose one of {ISAS}')
    if forced not in built:
      raise ValueError(f'{FORCE_VARIABLE}={forced!r}: its kernels were not built here '
                       f'(built: {list(built) or "none"})')
    lacking = sorted(NEEDS[forced] - flags)
    if lacking:
      raise ValueError(f'{FORCE_VARIABLE}={forced!r}: this CPU lacks {", ".join(lacking)}')
    return forced
  for isa in built:
    if NEEDS[isa] <= flags:
      return isa
  return None


def _register(isa: Optional[str]) -> bool:
  if isa is None:
    return False
  module = importlib.import_module(module_name(isa))
  for name, handler in module.registrations().items():
    jax.ffi.register_ffi_target(name, handler, platform='cpu')
  return True


ISA: Optional[str] = choose_isa(built_isas(), cpu_flags(), os.environ)
BUILT: bool = _register(ISA)
# Whether the loaded kernels multiply int8 weights by integer activations in sparse
# QKV's products (the AVX-512 level, on a CPU with VNNI; kernels/cc/sparse_qkv.cc checks
# the same at run time). Sparse FF's int8 products are integer at every level.
INTEGER_QKV: bool = ISA == 'avx512' and 'avx512_vnni' in cpu_flags()
