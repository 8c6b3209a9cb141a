"""Tests of instructjax.rl against hand-computed numbers and plain numpy loops."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax import rl


def _response_masks(rng, batch, length):
  """Contiguous response masks after random prompt lengths; row 0 has no response."""
  mask = np.zeros((batch, length), np.int32)
  for b in range(1, batch):
    start = rng.integers(0, length - 1)
    mask[b, start:rng.integers(start + 1, length + 1)] = 1
  return mask


# --- kl_penalized_rewards -----------------------------------------------------------


def test_kl_penalized_rewards_by_hand():
  mask = jnp.array([[0, 1, 1, 0], [0, 0, 0, 0]])
  logprobs = jnp.array([[9.0, -1.0, -2.0, 9.0], [1.0, 1.0, 1.0, 1.0]])
  ref_logprobs = jnp.array([[0.0, -1.5, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
  rewards, kl = rl.kl_penalized_rewards(
      scores=jnp.array([3.0, 5.0]), logprobs=logprobs, ref_logprobs=ref_logprobs,
      response_mask=mask, kl_coef=0.1)
  # kl = logp - ref = [-, 0.5, -1, -]; reward = -0.1 * kl, plus 3 at position 2:
  # [0, -0.05, 0.1 + 3, 0]. Row 1 has no response: no KL, and its score goes nowhere.
  np.testing.assert_allclose(kl, [[0.0, 0.5, -1.0, 0.0], [0.0] * 4])
  np.testing.assert_allclose(rewards, [[0.0, -0.05, 3.1, 0.0], [0.0] * 4], rtol=1e-6)


def test_kl_penalized_rewards_policy_equal_to_reference():
  rng = np.random.default_rng(0)
  mask = _response_masks(rng, 5, 7)
  logprobs = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)
  scores = jnp.asarray(rng.normal(size=5), jnp.float32)
  rewards, kl = rl.kl_penalized_rewards(scores=scores, logprobs=logprobs,
                                        ref_logprobs=logprobs, response_mask=mask,
                                        kl_coef=0.02)
  np.testing.assert_array_equal(kl, 0.0)
  want = np.zeros((5, 7), np.float32)
  for b in range(1, 5):
    want[b, np.nonzero(mask[b])[0][-1]] = scores[b]
  np.testing.assert_array_equal(rewards, want)


def test_kl_penalized_rewards_matches_loop():
  rng = np.random.default_rng(1)
  mask = _response_masks(rng, 6, 8)
  logprobs, ref_logprobs = rng.normal(size=(2, 6, 8))
  scores = rng.normal(size=6)
  rewards, kl = rl.kl_penalized_rewards(
      scores=jnp.asarray(scores), logprobs=jnp.asarray(logprobs),
      ref_logprobs=jnp.asarray(ref_logprobs), response_mask=jnp.asarray(mask),
      kl_coef=0.3)
  want_rewards, want_kl = np.zeros((6, 8)), np.zeros((6, 8))
  for b in range(6):
    last = max([t for t in range(8) if mask[b, t]], default=None)
    for t in range(8):
      if mask[b, t]:
        want_kl[b, t] = logprobs[b, t] - ref_logprobs[b, t]
        want_rewards[b, t] = -0.3 * want_kl[b, t] + (scores[b] if t == last else 0.0)
  np.testing.assert_allclose(kl, want_kl, atol=1e-5)
  np.testing.assert_allclose(rewards, want_rewards, atol=1e-5)


def test_kl_penalized_rewards_bad_shapes():
  with pytest.raises(ValueError, match=r"scores has shape \(3,\), expected \(2,\)"):
    rl.kl_penalized_rewards(scores=jnp.zeros(3), logprobs=jnp.zeros((2, 4)),
                            ref_logprobs=jnp.zeros((2, 4)), response_mask=jnp.ones((2, 4)),
                            kl_coef=0.1)
  with pytest.raises(ValueError, match=r"ref_logprobs \(must match logprobs\) has shape"):
    rl.kl_penalized_rewards(scores=jnp.zeros(2), logprobs=jnp.zeros((2, 4)),
                            ref_logprobs=jnp.zeros((2, 5)), response_mask=jnp.ones((2, 4)),
                            kl_coef=0.1)


# --- gae ----------------------------------------------------------------------------


def test_gae_by_hand():
  # Response at positions 1..3 after one prompt position, one padding position after.
  # gamma = 1, lam = 0.5, rewards (0, 0, 1), values (0.5, 0.25, 0.75):
  #   t=3: delta = 1 + 0 - 0.75 = 0.25;        A = 0.25
  #   t=2: delta = 0 + 0.75 - 0.25 = 0.5;      A = 0.5 + 0.5 * 0.25 = 0.625
  #   t=1: delta = 0 + 0.25 - 0.5 = -0.25;     A = -0.25 + 0.5 * 0.625 = 0.0625
  # returns = A + V = (0.5625, 0.875, 1.0). Prompt and padding hold garbage.
  rewards = jnp.array([[7.0, 0.0, 0.0, 1.0, 7.0]])
  values = jnp.array([[jnp.nan, 0.5, 0.25, 0.75, 100.0]])
  mask = jnp.array([[0, 1, 1, 1, 0]])
  advantages, returns = rl.gae(rewards=rewards, values=values, response_mask=mask,
                               gamma=1.0, lam=0.5)
  np.testing.assert_allclose(advantages, [[0.0, 0.0625, 0.625, 0.25, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(returns, [[0.0, 0.5625, 0.875, 1.0, 0.0]], rtol=1e-6)


def _loop_gae(rewards, values, mask, gamma, lam):
  batch, length = rewards.shape
  advantages = np.zeros((batch, length))
  for b in range(batch):
    next_advantage = 0.0
    for t in reversed(range(length)):
      if not mask[b, t]:
        next_advantage = 0.0
        continue
      next_value = values[b, t + 1] if t + 1 < length and mask[b, t + 1] else 0.0
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      advantages[b, t] = delta + gamma * lam * next_advantage
      next_advantage = advantages[b, t]
  return advantages, (advantages + values) * mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.7)])
def test_gae_matches_loop(gamma, lam):
  rng = np.random.default_rng(2)
  mask = _response_masks(rng, 6, 9)
  rewards, values = rng.normal(size=(2, 6, 9))
  advantages, returns = rl.gae(rewards=jnp.asarray(rewards), values=jnp.asarray(values),
                               response_mask=jnp.asarray(mask), gamma=gamma, lam=lam)
  want_advantages, want_returns = _loop_gae(rewards, values, mask, gamma, lam)
  np.testing.assert_allclose(advantages, want_advantages, atol=1e-5)
  np.testing.assert_allclose(returns, want_returns, atol=1e-5)


def test_gae_lambda_one_gives_monte_carlo_returns():
  # gamma = lam = 1: the return at t is the sum of the rewards from t to the end.
  rng = np.random.default_rng(3)
  mask = _response_masks(rng, 4, 6)
  rewards = rng.normal(size=(4, 6)) * mask
  _, returns = rl.gae(rewards=jnp.asarray(rewards), values=jnp.asarray(rng.normal(size=(4, 6))),
                      response_mask=jnp.asarray(mask), gamma=1.0, lam=1.0)
  want = np.flip(np.cumsum(np.flip(rewards, 1), 1), 1) * mask
  np.testing.assert_allclose(returns, want, atol=1e-5)


def test_gae_with_traced_gamma_and_lam():
  fn = jax.jit(lambda r, v, m, g, l: rl.gae(rewards=r, values=v, response_mask=m,
                                           gamma=g, lam=l))
  advantages, _ = fn(jnp.array([[0.0, 1.0]]), jnp.array([[0.5, 0.5]]),
                     jnp.array([[1, 1]]), 0.5, 0.5)
  # t=1: A = 1 - 0.5 = 0.5; t=0: delta = 0 + 0.5 * 0.5 - 0.5 = -0.25,
  # A = -0.25 + 0.25 * 0.5 = -0.125.
  np.testing.assert_allclose(advantages, [[-0.125, 0.5]], rtol=1e-6)


# --- whiten -------------------------------------------------------------------------


def test_whiten_by_hand():
  x = jnp.array([[1.0, 2.0], [3.0, 100.0]])
  mask = jnp.array([[1, 1], [1, 0]])
  # mean 2, variance (1 + 0 + 1) / 3 = 2/3, std 0.8164966; 1 / std = 1.2247449.
  np.testing.assert_allclose(rl.whiten(x, mask), [[-1.2247449, 0.0], [1.2247449, 0.0]],
                             rtol=1e-6)
  np.testing.assert_allclose(rl.whiten(x, mask, shift_mean=False),
                             [[0.7752551, 2.0], [3.2247449, 0.0]], rtol=1e-6)


def test_whiten_matches_numpy():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(5, 7)) * 3 + 2
  mask = _response_masks(rng, 5, 7)
  picked = x[mask == 1]
  want = np.where(mask == 1, (x - picked.mean()) / np.sqrt(picked.var() + 1e-8), 0.0)
  got = rl.whiten(jnp.asarray(x, jnp.float32), jnp.asarray(mask))
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert abs(float(np.asarray(got)[mask == 1].mean())) < 1e-5
  np.testing.assert_allclose(np.asarray(got)[mask == 1].std(), 1.0, rtol=1e-5)


def test_whiten_with_axis_name_uses_global_statistics():
  mesh = jax.make_mesh((8,), ("data",))
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(8, 4)) + np.arange(8)[:, None], jnp.float32)
  mask = jnp.asarray(rng.integers(0, 2, size=(8, 4)))
  spec = jax.P("data")
  sharded = jax.shard_map(lambda x, m: rl.whiten(x, m, axis_name="data"), mesh=mesh,
                          in_specs=(spec, spec), out_specs=spec)(
                              *jax.device_put((x, mask), jax.NamedSharding(mesh, spec)))
  np.testing.assert_allclose(sharded, rl.whiten(x, mask), atol=1e-5)


# --- ppo_policy_loss ----------------------------------------------------------------


def _policy_case():
  # log ratios ln 1.5, ln 0.5, 0, ln 0.5 and a masked token; clip_eps 0.2.
  old = jnp.array([[0.0, 0.0, -1.0, -2.0, 0.0]])
  logprobs = old + jnp.array([[math.log(1.5), math.log(0.5), 0.0, math.log(0.5), 50.0]])
  advantages = jnp.array([[1.0, 1.0, -2.0, -1.0, 5.0]])
  mask = jnp.array([[1, 1, 1, 1, 0]])
  return logprobs, old, advantages, mask


def test_ppo_policy_loss_by_hand():
  logprobs, old, advantages, mask = _policy_case()
  loss, metrics = rl.ppo_policy_loss(logprobs=logprobs, old_logprobs=old,
                                     advantages=advantages, response_mask=mask,
                                     clip_eps=0.2)
  # token 0: ratio 1.5, A = 1:  max(-1.5, -1.2) = -1.2 (clipped)
  # token 1: ratio 0.5, A = 1:  max(-0.5, -0.8) = -0.5
  # token 2: ratio 1,   A = -2: max(2, 2) = 2
  # token 3: ratio 0.5, A = -1: max(0.5, 0.8) = 0.8 (clipped)
  # sum 1.1 over 4 tokens.
  np.testing.assert_allclose(metrics["loss_sum"], 1.1, rtol=1e-6)
  np.testing.assert_allclose(loss, 0.275, rtol=1e-6)
  assert float(metrics["token_count"]) == 4.0
  assert float(metrics["clipfrac_sum"]) == 2.0
  np.testing.assert_allclose(metrics["ratio_sum"], 1.5 + 0.5 + 1.0 + 0.5, rtol=1e-6)
  # k3 = (ratio - 1) - ln ratio: (0.5 - 0.4054651) + 2 * (-0.5 + 0.6931472) + 0.
  np.testing.assert_allclose(metrics["approx_kl_sum"], 0.4808293, rtol=1e-6)


def test_ppo_policy_loss_gradient_by_hand():
  logprobs, old, advantages, mask = _policy_case()
  grad = jax.grad(lambda lp: rl.ppo_policy_loss(
      logprobs=lp, old_logprobs=old, advantages=advantages, response_mask=mask,
      clip_eps=0.2)[0])(logprobs)
  # Clipped tokens get no gradient; others d(-A * ratio)/dlogp / 4 = -A * ratio / 4:
  # token 1: -1 * 0.5 / 4 = -0.125; token 2: 2 * 1 / 4 = 0.5.
  np.testing.assert_allclose(grad, [[0.0, -0.125, 0.5, 0.0, 0.0]], atol=1e-7)


def test_ppo_policy_loss_first_step_ratio_is_one():
  rng = np.random.default_rng(6)
  mask = jnp.asarray(_response_masks(rng, 5, 6))
  logprobs = jnp.asarray(rng.normal(size=(5, 6)), jnp.float32)
  advantages = jnp.asarray(rng.normal(size=(5, 6)), jnp.float32)
  loss, metrics = rl.ppo_policy_loss(logprobs=logprobs, old_logprobs=logprobs,
                                     advantages=advantages, response_mask=mask,
                                     clip_eps=0.2)
  count = int(np.asarray(mask).sum())
  assert float(metrics["ratio_sum"]) == count
  assert float(metrics["clipfrac_sum"]) == 0.0
  assert float(metrics["approx_kl_sum"]) == 0.0
  want = -np.asarray(advantages, np.float64)[np.asarray(mask) == 1].mean()
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_ppo_policy_loss_matches_loop():
  rng = np.random.default_rng(7)
  mask = _response_masks(rng, 6, 8)
  logprobs, old, advantages = rng.normal(size=(3, 6, 8)) * [[[0.3]], [[0.3]], [[1.0]]]
  eps = 0.1
  loss, metrics = rl.ppo_policy_loss(
      logprobs=jnp.asarray(logprobs), old_logprobs=jnp.asarray(old),
      advantages=jnp.asarray(advantages), response_mask=jnp.asarray(mask), clip_eps=eps)
  total = clipped_count = kl = 0.0
  for b in range(6):
    for t in range(8):
      if mask[b, t]:
        ratio = math.exp(logprobs[b, t] - old[b, t])
        a = advantages[b, t]
        unclipped, clipped = -a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps)
        total += max(unclipped, clipped)
        clipped_count += clipped > unclipped
        kl += ratio - 1 - math.log(ratio)
  np.testing.assert_allclose(metrics["loss_sum"], total, atol=1e-5)
  np.testing.assert_allclose(loss, total / mask.sum(), atol=1e-5)
  assert float(metrics["clipfrac_sum"]) == clipped_count
  assert clipped_count > 0
  np.testing.assert_allclose(metrics["approx_kl_sum"], kl, atol=1e-5)


# --- ppo_value_loss -----------------------------------------------------------------


def test_ppo_value_loss_by_hand():
  old = jnp.zeros((1, 4))
  values = jnp.array([[0.5, -0.1, 0.5, 9.0]])
  returns = jnp.array([[1.0, 1.0, -1.0, 0.0]])
  mask = jnp.array([[1, 1, 1, 0]])
  loss, metrics = rl.ppo_value_loss(values=values, old_values=old, returns=returns,
                                    response_mask=mask, clip_range=0.2)
  # token 0: (0.5 - 1)^2 = 0.25 vs clipped (0.2 - 1)^2 = 0.64 -> 0.32 (clip active)
  # token 1: inside the range, both 1.21 -> 0.605
  # token 2: (0.5 + 1)^2 = 2.25 vs (0.2 + 1)^2 = 1.44 -> 1.125
  # mean (0.32 + 0.605 + 1.125) / 3 = 0.6833333.
  np.testing.assert_allclose(loss, 0.6833333, rtol=1e-6)
  np.testing.assert_allclose(metrics["loss_sum"], 2.05, rtol=1e-6)
  assert float(metrics["token_count"]) == 3.0
  assert float(metrics["clipfrac_sum"]) == 1.0
  np.testing.assert_allclose(metrics["value_sum"], 0.9, rtol=1e-6)


def test_ppo_value_loss_matches_loop_and_ignores_padding():
  rng = np.random.default_rng(8)
  mask = _response_masks(rng, 6, 8)
  values, old, returns = rng.normal(size=(3, 6, 8))
  c = 0.3
  loss, metrics = rl.ppo_value_loss(
      values=jnp.asarray(values), old_values=jnp.asarray(old),
      returns=jnp.asarray(returns), response_mask=jnp.asarray(mask), clip_range=c)
  total = clipped_count = 0.0
  for b in range(6):
    for t in range(8):
      if mask[b, t]:
        v_clip = old[b, t] + min(max(values[b, t] - old[b, t], -c), c)
        e1, e2 = (values[b, t] - returns[b, t]) ** 2, (v_clip - returns[b, t]) ** 2
        total += 0.5 * max(e1, e2)
        clipped_count += e2 > e1
  np.testing.assert_allclose(metrics["loss_sum"], total, atol=1e-5)
  np.testing.assert_allclose(loss, total / mask.sum(), atol=1e-5)
  assert float(metrics["clipfrac_sum"]) == clipped_count

  garbage = np.where(mask == 1, values, 1e6)
  loss2, _ = rl.ppo_value_loss(
      values=jnp.asarray(garbage), old_values=jnp.asarray(np.where(mask == 1, old, -7.0)),
      returns=jnp.asarray(np.where(mask == 1, returns, np.nan)),
      response_mask=jnp.asarray(mask), clip_range=c)
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)


# --- adaptive_kl_coef / explained_variance ------------------------------------------


def test_adaptive_kl_coef_by_hand():
  # KL 12 vs target 6: e = clip(1, -0.2, 0.2) = 0.2; 0.1 * (1 + 0.2 * 512 / 10000).
  new = rl.adaptive_kl_coef(0.1, observed_kl=12.0, target_kl=6.0, horizon=10000,
                            n_steps=512)
  np.testing.assert_allclose(new, 0.101024, rtol=1e-6)
  # KL 5 vs target 6: e = -1/6; 0.1 * (1 - 512 / 60000) = 0.0991467.
  new = rl.adaptive_kl_coef(0.1, observed_kl=5.0, target_kl=6.0, horizon=10000,
                            n_steps=512)
  np.testing.assert_allclose(new, 0.1 * (1 - 512 / 60000), rtol=1e-6)
  # On target: unchanged.
  assert float(rl.adaptive_kl_coef(0.1, observed_kl=6.0, target_kl=6.0, horizon=10000,
                                   n_steps=512)) == pytest.approx(0.1)


def test_adaptive_kl_coef_under_jit_and_bad_input():
  fn = jax.jit(lambda beta, kl: rl.adaptive_kl_coef(beta, observed_kl=kl, target_kl=6.0,
                                                    horizon=10000, n_steps=512))
  np.testing.assert_allclose(fn(0.1, 0.0), 0.1 * (1 - 0.2 * 0.0512), rtol=1e-6)
  with pytest.raises(ValueError, match="target_kl=0.0 must be positive"):
    rl.adaptive_kl_coef(0.1, observed_kl=1.0, target_kl=0.0, horizon=100, n_steps=1)
  with pytest.raises(ValueError, match="horizon=-5 must be positive"):
    rl.adaptive_kl_coef(0.1, observed_kl=1.0, target_kl=1.0, horizon=-5, n_steps=1)


def test_explained_variance_by_hand():
  returns = jnp.array([[1.0, 2.0, 3.0, 50.0]])
  mask = jnp.array([[1, 1, 1, 0]])

  def ev(values, returns=returns):
    return float(rl.explained_variance(values=jnp.array([values]), returns=returns,
                                       mask=mask))
  assert ev([1.0, 2.0, 3.0, -9.0]) == pytest.approx(1.0)
  assert ev([2.0, 2.0, 2.0, -9.0]) == pytest.approx(0.0)
  # residuals (0, 0, 1): variance 2/9; returns' variance 2/3 -> 1 - 1/3.
  assert ev([1.0, 2.0, 2.0, -9.0]) == pytest.approx(2 / 3, rel=1e-6)
  assert ev([0.0, 0.0, 0.0, 0.0], returns=jnp.full((1, 4), 5.0)) == 0.0


def test_explained_variance_matches_numpy():
  rng = np.random.default_rng(9)
  mask = _response_masks(rng, 5, 6)
  returns, values = rng.normal(size=(2, 5, 6))
  r, v = returns[mask == 1], values[mask == 1]
  got = rl.explained_variance(values=jnp.asarray(values), returns=jnp.asarray(returns),
                              mask=jnp.asarray(mask))
  np.testing.assert_allclose(got, 1 - np.var(r - v) / np.var(r), atol=1e-5)


# --- jit / vmap ---------------------------------------------------------------------


def test_rl_functions_under_jit_and_vmap():
  rng = np.random.default_rng(10)
  masks = jnp.asarray(np.stack([_response_masks(rng, 3, 5) for _ in range(2)]))  # [M, B, T]
  logprobs, ref, values, old_values = jnp.asarray(rng.normal(size=(4, 2, 3, 5)),
                                                  jnp.float32)
  scores = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)

  def pipeline(scores, logprobs, ref, values, old_values, mask):
    rewards, kl = rl.kl_penalized_rewards(scores=scores, logprobs=logprobs,
                                          ref_logprobs=ref, response_mask=mask,
                                          kl_coef=0.05)
    advantages, returns = rl.gae(rewards=rewards, values=values, response_mask=mask,
                                 gamma=1.0, lam=0.95)
    advantages = rl.whiten(advantages, mask)
    return (rewards, kl, advantages, returns,
            rl.ppo_policy_loss(logprobs=logprobs + 0.1, old_logprobs=logprobs,
                               advantages=advantages, response_mask=mask, clip_eps=0.2),
            rl.ppo_value_loss(values=values, old_values=old_values, returns=returns,
                              response_mask=mask, clip_range=0.2),
            rl.explained_variance(values=values, returns=returns, mask=mask))

  batched = jax.jit(jax.vmap(pipeline))(scores, logprobs, ref, values, old_values, masks)
  for m in range(2):
    single = pipeline(scores[m], logprobs[m], ref[m], values[m], old_values[m], masks[m])
    jax.tree.map(lambda a, b, m=m: np.testing.assert_allclose(a[m], b, atol=1e-5),
                 batched, single)


def test_k3_kl_by_hand_and_safe_off_the_response():
  # pi = 0.5, pi_ref = 0.25: r = 0.5, r - log r - 1 = log 2 - 0.5.
  logprobs = jnp.array([[np.log(0.5), 200.0]])  # the second position is padding
  ref = jnp.array([[np.log(0.25), -300.0]])
  mask = jnp.array([[1, 0]])
  k3 = rl.k3_kl(logprobs=logprobs, ref_logprobs=ref, response_mask=mask)
  np.testing.assert_allclose(np.asarray(k3), [[np.log(2.0) - 0.5, 0.0]], rtol=1e-6)
  grad = jax.grad(lambda lp: jnp.sum(rl.k3_kl(logprobs=lp, ref_logprobs=ref,
                                              response_mask=mask)))(logprobs)
  # d/dlogp (e^(ref - logp) - (ref - logp) - 1) = 1 - r = 0.5; padding gets 0, not NaN.
  np.testing.assert_allclose(np.asarray(grad), [[0.5, 0.0]], rtol=1e-6)
