"""Trax checkpoints as sparse_trax models: one call, no Trax needed.

    model, weights = sparse_trax.compat.trax.load_model(
        'run/model.pkl.gz', 'TransformerLM', mode='predict',
        vocab_size=32000, d_model=512, n_layers=6)

`load_model` reads a checkpoint written by Trax 1.4.1 (a training Loop's
`model.pkl.gz` with its `model.weights.npy.gz`, or `Layer.save_to_file`)
with an unpickler that refuses anything but arrays and plain containers
(`trax_files`), builds our model with the arguments matching the Trax
constructor's (Trax layer classes passed by their Trax names as strings),
and converts the weights into our layout (`trax_weights`). Any mode works:
a converted model evaluates, trains on, and decodes.

Supported Trax models: TransformerLM, Transformer; ConfigurableTransformerLM with dense or
MultiplicativeConvCausalAttention attention, a dense, SparseFF ('1inN') or
BlockSparseFF ('Block') feed-forward, and a dense or multiplicative ('mult')
vocabulary projection; ConfigurableTransformer with dense attention and the
same feed-forward and projection choices; ConfigurableTerraformer (also as
'Terraformer') with its default positions, encoder and SelfAttention,
SelfAttention or MultiplicativeConvCausalAttention in the decoder, a dense or
SparseFF feed-forward, one SRU layer and a dense or multiplicative projection.
Other options raise NotImplementedError naming the argument.
"""

from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp

from sparse_trax import models
from sparse_trax.compat import trax_weights
from sparse_trax.compat.trax_files import (ShapeDtype, TraxCheckpoint,  # pylint: disable=unused-import
                                           UnsafeCheckpointError, read_checkpoint)
from sparse_trax.compat.trax_weights import TraxWeightError  # pylint: disable=unused-import
from sparse_trax.layers.base import Layer

# Trax's TransformerLM(vocab_size, d_model=512, d_ff=2048, n_layers=6, n_heads=8,
# max_len=2048, dropout=0.1, dropout_shared_axes=None, mode='train', ff_activation=tl.Relu).
_TRANSFORMER_LM_DEFAULTS = dict(d_model=512, d_ff=2048, n_layers=6, n_heads=8, max_len=2048,
                                dropout=0.1, dropout_shared_axes=None, ff_activation='Relu')


def _check_kwargs(family: str, kwargs: Dict[str, Any], defaults: Dict[str, Any],
                  required=('vocab_size',)) -> Dict[str, Any]:
  """The Trax constructor's arguments with its defaults filled in; unknown ones raise."""
  unknown = sorted(set(kwargs) - set(defaults) - set(required))
  if unknown:
    raise TypeError(f"Trax's {family} has no argument {unknown[0]!r} (it takes "
                    f'{", ".join(list(required) + sorted(defaults))})')
  missing = [name for name in required if name not in kwargs]
  if missing:
    raise TypeError(f"Trax's {family} needs {missing[0]!r}")
  return {**defaults, **kwargs}


def _trax_name(value) -> str:
  """A Trax layer class given by name ('Relu') or as the class itself."""
  return value if isinstance(value, str) else getattr(value, '__name__', repr(value))


def _build_transformer_lm(mode: str, kwargs: Dict[str, Any]) -> Tuple[Layer, dict]:
  args = _check_kwargs('TransformerLM', kwargs, _TRANSFORMER_LM_DEFAULTS)
  _check_relu('TransformerLM', args)
  model = models.TransformerLM(
      vocab_size=args['vocab_size'], d_model=args['d_model'], d_ff=args['d_ff'],
      n_layers=args['n_layers'], n_heads=args['n_heads'], max_len=args['max_len'],
      dropout=float(args['dropout']), mode=mode, qkv_bias=True, trained_positions=True)
  return model, {'n_layers': args['n_layers']}


def _check_relu(family: str, args: Dict[str, Any]):
  if _trax_name(args['ff_activation']) != 'Relu':
    raise ValueError(f"{family}: ff_activation {_trax_name(args['ff_activation'])!r} is not "
                     "supported (sparse_trax's feed-forward uses Relu, Trax's default)")


