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

from sparse_trax.layers.base import Layer


def as_items(values, n: int) -> tuple:
  """A layer's inputs or outputs as a tuple of `n` stack items."""
  return (values,) if n == 1 else tuple(values)


def from_items(items: Sequence, n: int):
  """Stack items as a layer takes them: bare when `n == 1`, else a tuple."""
  return items[0] if n == 1 else tuple(items)


def _flatten_layers(layers) -> tuple:
  """Flattens nested lists/tuples of layers and drops Nones."""
  flat = []
  for layer in layers:
    if layer is None:
      continue
    if isinstance(layer, (list, tuple)):
      flat.extend(_flatten_layers(layer))
    elif isinstance(layer, Layer):
      flat.append(layer)
    else:
      raise TypeError(f'expected a Layer, got {layer!r}')
  return tuple(flat)


def _serial_arity(layers) -> tuple:
  """(n_in, n_out) of running `layers` one after another on a stack."""
  n_in, depth = 0, 0
  for layer in layers:
    if depth < layer.n_in:
      n_in += layer.n_in - depth
      depth = layer.n_in
    depth += layer.n_out - layer.n_in
  return n_in, depth


def _none_to_identity(layer):
  return Select([0], name='Identity') if layer is None else layer


# ---------------------------------------------------------------- Serial

class Serial(Layer):
  """Runs layers one after another on the data stack.

  Nested lists of layers are flattened and `None` entries dropped.
  """

  def __init__(self, *layers, name: Optional[str] = None):
    layers = _flatten_layers(layers)
    n_in, n_out = _serial_arity(layers)
    super().__init__(n_in, n_out, name=name, sublayers=layers)

  def init_with_signature(self, input_signature, rng):
    return init_serial(self, range(len(self.sublayers)), input_signature, rng)

  def forward(self, weights, state, inputs, rng):
    return run_serial(self, range(len(self.sublayers)), weights, state, inputs, rng)


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


def run_serial(parent: Layer, indices, weights, state, inputs, rng, n_in=None):
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
                                   from_items(taken, layer.n_in), rng)
    stack = list(as_items(out, layer.n_out)) + stack
    new_states.append(s)
  return from_items(stack, len(stack)), tuple(new_states)


# ------------------------------------------------------ Parallel, Branch

class Parallel(Layer):
  """Runs layers side by side on consecutive stack items (None = identity).

  `Parallel(f, g)` on (x, y) gives (f(x), g(y)).
  """

  def __init__(self, *layers, name: Optional[str] = None):
    layers = tuple(_none_to_identity(l) for l in layers)
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

  def forward(self, weights, state, inputs, rng):
    new_states, outs = [], []
    for i, taken in enumerate(self._split(as_items(inputs, self.n_in))):
      layer = self.sublayers[i]
      out, s = self.apply_sublayer(i, weights[i], state[i],
                                   from_items(taken, layer.n_in), rng)
      new_states.append(s)
      outs.extend(as_items(out, layer.n_out))
    return from_items(outs, self.n_out), tuple(new_states)


class Branch(Layer):
  """Runs layers on copies of the same inputs (None = identity).

  `Branch(f, g)` on x gives (f(x), g(x)). Takes as many items as the
  greediest branch; each branch reads the top of the stack.
  """

  def __init__(self, *layers, name: Optional[str] = None):
    layers = tuple(_none_to_identity(l) for l in layers)
    super().__init__(max(l.n_in for l in layers), sum(l.n_out for l in layers),
                     name=name, sublayers=layers)

  def init_with_signature(self, input_signature, rng):
    items = as_items(input_signature, self.n_in)
    weights, states, outs = [], [], []
    for i, layer in enumerate(self.sublayers):
      w, s, out = self.init_sublayer(i, from_items(items[:layer.n_in], layer.n_in), rng)
      weights.append(w)
      states.append(s)
      outs.extend(as_items(out, layer.n_out))
    return tuple(weights), tuple(states), from_items(outs, self.n_out)

  def forward(self, weights, state, inputs, rng):
    items = as_items(inputs, self.n_in)
    new_states, outs = [], []
    for i, layer in enumerate(self.sublayers):
      out, s = self.apply_sublayer(i, weights[i], state[i],
                                   from_items(items[:layer.n_in], layer.n_in), rng)
      new_states.append(s)
      outs.extend(as_items(out, layer.n_out))
    return from_items(outs, self.n_out), tuple(new_states)


