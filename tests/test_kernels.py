"""The kernel layer: its policy, every kernel against its pure-JAX reference on every
storage, the references' tiles, and a prefill that never widens stored weights whole."""

import os
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparse_trax.layers as tl
from sparse_trax import decoding, kernels, models
from sparse_trax.kernels import policy as policy_lib
from sparse_trax.kernels import registry
from conftest import prefill_then_steps, sig

BUILT = pytest.mark.skipif(not kernels.available(), reason='the fused CPU kernels were not built')
STORAGES = ['float32', 'bfloat16', 'int8']


def stored(w, storage):
  """w in `storage` ('float32': as it is), through the library's own conversion."""
  return w if storage == 'float32' else tl.quantize_weights({'w': w}, storage)['w']


def exact(w):
  """The float64 values a stored weight stands for."""
  return np.asarray(tl.dequantize_weights({'w': w})['w'], np.float64)


def test_policy_table_decides_by_storage_positions_and_mode():
  policy = kernels.KernelPolicy(kernels_built=True)
  assert policy.runs_kernel('matvec', storage='int8', positions=5000, mode='eval')
  assert policy.runs_kernel('matvec', storage='bfloat16', positions=1, mode='train')
  assert not policy.runs_kernel('matvec', storage='float32', positions=1, mode='predict')
  assert policy.runs_kernel('vecmat', storage='float32', positions=64, mode='predict')
  assert not policy.runs_kernel('vecmat', storage='float32', positions=65, mode='predict')
  assert not policy.runs_kernel('vecmat', storage='float32', positions=1, mode='train')
  assert policy.runs_kernel('sparse_ff', storage='int8', positions=65, mode='predict')
  assert not policy.runs_kernel('sparse_ff', storage='float32', positions=1, mode='eval')
  assert not policy.runs_kernel('sparse_qkv', storage='bfloat16', positions=5, mode='predict')
  # int8 sparse QKV takes a whole prefill where its products are integer (VNNI)
  assert policy.runs_kernel('sparse_qkv', storage='int8', positions=64,
                            mode='predict') == registry.INTEGER_QKV
  assert policy.runs_kernel('sparse_qkv', storage='int8', positions=4, mode='predict')
  assert policy.runs_kernel('layer_norm', storage='float32', positions=2, mode='train')
  assert not kernels.KernelPolicy(kernels_built=False).runs_kernel(
      'matvec', storage='int8', positions=1, mode=None)
  assert not kernels.KernelPolicy(kernels_built=True, enabled=False).runs_kernel(
      'matvec', storage='int8', positions=1, mode=None)
  with pytest.raises(KeyError, match="no kernel policy for 'conv'"):
    policy.runs_kernel('conv', storage='int8', positions=1, mode=None)


@BUILT
@pytest.mark.parametrize('storage', ['bfloat16', 'int8'])
@pytest.mark.parametrize('positions, d_out, d_in', [(1, 7, 33), (3, 64, 512), (8, 130, 40),
                                                     (13, 61, 300), (2, 518, 521)])
def test_matvec_kernel_equals_its_reference(storage, positions, d_out, d_in):
  """Stored rows [d_out, d_in] times 1..13 positions: row groups with tails (7, 61, 130
  rows), odd widths (33, 300), a split over two threads (518 x 521: parts of 256 and
  262 rows)."""
  w = stored(jax.random.normal(jax.random.key(0), (d_out, d_in)), storage)
  x = jax.random.normal(jax.random.key(1), (1, positions, d_in))
  want = np.asarray(x, np.float64) @ exact(w).T
  got = jax.jit(kernels.matvec)(x, w)
  if storage == 'int8':
    # int8 rows meet each position's x rounded to 15-bit integers: the kernel equals that
    # product to float32 rounding, and the float one within s / 2 * sum|w| of a row.
    np.testing.assert_allclose(got, integer_activations(x) @ exact(w).T, rtol=1e-5, atol=1e-4)
    assert np.all(np.abs(np.asarray(got, np.float64) - want) <= integer_bound(x, w) + 1e-5)
  else:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(jax.jit(kernels.matvec_reference)(x, w), want, rtol=1e-5, atol=1e-4)
  assert 'sparse_trax_stored_matvec' in jax.jit(kernels.matvec).lower(x, w).as_text()


