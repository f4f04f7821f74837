"""Blocks and model skeletons shared by every model.

Every block is pre-norm: Residual(LayerNorm, sublayer, Dropout). The model
skeletons take factories `f(mode) -> Layer` for attention and feed-forward,
so dense and sparse models differ only in those choices.
"""

from typing import Callable

from sparse_trax import layers as tl

LayerFactory = Callable[[str], tl.Layer]


def FeedForward(d_model: int, d_ff: int, dropout: float, mode: str):  # pylint: disable=invalid-name
  """Dense position-wise FF: [batch, length, d_model] -> same."""
  return tl.Serial(
      tl.Dense(d_ff),                      # x -> h
      tl.Relu(),
      tl.Dropout(dropout, mode=mode),
      tl.Dense(d_model),                   # h -> y
      name='FeedForward')


def _pre_norm(sublayer: tl.Layer, dropout: float, mode: str, name: str):
  """x -> x + Dropout(sublayer(LayerNorm(x))) (extra stack items pass through sublayer)."""
  return tl.Residual(tl.LayerNorm(), sublayer, tl.Dropout(dropout, mode=mode), name=name)


def DecoderBlock(attention: tl.Layer, feed_forward: tl.Layer, dropout: float,  # pylint: disable=invalid-name
                 mode: str):
  """Causal self-attention then FF: [batch, length, d_model] -> same."""
  return tl.Serial(
      _pre_norm(attention, dropout, mode, 'AttentionBlock'),          # x -> x
      _pre_norm(feed_forward, dropout, mode, 'FeedForwardBlock'),     # x -> x
      name='DecoderBlock')


def EncoderBlock(attention: tl.Layer, feed_forward: tl.Layer, dropout: float,  # pylint: disable=invalid-name
                 mode: str):
  """Masked self-attention then FF: (x, mask) -> (x, mask)."""
  return tl.Serial(
      _pre_norm(attention, dropout, mode, 'AttentionBlock'),          # x mask -> x mask
      _pre_norm(feed_forward, dropout, mode, 'FeedForwardBlock'),     # x mask -> x mask
      name='EncoderBlock')


def EncoderDecoderBlock(self_attention: tl.Layer, cross_attention: tl.Layer,  # pylint: disable=invalid-name
                        feed_forward: tl.Layer, dropout: float, mode: str):
  """Causal self-attention, cross-attention, FF: (y, encoded, mask) -> same."""
  return tl.Serial(
      _pre_norm(self_attention, dropout, mode, 'AttentionBlock'),     # y encoded mask -> same
      _pre_norm(cross_attention, dropout, mode, 'CrossAttentionBlock'),
      _pre_norm(feed_forward, dropout, mode, 'FeedForwardBlock'),
      name='EncoderDecoderBlock')


def DecoderOnlyLM(vocab_size: int, d_model: int, n_layers: int, max_len: int,  # pylint: disable=invalid-name
                  dropout: float, mode: str, attention: LayerFactory,
                  feed_forward: LayerFactory, logits: tl.Layer, name: str,
                  trained_positions: bool = False):
  """Token ids [batch, length] -> logits [batch, length, vocab] (inputs shifted right).

  `trained_positions`: the positional table is a weight (as in Trax's models).
  """
  return tl.Serial(
      tl.ShiftRight(mode=mode),                        # tokens -> tokens
      tl.Embedding(vocab_size, d_model),               # tokens -> x
      tl.Dropout(dropout, mode=mode),
      tl.PositionalEncoding(max_len, mode=mode, trainable=trained_positions),
      [DecoderBlock(attention(mode), feed_forward(mode), dropout, mode)
       for _ in range(n_layers)],                      # x -> x
      tl.LayerNorm(),
      logits,                                          # x -> logits
      name=name)


POSITIONAL_ENCODINGS = ('sinusoidal', 'fixed_base')


