"""Control-flow combinators: Scan (a carry along an axis), Chunk (bounded memory),
Cond (one of two branches), Cache (run once in 'predict' mode).
"""

from typing import Optional

import jax
import jax.numpy as jnp

from sparse_trax import arguments
from sparse_trax.layers.base import Layer
from sparse_trax.layers.combinators import as_items, as_layer, from_items, init_each_on_top
from sparse_trax.layers.state import Position, RunOnce, run_once


class Scan(Layer):
  """Runs a layer along an axis, threading a carry (like `lax.scan`).

  The layer maps (x_slice..., carry...) to (y_slice..., new_carry...); it has
  `n_in == n_out`, and its last `n_carry` items are the carry. Scan takes
  (xs..., initial_carry...) with each x sliced along `axis`, and gives
  (ys..., final_carry...): e.g. xs [length, batch, d] -> ys [length, batch, d']. In 'predict' mode the carry lives in state (a
  `RunOnce` record: the carry inputs are read on the first call only) and
  continues across calls. Step t gets rng `fold_in(rng, t)`; every step of
  one call gets the call's decode position.
  """

  takes_position = True

  def __init__(self, layer: Layer, axis: int = 0, n_carry: int = 1,
               mode: str = 'train'):
    arguments.check_layer_arguments(self, Scan.__init__, locals())
    layer = as_layer(layer)
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
      state = (s, RunOnce.empty(tuple(items[n_xs:])))
    position = Position.at(0, 1) if self.mode == 'predict' else None
    output_signature = jax.eval_shape(
        lambda w_, s_, x_: self.forward(w_, s_, x_, None, position)[0], (w,), state,
        input_signature)
    return (w,), state, output_signature

  def forward(self, weights, state, inputs, rng, position):
    items = as_items(inputs, self.n_in)
    n_xs = self.n_in - self.n_carry
    xs = tuple(jnp.moveaxis(x, self.axis, 0) for x in items[:n_xs])
    carry = tuple(items[n_xs:])
    if self.mode == 'predict':
      carry, _, _ = run_once(state[1], lambda _: (carry, None))

    def step(carry_and_state, x_and_t):
      carry, layer_state = carry_and_state
      x, t = x_and_t
      step_rng = None if rng is None else jax.random.fold_in(rng, t)
      out, layer_state = self.apply_sublayer(0, weights[0], layer_state,
                                             from_items(x + carry, self.n_in),
                                             step_rng, position)
      out = as_items(out, self.n_out)
      return (tuple(out[n_xs:]), layer_state), tuple(out[:n_xs])

    length = xs[0].shape[0] if xs else 0
    (carry, layer_state), ys = jax.lax.scan(step, (carry, state[0]),
                                            (xs, jnp.arange(length)))
    ys = tuple(jnp.moveaxis(y, 0, self.axis) for y in ys)
    new_state = (layer_state,)
    if self.mode == 'predict':
      new_state = (layer_state, RunOnce(carry, jnp.ones((), jnp.bool_)))
    return from_items(ys + carry, self.n_out), new_state


class Chunk(Layer):
  """Runs a position-wise layer over chunks of `size` positions to bound memory.

  Inputs [batch, length, ...] (any leading axes, the last kept whole) are
  flattened to [batch * length, ...], padded to a multiple of `size`, and the
  layer runs on one chunk at a time (`lax.map`). Only for layers that treat
  each position independently (a feed-forward block, a projection).
  """

  def __init__(self, layer: Layer, size: int):
    arguments.check_layer_arguments(self, Chunk.__init__, locals())
    layer = as_layer(layer)
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

  takes_position = True

  def forward(self, weights, state, inputs, rng, position):
    leading = inputs.shape[:-1]
    flat = inputs.reshape((-1, inputs.shape[-1]))
    n = flat.shape[0]
    n_chunks = -(-n // self.size)
    flat = jnp.pad(flat, ((0, n_chunks * self.size - n), (0, 0)))
    chunks = flat.reshape((n_chunks, self.size, flat.shape[-1]))

    def one(chunk):
      return self.apply_sublayer(0, weights[0], state[0], chunk, rng, position)[0]

    out = jax.lax.map(one, chunks)
    out = out.reshape((n_chunks * self.size,) + out.shape[2:])[:n]
    return out.reshape(leading + out.shape[1:]), state


class Cond(Layer):
  """Runs `true` or `false` depending on a `cond` layer's boolean scalar output.

  `cond` reads the top of the stack (without consuming it); `true` and
  `false` (default: identity) must give outputs of the same shapes. Both
  branches' weights exist; `lax.cond` runs only one. Shapes: x... ->
  true(x...) or false(x...), the same either way.
  """

  def __init__(self, cond: Layer, true: Layer, false: Optional[Layer] = None):
    arguments.check_layer_arguments(self, Cond.__init__, locals())
    cond, true, false = as_layer(cond), as_layer(true), as_layer(false)
    if true.n_in != false.n_in or true.n_out != false.n_out:
      raise ValueError('Cond branches must have the same n_in and n_out')
    if cond.n_out != 1:
      raise ValueError('Cond: the cond layer must give one output')
    super().__init__(max(cond.n_in, true.n_in), true.n_out,
                     sublayers=(cond, true, false))

  def init_with_signature(self, input_signature, rng):
    weights, states, outs = init_each_on_top(self, input_signature, rng)
    return weights, states, outs[1]   # the `true` branch's (the same as `false`'s)

  takes_position = True

  def forward(self, weights, state, inputs, rng, position):
    items = as_items(inputs, self.n_in)
    cond, true, _ = self.sublayers
    flag, cond_state = self.apply_sublayer(0, weights[0], state[0],
                                           from_items(items[:cond.n_in], cond.n_in), rng,
                                           position)
    branch_in = from_items(items[:true.n_in], true.n_in)

    def run(index):
      def branch(operands):
        out, s = self.apply_sublayer(index, weights[index], operands[index - 1],
                                     branch_in, rng, position)
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
  source at every step, and the encoder runs only once (its outputs kept in
  a `RunOnce` record). In other modes it simply runs the layer. Shapes: the
  layer's (inputs -> outputs). In 'predict' mode the layer must be built in
  'eval' mode (it sees the whole source at once).
  """

  takes_position = True
  runs_sublayers_whole = True

  def __init__(self, layer: Layer, mode: str = 'train'):
    arguments.check_layer_arguments(self, Cache.__init__, locals())
    layer = as_layer(layer)
    if mode == 'predict' and layer.given_modes - {'eval'}:
      raise ValueError(f"Cache in 'predict' mode runs {layer.name} on the whole source: build "
                       f"it in 'eval' mode, not {sorted(layer.given_modes - {'eval'})}")
    super().__init__(layer.n_in, layer.n_out, mode=mode, sublayers=(layer,))

  def init_with_signature(self, input_signature, rng):
    w, s, out = self.init_sublayer(0, input_signature, rng)
    if self.mode != 'predict':
      return (w,), (s,), out
    return (w,), (s, RunOnce.empty(out)), out

  def forward(self, weights, state, inputs, rng, position):
    if self.mode != 'predict':
      out, s = self.apply_sublayer(0, weights[0], state[0], inputs, rng, position)
      return out, (s,)

    def compute(layer_state):
      return self.apply_sublayer(0, weights[0], layer_state, inputs, rng, Position.at(0, 1))

    out, layer_state, record = run_once(state[1], compute, state[0])
    return out, (layer_state, record)
