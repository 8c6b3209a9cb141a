"""The immutable train state every step consumes and returns."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from instructjax.optimizers import make_optimizer


class TrainState(train_state.TrainState):
  """flax's TrainState plus the run's base rng (dropout uses fold_in(rng, step)) and a
  count of updates skipped because the loss or gradients were not finite."""
  rng: jax.Array  # [2] uint32
  skipped_updates: jax.Array  # [] int32, consecutive skipped updates


def create_train_state(*, apply_fn, params, tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
  return TrainState.create(apply_fn=apply_fn, params=params, tx=tx, rng=rng,
                           skipped_updates=jnp.zeros((), jnp.int32))


def make_init_state(model, train: ml_collections.ConfigDict, example_len: int):
  """rng -> a train state with fresh (boxed) params of `model` and the AdamW schedule of
  `train` (a pretrain, sft or rm config section)."""
  tx = make_optimizer(peak_lr=train.lr, warmup_steps=train.warmup_steps,
                      total_steps=train.steps, weight_decay=train.weight_decay,
                      grad_clip_norm=train.grad_clip_norm)

  def init_state(rng):
    params = model.init(rng, jnp.zeros((1, example_len), jnp.int32))["params"]
    return create_train_state(apply_fn=model.apply, params=params, tx=tx, rng=rng)
  return init_state
