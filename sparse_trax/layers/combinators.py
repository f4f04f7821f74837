"""Combinators: layers that compose layers on a data stack, as in Trax.

A layer takes the top `n_in` items of the stack and pushes its `n_out`
outputs. `Serial(Dup(), Add())` doubles its input; `Select([0, 0, 1])` on
(a, b) gives (a, a, b); `Branch(f, g)` on x gives (f(x), g(x));
`Residual(f)` gives x + f(x).

The tuple plumbing lives in `as_items` / `from_items` and `run_serial`; every
combinator here goes through them.
"""

import inspect
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from sparse_trax import arguments
from sparse_trax.layers.base import Layer
from sparse_trax.layers.state import Position


def as_items(values, n: int) -> tuple:
  """A layer's inputs or outputs as a tuple of `n` stack items."""
  return (values,) if n == 1 else tuple(values)


def from_items(items: Sequence, n: int):
  """Stack items as a layer takes them: bare when `n == 1`, else a tuple."""
  return items[0] if n == 1 else tuple(items)


def flatten_layers(layers) -> tuple:
  """Flattens nested lists/tuples of layers and drops Nones."""
  flat = []
  for layer in layers:
    if layer is None:
      continue
    if isinstance(layer, (list, tuple)):
      flat.extend(flatten_layers(layer))
    elif isinstance(layer, Layer):
      flat.append(layer)
    else:
      raise TypeError(f'expected a Layer, a list of layers or None, got {layer!r}')
  return tuple(flat)


def as_layer(layer) -> Layer:
  """What Trax accepts wherever a layer goes, as one layer.

  A Layer is itself; a list or tuple of layers (nested lists flattened,
  Nones dropped) is their Serial; None (and `[]`) is the identity on one
  item. Anything else raises a TypeError naming it.
  """
  if layer is None:
    return Select([0], name='Identity')
  if isinstance(layer, (list, tuple)):
    return Serial(*layer)
  if not isinstance(layer, Layer):
    raise TypeError(f'expected a Layer, a list of layers or None, got {layer!r}')
  return layer


def _serial_arity(layers) -> tuple:
  """(n_in, n_out) of running `layers` one after another on a stack; no layers:
  the identity on one item, (1, 1), as in Trax."""
  if not layers:
    return 1, 1
  n_in, depth = 0, 0
  for layer in layers:
    if depth < layer.n_in:
      n_in += layer.n_in - depth
      depth = layer.n_in
    depth += layer.n_out - layer.n_in
  return n_in, depth


# ---------------------------------------------------------------- Serial

class Serial(Layer):
  """Runs layers one after another on the data stack.

  Nested lists of layers are flattened and `None` entries dropped; with no
  layers it is the identity on one item. Shapes: x... -> the last layer's
  outputs, each layer taking its n_in items from the top of the stack and
  pushing its n_out (a layer's shape rules compose). Given more items than
  it takes, the rest pass through: `Serial(None)` on (x, y) gives (x, y).
  """

  passes_extra_items = True

  def __init__(self, *layers, name: Optional[str] = None):
    arguments.check_layer_arguments(self, Serial.__init__, locals())
    layers = flatten_layers(layers)
    n_in, n_out = _serial_arity(layers)
    super().__init__(n_in, n_out, name=name, sublayers=layers)
    self.position_wise = bool(layers) and all(layer.position_wise for layer in layers)

  def init_with_signature(self, input_signature, rng):
    return init_serial(self, range(len(self.sublayers)), input_signature, rng)

  takes_position = True

  def forward(self, weights, state, inputs, rng, position):
    return run_serial(self, range(len(self.sublayers)), weights, state, inputs, rng,
                      position=position)

  def forward_at(self, weights, state, inputs, rng, position, index):
    """The layers before the position-wise tail on every position, the tail on `index`.

    Without such a tail, a last sublayer that is itself a Serial is asked for
    `index` in turn (its own tail then runs on the one position).
    """
    n = len(self.sublayers)
    start = n
    while start > 0 and self.sublayers[start - 1].position_wise:
      start -= 1
    nested = (start == n and n > 0 and isinstance(self.sublayers[-1], Serial)
              and self.sublayers[-1].n_out == 1)
    if start == n and not nested:
      return super().forward_at(weights, state, inputs, rng, position, index)
    if nested:
      start = n - 1
    x, head_state = run_serial(self, range(start), weights[:start], state[:start], inputs,
                               rng, n_in=self.n_in, position=position)   # -> the rest's inputs
    if nested:
      y, last_state = self.apply_sublayer(start, weights[start], state[start], x, rng,
                                          position, output_index=index)
      return y, head_state + (last_state,)
    # With a features axis after the positions the tail runs on position `index` alone;
    # without one (x [batch, length]) it runs on every position and its output is sliced.
    at_one = x.ndim >= 3
    if at_one:
      x = jax.lax.dynamic_slice_in_dim(x, index, 1, axis=1)                 # x at index
    y, tail_state = run_serial(
        self, range(start, n), weights[start:], state[start:], x, rng, n_in=1,
        position=Position.at(position.start + index, 1) if at_one else position)
    if not at_one:
      y = jax.lax.dynamic_slice_in_dim(y, index, 1, axis=1)
    return y, head_state + tail_state


