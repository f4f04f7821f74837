"""decode_cost: the bytes a decoded token reads, by layer and with caches."""

import jax
import jax.numpy as jnp

import sparse_trax.layers as tl
from sparse_trax import models
from sparse_trax.decoding import initial_state
from conftest import sig


def weights_of(layer, signature):
  return layer.init(signature, rng=jax.random.key(0))[0]


def test_dense_reads_everything_embedding_one_row():
  dense = tl.Dense(8)
  assert tl.decode_cost(dense, weights_of(dense, sig(1, 1, 4)))['weights'] == (4 * 8 + 8) * 4
  embedding = tl.Embedding(1000, 16)
  w = weights_of(embedding, sig(1, 1, dtype=jnp.int32))
  cost = tl.decode_cost(embedding, w)
  assert cost['weights'] == 16 * 4 and cost['all_weights'] == 1000 * 16 * 4


def test_sparse_ff_reads_one_row_per_block():
  d, d_ff, n = 16, 256, 32
  layer = tl.SparseFF(d_ff, n_elements_in_block=n)
  w = weights_of(layer, sig(1, 1, d))
  blocks, rank = d_ff // n, d_ff // n
  controller = d * rank + rank * d_ff + d_ff
  want = 4 * (controller + blocks * (2 * d + 1) + d)
  assert tl.decode_cost(layer, w)['weights'] == want
  dense_ff = 4 * (2 * d * d_ff + d_ff + d)
  assert want < 0.5 * dense_ff


def test_moe_reads_one_expert():
  d, d_ff, experts = 16, 256, 8
  layer = tl.BlockSparseFF(d_ff, n_experts=experts)
  w = weights_of(layer, sig(1, 1, d))
  assert tl.decode_cost(layer, w)['weights'] == 4 * (d * experts + experts +
                                                    (2 * d * d_ff + d_ff) // experts + d)


def test_model_costs_and_caches_grow_with_position():
  size = dict(vocab_size=64, d_model=32, d_ff=256, n_layers=2, n_heads=2, max_len=512)
  dense = models.ScalingTransformerLM(**size, mode='predict')
  sparse = models.ScalingTransformerLM(**size, ff_sparsity=32, attention_type='multconv',
                                       attention_sparsity=4, mode='predict')
  w_dense = weights_of(dense, sig(1, 1, dtype=jnp.int32))
  w_sparse = weights_of(sparse, sig(1, 1, dtype=jnp.int32))
  assert tl.decode_cost(sparse, w_sparse)['weights'] < 0.6 * tl.decode_cost(dense, w_dense)['weights']
  state = initial_state(dense, sig(1, 1, dtype=jnp.int32))
  per_block = 2 * 128 * 32 * 4     # keys and values of one 128-slot block, d 32
  at_0 = tl.decode_cost(dense, w_dense, state, position=0)
  at_200 = tl.decode_cost(dense, w_dense, state, position=200)
  small_state = 0     # the one decode position is not a cache
  assert at_0['cache'] == 2 * per_block + small_state
  assert at_200['cache'] == 2 * 2 * per_block + small_state
  assert at_200['total'] == at_200['weights'] + at_200['cache']
