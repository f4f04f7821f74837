"""Reversible layers (RevNet / Reformer): activations recomputed in the backward pass.

A reversible block maps (x1, x2) to y1 = x1 + F(x2), y2 = x2 + G(y1); from
(y1, y2) its inputs are recomputed exactly enough: x2 = y2 - G(y1),
x1 = y1 - F(x2). `ReversibleSerial` runs such layers under a
`jax.custom_vjp` that keeps only the last outputs, and in the backward pass
walks the layers from the end, reconstructing each one's inputs from its
outputs. Activation memory therefore does not grow with depth.

Randomness drawn in the forward pass is reused exactly when a layer is
recomputed: every sublayer gets the same rng (dropout masks, Gumbel noise, LSH
rotations are rng-determined), and discrete choices that rounding could flip
(SparseFF's units, LSH buckets) are kept in the layers' 'train' state and
replayed (`state.with_replay` sets the replay flag of every `Decisions` record).

The stack is (x1, x2, *extras): extras (e.g. a padding mask) pass through
unchanged and must not be floating point (they get no gradient).
"""

from typing import Sequence

import jax
import jax.numpy as jnp

from sparse_trax import arguments
from sparse_trax.layers.base import Layer
from sparse_trax.layers.combinators import Serial, as_items, flatten_layers, from_items
from sparse_trax.layers.state import with_replay


def _nan_flag(values):
  """Whether the first element of the first floating value is NaN (None if none is)."""
  floats = [v for v in jax.tree_util.tree_leaves(values)
            if jnp.issubdtype(v.dtype, jnp.floating) and v.size]
  return jnp.isnan(floats[0].ravel()[0]) if floats else None


def _after(values, rng):
  """(values, rng) such that XLA can only draw randomness once `values` exist.

  Dropout masks depend on the rng alone. XLA:CPU removes optimization
  barriers before it schedules, so with a barrier alone its scheduler drew
  every layer's masks up front (in both passes) and kept them all alive:
  memory grew with depth. So the rng is also tied to the data: its key gets
  +1 when the first element of the first floating value is NaN (every result
  is NaN then anyway), +0 otherwise. XLA cannot fold that away, and for
  finite inputs the rng keeps its value, so the backward pass redraws the
  forward pass's masks exactly.
  """
  values = jax.lax.optimization_barrier(values)
  flag = _nan_flag(values)
  if rng is None or flag is None:
    return values, rng
  impl = jax.random.key_impl(rng)
  return values, jax.random.wrap_key_data(
      jax.random.key_data(rng) + flag.astype(jnp.uint32), impl=impl)


def _tied(values, anchor):
  """`values`, made computable only once `anchor` exists.

  In the backward pass, reconstructing a layer's inputs needs only the next
  layer's reconstructed inputs, not any cotangent, so XLA was free to run
  the whole chain of recomputations first and keep every layer's
  linearization (the SRU's gates and scan, dropout masks) alive until the
  cotangents reached it: memory grew with depth (3.35x from 2 to 24 layers
  with an SRU). Here element 0 of each floating value becomes NaN when
  element 0 of `anchor` (the cotangents) is NaN, and stays itself
  otherwise: the same numbers for finite cotangents, one element written
  per value, and a data dependence XLA cannot remove.
  """
  flag = _nan_flag(anchor)
  if flag is None:
    return values

  def tie(v):
    if not (jnp.issubdtype(v.dtype, jnp.floating) and v.size):
      return v
    first = (0,) * v.ndim
    return v.at[first].set(jnp.where(flag, jnp.nan, v[first]).astype(v.dtype))
  return jax.tree_util.tree_map(tie, values)


class ReversibleLayer(Layer):
  """A layer whose inputs can be recomputed from its outputs (n_in == n_out).

  Shapes: (x1, x2, *extras) -> the same shapes ([batch, length, d] each for x1, x2).
  """

  def reverse_and_grad(self, weights, state, outputs, d_outputs, rng):
    """From outputs and their cotangents, (inputs, input cotangents, weight cotangents).

    Args:
      weights: the layer's weights.
      state: the layer's state as the forward pass returned it (with the
        choices it made, replayed here).
      outputs: the tuple of output items.
      d_outputs: their cotangents.
      rng: the rng the forward pass used.
    """
    raise NotImplementedError


class ReversibleSwap(ReversibleLayer):
  """(x1, x2) -> (x2, x1)."""

  def __init__(self):
    super().__init__(2, 2)

  def forward(self, weights, state, inputs, rng):
    x1, x2 = inputs
    return (x2, x1), state

  def reverse_and_grad(self, weights, state, outputs, d_outputs, rng):
    return (outputs[1], outputs[0]), (d_outputs[1], d_outputs[0]), weights


