"""Offline preference losses (DPO, IPO, Plackett-Luce DPO) and critic-free advantages
(GRPO, RLOO), each against hand-computed values or a plain Python loop."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax import losses, rl


def _inputs(rng, b=5, k=4):
  policy = rng.normal(-20, 3, (b, k)).astype(np.float32)  # [B, K]
  ref = rng.normal(-20, 3, (b, k)).astype(np.float32)  # [B, K]
  counts = np.array([4, 3, 2, 1, 4])[:b]  # real responses per row (the 1 does not count)
  mask = (np.arange(k)[None] < counts[:, None]).astype(np.int32)  # [B, K]
  return policy, ref, mask


def test_dpo_by_hand():
  # h = (1, -1), beta = 0.5: beta * (h_1 - h_2) = 1 -> log(1 + e^-1).
  loss, metrics = losses.dpo_loss(policy_logps=jnp.array([[-3.0, -5.0]]),
                                  ref_logps=jnp.array([[-4.0, -4.0]]),
                                  response_mask=jnp.ones((1, 2)), beta=0.5)
  assert float(loss) == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-6)
  assert float(metrics["pair_correct_sum"]) == 1.0


def _pl_loop(policy, ref, mask, beta):
  """The Plackett-Luce negative log-likelihood, written plainly."""
  total, count = 0.0, 0
  for p_row, r_row, m_row in zip(policy, ref, mask):
    r = [beta * (float(a) - float(b)) for a, b, m in zip(p_row, r_row, m_row) if m]
    if len(r) < 2:
      continue
    total -= sum(r[i] - math.log(sum(math.exp(x) for x in r[i:])) for i in range(len(r)))
    count += 1
  return total / count


def test_plackett_luce_against_a_plain_loop():
  policy, ref, mask = _inputs(np.random.default_rng(0))
  loss, metrics = losses.plackett_luce_dpo_loss(policy_logps=policy, ref_logps=ref,
                                                response_mask=mask, beta=0.1)
  assert float(loss) == pytest.approx(_pl_loop(policy, ref, mask, 0.1), rel=1e-5)
  assert float(metrics["element_count"]) == 4  # the row with one response is left out


def test_plackett_luce_with_two_responses_is_dpo():
  policy, ref, _ = _inputs(np.random.default_rng(1), k=2)
  mask = np.ones((5, 2), np.int32)
  pl, _ = losses.plackett_luce_dpo_loss(policy_logps=policy, ref_logps=ref,
                                        response_mask=mask, beta=0.3)
  dpo, _ = losses.dpo_loss(policy_logps=policy, ref_logps=ref, response_mask=mask, beta=0.3)
  assert float(pl) == pytest.approx(float(dpo), rel=1e-6)


def test_ipo_against_a_plain_loop():
  policy, ref, mask = _inputs(np.random.default_rng(2))
  tau = 0.25
  want, rows = 0.0, 0
  for p_row, r_row, m_row in zip(policy, ref, mask):
    h = [float(a) - float(b) for a, b, m in zip(p_row, r_row, m_row) if m]
    pairs = [(h[i] - h[j] - 1 / (2 * tau)) ** 2 for i in range(len(h))
             for j in range(i + 1, len(h))]
    if pairs:
      want, rows = want + sum(pairs) / len(pairs), rows + 1
  loss, _ = losses.ipo_loss(policy_logps=policy, ref_logps=ref, response_mask=mask, tau=tau)
  assert float(loss) == pytest.approx(want / rows, rel=1e-5)


@pytest.mark.parametrize("name", ["dpo_loss", "ipo_loss", "plackett_luce_dpo_loss"])
def test_padded_responses_reach_neither_loss_nor_gradient(name):
  policy, ref, mask = _inputs(np.random.default_rng(3))
  garbage = np.where(mask > 0, policy, np.nan).astype(np.float32)
  coef = {"ipo_loss": {"tau": 0.5}}.get(name, {"beta": 0.2})
  fn = getattr(losses, name)
  loss = lambda p: fn(policy_logps=p, ref_logps=ref, response_mask=mask, **coef)[0]
  value, grad = jax.value_and_grad(loss)(jnp.asarray(garbage))
  assert float(value) == pytest.approx(float(loss(jnp.asarray(policy))), rel=1e-6)
  assert np.isfinite(np.asarray(grad)).all()
  np.testing.assert_array_equal(np.asarray(grad)[mask == 0], 0.0)


def test_grpo_and_rloo_against_plain_loops():
  rewards = np.random.default_rng(4).normal(size=(3, 5)).astype(np.float32)  # [P, G]
  for row, grpo, rloo in zip(rewards, np.asarray(rl.grpo_advantages(rewards, eps=0.0)),
                             np.asarray(rl.rloo_advantages(rewards))):
    mean = sum(row) / len(row)
    std = math.sqrt(sum((x - mean) ** 2 for x in row) / len(row))
    for i, x in enumerate(row):
      assert grpo[i] == pytest.approx((x - mean) / std, rel=1e-5)
      others = [y for j, y in enumerate(row) if j != i]
      assert rloo[i] == pytest.approx(x - sum(others) / len(others), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("estimator", [rl.grpo_advantages, rl.rloo_advantages])
def test_one_sample_per_prompt_is_refused(estimator):
  with pytest.raises(ValueError, match=r"G=1 sample per prompt; a group baseline needs G >= 2"):
    estimator(jnp.ones((4, 1)))
