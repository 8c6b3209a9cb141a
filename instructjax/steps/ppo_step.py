"""Stage 3: one PPO(-ptx) optimizer step on a minibatch of a rollout.

loss = clipped policy loss + vf_coef * clipped value loss + ptx_coef * pretraining NLL
       + kl_loss_coef * KL(pi || pi_ref)

The ptx term is PPO-ptx's gamma * E_pretrain[log pi(x)] (maximised, so its negative is
minimised); ptx_coef = 0 is plain PPO. Policy and value are separate trunks held in one
train state ({'policy', 'value'}) and updated by one optimizer step. With a critic-free
advantage (RLOO, GRPO) there is no value model: value_model=None, params = {'policy'}.
The KL term is GRPO's, the k3 estimator on the rollout's tokens; PPO and RLOO put their
KL penalty in the reward instead (kl_loss_coef = 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from instructjax import losses, rl
from instructjax.data.batches import TokenBatch
from instructjax.rollout import Rollout, response_logprobs, response_values
from instructjax.steps.gradients import guarded_update
from instructjax.train_state import TrainState


class PPOState(TrainState):
  """params = {'policy', 'value'} ({'policy'} without a critic); plus the EMA of the policy ({} when off) and the KL
  coefficient."""
  ema_policy: dict
  kl_coef: jax.Array  # [] float32, beta


def _global_count(mask, axis_name):
  count = jnp.sum(mask)
  return jnp.maximum(count if axis_name is None else jax.lax.psum(count, axis_name), 1)


def ppo_step(state: PPOState, rollout: Rollout, ptx_batch: TokenBatch | None, *,
             policy, value_model, prompt_len: int, temperature: float, clip_eps: float,
             value_clip: float, vf_coef: float, ptx_coef: float, ema_decay: float = 0.0,
             kl_loss_coef: float = 0.0, axis_name: str | None = None):
  """-> (new_state, metrics). Pure; jit it with shardings or pmap it with axis_name.

  Every mean is a sum divided by a count taken over the whole (global) batch, so the
  sharded, pmapped and single-device steps compute the same update.
  """
  n_response = _global_count(rollout.response_mask, axis_name)

  def loss_fn(params):
    logprobs, logits = response_logprobs(
        policy.apply, params["policy"], rollout.tokens, rollout.token_mask,
        prompt_len=prompt_len, temperature=temperature)  # [B, N], [B, N, V]
    _, pg = rl.ppo_policy_loss(logprobs=logprobs, old_logprobs=rollout.logprobs,
                               advantages=rollout.advantages,
                               response_mask=rollout.response_mask, clip_eps=clip_eps)
    entropy = losses.masked_sum(losses.token_entropy(logits), rollout.response_mask)
    loss_sum = pg["loss_sum"]
    metrics = {"policy_loss": pg["loss_sum"], "clipfrac": pg["clipfrac_sum"],
               "approx_kl": pg["approx_kl_sum"], "ratio": pg["ratio_sum"], "entropy": entropy}
    if value_model is not None:
      values = response_values(value_model.apply, params["value"], rollout.tokens,
                               rollout.token_mask, rollout.response_mask,
                               prompt_len=prompt_len)  # [B, N]
      _, vf = rl.ppo_value_loss(values=values, old_values=rollout.values,
                                returns=rollout.returns,
                                response_mask=rollout.response_mask, clip_range=value_clip)
      loss_sum = loss_sum + vf_coef * vf["loss_sum"]
      metrics.update(value_loss=vf["loss_sum"], value_clipfrac=vf["clipfrac_sum"])
    if kl_loss_coef > 0:
      kl_sum = losses.masked_sum(
          rl.k3_kl(logprobs=logprobs, ref_logprobs=rollout.ref_logprobs,
                   response_mask=rollout.response_mask), rollout.response_mask)
      loss_sum = loss_sum + kl_loss_coef * kl_sum
      metrics["kl_loss"] = kl_sum
    loss = loss_sum / n_response
    metrics = {k: v / n_response for k, v in metrics.items()}
    if ptx_batch is not None and ptx_coef > 0:
      ptx_logits = policy.apply({"params": params["policy"]}, ptx_batch.tokens,
                                token_mask=ptx_batch.token_mask)  # [Bp, T, V]
      _, ptx = losses.next_token_loss(logits=ptx_logits, tokens=ptx_batch.tokens,
                                      loss_mask=ptx_batch.loss_mask)
      ptx_loss = ptx["loss_sum"] / _global_count(ptx_batch.loss_mask[:, 1:], axis_name)
      loss = loss + ptx_coef * ptx_loss
      metrics["ptx_loss"] = ptx_loss
    return loss, metrics

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    loss, metrics, grads = jax.lax.psum((loss, metrics, grads), axis_name)
  new_state, update_metrics = guarded_update(state, grads, loss)
  if ema_decay > 0:
    ema = optax.incremental_update(new_state.params["policy"], state.ema_policy,
                                   step_size=1.0 - ema_decay)
    new_state = new_state.replace(ema_policy=ema)
  return new_state, {**metrics, **update_metrics, "loss": loss}