def init_serial(parent: Layer, indices, input_signature, rng):
  """Initializes `parent.sublayers[i]` for i in indices as a serial chain.

  Returns (weights, state, output_signature) with weights and state tuples
  of one entry per index.
  """
  stack = list(as_items(input_signature, parent.n_in))
  weights, states = [], []
  for i in indices:
    layer = parent.sublayers[i]
    taken, stack = stack[:layer.n_in], stack[layer.n_in:]
    w, s, out = parent.init_sublayer(i, from_items(taken, layer.n_in), rng)
    stack = list(as_items(out, layer.n_out)) + stack
    weights.append(w)
    states.append(s)
  return tuple(weights), tuple(states), from_items(stack, len(stack))


def run_serial(parent: Layer, indices, weights, state, inputs, rng, n_in=None, position=None):
  """Applies `parent.sublayers[i]` for i in indices as a serial chain.

  `weights` and `state` hold one entry per index, in order.
  Returns (outputs, new_state) with outputs as from `from_items`.
  """
  stack = list(as_items(inputs, parent.n_in if n_in is None else n_in))
  new_states = []
  for slot, i in enumerate(indices):
    layer = parent.sublayers[i]
    taken, stack = stack[:layer.n_in], stack[layer.n_in:]
    out, s = parent.apply_sublayer(i, weights[slot], state[slot],
                                   from_items(taken, layer.n_in), rng, position)
    stack = list(as_items(out, layer.n_out)) + stack
    new_states.append(s)
  return from_items(stack, len(stack)), tuple(new_states)


# ------------------------------------------------------ Parallel, Branch

class Parallel(Layer):
  """Runs layers side by side on consecutive stack items.

  `Parallel(f, g)` on (x, y) gives (f(x), g(y)): x y -> f(x) g(y), shapes as
  each layer gives them. Each argument is a layer, a list of layers (their
  Serial) or None / [] (the identity on one item): `Parallel([], None)` on
  (x, y) gives (x, y). Items after the ones it takes pass through (Trax's
  Parallel drops them when called alone; inside a Serial both keep them).
  """

  passes_extra_items = True

  def __init__(self, *layers, name: Optional[str] = None):
    arguments.check_layer_arguments(self, Parallel.__init__, locals())
    layers = tuple(as_layer(l) for l in layers)
    super().__init__(sum(l.n_in for l in layers), sum(l.n_out for l in layers),
                     name=name, sublayers=layers)

  def _split(self, items):
    start = 0
    for layer in self.sublayers:
      yield items[start:start + layer.n_in]
      start += layer.n_in

  def init_with_signature(self, input_signature, rng):
    weights, states, outs = [], [], []
    for i, taken in enumerate(self._split(as_items(input_signature, self.n_in))):
      layer = self.sublayers[i]
      w, s, out = self.init_sublayer(i, from_items(taken, layer.n_in), rng)
      weights.append(w)
      states.append(s)
      outs.extend(as_items(out, layer.n_out))
    return tuple(weights), tuple(states), from_items(outs, self.n_out)

  takes_position = True

  def forward(self, weights, state, inputs, rng, position):
    new_states, outs = [], []
    for i, taken in enumerate(self._split(as_items(inputs, self.n_in))):
      layer = self.sublayers[i]
      out, s = self.apply_sublayer(i, weights[i], state[i],
                                   from_items(taken, layer.n_in), rng, position)
      new_states.append(s)
      outs.extend(as_items(out, layer.n_out))
    return from_items(outs, self.n_out), tuple(new_states)


