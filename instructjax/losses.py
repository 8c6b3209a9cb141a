"""Supervised losses: next-token NLL (SFT, pretraining, PPO-ptx), the K-wise RM loss, and
the offline preference losses on rankings (DPO, IPO, Plackett-Luce DPO).

Every loss returns `(loss, metrics)`. Metrics hold sums and counts separately
(`loss_sum`, `token_count`, ...) so callers can add them over gradient-accumulation
microbatches and devices and divide only when reporting. All functions are pure
jax.numpy without Python control flow on traced values, so they work under jit, vmap,
shard_map and pmap. Masks follow `instructjax.data.batches`: nonzero = counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def require_shape(where: str, name: str, array, shape: Sequence[int | None]) -> None:
  """Raises ValueError unless `array` has `shape` (None matches any size)."""
  actual = tuple(jnp.shape(array))
  ok = len(actual) == len(shape) and all(
      want is None or want == got for want, got in zip(shape, actual))
  if not ok:
    expected = tuple("*" if s is None else s for s in shape)
    raise ValueError(f"{where}: {name} has shape {actual}, expected {expected}")


def masked_sum(x, mask, *, axis=None, axis_name: str | tuple[str, ...] | None = None):
  """Sum of x where mask != 0, in float32.

  `where` rather than a product, so NaN or inf under a zero mask cannot leak in.
  With `axis_name` (inside shard_map/pmap) the sum also runs over those mesh axes.
  """
  total = jnp.sum(jnp.where(mask != 0, x, 0).astype(jnp.float32), axis=axis)
  return total if axis_name is None else jax.lax.psum(total, axis_name)


def masked_count(mask, *, axis=None, axis_name: str | tuple[str, ...] | None = None):
  """Number of entries where mask != 0, as float32."""
  return masked_sum(jnp.ones(jnp.shape(mask), jnp.float32), mask, axis=axis,
                    axis_name=axis_name)


def masked_mean(x, mask, *, axis=None, axis_name: str | tuple[str, ...] | None = None):
  """Mean of x where mask != 0; 0 where nothing is masked in."""
  count = masked_count(mask, axis=axis, axis_name=axis_name)
  return masked_sum(x, mask, axis=axis, axis_name=axis_name) / jnp.maximum(count, 1.0)


def token_logprobs(logits, targets):
  """log softmax(logits)[targets] in float32.

  Args:
    logits: [B, T, V] float.
    targets: [B, T] int.

  Returns:
    [B, T] float32 log-probabilities.
  """
  require_shape("token_logprobs", "targets", targets, jnp.shape(logits)[:-1])
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"token_logprobs: targets must be integers, got {targets.dtype}")
  logits = logits.astype(jnp.float32)
  # Gather then subtract logsumexp: no [B, T, V] log-softmax array is materialised.
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # [B, T]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def token_entropy(logits):
  """Entropy of softmax(logits) per position: logits [B, T, V] -> [B, T] float32."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1, keepdims=True)  # [B, T, 1]
  probs = jnp.exp(logits - log_z)  # [B, T, V]
  # H = log Z - E_p[logit]; zero-probability entries (e.g. -inf logits after top-k
  # filtering) contribute 0 rather than 0 * -inf = NaN.
  safe_logits = jnp.where(probs > 0, logits, 0.0)
  return log_z[..., 0] - jnp.sum(probs * safe_logits, axis=-1)


def next_token_loss(*, logits, tokens, loss_mask):
  """Masked mean NLL of tokens[:, t + 1] under logits[:, t].

  Args:
    logits: [B, T, V] float.
    tokens: [B, T] int.
    loss_mask: [B, T]; loss_mask[:, t] != 0 where tokens[:, t] is a target.

  Returns:
    (loss, metrics): loss = loss_sum / max(token_count, 1); metrics has loss_sum,
    token_count and accuracy_sum (targets that are the argmax of the logits).
  """
  require_shape("next_token_loss", "logits", logits, (None, None, None))
  batch, length = jnp.shape(logits)[:2]
  require_shape("next_token_loss", "tokens", tokens, (batch, length))
  require_shape("next_token_loss", "loss_mask", loss_mask, (batch, length))
  pred_logits = logits[:, :-1]  # [B, T-1, V]
  targets = tokens[:, 1:]  # [B, T-1]
  mask = loss_mask[:, 1:]  # [B, T-1]
  nll = -token_logprobs(pred_logits, targets)  # [B, T-1]
  correct = jnp.argmax(pred_logits, axis=-1) == targets  # [B, T-1]
  loss_sum = masked_sum(nll, mask)
  token_count = masked_count(mask)
  metrics = {
      "loss_sum": loss_sum,
      "token_count": token_count,
      "accuracy_sum": masked_sum(correct, mask),
  }
  return loss_sum / jnp.maximum(token_count, 1.0), metrics


