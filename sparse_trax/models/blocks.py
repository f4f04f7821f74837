"""Blocks shared by the models: feed-forward, decoder, encoder, cross-attention.

Every block is pre-norm: Residual(LayerNorm, sublayer, Dropout).
"""

from sparse_trax import layers as tl


def FeedForward(d_model: int, d_ff: int, dropout: float, mode: str):  # pylint: disable=invalid-name
  """Position-wise FF: [batch, length, d_model] -> same; Dense(d_ff), Relu, Dense(d_model)."""
  return tl.Serial(
      tl.Dense(d_ff),                      # x -> h
      tl.Relu(),
      tl.Dropout(dropout, mode=mode),
      tl.Dense(d_model),                   # h -> y
      name='FeedForward')


def FeedForwardBlock(d_model: int, d_ff: int, dropout: float, mode: str):  # pylint: disable=invalid-name
  """x -> x + FF(LayerNorm(x))."""
  return tl.Residual(
      tl.LayerNorm(),
      FeedForward(d_model, d_ff, dropout, mode),
      tl.Dropout(dropout, mode=mode),
      name='FeedForwardBlock')


def DecoderBlock(d_model: int, d_ff: int, n_heads: int, dropout: float,  # pylint: disable=invalid-name
                 max_len: int, mode: str):
  """Causal self-attention then FF: [batch, length, d_model] -> same."""
  return tl.Serial(
      tl.Residual(                         # x -> x
          tl.LayerNorm(),
          tl.CausalAttention(d_model, n_heads, dropout, max_len=max_len, mode=mode),
          tl.Dropout(dropout, mode=mode)),
      FeedForwardBlock(d_model, d_ff, dropout, mode),  # x -> x
      name='DecoderBlock')


def EncoderBlock(d_model: int, d_ff: int, n_heads: int, dropout: float, mode: str):  # pylint: disable=invalid-name
  """Masked self-attention then FF: (x, mask) -> (x, mask)."""
  return tl.Serial(
      tl.Residual(                         # x mask -> x mask
          tl.LayerNorm(),
          tl.Attention(d_model, n_heads, dropout, mode=mode),
          tl.Dropout(dropout, mode=mode)),
      FeedForwardBlock(d_model, d_ff, dropout, mode),  # x mask -> x mask
      name='EncoderBlock')


def EncoderDecoderBlock(d_model: int, d_ff: int, n_heads: int, dropout: float,  # pylint: disable=invalid-name
                        max_len: int, mode: str):
  """Causal self-attention, cross-attention, FF: (y, encoded, mask) -> same."""
  return tl.Serial(
      tl.Residual(                         # y encoded mask -> y encoded mask
          tl.LayerNorm(),
          tl.CausalAttention(d_model, n_heads, dropout, max_len=max_len, mode=mode),
          tl.Dropout(dropout, mode=mode)),
      tl.Residual(                         # y encoded mask -> y encoded mask
          tl.LayerNorm(),
          tl.EncDecAttention(d_model, n_heads, dropout, mode=mode),
          tl.Dropout(dropout, mode=mode)),
      FeedForwardBlock(d_model, d_ff, dropout, mode),  # y encoded mask -> same
      name='EncoderDecoderBlock')