# Trax's ConfigurableTransformerLM arguments we convert, with its defaults; the
# others (chunking, SRU, positional variants) must keep their defaults.
_CONFIGURABLE_LM_DEFAULTS = dict(
    _TRANSFORMER_LM_DEFAULTS, ff_dropout=0.1, ff_chunk_size=0, ff_use_sru=0, ff_sparsity=0,
    ff_sparsity_type='1inN', loss_sparsity_type='mult', loss_sparsity=0, loss_d_lowrank=0,
    loss_sparsity_prob=None, attention_chunk_size=0, attention_type='CausalAttention',
    pos_type=None, pos_axial_shape=None, pos_d_axial_embs=None,
    pos_start_from_zero_prob=1.0, pos_max_offset_to_add=0)
_KEPT_AT_DEFAULT = ('ff_chunk_size', 'ff_use_sru', 'loss_d_lowrank', 'loss_sparsity_prob',
                    'attention_chunk_size', 'pos_type', 'pos_axial_shape', 'pos_d_axial_embs',
                    'pos_max_offset_to_add')
_ATTENTION_TYPES = {'CausalAttention': 'dense', 'MultiplicativeConvCausalAttention': 'multconv'}


def _build_configurable_transformer_lm(mode: str, kwargs: Dict[str, Any]) -> Tuple[Layer, dict]:
  args = _check_kwargs('ConfigurableTransformerLM', kwargs, _CONFIGURABLE_LM_DEFAULTS)
  _check_relu('ConfigurableTransformerLM', args)
  for name in _KEPT_AT_DEFAULT:
    if args[name] != _CONFIGURABLE_LM_DEFAULTS[name]:
      raise NotImplementedError(f'ConfigurableTransformerLM: converting {name}={args[name]!r} '
                                f'is not supported (only its default, '
                                f'{_CONFIGURABLE_LM_DEFAULTS[name]!r})')
  attention = _trax_name(args['attention_type'])
  if attention not in _ATTENTION_TYPES:
    raise NotImplementedError(f'ConfigurableTransformerLM: attention_type {attention!r} is not '
                              f'supported (supported: {", ".join(_ATTENTION_TYPES)})')
  parts = _sparse_parts('ConfigurableTransformerLM', args)
  model = models.ScalingTransformerLM(
      vocab_size=args['vocab_size'], d_model=args['d_model'], d_ff=args['d_ff'],
      n_layers=args['n_layers'], n_heads=args['n_heads'], max_len=args['max_len'],
      dropout=float(args['dropout']), ff_sparsity=args['ff_sparsity'],
      ff_sparsity_type=parts['ff_sparsity_type'], attention_type=_ATTENTION_TYPES[attention],
      attention_sparsity=args['n_heads'],          # Trax's default sparsity: n_heads
      loss_sparsity=args['loss_sparsity'], mode=mode, qkv_bias=True, trained_positions=True,
      ff_mask_before_activation=True)              # Trax's SparseFF trains so
  config = {'n_layers': args['n_layers'], 'attention': _ATTENTION_TYPES[attention],
            'ff': parts['ff'], 'loss': parts['loss']}
  return model, config


# Trax's Transformer(input_vocab_size, output_vocab_size=None, d_model=512, d_ff=2048,
# n_encoder_layers=6, n_decoder_layers=6, n_heads=8, max_len=2048, dropout=0.1,
# dropout_shared_axes=None, mode='train', ff_activation=tl.Relu).
_TRANSFORMER_DEFAULTS = dict(output_vocab_size=None, d_model=512, d_ff=2048, n_encoder_layers=6,
                             n_decoder_layers=6, n_heads=8, max_len=2048, dropout=0.1,
                             dropout_shared_axes=None, ff_activation='Relu')


def _build_transformer(mode: str, kwargs: Dict[str, Any]) -> Tuple[Layer, dict]:
  args = _check_kwargs('Transformer', kwargs, _TRANSFORMER_DEFAULTS,
                       required=('input_vocab_size',))
  _check_relu('Transformer', args)
  model = models.Transformer(
      input_vocab_size=args['input_vocab_size'], output_vocab_size=args['output_vocab_size'],
      d_model=args['d_model'], d_ff=args['d_ff'], n_encoder_layers=args['n_encoder_layers'],
      n_decoder_layers=args['n_decoder_layers'], n_heads=args['n_heads'],
      max_len=args['max_len'], dropout=float(args['dropout']), mode=mode, qkv_bias=True,
      trained_positions=True)
  return model, {'n_encoder_layers': args['n_encoder_layers'],
                 'n_decoder_layers': args['n_decoder_layers']}


