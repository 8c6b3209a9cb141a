"""Stage 2: one optimizer step of the InstructGPT K-wise ranking loss."""

from __future__ import annotations

import jax.numpy as jnp

from instructjax import losses
from instructjax.data.batches import RankingBatch
from instructjax.models import last_token_value
from instructjax.steps.gradients import mean_loss_step
from instructjax.train_state import TrainState


def ranking_rewards(apply_fn, params, batch: RankingBatch, *, rng=None):
  """Scalar rewards of all K responses of every prompt: K forward passes per prompt,
  not C(K, 2). -> [B, K]"""
  b, k, t = batch.tokens.shape
  tokens = batch.tokens.reshape(b * k, t)
  token_mask = batch.token_mask.reshape(b * k, t)
  response_mask = batch.loss_mask.reshape(b * k, t)  # the response tokens, EOS included
  kwargs = ({"deterministic": False, "rngs": {"dropout": rng}} if rng is not None
            else {"deterministic": True})
  values = apply_fn({"params": params}, tokens, token_mask=token_mask,
                    response_mask=response_mask, **kwargs)  # [B*K, T]
  return last_token_value(values, token_mask).reshape(b, k)


def reward_step(state: TrainState, batch: RankingBatch, *, accum_steps: int = 1,
                axis_name: str | None = None):
  """-> (new_state, metrics). Pure: jit it with shardings, or pmap it with axis_name."""

  def loss_sums(params, micro: RankingBatch, rng):
    rewards = ranking_rewards(state.apply_fn, params, micro, rng=rng)  # [B, K]
    _, metrics = losses.ranking_loss(rewards=rewards, response_mask=micro.response_mask)
    return metrics["loss_sum"], metrics

  state, metrics = mean_loss_step(state, loss_sums, batch, count="element_count",
                                  accum_steps=accum_steps, axis_name=axis_name)
  return state, {**metrics, "accuracy": metrics["pair_correct_sum"]
                 / jnp.maximum(metrics["pair_count"], 1)}

