"""Terraformer: reversible, sparse, with long-input attention and an SRU beside the FF.

Both stacks are reversible (RevNet): a block is a ReversibleHalfResidual per
attention layer and one for the feed-forward, each followed by a swap, on
two copies of the activations, averaged at the end. The encoder-decoder
joins the two by concatenation: the encoder output (padding removed), then
the shifted decoder embeddings, one causal decoder over both, and the
encoder part dropped before the vocabulary projection.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from sparse_trax import arguments
from sparse_trax import layers as tl
from sparse_trax.models import blocks
from sparse_trax.models import scaling

DECODER_ATTENTION_TYPES = ('dense', 'multconv', 'lsh', 'chunked')
ENCODER_ATTENTION_TYPES = ('dense', 'multconv', 'lsh')


def _decoder_attention(attention_type, d_model, n_heads, attention_sparsity, chunk_len,
                       n_hashes, dropout, max_len, mode):
  if attention_type in ('dense', 'multconv'):
    return scaling.causal_attention_factory(d_model, n_heads, attention_type,
                                            attention_sparsity, dropout, max_len)(mode)
  if attention_type == 'lsh':
    return tl.LSHSelfAttention(n_heads, chunk_len=chunk_len, n_hashes=n_hashes,
                               dropout=dropout, max_len=max_len, mode=mode)
  if attention_type == 'chunked':
    return tl.ChunkedCausalAttention(n_heads, chunk_len=chunk_len, dropout=dropout,
                                     max_len=max_len, mode=mode)
  raise ValueError(f'decoder_attention_type must be one of {DECODER_ATTENTION_TYPES}, '
                   f'got {attention_type!r}')


def _encoder_attention(attention_type, d_model, n_heads, attention_sparsity, chunk_len,
                       n_hashes, dropout, mode):
  """(x, mask) -> (y, mask), or x -> y for LSH (which does not read the mask)."""
  if attention_type == 'dense':
    return tl.Attention(d_model, n_heads, dropout, mode=mode)
  if attention_type == 'multconv':
    return tl.MultiplicativeConvAttention(d_model, n_heads, sparsity=attention_sparsity,
                                          dropout=dropout, mode=mode)
  if attention_type == 'lsh':
    return tl.LSHSelfAttention(n_heads, chunk_len=chunk_len, n_hashes=n_hashes, causal=False,
                               dropout=dropout, mode=mode)
  raise ValueError(f'encoder_attention_type must be one of {ENCODER_ATTENTION_TYPES}, '
                   f'got {attention_type!r}')


def FeedForwardWithSRU(d_model: int, d_ff: int, ff_sparsity: int, ff_use_sru: int,  # pylint: disable=invalid-name
                       dropout: float, mode: str, mask_before_activation: bool = False,
                       sru_highway_scale: float = 1.0, sru_candidate_bias: bool = False):
  """x -> FF(LayerNorm(x)) [+ Dense(d_model)(SRU(Dense(ff_use_sru)(LayerNorm(x))))].

  `mask_before_activation` is SparseFF's; `sru_highway_scale` and
  `sru_candidate_bias` are the SRU's `highway_scale` and `candidate_bias`.
  """
  feed_forward = tl.Serial(
      tl.LayerNorm(),
      scaling.feed_forward_factory(d_model, d_ff, ff_sparsity, '1inN', dropout,
                                   mask_before_activation)(mode),
      tl.Dropout(dropout, mode=mode))
  if not ff_use_sru:
    return feed_forward
  return tl.Serial(
      tl.Branch(feed_forward,                              # x -> ff sru
                tl.Serial(tl.LayerNorm(), tl.Dense(ff_use_sru),
                          tl.SRU(ff_use_sru, mode=mode, highway_scale=sru_highway_scale,
                                 candidate_bias=sru_candidate_bias),
                          tl.Dense(d_model))),
      tl.Add(),                                            # ff sru -> y
      name='FeedForwardWithSRU')


def _reversible_stack(n_layers, attentions, feed_forward, dropout, mode, reversible):
  """x [...] -> y: Dup, reversible blocks on (x1, x2 [, mask]), average of the two streams."""
  layers = []
  for _ in range(n_layers):
    for attention in attentions():
      layers += [tl.ReversibleHalfResidual(tl.LayerNorm(), attention,
                                           tl.Dropout(dropout, mode=mode)),
                 tl.ReversibleSwap()]
    layers += [tl.ReversibleHalfResidual(feed_forward()), tl.ReversibleSwap()]
  return tl.ReversibleSerial(*layers, memory_saving=reversible)


def _average():
  return tl.Fn('AverageStreams', lambda x1, x2: (x1 + x2) / 2.0)


def TerraformerLM(vocab_size: int, d_model: int = 512, d_ff: int = 2048, n_layers: int = 6,  # pylint: disable=invalid-name
                  n_heads: int = 8, max_len: int = 2048, attention_type: str = 'dense',
                  attention_sparsity: int = 16, attention_chunk_len: int = 128,
                  n_hashes: int = 2, ff_sparsity: int = 0, loss_sparsity: int = 0,
                  ff_use_sru: int = 0, n_attention_layers: int = 1, reversible: bool = True,
                  dropout: float = 0.1, positional_encoding: str = 'sinusoidal',
                  mode: str = 'train') -> tl.Layer:
  """Reversible decoder-only Terraformer: ids [batch, length] -> logits [batch, length, vocab].

  Args:
    attention_type: 'dense', 'multconv' (sparse QKV), 'lsh' or 'chunked'.
    attention_chunk_len, n_hashes: for 'lsh' and 'chunked'.
    ff_sparsity: 0 (dense FF) or N of SparseFF.
    loss_sparsity: 0 or the modules of a multiplicative vocabulary projection.
    ff_use_sru: 0, or the width of the SRU branch beside the FF (the paper: 32).
    n_attention_layers: attention layers per block.
    reversible: False keeps the same function with plain (memory-hungry) gradients.
    positional_encoding: 'sinusoidal' or 'fixed_base' (`tl.FixedBasePositionalEncoding`).
    Others: as TransformerLM.
  """
  arguments.check_model_arguments(TerraformerLM, locals())
  def attentions():
    return [_decoder_attention(attention_type, d_model, n_heads, attention_sparsity,
                               attention_chunk_len, n_hashes, dropout, max_len, mode)
            for _ in range(n_attention_layers)]
  return tl.Serial(
      tl.ShiftRight(mode=mode),                          # ids -> ids
      tl.Embedding(vocab_size, d_model),                 # ids -> x
      tl.Dropout(dropout, mode=mode),
      blocks.positional_encoding(positional_encoding, max_len, mode),
      tl.Dup(),                                          # x -> x x
      _reversible_stack(n_layers, attentions,
                        lambda: FeedForwardWithSRU(d_model, d_ff, ff_sparsity, ff_use_sru,
                                                   dropout, mode),
                        dropout, mode, reversible),      # x x -> y1 y2
      _average(),                                        # y1 y2 -> y
      tl.LayerNorm(),
      scaling.logits_layer(vocab_size, loss_sparsity, mode),   # y -> logits
      name='TerraformerLM')


class ConcatenationDecoder(tl.Layer):
  """Runs a decoder over [encoder output, decoder embeddings] and keeps the decoder part.

  (y [batch, length_dec, d], encoded [batch, length_enc, d], mask
  [batch, length_enc]) -> [batch, length_dec, d]. Each row's sequence is its
  unpadded encoder output followed by its decoder embeddings (padding moved
  to the end); the decoder (a causal [batch, length, d] -> same layer) runs
  over it and the outputs at the decoder positions are returned.

  In 'predict' mode the first call runs the decoder over the encoder output
  to fill its caches (the source must then be unpadded: all its tokens are
  taken; a `RunOnce` record notes that it ran), and every call runs it over
  the new decoder positions, which sit after the source: the decoder's
  position is the model's decode position plus the source length.
  """

  takes_position = True
  decode_stream = 0

  def __init__(self, decoder: tl.Layer, mode: str = 'train'):
    super().__init__(3, 1, mode=mode, sublayers=(decoder,))

  def decode_capacity(self, input_length: int = 0):
    capacity = self.sublayers[0].decode_capacity(input_length)
    return None if capacity is None else capacity - input_length

  def init_with_signature(self, input_signature, rng):
    y, encoded, _ = input_signature
    total = jax.ShapeDtypeStruct((y.shape[0], encoded.shape[1] + y.shape[1], y.shape[2]),
                                 y.dtype)
    w, s, _ = self.init_sublayer(0, y if self.mode == 'predict' else total, rng)
    state = (s, tl.RunOnce.empty(())) if self.mode == 'predict' else (s,)
    return (w,), state, y

  def forward(self, weights, state, inputs, rng, position):
    y, encoded, mask = inputs
    if self.mode == 'predict':
      def prefill(decoder_state):
        return (), self.apply_sublayer(0, weights[0], decoder_state, encoded, rng,
                                       tl.state.Position.at(0, encoded.shape[1]))[1]
      _, decoder_state, record = tl.run_once(state[1], prefill, state[0])
      out, decoder_state = self.apply_sublayer(
          0, weights[0], decoder_state, y, rng,
          tl.state.Position(position.start + encoded.shape[1], position.valid))
      return out, (decoder_state, record)
    length_enc, length_dec = encoded.shape[1], y.shape[1]
    encoder_lengths = jnp.sum(mask, axis=1).astype(jnp.int32)[:, None]        # [b, 1]
    positions = jnp.arange(length_enc + length_dec)[None, :]                  # [1, L]
    from_encoder = jnp.take_along_axis(
        encoded, jnp.minimum(positions, length_enc - 1)[..., None], axis=1)
    decoder_index = jnp.clip(positions - encoder_lengths, 0, length_dec - 1)
    from_decoder = jnp.take_along_axis(y, decoder_index[..., None], axis=1)
    in_encoder = (positions < encoder_lengths)[..., None]
    in_decoder = (positions < encoder_lengths + length_dec)[..., None]
    sequence = jnp.where(in_encoder, from_encoder, jnp.where(in_decoder, from_decoder, 0.0))
    out, decoder_state = self.apply_sublayer(0, weights[0], state[0], sequence, rng, position)
    decoder_positions = encoder_lengths + jnp.arange(length_dec)[None, :]
    return jnp.take_along_axis(out, decoder_positions[..., None], axis=1), (decoder_state,)


def Terraformer(input_vocab_size: int, output_vocab_size: Optional[int] = None,  # pylint: disable=invalid-name
                d_model: int = 512, d_ff: int = 2048, n_encoder_layers: int = 6,
                n_decoder_layers: int = 6, n_heads: int = 8, max_len: int = 2048,
                encoder_attention_type: str = 'dense', decoder_attention_type: str = 'dense',
                attention_sparsity: int = 16, attention_chunk_len: int = 128,
                n_hashes: int = 2, ff_sparsity: int = 0, loss_sparsity: int = 0,
                ff_use_sru: int = 0, n_decoder_attention_layers: int = 2,
                reversible_encoder: bool = True, dropout: float = 0.1,
                positional_encoding: str = 'sinusoidal', encoder_output_dense: bool = False,
                ff_mask_before_activation: bool = False, sru_highway_scale: float = 1.0,
                sru_candidate_bias: bool = False, mode: str = 'train') -> tl.Layer:
  """Encoder-decoder Terraformer, joined by concatenation.

  Inputs: (source ids [batch, length_src], target ids [batch, length_tgt]),
  0 is padding. Output: logits [batch, length_tgt, output_vocab_size]. The
  decoder attends causally over [unpadded encoder output, shifted target
  embeddings] (so it needs max_len >= length_src + length_tgt). In
  'predict' mode the encoder runs on the first call only; pass the source
  unpadded.

  Args: as TerraformerLM, with encoder_attention_type ('dense' | 'multconv'
  | 'lsh'; LSH in the encoder does not read the padding mask),
  decoder_attention_type ('dense' | 'multconv' | 'lsh' | 'chunked'),
  n_decoder_attention_layers per decoder block, reversible_encoder, and
  what Trax's ConfigurableTerraformer has (`sparse_trax.compat.trax` sets
  them to convert its checkpoints):
    positional_encoding: 'sinusoidal' or 'fixed_base' (Trax's default).
    encoder_output_dense: a Dense(d_model) between the encoder's averaged
      streams and its LayerNorm.
    ff_mask_before_activation: SparseFF's mask placement (Trax: True).
    sru_highway_scale, sru_candidate_bias: the SRU's (Trax: sqrt(3), True).
  """
  arguments.check_model_arguments(Terraformer, locals())
  output_vocab_size = output_vocab_size or input_vocab_size
  encoder_mode = 'eval' if mode == 'predict' else mode

  def encoder_attentions():
    return [_encoder_attention(encoder_attention_type, d_model, n_heads, attention_sparsity,
                               attention_chunk_len, n_hashes, dropout, encoder_mode)]

  def decoder_attentions():
    return [_decoder_attention(decoder_attention_type, d_model, n_heads, attention_sparsity,
                               attention_chunk_len, n_hashes, dropout, max_len, mode)
            for _ in range(n_decoder_attention_layers)]

  def feed_forward(stack_mode):
    return lambda: FeedForwardWithSRU(d_model, d_ff, ff_sparsity, ff_use_sru, dropout,
                                      stack_mode, ff_mask_before_activation,
                                      sru_highway_scale, sru_candidate_bias)

  encoder = tl.Serial(
      blocks.EmbeddingAndMask(input_vocab_size, d_model, max_len, dropout, encoder_mode,
                              positions=positional_encoding),          # ids -> x mask
      tl.Select([0, 0, 1]),                                            # x mask -> x x mask
      _reversible_stack(n_encoder_layers, encoder_attentions, feed_forward(encoder_mode),
                        dropout, encoder_mode, reversible_encoder),    # -> y1 y2 mask
      _average(),                                                      # -> y mask
      [tl.Dense(d_model)] if encoder_output_dense else [],             # y mask -> y mask
      tl.Parallel(tl.LayerNorm(), None),                               # -> encoded mask
      name='TerraformerEncoder')
  decoder = tl.Serial(
      tl.Dup(),                                                        # x -> x x
      _reversible_stack(n_decoder_layers, decoder_attentions, feed_forward(mode), dropout,
                        mode, True),                                   # -> y1 y2
      _average(),                                                      # -> y
      name='TerraformerDecoder')
  return tl.Serial(
      blocks.EncodedSourceAndTargets(encoder, output_vocab_size, d_model, max_len, dropout,
                                     mode, positions=positional_encoding),
                                                         # src tgt -> y encoded mask
      ConcatenationDecoder(decoder, mode=mode),          # y encoded mask -> y
      tl.LayerNorm(),
      scaling.logits_layer(output_vocab_size, loss_sparsity, mode),   # y -> logits
      name='Terraformer')
