"""Gin registration of every layer, model, optimizer, schedule, data source and setting.

This is the only module that knows gin; the layers, models and the loop stay
plain Python. Names in gin files:
  layers       tl.Dense, tl.Serial, ...          (module 'tl')
  models       TransformerLM, Transformer, ...
  data         Inputs, ShippedCorpus, TFDSSource, TextFiles, AdditionTask, CopyTask,
               SentencePieceTokenizer, ByteTokenizer, SpanCorruption
  optimizers   Adam, Adafactor, SGD; schedules Constant, WarmupRsqrtDecay
  training     train (the trainer's settings: n_steps, eval_every, ...), and
               TrainConfig (the same settings, for a `train.Loop` built in Python)
"""

import inspect

import gin

from sparse_trax import data
from sparse_trax import layers
from sparse_trax import models
from sparse_trax.train import loop
from sparse_trax.train import optimizers


def _register_public(module, gin_module=None):
  registered = []
  for name in getattr(module, '__all__', dir(module)):
    value = getattr(module, name)
    if name.startswith('_') or not callable(value) or inspect.ismodule(value):
      continue
    if inspect.isclass(value) and issubclass(value, BaseException):
      continue
    registered.append(gin.external_configurable(value, name=name, module=gin_module))
  return registered


_register_public(layers, 'tl')
_register_public(models)
for _name in ('Inputs', 'ShippedCorpus', 'TFDSSource', 'TextFiles', 'AdditionTask',
              'CopyTask', 'SentencePieceTokenizer', 'ByteTokenizer', 'SpanCorruption'):
  gin.external_configurable(getattr(data, _name), name=_name)
for _name in ('Adam', 'Adafactor', 'SGD', 'Constant', 'WarmupRsqrtDecay'):
  gin.external_configurable(getattr(optimizers, _name), name=_name)
gin.external_configurable(loop.train, name='train',
                          denylist=['output_dir', 'on_start', 'on_resume'])
gin.external_configurable(loop.TrainConfig, name='TrainConfig')
