"""The kernel layer: how each operation runs, fused C++ kernel or XLA, decided in one place.

`pip install -e .` compiles the kernels in `cc/` (one file per family: stored
products, sparse FF, sparse QKV, attention, LayerNorm; one shared SIMD header)
with the system C++ compiler against the XLA FFI headers that jaxlib ships,
and this module registers their handlers with XLA. Where they did not build
(no compiler), `available()` is False and every operation runs its pure-JAX
reference, which computes the same thing (tested side by side).

- `POLICY` (`policy.KernelPolicy`): the threshold table that decides, per
  operation, storage dtype and number of positions, whether the kernel runs.
- `records`: typed weight records the layers hand over (`SparseFFWeights`,
  `MultiplicativeWeights`, `ConvolutionWeights`, `SparseQKVWeights`).
- `storage.QuantizedArray`: int8 (per-row scales) or bfloat16 stored weights.
- `ops`: `matvec`, `vecmat`, `sparse_ff`, `sparse_qkv`, `layer_norm`,
  `cached_attention`, and the stored products' references
  (`matvec_reference`, `vecmat_reference`), which never widen a stored matrix whole.
"""

from sparse_trax.kernels.ops import (cached_attention, layer_norm, matvec, matvec_reference,
                                     positions, sparse_ff, sparse_qkv, vecmat, vecmat_reference)
from sparse_trax.kernels.policy import POLICY, KernelPolicy
from sparse_trax.kernels.records import (ConvolutionWeights, MultiplicativeWeights,
                                         SparseFFWeights, SparseQKVWeights)
from sparse_trax.kernels.storage import QuantizedArray, storage_of


def available() -> bool:
  """True when the compiled kernels were built, registered and not switched off."""
  return POLICY.kernels_built and POLICY.enabled