def ranking_loss(*, rewards, response_mask):
  """InstructGPT's K-wise reward-model loss, one batch element per prompt.

  For element b with K_b real responses, the loss is the mean over its C(K_b, 2) pairs
  i < j of -log sigmoid(r_i - r_j) (responses are ordered best first). The batch loss
  is the mean over elements with K_b >= 2; others contribute nothing.

  Args:
    rewards: [B, K] float, best response first.
    response_mask: [B, K]; nonzero = a real response.

  Returns:
    (loss, metrics): loss = loss_sum / max(element_count, 1). Metrics: loss_sum,
    element_count, pair_correct_sum (pairs with r_i > r_j), pair_count, and over
    counted elements best_reward_sum / worst_reward_sum (first / last real response);
    over all real responses reward_sum, reward_sq_sum and response_count.
  """
  require_shape("ranking_loss", "rewards", rewards, (None, None))
  require_shape("ranking_loss", "response_mask", response_mask, jnp.shape(rewards))
  real = response_mask != 0  # [B, K]
  # Padded responses may carry garbage rewards (even NaN): zero them first so nothing
  # of theirs reaches the loss, the metrics or the gradient.
  rewards = jnp.where(real, rewards.astype(jnp.float32), 0.0)
  k = rewards.shape[1]
  upper = jnp.triu(jnp.ones((k, k), bool), k=1)  # [K, K]: i < j
  pair_mask = real[:, :, None] & real[:, None, :] & upper  # [B, K, K]
  diff = rewards[:, :, None] - rewards[:, None, :]  # [B, K, K]: r_i - r_j
  pair_loss = jax.nn.softplus(-diff)  # [B, K, K]: -log sigmoid(r_i - r_j)

  pairs_per_element = masked_count(pair_mask, axis=(1, 2))  # [B]
  counted = pairs_per_element > 0  # [B]: at least 2 real responses
  element_loss = (masked_sum(pair_loss, pair_mask, axis=(1, 2))
                  / jnp.maximum(pairs_per_element, 1.0))  # [B]

  positions = jnp.arange(k)
  first = jnp.argmax(real, axis=1)  # [B]
  last = jnp.max(jnp.where(real, positions, 0), axis=1)  # [B]
  best = jnp.take_along_axis(rewards, first[:, None], axis=1)[:, 0]  # [B]
  worst = jnp.take_along_axis(rewards, last[:, None], axis=1)[:, 0]  # [B]

  loss_sum = masked_sum(element_loss, counted)
  element_count = masked_count(counted)
  metrics = {
      "loss_sum": loss_sum,
      "element_count": element_count,
      "pair_correct_sum": masked_sum(diff > 0, pair_mask),
      "pair_count": jnp.sum(pairs_per_element),
      "best_reward_sum": masked_sum(best, counted),
      "worst_reward_sum": masked_sum(worst, counted),
      "reward_sum": masked_sum(rewards, real),
      "reward_sq_sum": masked_sum(rewards * rewards, real),
      "response_count": masked_count(real),
  }
  return loss_sum / jnp.maximum(element_count, 1.0), metrics


# --- offline preference losses --------------------------------------------------------
# Each takes the summed response log-probs of K ranked responses per prompt (best first)
# under the policy and the frozen reference, [B, K], and the response mask [B, K].


def _log_ratios(where: str, policy_logps, ref_logps, response_mask):
  """log pi(y|x) - log pi_ref(y|x) [B, K] in float32; padded responses zeroed, so their
  garbage (even NaN) reaches neither the loss nor the gradient."""
  require_shape(where, "policy_logps", policy_logps, (None, None))
  require_shape(where, "ref_logps", ref_logps, jnp.shape(policy_logps))
  require_shape(where, "response_mask", response_mask, jnp.shape(policy_logps))
  real = response_mask != 0
  return jnp.where(real, policy_logps.astype(jnp.float32) - ref_logps.astype(jnp.float32),
                   0.0)


