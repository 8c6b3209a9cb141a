"""PPO math for language models, as pure functions (InstructGPT's RL stage), and the
critic-free advantage estimators (GRPO, RLOO) that can stand in for GAE.

The environment is a bandit: a prompt, a sampled response, one reward-model score at
the end. Arrays are [B, T] over the rolled-out sequence; `response_mask` [B, T] is
nonzero at the response tokens (a contiguous run, possibly after prompt positions).
Position t holds the log-prob / value / reward of the response token at t.

Losses return `(loss, metrics)` with sums and counts kept apart, as in
`instructjax.losses`. Everything is jax.numpy without Python control flow on traced
values (jit, vmap, shard_map and pmap all work); pass `axis_name` to the functions that
take batch statistics to make them global inside shard_map/pmap.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from instructjax.losses import masked_count, masked_mean, masked_sum, require_shape


def _require_same_shape(where: str, reference: str, **arrays) -> None:
  shape = jnp.shape(arrays[reference])
  for name, array in arrays.items():
    require_shape(where, f"{name} (must match {reference})", array, shape)


def kl_penalized_rewards(*, scores, logprobs, ref_logprobs, response_mask, kl_coef):
  """Per-token PPO rewards: a KL penalty at every response token plus the final score.

  Args:
    scores: [B] reward-model scores of the whole responses.
    logprobs: [B, T] policy log-probs of the sampled tokens.
    ref_logprobs: [B, T] reference (SFT) log-probs of the same tokens.
    response_mask: [B, T]; nonzero at response tokens.
    kl_coef: beta, a scalar (may be traced, for the adaptive controller).

  Returns:
    (rewards, kl), both [B, T] float32 and 0 off the response. kl = logp - ref_logp;
    rewards = -kl_coef * kl, with the score added at the last response token (a row
    with no response tokens gets no score).
  """
  require_shape("kl_penalized_rewards", "logprobs", logprobs, (None, None))
  _require_same_shape("kl_penalized_rewards", "logprobs", logprobs=logprobs,
                      ref_logprobs=ref_logprobs, response_mask=response_mask)
  require_shape("kl_penalized_rewards", "scores", scores, jnp.shape(logprobs)[:1])
  in_response = response_mask != 0  # [B, T]
  kl = jnp.where(in_response, logprobs.astype(jnp.float32) - ref_logprobs, 0.0)  # [B, T]
  positions = jnp.arange(jnp.shape(logprobs)[1])
  last = jnp.max(jnp.where(in_response, positions, -1), axis=1)  # [B]; -1: no response
  at_last = positions[None, :] == last[:, None]  # [B, T]
  rewards = -kl_coef * kl + jnp.where(at_last, scores.astype(jnp.float32)[:, None], 0.0)
  return rewards, kl


def gae(*, rewards, values, response_mask, gamma, lam):
  """Generalised advantage estimation over the response tokens.

  delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}, where
  V and A after the last response token are 0 (the episode ends there).

  Args:
    rewards: [B, T] per-token rewards (e.g. from `kl_penalized_rewards`).
    values: [B, T] value estimates.
    response_mask: [B, T]; nonzero at response tokens.
    gamma: discount (InstructGPT: 1).
    lam: GAE lambda (InstructGPT: 0.95).

  Returns:
    (advantages, returns), both [B, T] float32; returns = advantages + values on the
    response and both are 0 elsewhere.
  """
  require_shape("gae", "rewards", rewards, (None, None))
  _require_same_shape("gae", "rewards", rewards=rewards, values=values,
                      response_mask=response_mask)
  in_response = response_mask != 0  # [B, T]
  values = jnp.where(in_response, values.astype(jnp.float32), 0.0)  # [B, T]
  rewards = jnp.where(in_response, rewards.astype(jnp.float32), 0.0)  # [B, T]

  def step(carry, xs):
    next_value, next_advantage = carry  # [B], [B]: 0 past the response
    reward, value, mask = xs  # [B] each
    delta = reward + gamma * next_value - value
    advantage = jnp.where(mask, delta + gamma * lam * next_advantage, 0.0)
    return (value, advantage), advantage

  zeros = jnp.zeros(jnp.shape(rewards)[:1], jnp.float32)  # [B]
  # Scan over time: [T, B] inputs, last position first.
  _, advantages = jax.lax.scan(
      step, (zeros, zeros), (rewards.T, values.T, in_response.T), reverse=True)
  advantages = advantages.T  # [B, T]
  returns = jnp.where(in_response, advantages + values, 0.0)
  return advantages, returns


def whiten(x, mask, *, shift_mean: bool = True, eps: float = 1e-8,
           axis_name: str | tuple[str, ...] | None = None):
  """Normalises x to unit variance (and zero mean) over the entries where mask != 0.

  Statistics are the masked mean and (biased) variance over the whole array, and also
  over the mesh axes `axis_name` when given. `shift_mean=False` (for reward whitening)
  divides by the standard deviation but keeps the mean. Masked-out entries return 0.
  """
  require_shape("whiten", "mask", mask, jnp.shape(x))
  x = x.astype(jnp.float32)
  mean = masked_mean(x, mask, axis_name=axis_name)
  var = masked_mean(jnp.square(x - mean), mask, axis_name=axis_name)
  whitened = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    whitened = whitened + mean
  return jnp.where(mask != 0, whitened, 0.0)


def ppo_policy_loss(*, logprobs, old_logprobs, advantages, response_mask, clip_eps):
  """PPO's clipped surrogate, a token mean over the response.

  Per token, with ratio = exp(logp - old_logp):
  max(-A * ratio, -A * clip(ratio, 1 - clip_eps, 1 + clip_eps)).

  Args:
    logprobs: [B, T] log-probs under the policy being trained (gradients flow here).
    old_logprobs: [B, T] log-probs under the rollout policy (treated as constants).
    advantages: [B, T] (treated as constants).
    response_mask: [B, T]; nonzero at response tokens.
    clip_eps: ratio clip range (InstructGPT: 0.2).

  Returns:
    (loss, metrics): loss = loss_sum / max(token_count, 1). Metrics: loss_sum,
    token_count, clipfrac_sum (tokens where the clipped term was the larger),
    approx_kl_sum (the k3 estimator (ratio - 1) - log ratio of KL(old || new)) and
    ratio_sum.
  """
  require_shape("ppo_policy_loss", "logprobs", logprobs, (None, None))
  _require_same_shape("ppo_policy_loss", "logprobs", logprobs=logprobs,
                      old_logprobs=old_logprobs, advantages=advantages,
                      response_mask=response_mask)
  in_response = response_mask != 0  # [B, T]
  old_logprobs = jax.lax.stop_gradient(old_logprobs)
  advantages = jax.lax.stop_gradient(advantages).astype(jnp.float32)
  # Zero off the response before exp so padding cannot overflow into inf / NaN grads.
  log_ratio = jnp.where(in_response, logprobs.astype(jnp.float32) - old_logprobs, 0.0)
  ratio = jnp.exp(log_ratio)  # [B, T]
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  per_token = jnp.maximum(unclipped, clipped)  # [B, T]
  loss_sum = masked_sum(per_token, in_response)
  token_count = masked_count(in_response)
  metrics = {
      "loss_sum": loss_sum,
      "token_count": token_count,
      "clipfrac_sum": masked_sum(clipped > unclipped, in_response),
      "approx_kl_sum": masked_sum((ratio - 1.0) - log_ratio, in_response),
      "ratio_sum": masked_sum(ratio, in_response),
  }
  return loss_sum / jnp.maximum(token_count, 1.0), metrics


def ppo_value_loss(*, values, old_values, returns, response_mask, clip_range):
  """Clipped value loss: 0.5 * max((v - R)^2, (old_v + clip(v - old_v, ±c) - R)^2).

  Args:
    values: [B, T] predictions of the value model being trained.
    old_values: [B, T] predictions at rollout time (treated as constants).
    returns: [B, T] GAE returns (treated as constants).
    response_mask: [B, T]; nonzero at response tokens.
    clip_range: c, how far values may move from old_values before the clip bites.

  Returns:
    (loss, metrics): loss = loss_sum / max(token_count, 1). Metrics: loss_sum,
    token_count, clipfrac_sum (tokens where the clipped error was the larger) and
    value_sum.
  """
  require_shape("ppo_value_loss", "values", values, (None, None))
  _require_same_shape("ppo_value_loss", "values", values=values, old_values=old_values,
                      returns=returns, response_mask=response_mask)
  in_response = response_mask != 0  # [B, T]
  values = values.astype(jnp.float32)
  old_values = jax.lax.stop_gradient(old_values).astype(jnp.float32)
  returns = jax.lax.stop_gradient(returns).astype(jnp.float32)
  clipped_values = old_values + jnp.clip(values - old_values, -clip_range, clip_range)
  unclipped_error = jnp.square(values - returns)  # [B, T]
  clipped_error = jnp.square(clipped_values - returns)  # [B, T]
  per_token = 0.5 * jnp.maximum(unclipped_error, clipped_error)
  loss_sum = masked_sum(per_token, in_response)
  token_count = masked_count(in_response)
  metrics = {
      "loss_sum": loss_sum,
      "token_count": token_count,
      "clipfrac_sum": masked_sum(clipped_error > unclipped_error, in_response),
      "value_sum": masked_sum(values, in_response),
  }
  return loss_sum / jnp.maximum(token_count, 1.0), metrics


def adaptive_kl_coef(kl_coef, *, observed_kl, target_kl, horizon, n_steps):
  """Ziegler et al.'s proportional KL controller; returns the new beta.

  e = clip((observed_kl - target_kl) / target_kl, -0.2, 0.2);
  beta <- beta * (1 + e * n_steps / horizon). `observed_kl` is the mean per-sequence KL
  of the batch and `n_steps` the episodes it held. Works on host floats and in jit.
  """
  for name, value in (("target_kl", target_kl), ("horizon", horizon)):
    # Only concrete numbers can be checked; traced values pass through.
    if isinstance(value, numbers.Real) and value <= 0:
      raise ValueError(f"adaptive_kl_coef: {name}={value} must be positive")
  error = jnp.clip((observed_kl - target_kl) / target_kl, -0.2, 0.2)
  return kl_coef * (1.0 + error * n_steps / horizon)


def k3_kl(*, logprobs, ref_logprobs, response_mask):
  """Per-token k3 estimate of KL(pi || pi_ref) on tokens sampled from pi (Schulman's
  "approximating KL" note; GRPO's KL term): r - log r - 1 with r = pi_ref / pi, which is
  never negative and unbiased. Gradients flow through logprobs. [B, T] -> [B, T], 0 off
  the response."""
  _require_same_shape("k3_kl", "logprobs", logprobs=logprobs, ref_logprobs=ref_logprobs,
                      response_mask=response_mask)
  in_response = response_mask != 0  # [B, T]
  # Zero off the response before exp so padding cannot overflow into inf / NaN grads.
  log_ratio = jnp.where(in_response, jax.lax.stop_gradient(ref_logprobs)
                        - logprobs.astype(jnp.float32), 0.0)  # [B, T]
  return jnp.exp(log_ratio) - log_ratio - 1.0


def explained_variance(*, values, returns, mask,
                       axis_name: str | tuple[str, ...] | None = None):
  """1 - Var[returns - values] / Var[returns] over the entries where mask != 0.

  1 is a perfect value function, 0 no better than a constant. Returns 0 when the
  returns have no variance (undefined there; 0 keeps averaged metrics finite).
  """
  _require_same_shape("explained_variance", "values", values=values, returns=returns,
                      mask=mask)
  values = values.astype(jnp.float32)
  returns = returns.astype(jnp.float32)

  def variance(x):
    mean = masked_mean(x, mask, axis_name=axis_name)
    return masked_mean(jnp.square(x - mean), mask, axis_name=axis_name)

  var_returns = variance(returns)
  safe = jnp.where(var_returns > 0, var_returns, 1.0)
  return jnp.where(var_returns > 0, 1.0 - variance(returns - values) / safe, 0.0)


# --- critic-free advantages: G samples per prompt, no value model ---------------------


def _check_groups(where: str, rewards) -> None:
  require_shape(where, "rewards", rewards, (None, None))
  group = jnp.shape(rewards)[1]
  if group < 2:
    raise ValueError(
        f"{where}: rewards has shape {tuple(jnp.shape(rewards))}, i.e. G={group} sample per "
        "prompt; a group baseline needs G >= 2 (with G=1 every advantage would be 0)")


def grpo_advantages(rewards, *, eps: float = 1e-6):
  """GRPO (Shao et al. 2024): each sample's reward normalised within its prompt's group,
  (r - mean) / (std + eps), std over the G samples (ddof 0). rewards: [P, G] -> [P, G].
  GRPO puts its KL to the reference in the loss, not in these rewards."""
  _check_groups("grpo_advantages", rewards)
  rewards = rewards.astype(jnp.float32)
  mean = jnp.mean(rewards, axis=1, keepdims=True)  # [P, 1]
  return (rewards - mean) / (jnp.std(rewards, axis=1, keepdims=True) + eps)


def rloo_advantages(rewards):
  """RLOO (Ahmadian et al. 2024): each sample's reward minus the mean of the other G - 1
  samples of its prompt, an unbiased baseline. rewards: [P, G] -> [P, G]."""
  _check_groups("rloo_advantages", rewards)
  rewards = rewards.astype(jnp.float32)
  group = rewards.shape[1]
  others = (jnp.sum(rewards, axis=1, keepdims=True) - rewards) / (group - 1)  # [P, G]
  return rewards - others
