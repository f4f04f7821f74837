"""Building a model's weights in low-precision storage with bounded memory.

`model.init(signature, rng=..., weight_dtype='int8')` must not hold the
float32 tree it stands for: a 16B-parameter model is 64 GB in float32 and 16 GB
in int8. Compiling the whole initialization as one program does not bound its
temporaries (XLA schedules the random draws together), so this module runs the
initialization's jaxpr one equation at a time instead, the pattern of JAX's
"custom jaxpr interpreter" guide:

  1. trace the initialization once (`jax.make_jaxpr`; abstract, no memory);
  2. evaluate its equations in order; each one is a small compiled call (a
     random draw of one matrix, a scaling, a fold of the key);
  3. as soon as an equation produces one of the outputs, convert it to its
     storage (`convert_leaf`, one jitted call) and keep only the converted
     array; every intermediate is dropped after its last use.

So the float32 arrays alive at any moment are the few that the equation being
evaluated reads and writes: about one weight matrix (two while it is scaled),
beside the converted weights made so far. The result equals converting the
ordinary `init`'s weights (the same random draws; an int8 value may round the
other way at .5).
"""

from typing import Callable, Optional

import jax
from jax.extend import core as jax_core
import tqdm

from sparse_trax.layers.quantize import STORAGE_DTYPES
from sparse_trax.layers.quantize import convert_leaf_compiled as _convert


def _last_uses(jaxpr):
  """var -> index of the last equation reading it (len(eqns) for outputs)."""
  last = {}
  for index, eqn in enumerate(jaxpr.eqns):
    for var in eqn.invars:
      if not isinstance(var, jax_core.Literal):
        last[var] = index
  for var in jaxpr.outvars:
    if not isinstance(var, jax_core.Literal):
      last[var] = len(jaxpr.eqns)
  return last


def streamed_init(build: Callable, rng, convert_output: Callable[[int, object], object],
                  on_step: Optional[Callable[[int, int], None]] = None):
  """Evaluates `build(rng)` one equation at a time, converting outputs as they appear.

  Args:
    build: rng -> a pytree of arrays (a model's (weights, state)); traced
      once, so it must be a pure function of the rng.
    rng: a `jax.random.key`.
    convert_output: (key path of the output leaf, array) -> the array to
      keep for that output (for example `convert_leaf(x, 'int8')` for weight leaves, the
      array itself for state). Called once per output, right after the
      equation that makes it.
    on_step: optional (equations done, equations in all) -> None, called after
      every equation (a progress bar; tests sample `jax.live_arrays()` here).

  Returns:
    The pytree `build(rng)` returns, each leaf replaced by `convert_output`'s
    result.
  """
  closed, out_shape = jax.make_jaxpr(build, return_shape=True)(rng)
  paths_and_shapes, treedef = jax.tree_util.tree_flatten_with_path(out_shape)
  paths = [path for path, _ in paths_and_shapes]
  jaxpr = closed.jaxpr
  outputs_of = {}
  for position, var in enumerate(jaxpr.outvars):
    if not isinstance(var, jax_core.Literal):
      outputs_of.setdefault(var, []).append(position)
  results = [None] * len(jaxpr.outvars)
  last = _last_uses(jaxpr)
  env = {}

  def write(var, value):
    if isinstance(var, jax_core.DropVar):
      return
    for position in outputs_of.get(var, ()):
      results[position] = convert_output(paths[position], value)
    if var in last and last[var] < len(jaxpr.eqns):
      env[var] = value

  for var, value in zip(jaxpr.constvars, closed.consts):
    write(var, value)
  for var, value in zip(jaxpr.invars, [rng]):
    write(var, value)
  for position, var in enumerate(jaxpr.outvars):
    if isinstance(var, jax_core.Literal):
      results[position] = convert_output(paths[position], var.val)

  total = len(jaxpr.eqns)
  for index, eqn in enumerate(jaxpr.eqns):
    args = [var.val if isinstance(var, jax_core.Literal) else env[var] for var in eqn.invars]
    with eqn.ctx.manager:
      outs = eqn.primitive.bind(*args, **eqn.primitive.get_bind_params(eqn.params))
    if not eqn.primitive.multiple_results:
      outs = [outs]
    del args
    for var in eqn.invars:
      if not isinstance(var, jax_core.Literal) and last.get(var) == index:
        env.pop(var, None)
    for var, value in zip(eqn.outvars, outs):
      write(var, value)
    del outs
    if on_step is not None:
      on_step(index + 1, total)
  return jax.tree_util.tree_unflatten(treedef, results)


def init_in_storage(layer, input_signature, rng, weight_dtype: str,
                    on_step: Optional[Callable[[int, int], None]] = None):
  """`layer.init(input_signature, rng=rng)` with every weight matrix in `weight_dtype`.

  Args:
    layer: any `Layer`.
    input_signature: as for `Layer.init`.
    rng: a `jax.random.key`.
    weight_dtype: 'int8' or 'bfloat16' (see `quantize_weights`).
    on_step: optional progress callback, see `streamed_init`. Default: a
      tqdm bar on stderr that appears once the work has taken 5 seconds
      (a 16B-parameter model takes minutes).

  Returns:
    (weights, state) as `layer.init` returns them, the weight matrices
    converted; peak memory is the converted weights plus about one float32
    matrix (see the module docstring).
  """
  if weight_dtype not in STORAGE_DTYPES:
    raise ValueError(f'storage must be one of {STORAGE_DTYPES}, got {weight_dtype!r}')

  def init(key):
    return layer.init(input_signature, rng=key)

  def convert_output(path, value):
    if path[0].idx == 0:                      # (weights, state)[0]
      return _convert(value, weight_dtype)
    return value

  if on_step is not None:
    return streamed_init(init, rng, convert_output, on_step)
  with tqdm.tqdm(desc=f'init in {weight_dtype}', unit='op', delay=5, leave=False) as bar:
    def advance(done, total):
      bar.total = total
      bar.update(done - bar.n)
    return streamed_init(init, rng, convert_output, advance)