# ------------------------------------------------------------- Residual

class Residual(Layer):
  """x + f(x): runs `layers` serially and adds a shortcut of the input.

  With `layers` of n_in k and n_out m, Residual takes k items and gives m:
  the first output is shortcut(x) + layers(...)[0], the rest pass through
  (so `Residual(attention)` on (x, mask) gives (x + y, mask)).

  Args:
    *layers: the residual branch, run as a Serial.
    shortcut: a layer of n_in 1 and n_out 1 for the shortcut; None = identity.
  """

  def __init__(self, *layers, shortcut: Optional[Layer] = None,
               name: Optional[str] = None):
    layers = _flatten_layers(layers)
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

  def forward(self, weights, state, inputs, rng):
    items = as_items(inputs, self.n_in)
    branch_in = from_items(items[:self._branch_n_in], self._branch_n_in)
    out, new_states = run_serial(self, range(self._n_branch), weights, state,
                                 branch_in, rng, n_in=self._branch_n_in)
    outs = list(as_items(out, self.n_out))
    if self._n_branch < len(self.sublayers):
      shortcut, s = self.apply_sublayer(self._n_branch, weights[-1], state[-1],
                                        items[0], rng)
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
  """x -> x x."""
  return Select([0, 0], name='Dup')


def Swap() -> Layer:  # pylint: disable=invalid-name
  """a b -> b a."""
  return Select([1, 0], name='Swap')


def Drop() -> Layer:  # pylint: disable=invalid-name
  """x -> (nothing): drops the top of the stack."""
  return Select([], n_in=1, name='Drop')


# ------------------------------------------------------------------- Fn

class Fn(Layer):
  """A layer from a pure function without weights: `Fn('Square', lambda x: x * x)`.

  n_in is the number of the function's positional arguments, which may not
  have defaults. With `n_out > 1` the function returns a tuple.
  """

  def __init__(self, name: str, f: Callable, n_out: int = 1):
    parameters = inspect.signature(f).parameters.values()
    bad = [p.name for p in parameters
           if p.default is not inspect.Parameter.empty
           or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.KEYWORD_ONLY)]
    super().__init__(len(parameters), n_out, name=name)
    if bad:
      raise self.error(f'Fn functions take plain positional arguments without '
                       f'defaults; {name} has {bad}', phase='construct')
    self.f = f

  def forward(self, weights, state, inputs, rng):
    out = self.f(*as_items(inputs, self.n_in))
    if self.n_out != 1 and (not isinstance(out, tuple) or len(out) != self.n_out):
      raise ValueError(f'function should return a tuple of {self.n_out} arrays')
    return out, state


def Add() -> Layer:  # pylint: disable=invalid-name
  """a b -> a + b."""
  return Fn('Add', lambda a, b: a + b)


class Concatenate(Layer):
  """Concatenates `n_items` stack items along `axis`."""

  def __init__(self, n_items: int = 2, axis: int = -1):
    super().__init__(n_items, 1)
    self.axis = axis

  def forward(self, weights, state, inputs, rng):
    return jnp.concatenate(as_items(inputs, self.n_in), axis=self.axis), state


# ---------------------------------------------------- Scan, Chunk, Cond, Cache