@BUILT
def test_kernels_called_from_several_threads_at_once_stay_correct():
  """Kernel calls from two Python threads at once, each splitting its rows over XLA's
  thread pool (parts claimed by whichever thread comes first): every result whole."""
  w = stored(jax.random.normal(jax.random.key(0), (520, 1030)), 'int8')
  xs = [jax.random.normal(jax.random.key(t + 1), (1, 1030)) for t in range(2)]
  matvec = jax.jit(lambda x, w: kernels.matvec(x, w, mode='predict'))
  want = [integer_activations(x) @ exact(w).T for x in xs]
  matvec(xs[0], w).block_until_ready()
  errors = []

  def run(t):
    for _ in range(40):
      got = np.asarray(matvec(xs[t], w))
      errors.append(float(np.abs(got - want[t]).max()))

  threads = [threading.Thread(target=run, args=(t,)) for t in range(2)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert len(errors) == 80 and max(errors) < 1e-3


@BUILT
@pytest.mark.parametrize('storage', STORAGES)
@pytest.mark.parametrize('positions, d_in, d_out', [(1, 33, 70), (3, 40, 150), (8, 16, 256),
                                                     (12, 300, 1248)])
def test_vecmat_kernel_equals_its_reference(storage, positions, d_in, d_out):
  """In-major weights [d_in, d_out] (scales per contracted row): groups of 8, 4, 2, 1
  rows; column tiles with single-column tails; blocks of 16 rows (64 for a group of four)
  with a tail (300 = 18 x 16 + 12 = 4 x 64 + 44)."""
  w = stored(jax.random.normal(jax.random.key(0), (d_in, d_out)), storage)
  a = jax.random.normal(jax.random.key(1), (positions, d_in))
  want = np.asarray(a, np.float64) @ exact(w)
  vecmat = jax.jit(lambda a, w: kernels.vecmat(a, w, mode='predict'))
  np.testing.assert_allclose(vecmat(a, w), want, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(jax.jit(kernels.vecmat_reference)(a, w), want, rtol=1e-5, atol=1e-4)
  assert 'sparse_trax_stored_vecmat' in vecmat.lower(a, w).as_text()


@pytest.mark.parametrize('storage', ['bfloat16', 'int8'])
@pytest.mark.parametrize('rows', [4096, 4099])       # whole tiles; a last tile that overlaps
def test_references_widen_stored_weights_one_tile_at_a_time(storage, rows):
  """The pure-JAX products (what runs off CPU, or without a compiler) equal the dense
  product and hold at most one tile of widened weights (bfloat16 on CPU: and one copy
  of its bits), never the float32 matrix. (jax 0.12's XLA also keeps the stored slice
  of the tile it widens: one tile in the stored dtype more.)"""
  d = 1024                                              # rows x d: 4M values = 4 tiles and more
  w = stored(jax.random.normal(jax.random.key(0), (rows, d)), storage)
  x = jax.random.normal(jax.random.key(1), (5, d))
  want = np.asarray(x, np.float64) @ exact(w).T
  matvec = jax.jit(kernels.matvec_reference)
  np.testing.assert_allclose(matvec(x, w), want, rtol=1e-4, atol=1e-3)
  a = jax.random.normal(jax.random.key(2), (5, rows))
  vecmat = jax.jit(kernels.vecmat_reference)
  np.testing.assert_allclose(vecmat(a, w), np.asarray(a, np.float64) @ exact(w),
                             rtol=1e-4, atol=1e-3)
  whole = rows * d * 4
  tile = policy_lib.TILE_VALUES * 4
  bits = rows * d * 2 if storage == 'bfloat16' else 0
  stored_tile = policy_lib.TILE_VALUES * np.dtype(storage).itemsize
  for product, args in ((matvec, (x, w)), (vecmat, (a, w))):
    temp = product.lower(*args).compile().memory_analysis().temp_size_in_bytes
    assert temp <= bits + tile + stored_tile + 256 * 1024 < whole, (temp, tile, whole)


def integer_activations(v):
  """v [..., width] as the kernels' int8 products read it (kernels/cc/simd.h): rounded to
  15-bit integers with one float32 scale per vector (largest / 16383), in float64."""
  v = np.asarray(v, np.float32)
  largest = np.abs(v).max(-1, keepdims=True)
  safe = np.where(largest > 0, largest, np.float32(1))
  q = np.round(v * (np.float32(16383) / safe))
  return np.where(largest > 0, q.astype(np.float64) * (safe / np.float32(16383)), 0.0)


def integer_bound(x, w):
  """How far an int8 matvec with integer activations may be from the float product of
  x [..., d_in] and stored rows w [d_out, d_in]: s / 2 * sum|w| per row, s = max|x| / 16383
  (each activation moves by at most s / 2). -> [..., d_out]."""
  scale = np.abs(np.asarray(x, np.float64)).max(-1, keepdims=True) / 16383
  return scale / 2 * np.abs(exact(w)).sum(-1)


def sparse_ff_integer_reference(w, x, n):
  """SparseFF's decoding on int8 weights as the kernel computes it, in float64: x and
  the controller's low-rank vector rounded by `integer_activations`. -> (y, units)."""
  c_in, c_out, w1, w2 = (exact(w[k]) for k in ('controller_in', 'controller_out', 'w1', 'w2'))
  b1, b2, bias = (np.asarray(w[k], np.float64) for k in ('b1', 'b2', 'controller_bias'))
  xq = integer_activations(x)
  low = np.asarray(xq @ c_in.T, np.float32)      # the kernel's low is float32
  logits = integer_activations(low) @ c_out.T + bias
  units = logits.reshape(logits.shape[:-1] + (-1, n)).argmax(-1)
  chosen = units + np.arange(units.shape[-1]) * n
  hidden = np.maximum(np.einsum('...d,...bd->...b', xq, w1[chosen]) + b1[chosen], 0.0)
  return np.einsum('...b,...bd->...d', hidden, w2[chosen]) + b2, units


@BUILT
@pytest.mark.parametrize('storage', STORAGES)
@pytest.mark.parametrize('shape, d_ff, n', [((1, 1, 24), 96, 8), ((2, 2, 33), 64, 4),
                                            ((1, 7, 40), 512, 16), ((1, 21, 24), 256, 16),
                                            ((1, 2, 64), 1360, 16), ((1, 3, 200), 512, 8),
                                            ((1, 6, 200), 2048, 16), ((1, 5, 64), 1360, 16),
                                            ((1, 2, 4100), 1360, 16), ((1, 1, 40), 96, 12),
                                            ((1, 3, 40), 2048, 32)])
def test_sparse_ff_kernel_equals_the_masked_dense_computation(storage, shape, d_ff, n):
  """The kernel on float32 / bfloat16 / int8 weights, 1..21 positions (a prefill,
  more positions than units per block; with VNNI, int8 rows meet four positions at a
  time, then the rest one by one), odd widths, a split over two threads with a tail in
  the controller rank (1360 / 16 = 85; at d 4100, int8 rows of c_in eight at a time,
  parts of 40 and 45 rows), blocks of 12 (int8: a group of eight, then four), blocks of
  32 over a rank of 64 (int8: sixteen rows at a time, three positions one by one),
  against the eval layer (the one-hot
  mask on the whole product) on the same weights. int8 rows meet activations rounded to
  15-bit integers: there the kernel equals that computation in float64, and the eval
  layer within the rounding's bound."""
  fused = tl.SparseFF(d_ff, n_elements_in_block=n, mode='predict')
  masked = tl.SparseFF(d_ff, n_elements_in_block=n, mode='eval')
  x = jax.random.normal(jax.random.key(1), shape)
  w, state = fused.init(x, rng=jax.random.key(0))
  w = dict(w, controller_bias=jax.random.normal(jax.random.key(2), (d_ff,)),
           b1=jax.random.normal(jax.random.key(3), (d_ff,)) * 0.1)
  if storage != 'float32':
    w = tl.quantize_weights(w, storage)
  kernel = jax.jit(lambda w, x: fused.forward_with_units(w, x, None))
  y, units = kernel(w, x)
  y_masked, units_masked = jax.jit(lambda w, x: masked.forward_with_units(w, x, None))(w, x)
  np.testing.assert_array_equal(units, units_masked)
  if storage == 'int8':
    y_integer, units_integer = sparse_ff_integer_reference(w, x, n)
    np.testing.assert_array_equal(units, units_integer)
    np.testing.assert_allclose(y, y_integer, rtol=1e-5, atol=1e-5)
    # |hidden error| <= s / 2 * sum|w1 row| (s: x's scale), times |w2 row|, summed.
    chosen = np.asarray(units) + np.arange(units.shape[-1]) * n
    w1, w2 = exact(w['w1']), exact(w['w2'])
    scale = np.abs(np.asarray(x, np.float64)).max(-1, keepdims=True) / 16383
    hidden_error = scale / 2 * np.abs(w1[chosen]).sum(-1)
    bound = np.einsum('...b,...bd->...d', hidden_error, np.abs(w2[chosen]))
    assert np.all(np.abs(np.asarray(y, np.float64) - np.asarray(y_masked)) <= bound + 1e-6)
  else:
    np.testing.assert_allclose(y, y_masked, rtol=1e-5, atol=1e-5)
  text = kernel.lower(w, x).as_text()
  assert 'sparse_trax_sparse_ff' in text and 'gather' not in text


@BUILT
@pytest.mark.parametrize('storage', ['float32', 'int8'])
def test_sparse_ff_kernel_gives_the_same_bits_on_every_call(storage):
  """Two threads claim chunks of blocks in whatever order they get to them; the sum
  over blocks must not follow that order (it did: the last bits of y moved between
  two calls of one compiled program, and in a 24-layer int8 model an argmax
  downstream flipped, moving a 64-token prefill's logits by 2e-2)."""
  fused = tl.SparseFF(2048, n_elements_in_block=16, mode='predict')   # 128 blocks, 2 parts
  x = jax.random.normal(jax.random.key(1), (1, 3, 256))
  w, _ = fused.init(x, rng=jax.random.key(0))
  if storage != 'float32':
    w = tl.quantize_weights(w, storage)
  kernel = jax.jit(lambda w, x: fused.forward_with_units(w, x, None)[0])
  first = np.asarray(kernel(w, x))
  for _ in range(100):
    np.testing.assert_array_equal(kernel(w, x), first)


@BUILT
@pytest.mark.parametrize('d_ff, n, d', [(2048, 16, 64), (6144, 64, 128)])
def test_sparse_ff_kernel_gives_a_position_the_same_bits_alone_or_in_a_prefill(d_ff, n, d):
  """int8 weights: five positions in one call (with VNNI the controller meets the first
  four as a tile, the fifth alone) give each position the bits a call of that position
  alone gives (there controller ranks of 128 and 96, an 800M-width layer's, take sixteen
  rows at a time), so a prompt's prefill chooses the units token-by-token decoding
  chooses."""
  fused = tl.SparseFF(d_ff, n_elements_in_block=n, mode='predict')
  x = jax.random.normal(jax.random.key(1), (1, 5, d))
  w, _ = fused.init(x, rng=jax.random.key(0))
  w = tl.quantize_weights(dict(w, controller_bias=jax.random.normal(jax.random.key(2), (d_ff,))),
                          'int8')
  kernel = jax.jit(lambda w, x: fused.forward_with_units(w, x, None))
  y_all, units_all = kernel(w, x)
  for t in range(5):
    y_one, units_one = kernel(w, x[:, t:t + 1])
    np.testing.assert_array_equal(units_one[:, 0], units_all[:, t])
    np.testing.assert_array_equal(y_one[:, 0], y_all[:, t])


ONE_THREAD_SPARSE_FF = textwrap.dedent('''
    import os, sys
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})   # before XLA sizes its pool
    import numpy as np
    sys.path.insert(0, os.path.dirname(sys.argv[1]))
    import test_kernels
    np.savez(sys.argv[2], **test_kernels.sparse_ff_outputs())
    print(len(os.sched_getaffinity(0)))
''')


def sparse_ff_outputs():
  """A 128-block SparseFF's kernel outputs on float32 and int8 weights (two parts
  where XLA's pool has two threads, one part where it has one)."""
  outputs = {}
  for storage in ('float32', 'int8'):
    fused = tl.SparseFF(2048, n_elements_in_block=16, mode='predict')
    x = jax.random.normal(jax.random.key(1), (1, 3, 256))
    w, _ = fused.init(x, rng=jax.random.key(0))
    if storage != 'float32':
      w = tl.quantize_weights(w, storage)
    outputs[storage] = np.asarray(jax.jit(lambda w, x: fused.forward_with_units(w, x, None)[0])(w, x))
  return outputs


@BUILT
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason='needs two CPUs')
def test_sparse_ff_kernel_gives_the_same_bits_on_one_thread_or_two(tmp_path):
  """The chunks of blocks follow the shapes, never the number of threads: a process
  held to one CPU (XLA's pool then has one thread, the kernel one part) gets the
  bits this one gets (with chunks sized by the thread count they were 4.5e-8 apart)."""
  out = tmp_path / 'one_thread.npz'
  finished = subprocess.run([sys.executable, '-c', ONE_THREAD_SPARSE_FF, __file__, str(out)],
                            capture_output=True, text=True, timeout=300)
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert finished.stdout.split()[-1] == '1'
  one_thread = np.load(out)
  for storage, y in sparse_ff_outputs().items():
    np.testing.assert_array_equal(one_thread[storage], y)


def sparse_qkv_integer_reference(w, history, x, m_kernel):
  """Sparse QKV's decoding on int8 weights as the kernel's integer products compute it.

  Each module's row x[i] D[i, s] (D's and E's row scales folded in) is formed in float32
  in the kernel's order and rounded by `integer_activations`; the patches are cut from
  the history and the kernel's own m (`m_kernel`), so that both round the same float32
  values (a one-ulp difference in m moves a rounding by a whole step). Products in
  float64. w: the layer's weights, history [b, K - 1, S, C], x [b, l, d].
  Returns m [b, l, S * C], q, k, v [b, l, S * O].
  """
  mult = w['multiplicative']
  modules, units = mult['modules'], mult['units']
  multiplier = np.asarray(modules.scale, np.float32) * np.asarray(units.scale, np.float32)
  scaled_x = np.asarray(x, np.float32) * multiplier                        # [b, l, d]
  rows = scaled_x[..., None, :] * np.asarray(modules.values, np.float32).T  # [b, l, S, d]
  e_raw = np.asarray(units.values, np.float64)                             # [d, C]
  n_modules, channels = rows.shape[-2], e_raw.shape[-1]
  m = integer_activations(rows) @ e_raw + np.asarray(mult['b'], np.float64).reshape(
      n_modules, channels)
  m_kernel = np.asarray(m_kernel, np.float32).reshape(m.shape)
  seq = np.concatenate([np.asarray(history, np.float32), m_kernel], axis=1)
  length = x.shape[1]
  outputs = [m.reshape(x.shape[:2] + (-1,))]
  for name in ('query', 'key', 'value'):
    kernel = w[name]['kernel']
    window, size, _, c_out = kernel.shape
    raw = np.asarray(kernel.values, np.float64).reshape(-1, c_out)
    before = (size - 1) // 2
    out = np.zeros(x.shape[:2] + (n_modules, c_out))
    for t in range(length):
      for s in range(n_modules):
        pieces = []
        for tau in range(window):
          for shift in range(size):
            source = s + shift - before
            pieces.append(seq[:, t + tau, source] if 0 <= source < n_modules else
                          np.zeros((x.shape[0], channels), np.float32))
        patch = np.concatenate(pieces, axis=-1)                    # [b, K * size * C]
        out[:, t, s] = (integer_activations(patch) @ raw * np.asarray(kernel.scale, np.float64)
                        + np.asarray(w[name]['b'], np.float64))
    outputs.append(out.reshape(x.shape[:2] + (-1,)))
  return outputs


@BUILT
@pytest.mark.skipif(not registry.INTEGER_QKV, reason='integer products need AVX-512 VNNI')
@pytest.mark.parametrize('d, s, batch, length, length_kernel, sizes', [
    (48, 4, 2, 1, 3, (3, 3, 1)), (64, 4, 1, 2, 3, (3, 3, 1)), (512, 8, 1, 1, 3, (3, 3, 1)),
    (96, 6, 1, 2, 2, (3, 3, 1)), (40, 4, 1, 1, 1, (3, 3, 1)), (45, 5, 1, 3, 1, (3, 3, 1)),
    (72, 8, 2, 2, 3, (3, 3, 1)), (64, 4, 2, 20, 3, (3, 3, 1)), (48, 6, 1, 5, 2, (5, 1, 3)),
    (2048, 8, 1, 1, 3, (3, 3, 1)), (80, 16, 1, 1, 3, (3, 3, 1)), (512, 16, 1, 20, 3, (3, 3, 1))])
def test_sparse_qkv_kernel_equals_its_integer_computation(d, s, batch, length, length_kernel,
                                                          sizes):
  """On int8 weights with VNNI, `kernels.sparse_qkv` equals its computation in float64
  (activations rounded to 15-bit integers per module row and per patch): odd channel
  counts (12, 16, 10: column tails), one part (512: weights under 1 MB) and two
  threads (2048: 1.9 MB of int8 weights), length kernels 3, 2 and 1, odd
  contracted lengths (45 and 9 x 3: a last row of weights without its pair), rows of
  activations in two groups of 16 (72: 2 x 2 positions x 8 modules), a prefill of 2 x 20
  positions (run 16 positions at a time: one chunk spans both batch rows), kernel sizes
  (5, 1, 3) over modules; 16 modules (one module a lane, a position a group of rows) with
  odd widths (80: patches of 45 and 15 values), and a prefill of 20 positions (two chunks)
  large enough to split its rows over two threads (512: 4M products)."""
  layer = tl.SparseQKV(s, d, d // s, sizes, length_kernel, mode='predict')
  w, state = layer.init(sig(batch, 1, d), rng=jax.random.key(0))
  w = tl.quantize_weights(jax.tree.map(
      lambda a: a + 0.1 * jax.random.normal(jax.random.key(a.size), a.shape), w), 'int8')
  record = kernels.SparseQKVWeights(
      kernels.MultiplicativeWeights(**w['multiplicative']),
      tuple(kernels.ConvolutionWeights(**w[name]) for name in ('query', 'key', 'value')))
  history = jax.random.normal(jax.random.key(5), state.layers.value.shape)
  x = jax.random.normal(jax.random.key(1), (batch, length, d))

  def zeros(x, history):              # (traced for other platforms; never the answer here)
    qkv = jnp.zeros(x.shape[:2] + (s * record.convolutions[0].kernel.shape[-1],))
    return qkv, qkv, qkv, jnp.zeros(x.shape[:2] + (d,))

  step = jax.jit(lambda x, history: kernels.sparse_qkv(x, history, record, mode='predict',
                                                      reference=zeros))
  assert 'sparse_trax_sparse_qkv' in step.lower(x, history).as_text()
  q, k, v, m = step(x, history)
  want = sparse_qkv_integer_reference(w, history, x, m)
  for got, expected in zip((m, q, k, v), want):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


ALL_SPARSE = dict(vocab_size=300, d_model=64, d_ff=256, n_layers=2, n_heads=4, max_len=32,
                  dropout=0.0, ff_sparsity=16, attention_type='multconv', attention_sparsity=4,
                  loss_sparsity=4)


@pytest.mark.parametrize('storage', ['bfloat16'])     # int8: every model, below
def test_prefill_of_stored_weights_equals_token_by_token_decoding(storage):
  """One call feeding 12 positions (the sparse FF kernel, XLA's sparse QKV) gives the logits
  that feeding them one by one gives, and those equal the eval pass on the same weights."""
  tokens = jax.random.randint(jax.random.key(1), (1, 12), 1, 300)
  evaluate = models.ScalingTransformerLM(**ALL_SPARSE, mode='eval')
  predict = models.ScalingTransformerLM(**ALL_SPARSE, mode='predict')
  weights, state = evaluate.init(tokens, rng=jax.random.key(0))
  low = tl.quantize_weights(weights, storage)
  full = np.asarray(jax.jit(evaluate.apply)(low, state, tokens)[0])
  at_once = prefill_then_steps(predict, low, tokens, 12)
  one_by_one = prefill_then_steps(predict, low, tokens, 1)
  np.testing.assert_allclose(at_once, one_by_one, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(at_once, full, rtol=1e-4, atol=1e-4)


PREFILL_CHECK = textwrap.dedent('''
    import jax, jax.numpy as jnp
    from sparse_trax import decoding, kernels, models
    from sparse_trax.kernels.policy import TILE_VALUES
    model = models.ScalingTransformerLM(32000, 512, 8192, 2, 8, max_len=64, dropout=0.0,
                                        ff_sparsity=64, attention_type='multconv',
                                        attention_sparsity=8, loss_sparsity=4, mode='predict')
    signature = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    prompt = jax.ShapeDtypeStruct((1, 32), jnp.int32)
    lengths = jax.ShapeDtypeStruct((1,), jnp.int32)
    temps = {}
    for storage in ('float32', 'int8'):
      weights = jax.eval_shape(lambda: model.init(
          signature, rng=jax.random.key(0),
          weight_dtype=None if storage == 'float32' else storage)[0])
      state = jax.eval_shape(lambda: decoding.initial_state(model, signature))
      compiled = decoding.prefill.lower(model, weights, state, prompt, lengths).compile()
      temps[storage] = compiled.memory_analysis().temp_size_in_bytes
    print(kernels.available(), temps['float32'], temps['int8'], TILE_VALUES * 4)
''')


@pytest.mark.parametrize('kernels_on', [True, False])
def test_compiled_int8_prefill_never_holds_a_widened_matrix(kernels_on):
  """The 32-token prefill of an all-sparse int8 model (d 512, d_ff 8192: W1 alone is
  16 MB in float32; vocab 32000) holds temporaries under 2x those of the same
  prefill with float32 weights (its activations) plus one tile, with the kernels
  and with every pure-JAX reference (SPARSE_TRAX_KERNELS=0, as without a compiler)."""
  environment = dict(os.environ, SPARSE_TRAX_KERNELS='1' if kernels_on else '0')
  out = subprocess.run([sys.executable, '-c', PREFILL_CHECK], env=environment, check=True,
                       capture_output=True, text=True, timeout=300).stdout.split()
  available, float32_temp, int8_temp, tile = out[0] == 'True', *map(int, out[1:])
  assert available == (kernels_on and kernels.POLICY.kernels_built)
  assert int8_temp < 2 * float32_temp + tile, (int8_temp, float32_temp, tile)
  assert int8_temp < 8192 * 512 * 4      # less than one widened W1


SMALL = dict(d_model=32, d_ff=64, n_heads=2, max_len=32, dropout=0.0)
INT8_MODELS = {
    'TransformerLM': lambda mode: models.TransformerLM(40, n_layers=2, mode=mode, **SMALL),
    'ScalingTransformerLM all-sparse': lambda mode: models.ScalingTransformerLM(
        40, n_layers=2, ff_sparsity=8, attention_type='multconv', attention_sparsity=4,
        loss_sparsity=4, mode=mode, **SMALL),
    'ScalingTransformerLM MoE': lambda mode: models.ScalingTransformerLM(
        40, n_layers=2, ff_sparsity=4, ff_sparsity_type='block', mode=mode, **SMALL),
    'TerraformerLM': lambda mode: models.TerraformerLM(
        40, n_layers=2, attention_type='multconv', attention_sparsity=4, ff_sparsity=8,
        ff_use_sru=8, loss_sparsity=4, attention_chunk_len=4, mode=mode, **SMALL),
    'Transformer': lambda mode: models.Transformer(
        30, 36, n_encoder_layers=1, n_decoder_layers=2, mode=mode, **SMALL),
    'ScalingTransformer': lambda mode: models.ScalingTransformer(
        30, 36, n_encoder_layers=1, n_decoder_layers=2, ff_sparsity=8,
        attention_type='multconv', attention_sparsity=4, mode=mode, **SMALL),
    'Terraformer': lambda mode: models.Terraformer(
        30, 36, n_encoder_layers=1, n_decoder_layers=2, encoder_attention_type='multconv',
        decoder_attention_type='multconv', attention_sparsity=4, ff_sparsity=8,
        ff_use_sru=8, loss_sparsity=4, mode=mode, **SMALL),
}


@pytest.mark.parametrize('name', sorted(INT8_MODELS))
def test_every_model_on_int8_weights_decodes_as_it_evaluates(name):
  """With int8 weights, a 3-position prefill and then token-by-token decoding give the
  eval pass's logits on the same weights (the kernels and XLA's tiles read the same
  values)."""
  build = INT8_MODELS[name]
  evaluate, predict = build('eval'), build('predict')
  target = jax.random.randint(jax.random.key(2), (2, 7), 1, 30)
  source = jax.random.randint(jax.random.key(1), (2, 6), 1, 30) if 'LM' not in name else None
  inputs = target if source is None else (source, target)
  weights, state = evaluate.init(inputs, rng=jax.random.key(0))
  low = tl.quantize_weights(weights, 'int8')
  full = np.asarray(jax.jit(evaluate.apply)(low, state, inputs)[0])   # one compile, not per op
  # (sparse QKV's kernel rounds its activations to 15-bit integers on int8 weights, in the
  # prefill too where VNNI runs it: 2^-15 of a vector's largest per unit of weight, which
  # moved one Terraformer logit of 0.03 by 2.1e-4 beside XLA's float32 products)
  tolerance = 4e-4 if registry.INTEGER_QKV else 2e-4
  np.testing.assert_allclose(prefill_then_steps(predict, low, target, 3, inputs=source), full,
                             rtol=tolerance, atol=tolerance)


def test_the_level_asked_for_is_the_one_loaded():
  """The level SPARSE_TRAX_KERNEL_ISA forces (the per-level runs below), else the best one
  built that this CPU runs, is the one loaded and registered."""
  forced = os.environ.get(registry.FORCE_VARIABLE, '').strip()
  expected = forced or registry.choose_isa(registry.built_isas(), registry.cpu_flags(), {})
  assert registry.ISA == expected
  assert registry.BUILT == (expected is not None)


# One case of each kernel family per x86-64 level (the whole file runs at the best level):
# odd shapes with tails, every storage, and a whole all-sparse model decoding; first,
# that the level asked for is the one loaded.
LEVEL_CASES = [
    'test_the_level_asked_for_is_the_one_loaded',
    'test_matvec_kernel_equals_its_reference[13-61-300-int8]',
    'test_vecmat_kernel_equals_its_reference[12-300-1248-float32]',
    'test_sparse_ff_kernel_equals_the_masked_dense_computation[shape4-1360-16-int8]',
    'test_sparse_ff_kernel_equals_the_masked_dense_computation[shape3-256-16-bfloat16]',
    'test_every_model_on_int8_weights_decodes_as_it_evaluates[ScalingTransformerLM all-sparse]',
]


@pytest.mark.slow
@pytest.mark.parametrize('isa', registry.ISAS)
def test_each_kernel_level_this_cpu_runs_equals_the_references(isa):
  """SPARSE_TRAX_KERNEL_ISA forces a level: each one built here and runnable on this CPU
  passes the kernel-vs-reference cases (in its own process: one level per process)."""
  if isa not in registry.built_isas():
    pytest.skip(f'the {isa} kernels were not built here')
  lacking = registry.NEEDS[isa] - registry.cpu_flags()
  if lacking:
    pytest.skip(f'this CPU lacks {sorted(lacking)}')
  if isa == registry.ISA:
    pytest.skip(f'{isa} is the level this process loaded: every test of this file checks it')
  env = dict(os.environ, SPARSE_TRAX_KERNEL_ISA=isa, JAX_PLATFORMS='cpu')
  here = os.path.dirname(os.path.abspath(__file__))
  finished = subprocess.run(
      [sys.executable, '-m', 'pytest', '-q', '-n', '0', '-p', 'no:cacheprovider'] +
      [f'{here}/test_kernels.py::{case}' for case in LEVEL_CASES],
      env=env, capture_output=True, text=True, cwd=os.path.dirname(here), timeout=600)
  assert finished.returncode == 0, finished.stdout[-3000:]
  assert f'{len(LEVEL_CASES)} passed' in finished.stdout


def test_forcing_a_level_is_checked():
  flags = frozenset({'avx2', 'fma', 'bmi1', 'bmi2', 'f16c', 'movbe'})
  built = ('avx512', 'avx2', 'baseline')
  assert registry.choose_isa(built, flags, {}) == 'avx2'          # the best this CPU runs
  assert registry.choose_isa(built, frozenset(), {}) == 'baseline'
  assert registry.choose_isa((), flags, {}) is None
  assert registry.choose_isa(built, flags, {'SPARSE_TRAX_KERNEL_ISA': 'baseline'}) == 'baseline'
  with pytest.raises(ValueError, match=r"SPARSE_TRAX_KERNEL_ISA='avx512': this CPU lacks "
                                       r'avx512bw, avx512cd'):
    registry.choose_isa(built, flags, {'SPARSE_TRAX_KERNEL_ISA': 'avx512'})
  with pytest.raises(ValueError, match=r"'sse9': choose one of"):
    registry.choose_isa(built, flags, {'SPARSE_TRAX_KERNEL_ISA': 'sse9'})
  with pytest.raises(ValueError, match='its kernels were not built here'):
    registry.choose_isa(('baseline',), flags, {'SPARSE_TRAX_KERNEL_ISA': 'avx2'})
