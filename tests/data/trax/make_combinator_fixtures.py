"""Writes combinators.json: Trax 1.4.1's outputs for a table of stack-convention cases.

Run with Trax 1.4.1 installed in its own venv (see ../shared/trax/README.md):

    /tmp/trax-venv/bin/python tests/data/trax/make_combinator_fixtures.py

Each case is an expression that builds the same layer in Trax and in
sparse_trax (`tl` is either library's layers module) and the names of the
stack items it is called on; the file keeps Trax's n_in, n_out and outputs.
"""

import json
import os
import warnings

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
warnings.filterwarnings('ignore')

import numpy as np  # pylint: disable=wrong-import-position
from trax import layers as tl  # pylint: disable=wrong-import-position
from trax import shapes  # pylint: disable=wrong-import-position

ITEMS = {'x': [0.0, -1.0, 2.0], 'y': [3.0, 4.0, -5.0], 'z': [6.0, -7.0, 8.0]}

CASES = [
    ('tl.Serial(None)', 'x y'),
    ('tl.Serial()', 'x y'),
    ('tl.Serial([])', 'x'),
    ('tl.Serial(tl.Add())', 'x y z'),
    ('tl.Serial([tl.Dup(), [tl.Add()]])', 'x'),
    ('tl.Serial(tl.Relu(), [[tl.Dup()]], tl.Add())', 'x'),
    ('tl.Serial(tl.Select([1, 0]), tl.Add())', 'x y z'),
    ('tl.Parallel([], None)', 'x y'),
    ('tl.Parallel(None, tl.Dup())', 'x y'),
    ('tl.Parallel([tl.Dup(), tl.Add()], None)', 'x y'),
    ('tl.Parallel(tl.Relu(), [tl.Relu(), tl.Dup()])', 'x y'),
    ('tl.Parallel(tl.Relu(), tl.Relu())', 'x y z'),
    ('tl.Parallel(tl.Add(), None)', 'x y z x'),
    ('tl.Branch([], tl.Dup())', 'x'),
    ('tl.Branch(None, None)', 'x'),
    ('tl.Branch(tl.Relu(), None)', 'x y'),
    ('tl.Branch(tl.Add(), [tl.Relu(), tl.Dup()])', 'x y'),
    ('tl.Branch(tl.Relu())', 'x'),
    ('tl.Residual(None)', 'x'),
    ('tl.Residual([])', 'x'),
    ('tl.Residual(tl.Add())', 'x y'),
    ('tl.Residual(tl.Relu())', 'x y'),
    ('tl.Residual([tl.Relu(), [tl.Dup(), tl.Add()]])', 'x'),
    ('tl.Residual(tl.Relu(), shortcut=[tl.Dup(), tl.Add()])', 'x'),
]


def main():
  cases = []
  for expression, names in CASES:
    layer = eval(expression)  # pylint: disable=eval-used
    inputs = tuple(np.array(ITEMS[name], np.float32) for name in names.split())
    stack = inputs[0] if len(inputs) == 1 else inputs
    layer.init(shapes.signature(stack))
    outputs = layer(stack)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    cases.append({'layer': expression, 'inputs': names, 'n_in': layer.n_in,
                  'n_out': layer.n_out, 'outputs': [np.asarray(o).tolist() for o in outputs]})
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'combinators.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump({'trax_version': '1.4.1', 'items': ITEMS, 'cases': cases}, f, indent=1)
  print(f'wrote {len(cases)} cases to {path}')


if __name__ == '__main__':
  main()