class Scan(Layer):
  """Runs a layer along an axis, threading a carry (like `lax.scan`).

  The layer maps (x_slice..., carry...) to (y_slice..., new_carry...); it has
  `n_in == n_out`, and its last `n_carry` items are the carry. Scan takes
  (xs..., initial_carry...) with each x sliced along `axis`, and gives
  (ys..., final_carry...). In 'predict' mode the carry lives in state and
  continues across calls (the carry inputs are read on the first call only).
  Step t gets rng `fold_in(rng, t)`.
  """

  def __init__(self, layer: Layer, axis: int = 0, n_carry: int = 1,
               mode: str = 'train'):
    if layer.n_in != layer.n_out:
      raise ValueError(f'Scan needs a layer with n_in == n_out, got {layer}')
    super().__init__(layer.n_in, layer.n_out, mode=mode, sublayers=(layer,))
    self.axis = axis
    self.n_carry = n_carry

  def _slice_signature(self, signature):
    shape = list(signature.shape)
    del shape[self.axis]
    return jax.ShapeDtypeStruct(tuple(shape), signature.dtype)

  def init_with_signature(self, input_signature, rng):
    items = as_items(input_signature, self.n_in)
    n_xs = self.n_in - self.n_carry
    step_in = [self._slice_signature(x) for x in items[:n_xs]] + list(items[n_xs:])
    w, s, _ = self.init_sublayer(0, from_items(step_in, self.n_in), rng)
    state = (s,)
    if self.mode == 'predict':
      carry = tuple(jnp.zeros(c.shape, c.dtype) for c in items[n_xs:])
      state = (s, carry, jnp.zeros((), jnp.bool_))
    output_signature = jax.eval_shape(
        lambda w_, s_, x_: self.forward(w_, s_, x_, None)[0], (w,), state,
        input_signature)
    return (w,), state, output_signature

  def forward(self, weights, state, inputs, rng):
    items = as_items(inputs, self.n_in)
    n_xs = self.n_in - self.n_carry
    xs = tuple(jnp.moveaxis(x, self.axis, 0) for x in items[:n_xs])
    carry = tuple(items[n_xs:])
    if self.mode == 'predict':
      started = state[2]
      carry = tuple(jnp.where(started, c_state, c)
                    for c_state, c in zip(state[1], carry))

    def step(carry_and_state, x_and_t):
      carry, layer_state = carry_and_state
      x, t = x_and_t
      step_rng = None if rng is None else jax.random.fold_in(rng, t)
      out, layer_state = self.apply_sublayer(0, weights[0], layer_state,
                                             from_items(x + carry, self.n_in),
                                             step_rng)
      out = as_items(out, self.n_out)
      return (tuple(out[n_xs:]), layer_state), tuple(out[:n_xs])

    length = xs[0].shape[0] if xs else 0
    (carry, layer_state), ys = jax.lax.scan(step, (carry, state[0]),
                                            (xs, jnp.arange(length)))
    ys = tuple(jnp.moveaxis(y, 0, self.axis) for y in ys)
    new_state = (layer_state,)
    if self.mode == 'predict':
      new_state = (layer_state, carry, jnp.ones((), jnp.bool_))
    return from_items(ys + carry, self.n_out), new_state


