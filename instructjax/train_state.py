"""The immutable train state every step consumes and returns."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """flax's TrainState plus the run's base rng (dropout uses fold_in(rng, step)) and a
  count of updates skipped because the loss or gradients were not finite."""
  rng: jax.Array  # [2] uint32
  skipped_updates: jax.Array  # [] int32, consecutive skipped updates


def create_train_state(*, apply_fn, params, tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
  return TrainState.create(apply_fn=apply_fn, params=params, tx=tx, rng=rng,
                           skipped_updates=jnp.zeros((), jnp.int32))


def param_count(params: Any) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
