"""The dense baselines: a decoder-only TransformerLM and an encoder-decoder Transformer."""

from typing import Optional

from sparse_trax import layers as tl
from sparse_trax.models import blocks


def TransformerLM(vocab_size: int, d_model: int = 512, d_ff: int = 2048,  # pylint: disable=invalid-name
                  n_layers: int = 6, n_heads: int = 8, max_len: int = 2048,
                  dropout: float = 0.1, mode: str = 'train') -> tl.Layer:
  """Pre-norm decoder-only Transformer language model.

  Input: token ids [batch, length] (int32). Output: logits [batch, length,
  vocab_size]; position t predicts token t (the input is shifted right). In
  'predict' mode feed the previous token ([batch, 1]) and get the next
  token's logits; state holds every attention cache and the position.
  """
  return tl.Serial(
      tl.ShiftRight(mode=mode),                        # tokens -> tokens
      tl.Embedding(vocab_size, d_model),               # tokens -> x
      tl.Dropout(dropout, mode=mode),
      tl.PositionalEncoding(max_len, mode=mode),
      [blocks.DecoderBlock(d_model, d_ff, n_heads, dropout, max_len, mode)
       for _ in range(n_layers)],                      # x -> x
      tl.LayerNorm(),
      tl.Dense(vocab_size),                            # x -> logits
      name='TransformerLM')


def TransformerEncoder(vocab_size: int, d_model: int, d_ff: int, n_layers: int,  # pylint: disable=invalid-name
                       n_heads: int, max_len: int, dropout: float,
                       mode: str) -> tl.Layer:
  """Token ids [batch, length] -> (encoded [batch, length, d_model], mask [batch, length])."""
  return tl.Serial(
      tl.Branch(                                       # ids -> x mask
          tl.Serial(tl.Embedding(vocab_size, d_model),
                    tl.Dropout(dropout, mode=mode),
                    tl.PositionalEncoding(max_len, mode=mode)),
          tl.PaddingMask()),
      [blocks.EncoderBlock(d_model, d_ff, n_heads, dropout, mode)
       for _ in range(n_layers)],                      # x mask -> x mask
      tl.Parallel(tl.LayerNorm(), None),               # x mask -> encoded mask
      name='TransformerEncoder')


def Transformer(input_vocab_size: int, output_vocab_size: Optional[int] = None,  # pylint: disable=invalid-name
                d_model: int = 512, d_ff: int = 2048, n_encoder_layers: int = 6,
                n_decoder_layers: int = 6, n_heads: int = 8, max_len: int = 2048,
                dropout: float = 0.1, mode: str = 'train') -> tl.Layer:
  """Pre-norm encoder-decoder Transformer with cross-attention.

  Inputs: (source ids [batch, length_src], target ids [batch, length_tgt]),
  0 is padding. Output: logits [batch, length_tgt, output_vocab_size]
  (target position t predicts target token t). In 'predict' mode feed the
  same source and the previous target token ([batch, 1]) each call; the
  encoder runs on the first call only.
  """
  output_vocab_size = output_vocab_size or input_vocab_size
  encoder_mode = 'eval' if mode == 'predict' else mode
  encoder = TransformerEncoder(input_vocab_size, d_model, d_ff, n_encoder_layers,
                               n_heads, max_len, dropout, encoder_mode)
  return tl.Serial(
      tl.Cache(encoder, mode=mode),                    # src tgt -> encoded mask tgt
      tl.Select([2, 0, 1]),                            # -> tgt encoded mask
      tl.ShiftRight(mode=mode),
      tl.Embedding(output_vocab_size, d_model),        # tgt -> y
      tl.Dropout(dropout, mode=mode),
      tl.PositionalEncoding(max_len, mode=mode),
      [blocks.EncoderDecoderBlock(d_model, d_ff, n_heads, dropout, max_len, mode)
       for _ in range(n_decoder_layers)],              # y encoded mask -> same
      tl.Select([0], n_in=3),                          # y encoded mask -> y
      tl.LayerNorm(),
      tl.Dense(output_vocab_size),                     # y -> logits
      name='Transformer')