class Chunk(Layer):
  """Runs a position-wise layer over chunks of `size` positions to bound memory.

  Inputs [batch, length, ...] (any leading axes, the last kept whole) are
  flattened to [batch * length, ...], padded to a multiple of `size`, and the
  layer runs on one chunk at a time (`lax.map`). Only for layers that treat
  each position independently (a feed-forward block, a projection).
  """

  def __init__(self, layer: Layer, size: int):
    if layer.n_in != 1 or layer.n_out != 1:
      raise ValueError('Chunk needs a layer with one input and one output')
    super().__init__(1, 1, sublayers=(layer,))
    self.size = size

  def init_with_signature(self, input_signature, rng):
    chunk_signature = jax.ShapeDtypeStruct((self.size,) + tuple(input_signature.shape[-1:]),
                                           input_signature.dtype)
    w, s, out = self.init_sublayer(0, chunk_signature, rng)
    leading = tuple(input_signature.shape[:-1])
    return (w,), (s,), jax.ShapeDtypeStruct(leading + tuple(out.shape[1:]), out.dtype)

  def forward(self, weights, state, inputs, rng):
    leading = inputs.shape[:-1]
    flat = inputs.reshape((-1, inputs.shape[-1]))
    n = flat.shape[0]
    n_chunks = -(-n // self.size)
    flat = jnp.pad(flat, ((0, n_chunks * self.size - n), (0, 0)))
    chunks = flat.reshape((n_chunks, self.size, flat.shape[-1]))

    def one(chunk):
      return self.apply_sublayer(0, weights[0], state[0], chunk, rng)[0]

    out = jax.lax.map(one, chunks)
    out = out.reshape((n_chunks * self.size,) + out.shape[2:])[:n]
    return out.reshape(leading + out.shape[1:]), state


class Cond(Layer):
  """Runs `true` or `false` depending on a `cond` layer's boolean scalar output.

  `cond` reads the top of the stack (without consuming it); `true` and
  `false` (default: identity) must give outputs of the same shapes. Both
  branches' weights exist; `lax.cond` runs only one.
  """

  def __init__(self, cond: Layer, true: Layer, false: Optional[Layer] = None):
    false = _none_to_identity(false)
    if true.n_in != false.n_in or true.n_out != false.n_out:
      raise ValueError('Cond branches must have the same n_in and n_out')
    if cond.n_out != 1:
      raise ValueError('Cond: the cond layer must give one output')
    super().__init__(max(cond.n_in, true.n_in), true.n_out,
                     sublayers=(cond, true, false))

  def init_with_signature(self, input_signature, rng):
    items = as_items(input_signature, self.n_in)
    weights, states, outs = [], [], []
    for i, layer in enumerate(self.sublayers):
      w, s, out = self.init_sublayer(i, from_items(items[:layer.n_in], layer.n_in), rng)
      weights.append(w)
      states.append(s)
      outs.append(out)
    return tuple(weights), tuple(states), outs[1]

  def forward(self, weights, state, inputs, rng):
    items = as_items(inputs, self.n_in)
    cond, true, _ = self.sublayers
    flag, cond_state = self.apply_sublayer(0, weights[0], state[0],
                                           from_items(items[:cond.n_in], cond.n_in), rng)
    branch_in = from_items(items[:true.n_in], true.n_in)

    def run(index):
      def branch(operands):
        out, s = self.apply_sublayer(index, weights[index], operands[index - 1],
                                     branch_in, rng)
        branch_states = list(operands)
        branch_states[index - 1] = s
        return out, tuple(branch_states)
      return branch

    out, (true_state, false_state) = jax.lax.cond(
        jnp.asarray(flag).astype(bool).reshape(()), run(1), run(2),
        (state[1], state[2]))
    return out, (cond_state, true_state, false_state)


class Cache(Layer):
  """In 'predict' mode, runs a layer on the first call and replays its outputs after.

  Used for the encoder of an encoder-decoder model: decoding feeds the same
  source at every step, and the encoder runs only once. In other modes it
  simply runs the layer.
  """

  def __init__(self, layer: Layer, mode: str = 'train'):
    super().__init__(layer.n_in, layer.n_out, mode=mode, sublayers=(layer,))

  def init_with_signature(self, input_signature, rng):
    w, s, out = self.init_sublayer(0, input_signature, rng)
    if self.mode != 'predict':
      return (w,), (s,), out
    cached = jax.tree_util.tree_map(lambda o: jnp.zeros(o.shape, o.dtype), out)
    return (w,), (s, cached, jnp.zeros((), jnp.bool_)), out

  def forward(self, weights, state, inputs, rng):
    if self.mode != 'predict':
      out, s = self.apply_sublayer(0, weights[0], state[0], inputs, rng)
      return out, (s,)
    layer_state, cached, filled = state

    def compute(operand):
      return self.apply_sublayer(0, weights[0], operand, inputs, rng)

    def replay(operand):
      return cached, operand

    out, layer_state = jax.lax.cond(filled, replay, compute, layer_state)
    return out, (layer_state, out, jnp.ones((), jnp.bool_))
