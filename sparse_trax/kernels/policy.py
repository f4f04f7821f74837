"""The one place that decides how each operation runs: a fused C++ kernel or XLA.

`POLICY.runs_kernel(op, storage=..., positions=..., mode=...)` answers for
every kernel call site in the library, from one threshold table:
`KERNEL_POSITIONS[op][storage]` is the most positions (rows of activations:
batch x length) for which `op` with weights stored as `storage` runs its
kernel. Absent means never (XLA is at its floor there, or no kernel exists);
`ANY` means any number.

Kernels run on CPU only, where they were built (`lax.platform_dependent`
picks each kernel's pure-JAX reference on other platforms), and have no
gradients: with float32 weights they run only in 'predict' mode (the
LayerNorm kernel, with its own gradient, in any mode); int8 and bfloat16
weights are decoding weights and take their kernels in every mode.

`XLA_POSITIONS` holds the thresholds of the pure-JAX paths themselves (the
kernels' references and the paths on other platforms).

Set `SPARSE_TRAX_KERNELS=0` in the environment to run every reference
instead, as a machine without a compiler would.
"""

import dataclasses
import os
from typing import Mapping, Optional

from sparse_trax.kernels import registry

ANY = None          # any number of positions
FEW = 4             # a decoding step: one token, or a few of a batch

KERNEL_POSITIONS: Mapping[str, Mapping[str, Optional[int]]] = {
    # x [p, d_in] times stored rows [d_out, d_in] (Dense, attention projections,
    # controllers, the vocabulary): XLA converts a whole int8/bfloat16 matrix first.
    'matvec': {'int8': ANY, 'bfloat16': ANY},
    # a [p, d_in] times in-major [d_in, d_out] (MultiplicativeDense's units, SparseFF's
    # W2 in the masked product): XLA's product of a few rows read 8-16 GB/s where the
    # kernel reads 16-20 (float32, 2-vCPU Xeon); stored weights are never widened whole.
    # A MultiplicativeDense gives S rows per position: 64 rows are FEW positions of
    # a 16-module layer.
    'vecmat': {'int8': ANY, 'bfloat16': ANY, 'float32': 16 * FEW},
    # SparseFF's controller, argmax and chosen rows in one call, for a decoded token or a
    # whole prefill: blocks are its outer loop, so each block's N candidate rows come from
    # memory once for all positions (never more bytes than the masked product reads), and
    # it multiplies B rows per position where the masked product multiplies d_ff (a 17B-width
    # 2-layer int8 model's 64-token prefill: 612 ms, against 1727 ms when it fell back to
    # the masked product past N = 64 positions).
    'sparse_ff': {'int8': ANY, 'bfloat16': ANY, 'float32': ANY},
    # sparse QKV's multiplicative layer and three convolutions in 'predict' mode (the
    # kernel walks the carried history): decoded tokens, and with int8 weights on a CPU
    # with VNNI (integer products, `registry.INTEGER_QKV`) a whole prompt's prefill too, 16
    # positions at a time (a 64-token prefill of one 17B-width SparseQKV, int8: 32-33 ms
    # against 87-90 in XLA, which widens each kernel in tiles for float32 products).
    'sparse_qkv': {'int8': ANY if registry.INTEGER_QKV else FEW, 'bfloat16': FEW,
                   'float32': FEW},
    'layer_norm': {'float32': FEW},
    'cached_attention': {'float32': 1},
}

XLA_POSITIONS: Mapping[str, int] = {
    # SparseFF / MoE in 'predict' mode gather the chosen rows up to this many positions,
    # then switch to the masked product of the whole matrices.
    'gather': FEW,
    # convolutions over (length, module) in 'predict' mode as patches times kernels.
    'patches': FEW,
    # bfloat16 rows times a few positions as one multiply-and-sum loop (XLA fuses the
    # conversion into it; a matrix product would convert the whole matrix first).
    'multiply_sum': FEW,
}

# Above this many gathered int8 weights (rows x d_model) a decoded token's SparseFF or MoE
# in XLA reduces its gathered rows in one fused multiply-and-sum loop instead of einsums
# (at d 6144 and 768 rows: 2.3-3.4 ms against 10-12 ms; below ~2M weights the einsums win).
FUSED_GATHER_ABOVE = 1 << 21

# A pure-JAX product with int8 or bfloat16 weights widens them this many float32
# values at a time (a tile of rows), never the whole matrix.
TILE_VALUES = 1 << 20


@dataclasses.dataclass(frozen=True)
class KernelPolicy:
  """Whether each operation runs its fused kernel: see the module docstring.

  Attributes:
    kernels_built: the C++ kernels were compiled and registered with XLA.
    enabled: False runs every pure-JAX reference (SPARSE_TRAX_KERNELS=0).
    kernel_positions: the threshold table, op -> storage -> most positions.
  """
  kernels_built: bool
  enabled: bool = True
  kernel_positions: Mapping[str, Mapping[str, Optional[int]]] = dataclasses.field(
      default_factory=lambda: KERNEL_POSITIONS)

  def runs_kernel(self, op: str, *, storage: str, positions: int, mode: Optional[str]) -> bool:
    """Whether `op` runs as its C++ kernel.

    Args:
      op: a key of the threshold table ('matvec', 'vecmat', 'sparse_ff', ...).
      storage: how the weights are stored: 'float32', 'bfloat16' or 'int8' (for
        activation-only operations, the activations' dtype).
      positions: rows of activations in this call (batch x length).
      mode: the calling layer's mode ('train', 'eval', 'predict', or None for a
        layer that behaves the same in every mode).
    """
    if op not in self.kernel_positions:
      raise KeyError(f'no kernel policy for {op!r}; known: {sorted(self.kernel_positions)}')
    if not (self.kernels_built and self.enabled):
      return False
    most = self.kernel_positions[op].get(storage, 0)
    if most is not ANY and positions > most:
      return False
    if storage == 'float32' and op != 'layer_norm' and mode != 'predict':
      return False      # no gradient through a float32 kernel: decoding only
    return True

  @staticmethod
  def xla_positions(path: str) -> int:
    """The threshold of a pure-JAX path (`XLA_POSITIONS`)."""
    return XLA_POSITIONS[path]


def _enabled_by_environment() -> bool:
  return os.environ.get('SPARSE_TRAX_KERNELS', '1').strip().lower() not in ('0', 'off', 'false')


def make_policy(kernels_built: bool) -> KernelPolicy:
  """The policy for this process: kernels where built, unless SPARSE_TRAX_KERNELS=0."""
  return KernelPolicy(kernels_built=kernels_built, enabled=_enabled_by_environment())


# Decided once per process: the kernels where built, unless SPARSE_TRAX_KERNELS=0.
POLICY: KernelPolicy = make_policy(registry.BUILT)