_CONFIGURABLE_DEFAULTS = dict(
    {k: v for k, v in _CONFIGURABLE_LM_DEFAULTS.items()
     if k not in ('n_layers', 'attention_type', 'pos_start_from_zero_prob',
                  'pos_max_offset_to_add')},
    output_vocab_size=None, n_encoder_layers=6, n_decoder_layers=6,
    encoder_attention_type='Attention', encoder_decoder_attention_type='CausalAttention',
    enc_dec_attention_sparsity=0)


def _sparse_parts(family: str, args: Dict[str, Any]) -> dict:
  """The feed-forward and loss kinds from Trax's ff_sparsity / loss_sparsity arguments."""
  ff_sparsity, ff_type = args['ff_sparsity'], args['ff_sparsity_type']
  if not isinstance(ff_sparsity, int):
    raise NotImplementedError(f'{family}: ff_sparsity must be an int (N); {ff_sparsity!r} '
                              '(with its own d_lowrank) is not supported')
  if ff_sparsity and ff_type not in ('1inN', 'Block'):
    raise NotImplementedError(f"{family}: ff_sparsity_type {ff_type!r} is not supported "
                              "('1inN' and 'Block' are)")
  if args['loss_sparsity'] and args['loss_sparsity_type'] != 'mult':
    raise NotImplementedError(f"{family}: loss_sparsity_type {args['loss_sparsity_type']!r} "
                              "is not supported ('mult' is)")
  return {'ff': 'dense' if not ff_sparsity else ('block' if ff_type == 'Block' else 'sparse'),
          'loss': 'mult' if args['loss_sparsity'] else 'dense',
          'ff_sparsity_type': 'block' if ff_type == 'Block' else '1inN'}


def _build_configurable_transformer(mode: str, kwargs: Dict[str, Any]) -> Tuple[Layer, dict]:
  family = 'ConfigurableTransformer'
  args = _check_kwargs(family, kwargs, _CONFIGURABLE_DEFAULTS, required=('input_vocab_size',))
  _check_relu(family, args)
  for name in _KEPT_AT_DEFAULT + ('enc_dec_attention_sparsity',):
    if name in args and args[name] != _CONFIGURABLE_DEFAULTS[name]:
      raise NotImplementedError(f'{family}: converting {name}={args[name]!r} is not supported '
                                f'(only its default, {_CONFIGURABLE_DEFAULTS[name]!r})')
  for name, wanted in (('encoder_attention_type', 'Attention'),
                       ('encoder_decoder_attention_type', 'CausalAttention')):
    if _trax_name(args[name]) != wanted:
      raise NotImplementedError(f'{family}: {name} {_trax_name(args[name])!r} is not supported '
                                f'(only {wanted!r})')
  parts = _sparse_parts(family, args)
  model = models.ScalingTransformer(
      input_vocab_size=args['input_vocab_size'], output_vocab_size=args['output_vocab_size'],
      d_model=args['d_model'], d_ff=args['d_ff'], n_encoder_layers=args['n_encoder_layers'],
      n_decoder_layers=args['n_decoder_layers'], n_heads=args['n_heads'],
      max_len=args['max_len'], dropout=float(args['dropout']), ff_sparsity=args['ff_sparsity'],
      ff_sparsity_type=parts['ff_sparsity_type'], loss_sparsity=args['loss_sparsity'],
      mode=mode, qkv_bias=True, trained_positions=True, ff_mask_before_activation=True)
  return model, {'n_encoder_layers': args['n_encoder_layers'],
                 'n_decoder_layers': args['n_decoder_layers'],
                 'ff': parts['ff'], 'loss': parts['loss']}


