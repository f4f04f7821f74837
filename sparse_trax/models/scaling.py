"""Scaling Transformer: the dense Transformer with sparse FF, sparse QKV and sparse loss.

ff_sparsity=0, attention_type='dense', loss_sparsity=0 builds exactly the
dense baseline (the same layers and weights as TransformerLM / Transformer).
"""

from typing import Optional

from sparse_trax import arguments
from sparse_trax import layers as tl
from sparse_trax.models import blocks

FF_SPARSITY_TYPES = ('1inN', 'block')
ATTENTION_TYPES = ('dense', 'multconv')


def feed_forward_factory(d_model: int, d_ff: int, ff_sparsity: int, ff_sparsity_type: str,
                         dropout: float, mask_before_activation: bool = False):
  """mode -> FF layer: dense (ff_sparsity 0), SparseFF ('1inN') or MoE ('block')."""
  if ff_sparsity_type not in FF_SPARSITY_TYPES:
    raise ValueError(f'ff_sparsity_type must be one of {FF_SPARSITY_TYPES}, '
                     f'got {ff_sparsity_type!r}')
  if not ff_sparsity:
    return lambda mode: blocks.FeedForward(d_model, d_ff, dropout, mode)
  if ff_sparsity_type == '1inN':
    return lambda mode: tl.SparseFF(d_ff, n_elements_in_block=ff_sparsity, dropout=dropout,
                                    mode=mode, mask_before_activation=mask_before_activation)
  return lambda mode: tl.BlockSparseFF(d_ff, n_experts=ff_sparsity, dropout=dropout, mode=mode)


def causal_attention_factory(d_model: int, n_heads: int, attention_type: str,
                             attention_sparsity: int, dropout: float, max_len: int,
                             qkv_bias: bool = False):
  """mode -> causal self-attention: dense (with Q, K, V biases if `qkv_bias`) or
  multiplicative + convolution ('multconv')."""
  if attention_type not in ATTENTION_TYPES:
    raise ValueError(f'attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}')
  if attention_type == 'dense':
    return lambda mode: tl.CausalAttention(d_model, n_heads, dropout, max_len, mode=mode,
                                           qkv_bias=qkv_bias)
  return lambda mode: tl.MultiplicativeConvCausalAttention(
      d_model, n_heads, sparsity=attention_sparsity, dropout=dropout, max_len=max_len,
      mode=mode)


def logits_layer(vocab_size: int, loss_sparsity: int, mode: Optional[str] = None) -> tl.Layer:
  """The vocabulary projection: Dense, or MultiplicativeDense(loss_sparsity, vocab_size)."""
  if not loss_sparsity:
    return tl.Dense(vocab_size)
  return tl.MultiplicativeDense(loss_sparsity, vocab_size, mode=mode)


def ScalingTransformerLM(vocab_size: int, d_model: int = 512, d_ff: int = 2048,  # pylint: disable=invalid-name
                         n_layers: int = 6, n_heads: int = 8, max_len: int = 2048,
                         dropout: float = 0.1, ff_sparsity: int = 0,
                         ff_sparsity_type: str = '1inN', attention_type: str = 'dense',
                         attention_sparsity: int = 16, loss_sparsity: int = 0,
                         mode: str = 'train', qkv_bias: bool = False,
                         trained_positions: bool = False,
                         ff_mask_before_activation: bool = False) -> tl.Layer:
  """Decoder-only Scaling Transformer: ids [batch, length] -> logits [batch, length, vocab].

  Args:
    vocab_size, d_model, d_ff, n_layers, n_heads, max_len, dropout, mode: as TransformerLM.
    ff_sparsity: 0 for a dense FF; else N, the units per block ('1inN'), or
      the number of experts ('block').
    ff_sparsity_type: '1inN' (SparseFF) or 'block' (mixture of experts).
    attention_type: 'dense' or 'multconv' (sparse QKV).
    attention_sparsity: S, the modules of the multiplicative layer.
    loss_sparsity: 0 for a dense vocabulary projection; else the modules
      of a multiplicative one (the sparse loss).
    qkv_bias: biases on dense attention's Q, K and V projections (as Trax's).
    trained_positions: the positional table as a weight (as Trax's).
    ff_mask_before_activation: SparseFF's mask before its ReLU in training
      (Trax's way; see `tl.SparseFF`).
  """
  arguments.check_model_arguments(ScalingTransformerLM, locals())
  return blocks.DecoderOnlyLM(
      vocab_size, d_model, n_layers, max_len, dropout, mode,
      attention=causal_attention_factory(d_model, n_heads, attention_type, attention_sparsity,
                                         dropout, max_len, qkv_bias),
      feed_forward=feed_forward_factory(d_model, d_ff, ff_sparsity, ff_sparsity_type, dropout,
                                        ff_mask_before_activation),
      logits=logits_layer(vocab_size, loss_sparsity, mode), name='ScalingTransformerLM',
      trained_positions=trained_positions)


def ScalingTransformer(input_vocab_size: int, output_vocab_size: Optional[int] = None,  # pylint: disable=invalid-name
                       d_model: int = 512, d_ff: int = 2048, n_encoder_layers: int = 6,
                       n_decoder_layers: int = 6, n_heads: int = 8, max_len: int = 2048,
                       dropout: float = 0.1, ff_sparsity: int = 0,
                       ff_sparsity_type: str = '1inN', attention_type: str = 'dense',
                       attention_sparsity: int = 16, loss_sparsity: int = 0,
                       mode: str = 'train', qkv_bias: bool = False,
                       trained_positions: bool = False,
                       ff_mask_before_activation: bool = False) -> tl.Layer:
  """Encoder-decoder Scaling Transformer: (source, target) ids -> target logits.

  The knobs are ScalingTransformerLM's; with attention_type='multconv' the
  encoder and decoder self-attention use sparse QKV (the encoder's length
  convolution is centered, the decoder's causal); cross-attention stays dense.
  `qkv_bias`, `trained_positions` and `ff_mask_before_activation` as in
  ScalingTransformerLM (every dense attention gets the biases).
  """
  arguments.check_model_arguments(ScalingTransformer, locals())
  output_vocab_size = output_vocab_size or input_vocab_size
  if attention_type == 'multconv':
    def encoder_attention(mode):
      return tl.MultiplicativeConvAttention(d_model, n_heads, sparsity=attention_sparsity,
                                            dropout=dropout, mode=mode)
  else:
    def encoder_attention(mode):
      return tl.Attention(d_model, n_heads, dropout, mode=mode, qkv_bias=qkv_bias)
  return blocks.EncoderDecoder(
      input_vocab_size, output_vocab_size, d_model, n_encoder_layers, n_decoder_layers,
      max_len, dropout, mode, encoder_attention=encoder_attention,
      decoder_attention=causal_attention_factory(d_model, n_heads, attention_type,
                                                 attention_sparsity, dropout, max_len, qkv_bias),
      cross_attention=lambda m: tl.EncDecAttention(d_model, n_heads, dropout, mode=m,
                                                   qkv_bias=qkv_bias),
      feed_forward=feed_forward_factory(d_model, d_ff, ff_sparsity, ff_sparsity_type, dropout,
                                        ff_mask_before_activation),
      logits=logits_layer(output_vocab_size, loss_sparsity, mode), name='ScalingTransformer',
      trained_positions=trained_positions)
