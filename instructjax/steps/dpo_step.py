"""Offline preference optimisation: one optimizer step of DPO, IPO or Plackett-Luce DPO on
K-wise rankings, against a frozen reference policy."""

from __future__ import annotations

import functools

import jax

from instructjax import losses
from instructjax.data.batches import RankingBatch
from instructjax.steps.gradients import mean_loss_step
from instructjax.train_state import TrainState

# loss name -> (the loss in instructjax.losses, the name of its coefficient)
PREFERENCE_LOSSES = {
    "dpo": (losses.dpo_loss, "beta"),
    "ipo": (losses.ipo_loss, "tau"),
    "plackett_luce": (losses.plackett_luce_dpo_loss, "beta"),
}


def ranked_logprobs(apply_fn, params, batch: RankingBatch, *, rng=None):
  """Summed log-probs of every ranked response given its prompt (batch.loss_mask marks
  the response tokens). -> [B, K]"""
  b, k, t = batch.tokens.shape
  tokens = batch.tokens.reshape(b * k, t)
  kwargs = ({"deterministic": False, "rngs": {"dropout": rng}} if rng is not None
            else {"deterministic": True})
  logits = apply_fn({"params": params}, tokens, token_mask=batch.token_mask.reshape(b * k, t),
                    **kwargs)  # [B*K, T, V]
  logps = losses.token_logprobs(logits[:, :-1], tokens[:, 1:])  # [B*K, T-1]: token t+1
  loss_mask = batch.loss_mask.reshape(b * k, t)[:, 1:]  # [B*K, T-1]
  return losses.masked_sum(logps, loss_mask, axis=1).reshape(b, k)


def dpo_step(state: TrainState, batch: RankingBatch, ref_params, *, loss: str = "dpo",
             coef: float, accum_steps: int = 1, axis_name: str | None = None):
  """-> (new_state, metrics). Pure: jit it with shardings (ref_params laid out as
  state.params), or pmap it with axis_name. The reference's log-probs are computed once
  per batch, here, without gradient. `coef` is beta (dpo, plackett_luce) or tau (ipo)."""
  if loss not in PREFERENCE_LOSSES:
    raise ValueError(f"loss={loss!r} is not one of {tuple(PREFERENCE_LOSSES)}")
  loss_fn, coef_name = PREFERENCE_LOSSES[loss]
  loss_fn = functools.partial(loss_fn, **{coef_name: coef})

  def loss_sums(params, micro: RankingBatch, rng):
    policy = ranked_logprobs(state.apply_fn, params, micro, rng=rng)  # [B, K]
    ref = jax.lax.stop_gradient(ranked_logprobs(state.apply_fn, ref_params, micro))  # [B, K]
    _, metrics = loss_fn(policy_logps=policy, ref_logps=ref,
                         response_mask=micro.response_mask)
    return metrics["loss_sum"], metrics

  return mean_loss_step(state, loss_sums, batch, count="element_count",
                        accum_steps=accum_steps, axis_name=axis_name)
