"""Stage 1 (and stage 0 pretraining): one optimizer step of masked next-token loss."""

from __future__ import annotations

import jax.numpy as jnp

from instructjax import losses
from instructjax.data.batches import TokenBatch
from instructjax.steps.gradients import mean_loss_step
from instructjax.train_state import TrainState


def sft_step(state: TrainState, batch: TokenBatch, *, accum_steps: int = 1,
             axis_name: str | None = None):
  """-> (new_state, metrics). Pure: jit it with shardings, or pmap it with axis_name."""

  def loss_sums(params, micro: TokenBatch, rng):
    logits = state.apply_fn({"params": params}, micro.tokens, token_mask=micro.token_mask,
                            deterministic=False, rngs={"dropout": rng})  # [B, T, V]
    _, metrics = losses.next_token_loss(logits=logits, tokens=micro.tokens,
                                        loss_mask=micro.loss_mask)
    return metrics["loss_sum"], metrics

  state, metrics = mean_loss_step(state, loss_sums, batch, count="token_count",
                                  accum_steps=accum_steps, axis_name=axis_name)
  return state, {**metrics,
                 "accuracy": metrics["accuracy_sum"] / jnp.maximum(metrics["token_count"], 1)}