# Trax's ConfigurableTerraformer arguments, with its defaults.
_TERRAFORMER_DEFAULTS = dict(
    output_vocab_size=None, d_model=512, d_ff=2048, d_attention_key=None,
    d_attention_value=None, n_encoder_layers=6, n_decoder_layers=6, n_heads=8, dropout=0.1,
    max_len=2048, encoder_attention_type='SelfAttention',
    encoder_decoder_attention_type='SelfAttention', pos_type='fixed-base', pos_axial_shape=(),
    pos_d_axial_embs=None, pos_start_from_zero_prob=1.0, pos_max_offset_to_add=0,
    ff_activation='Relu', ff_use_sru=0, ff_chunk_size=0, ff_dropout=None, ff_sparsity=0,
    loss_sparsity_type='mult', loss_sparsity=0, loss_d_lowrank=0, loss_sparsity_prob=None,
    attention_chunk_size=0, n_layers_forget=0, forget_dense=True, n_decoder_attention_layers=2,
    use_bfloat16=False, reversible_encoder=False, use_two_swaps_per_encoder_block=True,
    center_layernorm=True, half_before_layer=None, double_after_layer=None)
_TERRAFORMER_KEPT_AT_DEFAULT = (
    'pos_type', 'pos_axial_shape', 'pos_d_axial_embs', 'pos_start_from_zero_prob',
    'pos_max_offset_to_add', 'ff_chunk_size', 'loss_d_lowrank', 'loss_sparsity_prob',
    'attention_chunk_size', 'n_layers_forget', 'use_bfloat16', 'reversible_encoder',
    'use_two_swaps_per_encoder_block', 'center_layernorm', 'half_before_layer',
    'double_after_layer')

_TERRAFORMER_DECODER_ATTENTION = {'SelfAttention': 'dense',
                                  'MultiplicativeConvCausalAttention': 'multconv'}


def _terraformer_sru_units(family: str, ff_use_sru) -> int:
  """Trax's ff_use_sru (n SRU layers of 32 units, or (n, units)) as our SRU width."""
  layers, units = tuple(ff_use_sru) if isinstance(ff_use_sru, (list, tuple)) else (ff_use_sru, 32)
  if not layers:
    return 0
  if layers != 1:
    raise NotImplementedError(f'{family}: ff_use_sru={ff_use_sru!r} stacks {layers} SRU layers; '
                              'only one (ff_use_sru=1 or (1, units)) is supported')
  return units


def _build_configurable_terraformer(mode: str, kwargs: Dict[str, Any]) -> Tuple[Layer, dict]:
  family = 'ConfigurableTerraformer'
  args = _check_kwargs(family, kwargs, _TERRAFORMER_DEFAULTS, required=('input_vocab_size',))
  _check_relu(family, args)
  for name in _TERRAFORMER_KEPT_AT_DEFAULT:
    if args[name] != _TERRAFORMER_DEFAULTS[name]:
      raise NotImplementedError(f'{family}: converting {name}={args[name]!r} is not supported '
                                f'(only its default, {_TERRAFORMER_DEFAULTS[name]!r})')
  d_head = args['d_model'] // args['n_heads']
  for name in ('d_attention_key', 'd_attention_value'):
    if args[name] not in (None, d_head):
      raise NotImplementedError(f'{family}: {name}={args[name]!r} is not supported (only '
                                f'd_model // n_heads = {d_head})')
  if _trax_name(args['encoder_attention_type']) != 'SelfAttention':
    raise NotImplementedError(f"{family}: encoder_attention_type "
                              f"{_trax_name(args['encoder_attention_type'])!r} is not supported "
                              "(only 'SelfAttention', its default)")
  decoder_attention = _trax_name(args['encoder_decoder_attention_type'])
  if decoder_attention not in _TERRAFORMER_DECODER_ATTENTION:
    raise NotImplementedError(f'{family}: encoder_decoder_attention_type '
                              f'{decoder_attention!r} is not supported (supported: '
                              f'{", ".join(_TERRAFORMER_DECODER_ATTENTION)})')
  parts = _sparse_parts(family, dict(args, ff_sparsity_type='1inN'))
  sru_units = _terraformer_sru_units(family, args['ff_use_sru'])
  model = models.Terraformer(
      input_vocab_size=args['input_vocab_size'], output_vocab_size=args['output_vocab_size'],
      d_model=args['d_model'], d_ff=args['d_ff'], n_encoder_layers=args['n_encoder_layers'],
      n_decoder_layers=args['n_decoder_layers'], n_heads=args['n_heads'],
      max_len=args['max_len'], ff_sparsity=args['ff_sparsity'],
      loss_sparsity=args['loss_sparsity'], ff_use_sru=sru_units,
      n_decoder_attention_layers=args['n_decoder_attention_layers'],
      decoder_attention_type=_TERRAFORMER_DECODER_ATTENTION[decoder_attention],
      attention_sparsity=args['n_heads'],          # Trax's MultiplicativeConv default: n_heads
      dropout=float(args['dropout']), positional_encoding='fixed_base',
      encoder_output_dense=True, ff_mask_before_activation=True,
      sru_highway_scale=3 ** 0.5, sru_candidate_bias=True, mode=mode)
  return model, {'n_encoder_layers': args['n_encoder_layers'],
                 'n_decoder_layers': args['n_decoder_layers'],
                 'n_decoder_attention_layers': args['n_decoder_attention_layers'],
                 'decoder_attention': _TERRAFORMER_DECODER_ATTENTION[decoder_attention],
                 'ff': parts['ff'], 'loss': parts['loss'], 'sru': bool(sru_units)}