def init_each_on_top(layer: Layer, input_signature, rng):
  """Initializes each sublayer of `layer` on the top of the same stack.

  For combinators whose sublayers all read the same inputs (Branch, Cond).
  Returns (weights tuple, states tuple, list of each sublayer's output signature).
  """
  items = as_items(input_signature, layer.n_in)
  weights, states, outs = [], [], []
  for i, sublayer in enumerate(layer.sublayers):
    w, s, out = layer.init_sublayer(i, from_items(items[:sublayer.n_in], sublayer.n_in), rng)
    weights.append(w)
    states.append(s)
    outs.append(out)
  return tuple(weights), tuple(states), outs


class Branch(Layer):
  """Runs layers on copies of the same inputs.

  `Branch(f, g)` on x gives (f(x), g(x)): x -> f(x) g(x), shapes as each
  branch gives them. Takes as many items as the greediest branch; each
  branch reads the top of the stack. Each argument is a layer, a list of
  layers (their Serial) or None / [] (the identity): `Branch([], Dup())` on x
  gives (x, x, x). Items after the ones it takes pass through.
  """

  passes_extra_items = True

  def __init__(self, *layers, name: Optional[str] = None):
    arguments.check_layer_arguments(self, Branch.__init__, locals())
    layers = tuple(as_layer(l) for l in layers)
    super().__init__(max(l.n_in for l in layers), sum(l.n_out for l in layers),
                     name=name, sublayers=layers)

  def init_with_signature(self, input_signature, rng):
    weights, states, outs = init_each_on_top(self, input_signature, rng)
    items = [item for layer, out in zip(self.sublayers, outs)
             for item in as_items(out, layer.n_out)]
    return weights, states, from_items(items, self.n_out)

  takes_position = True

  def forward(self, weights, state, inputs, rng, position):
    items = as_items(inputs, self.n_in)
    new_states, outs = [], []
    for i, layer in enumerate(self.sublayers):
      out, s = self.apply_sublayer(i, weights[i], state[i],
                                   from_items(items[:layer.n_in], layer.n_in), rng, position)
      new_states.append(s)
      outs.extend(as_items(out, layer.n_out))
    return from_items(outs, self.n_out), tuple(new_states)


# ------------------------------------------------------------- Residual

class Residual(Layer):
  """x + f(x): runs `layers` serially and adds a shortcut of the input.

  With `layers` of n_in k and n_out m, Residual takes k items and gives m:
  the first output is shortcut(x) + layers(...)[0], the rest pass through
  (so `Residual(attention)` on (x, mask) gives (x + y, mask)). No layers (or
  None): the branch is the identity, x -> 2x, as in Trax.

  Args:
    *layers: the residual branch, run as a Serial (nested lists flattened).
    shortcut: a layer of n_in 1 and n_out 1 for the shortcut (or a list of
      layers); None = identity.
  """

  passes_extra_items = True

  def __init__(self, *layers, shortcut=None, name: Optional[str] = None):
    arguments.check_layer_arguments(self, Residual.__init__, locals())
    layers = flatten_layers(layers)
    shortcut = None if shortcut is None else as_layer(shortcut)
    n_in, n_out = _serial_arity(layers)
    if n_out < 1:
      raise ValueError('Residual needs layers with at least one output')
    sublayers = layers + (() if shortcut is None else (shortcut,))
    super().__init__(max(n_in, 1), n_out, name=name, sublayers=sublayers)
    self._n_branch = len(layers)
    self._branch_n_in = n_in

  def init_with_signature(self, input_signature, rng):
    items = as_items(input_signature, self.n_in)
    branch_in = from_items(items[:self._branch_n_in], self._branch_n_in)
    weights, states, out = init_serial(self, range(self._n_branch), branch_in, rng)
    if self._n_branch < len(self.sublayers):
      w, s, _ = self.init_sublayer(self._n_branch, items[0], rng)
      weights, states = weights + (w,), states + (s,)
    return weights, states, out

  takes_position = True

  def forward(self, weights, state, inputs, rng, position):
    items = as_items(inputs, self.n_in)
    branch_in = from_items(items[:self._branch_n_in], self._branch_n_in)
    out, new_states = run_serial(self, range(self._n_branch), weights, state,
                                 branch_in, rng, n_in=self._branch_n_in, position=position)
    outs = list(as_items(out, self.n_out))
    if self._n_branch < len(self.sublayers):
      shortcut, s = self.apply_sublayer(self._n_branch, weights[-1], state[-1],
                                        items[0], rng, position)
      new_states = new_states + (s,)
    else:
      shortcut = items[0]
    outs[0] = outs[0] + shortcut
    return from_items(outs, self.n_out), new_states


