"""Every public name of the library's layer and model API is documented."""

import inspect

import pytest

import sparse_trax.layers as tl
from sparse_trax import models


def _public(module):
  names = getattr(module, '__all__', None) or [n for n in dir(module) if not n.startswith('_')]
  return [(n, getattr(module, n)) for n in sorted(names)
          if inspect.isclass(getattr(module, n)) or inspect.isfunction(getattr(module, n))]


LAYER_NAMES = _public(tl)
MODEL_NAMES = _public(models)


def test_the_layer_namespace_is_not_empty():
  assert len(LAYER_NAMES) > 40 and len(MODEL_NAMES) >= 6


@pytest.mark.parametrize('name, obj', LAYER_NAMES + MODEL_NAMES,
                         ids=[n for n, _ in LAYER_NAMES + MODEL_NAMES])
def test_public_name_has_a_docstring(name, obj):
  doc = inspect.getdoc(obj) if inspect.isfunction(obj) else obj.__dict__.get('__doc__')
  assert doc and len(doc.strip()) >= 20, f'{name} has no docstring of its own'


# Layer classes, and the functions that build layers or models (capitalized).
SHAPED = [(n, o) for n, o in LAYER_NAMES + MODEL_NAMES
          if (inspect.isclass(o) and issubclass(o, tl.Layer) and o is not tl.Layer)
          or (inspect.isfunction(o) and n[0].isupper())]


@pytest.mark.parametrize('name, obj', SHAPED, ids=[n for n, _ in SHAPED])
def test_layer_docstring_states_shapes(name, obj):
  doc = (inspect.getdoc(obj) if inspect.isfunction(obj) else obj.__dict__.get('__doc__')) or ''
  assert '[' in doc or '->' in doc, f'{name} docstring does not say its input/output shapes'
