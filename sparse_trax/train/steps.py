"""The jitted pieces of training: train and eval steps, evaluation over batches.

Pure functions of a model, an optimizer and batches; `Loop` composes them.
"""

import inspect
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparse_trax import decoding
from sparse_trax.layers import losses


def build_model(model_fn: Callable, mode: str, vocab_size: int):
  """Calls a model function, filling in vocabulary sizes from the tokenizer."""
  parameters = inspect.signature(model_fn).parameters
  kwargs = {name: vocab_size for name in ('vocab_size', 'input_vocab_size', 'output_vocab_size')
            if name in parameters}
  return model_fn(mode=mode, **kwargs)


def model_inputs(batch, lm: bool):
  """What the model takes from a batch: targets (an LM), or (inputs, targets)."""
  return batch['targets'] if lm else (batch['inputs'], batch['targets'])


def signature(batch):
  """The ShapeDtypeStructs of a batch (or any pytree of arrays)."""
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)


COMPUTE_DTYPES = ('float32', 'bfloat16')


def cast_floating(tree, dtype):
  """Every floating array of a pytree cast to `dtype` (integers and keys kept)."""
  return jax.tree_util.tree_map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def make_train_step(model, optimizer: optax.GradientTransformation, lm: bool,
                    shardings: Optional[tuple] = None, compute_dtype: str = 'float32'):
  """A jitted step: (weights, model_state, opt_state, batch, rng) -> (..., metrics).

  `shardings`: optional (weights, model_state, opt_state, batch) pytrees of
  shardings (see `parallel.Placement`); outputs keep their inputs' shardings.
  `compute_dtype` 'bfloat16' runs the forward and backward pass on bfloat16
  copies of the weights (the layers then compute in bfloat16, with float32
  softmax, normalization statistics, SRU carry and loss); the weights, their
  gradients and the optimizer state stay float32.
  """
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f'compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}')

  def loss_fn(weights, model_state, batch, rng):
    if compute_dtype != 'float32':
      weights = cast_floating(weights, compute_dtype)   # gradients flow back to float32
    logits, model_state = model.apply(weights, model_state, model_inputs(batch, lm), rng=rng)
    loss = losses.weighted_cross_entropy(logits, batch['targets'], batch['weights'])
    return loss, (model_state, logits)

  def step(weights, model_state, opt_state, batch, rng):
    (loss, (model_state, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        weights, model_state, batch, rng)
    updates, opt_state = optimizer.update(grads, opt_state, weights)
    weights = optax.apply_updates(weights, updates)
    metrics = {'loss': loss, 'gradient_norm': optax.tree.norm(grads),
               'accuracy': losses.weighted_accuracy(logits, batch['targets'], batch['weights'])}
    return weights, model_state, opt_state, metrics
  if shardings is None:
    return jax.jit(step)
  weights_sh, state_sh, opt_sh, batch_sh = shardings
  mesh = jax.tree_util.tree_leaves(weights_sh)[0].mesh
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(step, in_shardings=(weights_sh, state_sh, opt_sh, batch_sh, replicated),
                 out_shardings=(weights_sh, state_sh, opt_sh, replicated))


def make_eval_step(model, lm: bool):
  """A jitted step: (weights, model_state, batch) -> summed (nll, correct, weight,
  correct sequences, sequences)."""
  @jax.jit
  def step(weights, model_state, batch):
    logits, _ = model.apply(weights, model_state, model_inputs(batch, lm))
    w = batch['weights']
    total = jnp.sum(w)
    nll = losses.weighted_cross_entropy(logits, batch['targets'], w) * total
    correct = losses.weighted_accuracy(logits, batch['targets'], w) * total
    sequences = jnp.sum(jnp.any(w > 0, axis=1))
    right_sequences = losses.sequence_accuracy(logits, batch['targets'], w) * sequences
    return nll, correct, total, right_sequences, sequences
  return step


def evaluate(eval_model, eval_step, weights, batches, lm: bool) -> dict:
  """Eval loss (= log-perplexity, nats per token) and accuracy over all batches.

  The eval model gets its own state (layers may keep different state per mode).
  """
  sums = np.zeros(5)
  eval_state = None
  for batch in batches:
    if eval_state is None:
      eval_state = decoding.initial_state(eval_model, signature(model_inputs(batch, lm)))
    sums += np.array([float(v) for v in eval_step(weights, eval_state, batch)])
  nll, correct, total, right_sequences, sequences = sums
  if total == 0:
    raise ValueError('the eval split gave no weighted tokens')
  return {'eval_loss': nll / total, 'eval_log_perplexity': nll / total,
          'eval_accuracy': correct / total,
          'eval_sequence_accuracy': right_sequences / max(sequences, 1.0)}