_BUILDERS: Dict[str, Callable[[str, Dict[str, Any]], Tuple[Layer, dict]]] = {
    'TransformerLM': _build_transformer_lm,
    'ConfigurableTransformerLM': _build_configurable_transformer_lm,
    'Transformer': _build_transformer,
    'ConfigurableTransformer': _build_configurable_transformer,
    'ConfigurableTerraformer': _build_configurable_terraformer,
}
# Trax 1.4.1 exports its Terraformer as ConfigurableTerraformer only; the
# paper's name is accepted for it.
_ALIASES = {'Terraformer': 'ConfigurableTerraformer'}


def build_model(trax_model: str, mode: str = 'eval', **trax_kwargs) -> Tuple[Layer, dict]:
  """Our model matching Trax's `trax_model(**trax_kwargs, mode=mode)`, and what the
  weight converter needs to know of it (n_layers, the variant of each part)."""
  trax_model = _ALIASES.get(trax_model, trax_model)
  if trax_model not in _BUILDERS:
    raise ValueError(f'unknown Trax model {trax_model!r}; supported: '
                     f'{", ".join(sorted(_BUILDERS))}')
  return _BUILDERS[trax_model](mode, dict(trax_kwargs))


def convert_weights(checkpoint: TraxCheckpoint, trax_model: str, model: Layer, config: dict):
  """Our weights for `model` (built by `build_model`) from a read Trax checkpoint."""
  token_signature = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  signature = token_signature if model.n_in == 1 else (token_signature, token_signature)
  template = jax.eval_shape(lambda: model.init(signature, rng=jax.random.key(0))[0])
  trax_model = _ALIASES.get(trax_model, trax_model)
  converted = trax_weights.convert(trax_model, checkpoint.flat_weights, template, config,
                                   f'our {trax_model}')
  return jax.tree_util.tree_map(jnp.asarray, converted)


def load_model(path: str, trax_model: str, mode: str = 'eval', **trax_kwargs):
  """Reads a Trax 1.4.1 checkpoint and returns our model and its weights.

  Args:
    path: a Trax Loop's `model.pkl.gz` (its `model.weights.npy.gz` beside it)
      or a file written by Trax's `Layer.save_to_file`.
    trax_model: the Trax model class, e.g. 'TransformerLM'.
    mode: 'train', 'eval' or 'predict' for our model.
    **trax_kwargs: the arguments the Trax model was built with (Trax layer
      classes by their Trax names, e.g. ff_activation='Relu').

  Returns:
    (model, weights): our model built with the matching arguments, and the
    converted weights pytree (`model.apply(weights, state, ...)`, with
    `state` from `model.init`).

  Raises:
    UnsafeCheckpointError: the file's pickle names anything beyond arrays,
      plain containers and Trax's ShapeDtype (nothing of it is run).
    TraxWeightError: the checkpoint's weights do not fit the arguments
      (names the Trax weight and our path).
    NotImplementedError: a Trax option not converted (named in the message).
  """
  model, config = build_model(trax_model, mode, **trax_kwargs)
  checkpoint = read_checkpoint(path)
  return model, convert_weights(checkpoint, trax_model, model, config)


def supported_models() -> Tuple[str, ...]:
  return tuple(sorted(_BUILDERS))


__all__ = ['load_model', 'build_model', 'convert_weights', 'read_checkpoint',
           'supported_models', 'TraxCheckpoint', 'ShapeDtype', 'UnsafeCheckpointError',
           'TraxWeightError']