# ----------------------------------------------------- stack shuffling

class Select(Layer):
  """Copies, reorders or drops stack items: `Select([0, 0, 1])` on (a, b) -> (a, a, b).

  Args:
    indices: which input items to output, in order.
    n_in: how many items to take (default `max(indices) + 1`).
  """

  def __init__(self, indices: Sequence[int], n_in: Optional[int] = None,
               name: Optional[str] = None):
    arguments.check_layer_arguments(self, Select.__init__, locals())
    indices = tuple(int(i) for i in indices)
    if n_in is None:
      n_in = max(indices) + 1 if indices else 0
    if indices and max(indices) >= n_in:
      raise ValueError(f'indices {indices} out of range for n_in={n_in}')
    super().__init__(n_in, len(indices), name=name)
    self.indices = indices

  def forward(self, weights, state, inputs, rng):
    items = as_items(inputs, self.n_in) if self.n_in else ()
    return from_items([items[i] for i in self.indices], self.n_out), state


def Dup() -> Layer:  # pylint: disable=invalid-name
  """Duplicates the top of the stack: x -> x x (any shape)."""
  return Select([0, 0], name='Dup')


def Swap() -> Layer:  # pylint: disable=invalid-name
  """Swaps the top two stack items: a b -> b a (any shapes)."""
  return Select([1, 0], name='Swap')


def Drop() -> Layer:  # pylint: disable=invalid-name
  """x -> (nothing): drops the top of the stack."""
  return Select([], n_in=1, name='Drop')


# ------------------------------------------------------------------- Fn

class Fn(Layer):
  """A layer from a pure function without weights: `Fn('Square', lambda x: x * x)`.

  n_in is the number of the function's positional arguments, which may not
  have defaults. With `n_out > 1` the function returns a tuple. Shapes are
  the function's: a1 ... an -> f(a1, ..., an). `position_wise=True` says
  that f's output at a position (axis 1) depends only on its input there
  (elementwise functions, a softmax over the last axis); see
  `Layer.position_wise`.
  """

  def __init__(self, name: str, f: Callable, n_out: int = 1, position_wise: bool = False):
    arguments.check_layer_arguments(self, Fn.__init__, locals())
    parameters = inspect.signature(f).parameters.values()
    bad = [p.name for p in parameters
           if p.default is not inspect.Parameter.empty
           or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.KEYWORD_ONLY)]
    super().__init__(len(parameters), n_out, name=name)
    if bad:
      raise self.error(f'Fn functions take plain positional arguments without '
                       f'defaults; {name} has {bad}', phase='construct')
    if position_wise and not self.n_in == n_out == 1:
      raise self.error(f'position_wise=True is for one-in, one-out functions; {name} '
                       f'takes {self.n_in} and returns {n_out}', phase='construct')
    self.f = f
    self.position_wise = position_wise

  def forward(self, weights, state, inputs, rng):
    out = self.f(*as_items(inputs, self.n_in))
    if self.n_out != 1 and (not isinstance(out, tuple) or len(out) != self.n_out):
      raise ValueError(f'function should return a tuple of {self.n_out} arrays')
    return out, state


def Add() -> Layer:  # pylint: disable=invalid-name
  """Elementwise sum of the top two items: a b -> a + b (same or broadcastable shapes)."""
  return Fn('Add', lambda a, b: a + b)


class Concatenate(Layer):
  """Concatenates `n_items` stack items along `axis`: [..., d_i, ...] each -> [..., sum d_i, ...]."""

  def __init__(self, n_items: int = 2, axis: int = -1):
    arguments.check_layer_arguments(self, Concatenate.__init__, locals())
    super().__init__(n_items, 1)
    self.axis = axis

  def forward(self, weights, state, inputs, rng):
    return jnp.concatenate(as_items(inputs, self.n_in), axis=self.axis), state
