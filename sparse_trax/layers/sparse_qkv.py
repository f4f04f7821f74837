"""Sparse QKV (Scaling Transformer): a multiplicative layer, then a convolution.

MultiplicativeDense replaces a d x d_out matrix by two thin ones: with S
modules of M = d_out / S units, y[s, m] = sum_i x[i] D[i, s] E[i, m] + b,
so d*S + d*M weights instead of d*d_out. LocallyConvDense is a convolution
over (length, module) with weights shared across modules. Q, K and V come
from one shared multiplicative layer followed by three such convolutions.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from sparse_trax import arguments
from sparse_trax.layers import attention
from sparse_trax.layers import combinators as cb
from sparse_trax.layers import core
from sparse_trax.layers.base import Layer
from sparse_trax import kernels
from sparse_trax.kernels.policy import XLA_POSITIONS
from sparse_trax.layers.quantize import as_float
from sparse_trax.layers.state import Carry

_glorot = jax.nn.initializers.glorot_uniform()


class MultiplicativeDense(Layer):
  """y[s, m] = sum_i x[i] D[i, s] E[i, m] + b[s, m]: [..., d_in] -> [..., d_out].

  The output is flattened module-major (index s * M + m), M = d_out / n_modules.
  Weights: `modules` D [d_in, n_modules], `units` E [d_in, M], `b` [d_out].
  Parameters: d_in * n_modules + d_in * d_out / n_modules + d_out.

  `mode` ('predict', or None for a layer that behaves the same in every mode):
  the product with E goes through the kernel layer (`kernels.vecmat`): on CPU,
  int8 and bfloat16 units in any mode, and float32 units for a few positions
  in 'predict' mode, run a C++ kernel that streams E once per group of rows
  (on a 2-vCPU Xeon XLA's product of n_modules rows with E read it at 8-16
  GB/s, the kernel at 16-20 GB/s: the sparse loss's vocabulary went from
  3.5-4.2 to 1.7-2.0 ms); stored units are never widened whole.
  """

  position_wise = True

  def __init__(self, n_modules: int, d_out: int, mode: Optional[str] = None):
    arguments.check_layer_arguments(self, MultiplicativeDense.__init__, locals())
    if d_out % n_modules:
      raise ValueError(f'd_out {d_out} is not a multiple of n_modules {n_modules}')
    super().__init__(1, 1, mode=mode)
    self.n_modules = n_modules
    self.d_out = d_out

  def init_weights_and_state(self, input_signature, rng):
    d_in = input_signature.shape[-1]
    m = self.d_out // self.n_modules
    modules_rng, units_rng = jax.random.split(rng)
    # Each output sums d_in products of two factors: scale both so the
    # output variance matches a Glorot-initialized dense layer's.
    scale = (2.0 / (d_in + self.d_out)) ** 0.25 * 3.0 ** 0.5
    return {'modules': jax.random.uniform(modules_rng, (d_in, self.n_modules), jnp.float32,
                                          -scale, scale),
            'units': jax.random.uniform(units_rng, (d_in, m), jnp.float32, -scale, scale),
            'b': jnp.zeros((self.d_out,), jnp.float32)}, {}

  def forward(self, weights, state, x, rng):
    d_in = weights['modules'].shape[0]   # (a QuantizedArray has a shape too)
    if x.ndim < 1 or x.shape[-1] != d_in:
      raise ValueError(f'last input dimension must be {d_in}, got input shape {tuple(x.shape)}')
    scaled = x[..., :, None] * as_float(weights['modules'], x.dtype)     # [..., d_in, S]
    y = kernels.vecmat(jnp.swapaxes(scaled, -1, -2), weights['units'],
                       mode=self.mode)                                   # [..., S, M]
    return y.reshape(x.shape[:-1] + (self.d_out,)) + weights['b'].astype(x.dtype), state


class _ConvolutionOverModules(Layer):
  """One or several convolutions of the same input over (length, module), run as one.

  [batch, length, d_in] is viewed as [batch, length, n_modules, d_in / n_modules]
  and convolved with kernels of (length_kernel_size, kernel_sizes[i]) to
  d_out_per_module channels each, weights shared across modules. Along
  length the convolution is causal (left padding; in 'predict' mode the last
  length_kernel_size - 1 inputs live in one `Carry`, whatever the number of
  kernels), unless causal=False (centered). Along modules it is centered
  ('SAME'). Over a sequence the kernels are zero-padded to the widest along
  modules and stacked along their outputs: one XLA convolution computes every
  output. For a few decoded positions the patches are cut once and each
  kernel multiplies its window of them.
  """

  takes_position = True

  def __init__(self, n_modules: int, d_out_per_module: int, kernel_sizes, length_kernel_size: int,
               causal: bool, mode: str, n_out: int):
    arguments.check_layer_arguments(self, _ConvolutionOverModules.__init__, locals())
    super().__init__(1, n_out, mode=mode)
    if not causal and mode == 'predict':
      raise ValueError(f"a non-causal {type(self).__name__} cannot run in 'predict' mode")
    self.n_modules = n_modules
    self.d_out_per_module = d_out_per_module
    self.kernel_sizes = tuple(kernel_sizes)
    self.length_kernel_size = length_kernel_size
    self.causal = causal

  def _modules_shape(self, shape):
    """[batch, length, d] -> [batch, length, n_modules, d / n_modules]."""
    if len(shape) != 3 or shape[-1] % self.n_modules:
      raise ValueError(f'input must be [batch, length, d] with d divisible by n_modules='
                       f'{self.n_modules}, got shape {tuple(shape)}')
    return tuple(shape[:2]) + (self.n_modules, shape[-1] // self.n_modules)

  def _init_kernel(self, kernel_size, d_in_per_module, rng) -> dict:
    fan = self.length_kernel_size * kernel_size
    kernel = _glorot(rng, (fan * d_in_per_module, self.d_out_per_module), jnp.float32)
    return {'kernel': kernel.reshape(self.length_kernel_size, kernel_size, d_in_per_module,
                                     self.d_out_per_module),
            'b': jnp.zeros((self.d_out_per_module,), jnp.float32)}

  def _initial_state(self, input_signature):
    batch, _, _, d_in_per_module = self._modules_shape(input_signature.shape)
    if self.mode != 'predict':
      return {}
    return Carry(jnp.zeros((batch, self.length_kernel_size - 1, self.n_modules,
                            d_in_per_module), jnp.float32))

  def _next_history(self, viewed, position) -> Carry:
    """The carried inputs after a call: viewed [b, K - 1 + l, S, c] (history, then this
    call's inputs) sliced to the K - 1 positions ending at the last valid one (a
    padded prefill has more)."""
    return Carry(jax.lax.dynamic_slice_in_dim(viewed, position.valid,
                                              self.length_kernel_size - 1, axis=1))

  def _stacked_kernel(self, parts):
    """The kernels padded to the widest along modules, stacked along outputs; and the biases."""
    widest = max(self.kernel_sizes)
    kernels = []
    for part, size in zip(parts, self.kernel_sizes):
      before = (widest - 1) // 2 - (size - 1) // 2      # keeps each kernel's 'SAME' alignment
      kernels.append(jnp.pad(as_float(part['kernel']), ((0, 0), (before, widest - size - before),
                                                          (0, 0), (0, 0))))
    if len(kernels) == 1:
      return kernels[0], parts[0]['b']
    return (jnp.concatenate(kernels, axis=-1),
            jnp.concatenate([part['b'] for part in parts], axis=-1))

  def _patches_times_kernels(self, viewed, parts, length):
    """The convolutions as matrix products of patches (decoding: a few positions).

    For a token or two, XLA's convolution costs far more than the product of
    the [length, modules, window * channels] patches with the flattened
    kernel, which computes the same sums. Each window size's patches are cut
    once, straight from the input (no slicing of wider patches: on XLA:CPU
    each extra slice is one more operation), and multiply the kernels of
    that size.
    """
    k_len, n_modules = self.length_kernel_size, viewed.shape[2]
    patches = {}
    for size in sorted(set(self.kernel_sizes)):
      before = (size - 1) // 2                              # 'SAME' along modules
      padded = jnp.pad(viewed, ((0, 0), (0, 0), (before, size - 1 - before), (0, 0)))
      cut = jnp.stack([jnp.stack([padded[:, i:i + length, j:j + n_modules]
                                  for j in range(size)], axis=3)
                       for i in range(k_len)], axis=3)      # [b, l, S, k_len, size, c]
      patches[size] = cut.reshape(cut.shape[:3] + (-1,))
    outputs = []
    for part, size in zip(parts, self.kernel_sizes):
      window = patches[size]
      kernel = as_float(part['kernel'], window.dtype).reshape(window.shape[-1], -1)
      outputs.append(jnp.dot(window, kernel) + part['b'].astype(window.dtype))
    return outputs

  def _convolve(self, parts, state, x, position):
    """(outputs, one [batch, length, n_modules * d_out_per_module] per kernel; new state)."""
    viewed = x.reshape(self._modules_shape(x.shape))                     # [b, l, S, c_in]
    k_len = self.length_kernel_size
    if self.mode == 'predict':
      viewed = jnp.concatenate([state.value, viewed], axis=1)
      state = self._next_history(viewed, position)
      length_padding = (0, 0)
    elif self.causal:
      length_padding = (k_len - 1, 0)
    else:
      length_padding = ((k_len - 1) // 2, k_len // 2)
    if self.mode == 'predict' and x.shape[1] <= XLA_POSITIONS['patches']:
      outputs = self._patches_times_kernels(viewed, parts, x.shape[1])
    else:
      kernel, bias = self._stacked_kernel(parts)
      widest = kernel.shape[1]
      y = jax.lax.conv_general_dilated(
          viewed, kernel.astype(viewed.dtype), window_strides=(1, 1),
          padding=(length_padding, ((widest - 1) // 2, widest // 2)),
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      outputs = jnp.split(y + bias.astype(y.dtype), len(parts), axis=-1)
    return [out.reshape(out.shape[:2] + (-1,)) for out in outputs], state


class LocallyConvDense(_ConvolutionOverModules):
  """A convolution over (length, module), weights shared across modules.

  [batch, length, d_in] is viewed as [batch, length, n_modules, d_in / n_modules]
  and convolved with a kernel of (length_kernel_size, kernel_size) to
  d_out_per_module channels; the output is [batch, length, n_modules *
  d_out_per_module]. Along length the convolution is causal (left padding;
  in 'predict' mode the last length_kernel_size - 1 inputs live in a `Carry`),
  unless causal=False (centered). Along modules it is centered ('SAME').

  Weights: `kernel` [length_kernel_size, kernel_size, d_in / S, d_out_per_module],
  `b` [d_out_per_module].
  """

  def __init__(self, n_modules: int, d_out_per_module: int, kernel_size: int = 1,
               length_kernel_size: int = 1, causal: bool = True, mode: str = 'train'):
    arguments.check_layer_arguments(self, LocallyConvDense.__init__, locals())
    super().__init__(n_modules, d_out_per_module, (kernel_size,), length_kernel_size, causal,
                     mode, n_out=1)
    self.kernel_size = kernel_size

  def init_weights_and_state(self, input_signature, rng):
    d_in_per_module = self._modules_shape(input_signature.shape)[-1]
    return (self._init_kernel(self.kernel_size, d_in_per_module, rng),
            self._initial_state(input_signature))

  def forward(self, weights, state, x, rng, position):
    outputs, state = self._convolve([weights], state, x, position)
    return outputs[0], state


class LocallyConvQKV(_ConvolutionOverModules):
  """Sparse QKV's convolutions: x -> (q, k, v), three LocallyConvDense of x run as one.

  x: [batch, length, d_in]; q, k, v: [batch, length, n_modules *
  d_out_per_module]. Equal to Branch(LocallyConvDense(kernel_sizes[0]), ...,
  LocallyConvDense(kernel_sizes[2])) with the same weights (a tuple of their
  three dicts, each `kernel` [length_kernel_size, kernel_sizes[i], d_in / S,
  d_out_per_module] and `b`), but one product computes all three and, in
  'predict' mode, one history of the input serves all three (decoding runs
  one operation where the Branch ran three).
  """

  def __init__(self, n_modules: int, d_out_per_module: int, kernel_sizes=(3, 3, 1),
               length_kernel_size: int = 3, causal: bool = True, mode: str = 'train'):
    arguments.check_layer_arguments(self, LocallyConvQKV.__init__, locals())
    super().__init__(n_modules, d_out_per_module, kernel_sizes, length_kernel_size, causal,
                     mode, n_out=len(tuple(kernel_sizes)))

  def init_weights_and_state(self, input_signature, rng):
    d_in_per_module = self._modules_shape(input_signature.shape)[-1]
    # Kernel i from fold_in(rng, i): the weights a Branch of LocallyConvDense would make.
    weights = tuple(self._init_kernel(size, d_in_per_module, jax.random.fold_in(rng, i))
                    for i, size in enumerate(self.kernel_sizes))
    return weights, self._initial_state(input_signature)

  def forward(self, weights, state, x, rng, position):
    if not isinstance(weights, tuple) or len(weights) != len(self.kernel_sizes):
      raise ValueError(f'weights must be a tuple of {len(self.kernel_sizes)} kernel dicts')
    outputs, state = self._convolve(list(weights), state, x, position)
    return tuple(outputs), state


class SparseQKV(_ConvolutionOverModules):
  """Sparse QKV as one layer: x -> (q, k, v), a MultiplicativeDense then three convolutions.

  x: [batch, length, d_in]; q, k, v: [batch, length, n_modules * d_out_per_module].
  m = MultiplicativeDense(n_modules, d_model)(x) ([batch, length, d_model]), viewed as
  [batch, length, n_modules, d_model / n_modules] and convolved over (length,
  module) as `LocallyConvQKV` does (kernel_sizes (3, 3, 1) over modules,
  length_kernel_size along length, causal unless causal=False; in 'predict'
  mode the last length_kernel_size - 1 inputs of the convolutions live in one
  `Carry`).

  Weights: `multiplicative` (MultiplicativeDense's `modules` [d_in, S], `units`
  [d_in, d_model / S], `b` [d_model]), and `query`, `key`, `value`, each a
  convolution's `kernel` [length_kernel_size, kernel_size, d_model / S,
  d_out_per_module] and `b` [d_out_per_module].

  In 'predict' mode the kernel layer runs the multiplicative layer and the
  three convolutions as one C++ kernel call (`kernels.sparse_qkv`) where its
  policy allows: decoding a few positions from float32, bfloat16 or int8
  weights (XLA runs four small products and about six operations cutting
  patches), and a whole prompt's prefill from int8 weights where the CPU has
  VNNI (integer products: activations rounded to 15-bit integers). Otherwise,
  and as the kernel's reference, the plain computation below (the same numbers
  up to that rounding). `decode_kernel=False` keeps the plain computation.
  """

  _PARTS = ('query', 'key', 'value')

  def __init__(self, n_modules: int, d_model: int, d_out_per_module: int,
               kernel_sizes=(3, 3, 1), length_kernel_size: int = 3, causal: bool = True,
               mode: str = 'train', decode_kernel: bool = True):
    arguments.check_layer_arguments(self, SparseQKV.__init__, locals())
    if len(tuple(kernel_sizes)) != 3:
      raise ValueError(f'SparseQKV needs three kernel sizes (query, key, value), '
                       f'got {tuple(kernel_sizes)}')
    super().__init__(n_modules, d_out_per_module, kernel_sizes, length_kernel_size, causal,
                     mode, n_out=3)
    self.d_model = d_model
    self.decode_kernel = decode_kernel
    self.multiplicative = MultiplicativeDense(n_modules, d_model, mode=mode)

  def _multiplied_signature(self, input_signature):
    return jax.ShapeDtypeStruct(tuple(input_signature.shape[:-1]) + (self.d_model,),
                                input_signature.dtype)

  def init_weights_and_state(self, input_signature, rng):
    if len(input_signature.shape) != 3:
      raise ValueError(f'input must be [batch, length, d], got shape '
                       f'{tuple(input_signature.shape)}')
    multiplied = self._multiplied_signature(input_signature)
    d_in_per_module = self._modules_shape(multiplied.shape)[-1]
    multiplicative, _ = self.multiplicative.init_weights_and_state(input_signature,
                                                                   jax.random.fold_in(rng, 0))
    weights = {'multiplicative': multiplicative}
    for i, (name, size) in enumerate(zip(self._PARTS, self.kernel_sizes)):
      weights[name] = self._init_kernel(size, d_in_per_module, jax.random.fold_in(rng, i + 1))
    return weights, self._initial_state(multiplied)

  def _multiply(self, weights, x):
    """MultiplicativeDense: [b, l, d_in] -> [b, l, d_model]."""
    return self.multiplicative.forward(weights['multiplicative'], {}, x, None)[0]

  def forward(self, weights, state, x, rng, position):
    d_in = weights['multiplicative']['modules'].shape[0]
    if x.ndim != 3 or x.shape[-1] != d_in:
      raise ValueError(f'input must be [batch, length, {d_in}], got shape {tuple(x.shape)}')
    parts = [weights[name] for name in self._PARTS]
    if self.mode != 'predict':
      outputs, state = self._convolve(parts, state, self._multiply(weights, x), position)
      return tuple(outputs), state
    history = state.value                                          # [b, K - 1, S, C]
    modules_shape = self._modules_shape(x.shape[:2] + (self.d_model,))

    def reference(x, history):                                     # -> q, k, v, m
      m = self._multiply(weights, x)
      # (patches times kernels for a few positions, XLA's convolution for a prefill)
      outputs, _ = self._convolve(parts, Carry(history), m, position)
      return tuple(outputs) + (m,)

    if self.decode_kernel:
      record = kernels.SparseQKVWeights(
          kernels.MultiplicativeWeights(**weights['multiplicative']),
          tuple(kernels.ConvolutionWeights(**part) for part in parts))
      q, k, v, m = kernels.sparse_qkv(x, history, record, mode=self.mode, reference=reference)
    else:
      q, k, v, m = reference(x, history)
    viewed = jnp.concatenate([history, m.reshape(modules_shape).astype(history.dtype)], axis=1)
    return (q, k, v), self._next_history(viewed, position)


def _output_layer(output_layer_type: str, d_model: int, sparsity: int):
  if output_layer_type == 'none':
    return []
  if output_layer_type == 'mult':
    return [MultiplicativeDense(sparsity, d_model)]
  if output_layer_type == 'dense':
    return [core.Dense(d_model)]
  raise ValueError(f"output_layer_type must be 'none', 'mult' or 'dense', "
                   f'got {output_layer_type!r}')


def _check_sparsity(d_model: int, n_heads: int, sparsity: int):
  if d_model % sparsity or d_model % n_heads:
    raise ValueError(f'd_model {d_model} must be divisible by sparsity {sparsity} '
                     f'and by n_heads {n_heads}')


def MultiplicativeConvCausalAttention(  # pylint: disable=invalid-name
    d_model: int, n_heads: int = 1, sparsity: int = 16, length_kernel_size: int = 3,
    dropout: float = 0.0, max_len: int = 2048, output_layer_type: str = 'none',
    mode: str = 'train') -> Layer:
  """Causal self-attention with sparse QKV: [batch, length, d_model] -> same.

  `SparseQKV`: one MultiplicativeDense(sparsity, d_model) shared by Q, K and
  V, then convolutions with kernel 3 over modules for Q and K, 1 for V (one
  product, one decoding history), and `length_kernel_size` along length
  (causal); causal attention with the predict-mode cache; an optional output
  layer ('none' | 'mult' | 'dense'). Decoding on CPU, the multiplicative layer
  and the convolutions run as one fused kernel from float32, bfloat16 or int8
  weights (int8 prefills too, where the CPU has VNNI).
  """
  _check_sparsity(d_model, n_heads, sparsity)
  d_module = d_model // sparsity

  return cb.Serial(
      SparseQKV(sparsity, d_model, d_module, (3, 3, 1), length_kernel_size,
                mode=mode),                                        # x -> q k v
      attention.DotProductCausalAttention(n_heads, dropout, max_len, mode=mode),  # -> y
      _output_layer(output_layer_type, d_model, sparsity),
      name='MultiplicativeConvCausalAttention')


def MultiplicativeConvAttention(  # pylint: disable=invalid-name
    d_model: int, n_heads: int = 1, sparsity: int = 16, length_kernel_size: int = 3,
    dropout: float = 0.0, output_layer_type: str = 'none', mode: str = 'train') -> Layer:
  """Padding-masked self-attention with sparse QKV: (x, mask) -> (y, mask).

  As MultiplicativeConvCausalAttention, with a centered (not causal)
  convolution along length; for encoders.
  """
  _check_sparsity(d_model, n_heads, sparsity)
  d_module = d_model // sparsity

  return cb.Serial(
      SparseQKV(sparsity, d_model, d_module, (3, 3, 1), length_kernel_size, causal=False,
                mode=mode),                                        # x mask -> q k v mask
      attention.DotProductAttention(n_heads, dropout, mode=mode),  # -> y mask
      _output_layer(output_layer_type, d_model, sparsity),
      name='MultiplicativeConvAttention')