def positional_encoding(kind: str, max_len: int, mode: str,
                        trained_positions: bool = False) -> tl.Layer:
  """'sinusoidal' (a table of max_len rows, a weight with `trained_positions`) or
  'fixed_base' (`tl.FixedBasePositionalEncoding`, Terraformer's in Trax)."""
  if kind == 'sinusoidal':
    return tl.PositionalEncoding(max_len, mode=mode, trainable=trained_positions)
  if kind == 'fixed_base':
    return tl.FixedBasePositionalEncoding(mode=mode)
  raise ValueError(f'positional_encoding must be one of {POSITIONAL_ENCODINGS}, got {kind!r}')


def EmbeddingAndMask(vocab_size: int, d_model: int, max_len: int, dropout: float,  # pylint: disable=invalid-name
                     mode: str, trained_positions: bool = False,
                     positions: str = 'sinusoidal'):
  """Token ids [batch, length] -> (x [batch, length, d_model], padding mask [batch, length]).

  `positions`: the kind of `positional_encoding`."""
  return tl.Branch(
      tl.Serial(tl.Embedding(vocab_size, d_model),
                tl.Dropout(dropout, mode=mode),
                positional_encoding(positions, max_len, mode, trained_positions)),
      tl.PaddingMask())


def EncodedSourceAndTargets(encoder: tl.Layer, output_vocab_size: int, d_model: int,  # pylint: disable=invalid-name
                            max_len: int, dropout: float, mode: str,
                            trained_positions: bool = False,
                            positions: str = 'sinusoidal') -> list:
  """(source, target) ids -> (y, encoded, mask): the encoder (run once in 'predict'),
  and the shifted target embeddings. A list of layers, for a Serial.

  `positions`: the kind of `positional_encoding`."""
  return [
      tl.Cache(encoder, mode=mode),                    # src tgt -> encoded mask tgt
      tl.Select([2, 0, 1]),                            # -> tgt encoded mask
      tl.ShiftRight(mode=mode),
      tl.Embedding(output_vocab_size, d_model),        # tgt -> y
      tl.Dropout(dropout, mode=mode),
      positional_encoding(positions, max_len, mode, trained_positions)]


def Encoder(vocab_size: int, d_model: int, n_layers: int, max_len: int, dropout: float,  # pylint: disable=invalid-name
            mode: str, attention: LayerFactory, feed_forward: LayerFactory,
            trained_positions: bool = False):
  """Token ids [batch, length] -> (encoded [batch, length, d_model], mask [batch, length])."""
  return tl.Serial(
      EmbeddingAndMask(vocab_size, d_model, max_len, dropout, mode,
                       trained_positions),             # ids -> x mask
      [EncoderBlock(attention(mode), feed_forward(mode), dropout, mode)
       for _ in range(n_layers)],                      # x mask -> x mask
      tl.Parallel(tl.LayerNorm(), None),               # x mask -> encoded mask
      name='Encoder')


def EncoderDecoder(input_vocab_size: int, output_vocab_size: int, d_model: int,  # pylint: disable=invalid-name
                   n_encoder_layers: int, n_decoder_layers: int, max_len: int,
                   dropout: float, mode: str, encoder_attention: LayerFactory,
                   decoder_attention: LayerFactory, cross_attention: LayerFactory,
                   feed_forward: LayerFactory, logits: tl.Layer, name: str,
                   trained_positions: bool = False):
  """(source ids, target ids) -> logits [batch, length_tgt, output_vocab_size].

  In 'predict' mode the encoder runs (in 'eval' mode) on the first call only.
  `trained_positions`: both positional tables are weights (as in Trax's models).
  """
  encoder_mode = 'eval' if mode == 'predict' else mode
  encoder = Encoder(input_vocab_size, d_model, n_encoder_layers, max_len, dropout,
                    encoder_mode, encoder_attention, feed_forward, trained_positions)
  return tl.Serial(
      EncodedSourceAndTargets(encoder, output_vocab_size, d_model, max_len, dropout,
                              mode, trained_positions),  # src tgt -> y encoded mask
      [EncoderDecoderBlock(decoder_attention(mode), cross_attention(mode),
                           feed_forward(mode), dropout, mode)
       for _ in range(n_decoder_layers)],              # y encoded mask -> same
      tl.Select([0], n_in=3),                          # y encoded mask -> y
      tl.LayerNorm(),
      logits,                                          # y -> logits
      name=name)