def dpo_loss(*, policy_logps, ref_logps, response_mask, beta: float):
  """DPO (Rafailov et al. 2023) over every ranked pair: -log sigmoid(beta * (h_i - h_j))
  for i < j, h = log pi / pi_ref. It is the RM's ranking loss (`ranking_loss`) with the
  implicit reward beta * h, averaged the same way; its metrics are that loss's (rewards
  are beta * h)."""
  h = _log_ratios("dpo_loss", policy_logps, ref_logps, response_mask)  # [B, K]
  return ranking_loss(rewards=beta * h, response_mask=response_mask)


def ipo_loss(*, policy_logps, ref_logps, response_mask, tau: float):
  """IPO (Azar et al. 2023) over every ranked pair: (h_i - h_j - 1 / (2 tau))^2 for i < j,
  h = log pi / pi_ref; a mean over each element's pairs, then over elements with >= 2
  responses. Metrics: loss_sum, element_count, pair_correct_sum (h_i > h_j), pair_count.
  """
  h = _log_ratios("ipo_loss", policy_logps, ref_logps, response_mask)  # [B, K]
  real = response_mask != 0
  k = h.shape[1]
  pair_mask = real[:, :, None] & real[:, None, :] & jnp.triu(jnp.ones((k, k), bool), k=1)
  diff = h[:, :, None] - h[:, None, :]  # [B, K, K]: h_i - h_j
  pairs = masked_count(pair_mask, axis=(1, 2))  # [B]
  counted = pairs > 0  # [B]
  element_loss = (masked_sum(jnp.square(diff - 0.5 / tau), pair_mask, axis=(1, 2))
                  / jnp.maximum(pairs, 1.0))  # [B]
  loss_sum, element_count = masked_sum(element_loss, counted), masked_count(counted)
  metrics = {"loss_sum": loss_sum, "element_count": element_count,
             "pair_correct_sum": masked_sum(diff > 0, pair_mask), "pair_count": jnp.sum(pairs)}
  return loss_sum / jnp.maximum(element_count, 1.0), metrics


def plackett_luce_dpo_loss(*, policy_logps, ref_logps, response_mask, beta: float):
  """DPO under the Plackett-Luce model (Rafailov et al. 2023, appendix A.3): a ranking of
  K responses is one element, its negative log-likelihood

      -sum_k [r_k - log sum_{j >= k} exp(r_j)],  r = beta * log pi / pi_ref,

  over its real responses (best first). With K = 2 it is DPO's -log sigmoid(r_1 - r_2).
  The batch loss is the mean over elements with >= 2 responses. Metrics: loss_sum,
  element_count, top_correct_sum (the best response has the largest r), and the
  reward_sum / response_count of all real responses.
  """
  real = response_mask != 0  # [B, K]
  r = beta * _log_ratios("plackett_luce_dpo_loss", policy_logps, ref_logps, response_mask)
  # Padded responses get a large finite negative, not -inf: -inf - -inf in the cumulative
  # logsumexp's gradient would be NaN.
  masked = jnp.where(real, r, -1e30)  # [B, K]
  # log sum_{j >= k} exp(r_j): a reversed cumulative logsumexp.
  tail = jax.lax.cumlogsumexp(masked, axis=1, reverse=True)  # [B, K]
  terms = jnp.where(real, r - jnp.where(real, tail, 0.0), 0.0)  # [B, K]
  counted = masked_count(real, axis=1) >= 2  # [B]
  element_loss = -jnp.sum(terms, axis=1)  # [B]
  loss_sum, element_count = masked_sum(element_loss, counted), masked_count(counted)
  top = jnp.argmax(masked, axis=1) == jnp.argmax(real, axis=1)  # [B]
  metrics = {"loss_sum": loss_sum, "element_count": element_count,
             "top_correct_sum": masked_sum(top, counted),
             "reward_sum": masked_sum(r, real), "response_count": masked_count(real)}
  return loss_sum / jnp.maximum(element_count, 1.0), metrics
