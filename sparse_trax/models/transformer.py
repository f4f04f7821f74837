"""The dense baselines: a decoder-only TransformerLM and an encoder-decoder Transformer."""

from typing import Optional

from sparse_trax import arguments
from sparse_trax import layers as tl
from sparse_trax.models import blocks


def TransformerLM(vocab_size: int, d_model: int = 512, d_ff: int = 2048,  # pylint: disable=invalid-name
                  n_layers: int = 6, n_heads: int = 8, max_len: int = 2048,
                  dropout: float = 0.1, mode: str = 'train', qkv_bias: bool = False,
                  trained_positions: bool = False) -> tl.Layer:
  """Pre-norm decoder-only Transformer language model.

  Input: token ids [batch, length] (int32). Output: logits [batch, length,
  vocab_size]; position t predicts token t (the input is shifted right). In
  'predict' mode feed the previous tokens ([batch, length]: a prompt's
  prefill, or one token) and get the logits of the next ones; the state is a
  DecodeState (the decode position and every attention cache).

  `qkv_bias` (biases on the attention's query, key and value projections) and
  `trained_positions` (the positional table as a weight) make the model hold
  what Trax's TransformerLM holds (`sparse_trax.compat.trax` sets both).
  """
  arguments.check_model_arguments(TransformerLM, locals())
  return blocks.DecoderOnlyLM(
      vocab_size, d_model, n_layers, max_len, dropout, mode,
      attention=lambda m: tl.CausalAttention(d_model, n_heads, dropout, max_len, mode=m,
                                             qkv_bias=qkv_bias),
      feed_forward=lambda m: blocks.FeedForward(d_model, d_ff, dropout, m),
      logits=tl.Dense(vocab_size), name='TransformerLM', trained_positions=trained_positions)


def Transformer(input_vocab_size: int, output_vocab_size: Optional[int] = None,  # pylint: disable=invalid-name
                d_model: int = 512, d_ff: int = 2048, n_encoder_layers: int = 6,
                n_decoder_layers: int = 6, n_heads: int = 8, max_len: int = 2048,
                dropout: float = 0.1, mode: str = 'train', qkv_bias: bool = False,
                trained_positions: bool = False) -> tl.Layer:
  """Pre-norm encoder-decoder Transformer with cross-attention.

  Inputs: (source ids [batch, length_src], target ids [batch, length_tgt]),
  0 is padding. Output: logits [batch, length_tgt, output_vocab_size]
  (target position t predicts target token t). In 'predict' mode feed the
  same source and the previous target tokens ([batch, length], or [batch, 1])
  each call; the encoder runs on the first call only.

  `qkv_bias` (biases on every attention's query, key and value projections)
  and `trained_positions` (positional tables as weights) make the model hold
  what Trax's Transformer holds (`sparse_trax.compat.trax` sets both).
  """
  arguments.check_model_arguments(Transformer, locals())
  output_vocab_size = output_vocab_size or input_vocab_size
  return blocks.EncoderDecoder(
      input_vocab_size, output_vocab_size, d_model, n_encoder_layers, n_decoder_layers,
      max_len, dropout, mode,
      encoder_attention=lambda m: tl.Attention(d_model, n_heads, dropout, mode=m,
                                               qkv_bias=qkv_bias),
      decoder_attention=lambda m: tl.CausalAttention(d_model, n_heads, dropout, max_len, mode=m,
                                                     qkv_bias=qkv_bias),
      cross_attention=lambda m: tl.EncDecAttention(d_model, n_heads, dropout, mode=m,
                                                   qkv_bias=qkv_bias),
      feed_forward=lambda m: blocks.FeedForward(d_model, d_ff, dropout, m),
      logits=tl.Dense(output_vocab_size), name='Transformer',
      trained_positions=trained_positions)
