"""What every train step shares: microbatched gradients and a NaN-guarded update."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from instructjax.train_state import TrainState


def split_microbatches(batch, accum_steps: int):
  """[B, ...] -> [A, B / A, ...], microbatch a taking rows a, a + A, a + 2A, ...

  Strided rows keep every microbatch spread over all data-parallel devices."""
  def split(x):
    if x.shape[0] % accum_steps:
      raise ValueError(
          f"batch of {x.shape[0]} rows is not divisible by accum_steps={accum_steps}")
    x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def summed_gradients(loss_sums_fn: Callable[..., tuple[jax.Array, dict]], params: Any,
                     batch: Any, rng: jax.Array, *, accum_steps: int = 1,
                     axis_name: str | None = None):
  """Gradients of a summed loss and its metric sums, over microbatches and devices.

  loss_sums_fn(params, microbatch, rng) -> (loss_sum, metrics): metrics hold sums and
  counts only, so adding them over microbatches and devices is exact; the caller
  divides by the total count once.
  """
  grad_fn = jax.value_and_grad(loss_sums_fn, has_aux=True)
  if accum_steps == 1:
    (_, metrics), grads = grad_fn(params, batch, rng)
  else:
    micro = split_microbatches(batch, accum_steps)

    def body(carry, xs):
      index, microbatch = xs
      (_, m), g = grad_fn(params, microbatch, jax.random.fold_in(rng, index))
      return jax.tree.map(jnp.add, carry, (g, m)), None

    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(lambda: grad_fn(params, first, rng))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (shapes[1], shapes[0][1]))
    (grads, metrics), _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
  if axis_name is not None:
    grads, metrics = jax.lax.psum((grads, metrics), axis_name)
  return grads, metrics


def divide(tree: Any, count: jax.Array) -> Any:
  return jax.tree.map(lambda x: x / count, tree)


def step_rng(state: TrainState, axis_name: str | None = None) -> jax.Array:
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:  # distinct dropout masks per pmap device
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  return rng


def guarded_update(state: TrainState, grads: Any, loss: jax.Array):
  """Applies grads unless the loss or any gradient is NaN/Inf; then the parameters and
  optimizer state stay as they were, the step still advances, and the skip is counted.
  Returns (new_state, metrics)."""
  # A NaN or Inf in any gradient makes the global norm non-finite (so does a norm past
  # float32's range, ~1.8e19, no update to take either). One norm, already wanted for the
  # metrics and the clipping, compiles to far fewer kernels than a check per leaf.
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # A cond, not a select per state leaf: XLA copies the scalar chain behind `finite`
  # into every fusion that reads it, so compiling grew with leaves^2 (PPO's step at 4
  # layers: ~100k ops, most of its 20 s of compile).
  new_state = jax.lax.cond(
      finite,
      lambda: state.apply_gradients(grads=grads).replace(
          skipped_updates=jnp.zeros_like(state.skipped_updates)),
      lambda: state.replace(step=state.step + 1,
                            skipped_updates=state.skipped_updates + 1))
  metrics = {"grad_norm": grad_norm,  # NaN/Inf when the update was skipped
             "update_skipped": (~finite).astype(jnp.int32),
             "consecutive_skips": new_state.skipped_updates}
  return new_state, metrics


def mean_loss_step(state: TrainState, loss_sums_fn: Callable[..., tuple[jax.Array, dict]],
                   batch: Any, *, count: str, accum_steps: int = 1,
                   axis_name: str | None = None):
  """The step every supervised stage takes: gradients of the summed loss over
  microbatches and devices, divided by the total `metrics[count]` (tokens, prompts), then
  the NaN-guarded update. -> (new_state, the metric sums, the update's metrics and
  "loss")."""
  grads, sums = summed_gradients(loss_sums_fn, state.params, batch,
                                 step_rng(state, axis_name), accum_steps=accum_steps,
                                 axis_name=axis_name)
  total = jnp.maximum(sums[count], 1)
  loss = sums["loss_sum"] / total
  state, update_metrics = guarded_update(state, divide(grads, total), loss)
  return state, {**sums, **update_metrics, "loss": loss}