class ReversibleHalfResidual(ReversibleLayer):
  """(x1, x2, *extras) -> (x1 + F(x2, *extras), x2, *extras).

  F is the Serial of `layers`; it takes x2 and the extras and gives its
  output first (any extras it returns are dropped: the inputs' extras pass
  through). Usually followed by ReversibleSwap.
  """

  takes_position = True

  def __init__(self, *layers: Layer, name=None):
    arguments.check_layer_arguments(self, ReversibleHalfResidual.__init__, locals())
    residual = layers[0] if len(layers) == 1 and isinstance(layers[0], Layer) else Serial(*layers)
    if residual.n_out < 1:
      raise ValueError('ReversibleHalfResidual needs a layer with an output')
    n = 1 + max(residual.n_in, 1)
    super().__init__(n, n, name=name, sublayers=(residual,))

  def _residual(self, weights, state, x2, extras, rng, position=None):
    residual = self.sublayers[0]
    items = (x2,) + tuple(extras[:residual.n_in - 1])
    out, state = self.apply_sublayer(0, weights[0], state[0], from_items(items, residual.n_in),
                                     rng, position)
    return as_items(out, residual.n_out)[0], (state,)

  def init_with_signature(self, input_signature, rng):
    items = as_items(input_signature, self.n_in)
    residual = self.sublayers[0]
    w, s, _ = self.init_sublayer(0, from_items((items[1],) + tuple(items[2:2 + residual.n_in - 1]),
                                               residual.n_in), rng)
    return (w,), (s,), input_signature

  def forward(self, weights, state, inputs, rng, position):
    x1, x2, *extras = inputs
    fx, state = self._residual(weights, state, x2, extras, rng, position)
    return (x1 + fx, x2, *extras), state

  def reverse_and_grad(self, weights, state, outputs, d_outputs, rng):
    y1, x2, *extras = outputs
    d_y1, d_x2, *d_extras = d_outputs
    replay = with_replay(state)
    fx, vjp = jax.vjp(lambda w, x: self._residual(w, replay, x, extras, rng)[0], weights, x2)
    d_weights, d_x2_through_f = vjp(d_y1)
    return (y1 - fx, x2, *extras), (d_y1, d_x2 + d_x2_through_f, *d_extras), d_weights


class ReversibleSerial(Layer):
  """Reversible layers in sequence, with memory-saving gradients.

  All layers take the top of the same stack (x1, x2, *extras) and give it
  back (n_in == n_out): x1 x2 extras -> y1 y2 extras, each the same shape
  (x1, x2 usually [batch, length, d_model]). Under `jax.grad` the backward pass recomputes each
  layer's inputs from its outputs instead of storing them.

  Args:
    *layers: ReversibleHalfResidual / ReversibleSwap layers.
    memory_saving: False runs plain autodiff of the same function (it
      stores every activation): a reference, and a baseline for memory.
  """

  takes_position = True

  def __init__(self, *layers: ReversibleLayer, memory_saving: bool = True, name=None):
    arguments.check_layer_arguments(self, ReversibleSerial.__init__, locals())
    layers = flatten_layers(layers)    # nested lists flattened, Nones dropped, as in Trax
    for layer in layers:
      if not isinstance(layer, ReversibleLayer):
        raise TypeError(f'ReversibleSerial takes reversible layers, got {layer!r}')
    n = max(layer.n_in for layer in layers)
    super().__init__(n, n, name=name, sublayers=layers)
    self.memory_saving = memory_saving

  def init_with_signature(self, input_signature, rng):
    items = as_items(input_signature, self.n_in)
    weights, states = [], []
    for i, layer in enumerate(self.sublayers):
      w, s, _ = self.init_sublayer(i, from_items(items[:layer.n_in], layer.n_in), rng)
      weights.append(w)
      states.append(s)
    return tuple(weights), tuple(states), input_signature

  def _run(self, weights, state, items, rng, position=None):
    new_states = []
    for i, layer in enumerate(self.sublayers):
      items, layer_rng = _after(items, rng)
      out, s = self.apply_sublayer(i, weights[i], state[i],
                                   from_items(items[:layer.n_in], layer.n_in), layer_rng,
                                   position)
      items = tuple(as_items(out, layer.n_out)) + tuple(items[layer.n_in:])
      new_states.append(s)
    return items, tuple(new_states)

  def forward(self, weights, state, inputs, rng, position):
    items = tuple(as_items(inputs, self.n_in))
    for extra in items[2:]:
      if jnp.issubdtype(extra.dtype, jnp.floating):
        raise ValueError('the extra stack items of a reversible stack (beyond x1, x2) '
                         f'must not be floating point; got {extra.dtype}')
    if not self.memory_saving or self.mode == 'predict':   # no gradients when decoding
      outputs, new_state = self._run(weights, state, items, rng, position)
      return from_items(outputs, self.n_out), new_state

    @jax.custom_vjp
    def run(weights, state, items, rng):
      return self._run(weights, state, items, rng)

    def run_forward(weights, state, items, rng):
      outputs, new_state = self._run(weights, state, items, rng)
      return (outputs, new_state), (weights, new_state, outputs, rng)

    def run_backward(residuals, cotangents):
      weights, new_state, outputs, rng = residuals
      d_items = tuple(cotangents[0])
      d_weights = [None] * len(self.sublayers)
      items = tuple(outputs)
      for i in reversed(range(len(self.sublayers))):
        layer = self.sublayers[i]
        # Recompute layer i only once layer i + 1's cotangents exist.
        items = _tied(items, d_items)
        (items, d_items), layer_rng = _after((items, d_items), rng)
        sub_rng = None if layer_rng is None else jax.random.fold_in(layer_rng, i)
        inputs, d_inputs, d_weights[i] = layer.reverse_and_grad(
            weights[i], new_state[i], items[:layer.n_in], d_items[:layer.n_in], sub_rng)
        items = tuple(inputs) + items[layer.n_in:]
        d_items = tuple(d_inputs) + d_items[layer.n_in:]
      return tuple(d_weights), None, d_items, None

    run.defvjp(run_forward, run_backward)
    outputs, new_state = run(weights, state, items, rng)
    return from_items(outputs, self.n_out), new_state


def ReversibleBlock(f: Sequence[Layer], g: Sequence[Layer]):  # pylint: disable=invalid-name
  """One RevNet block: (x1, x2) -> (x1 + F(x2), x2 + G(x1 + F(x2)))."""
  return [ReversibleHalfResidual(*f), ReversibleSwap(), ReversibleHalfResidual(*g),
          ReversibleSwap()]
