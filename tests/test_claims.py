"""Claims judged on hand-made results: each verdict flips when its criterion fails."""

from __future__ import annotations

import pytest

from instructjax.config import DEFAULT_CONFIG, load_config
from instructjax.evaluation import claims


def _gain(rate, ci_low):
  return {"rate": rate, "ci_low": ci_low, "ci_high": 2 * rate - ci_low, "n": 200}


@pytest.mark.parametrize("ppo, ppo_ptx, reproduced", [
    (_gain(0.15, 0.05), _gain(0.12, 0.01), True),
    (_gain(0.15, 0.05), _gain(0.09, 0.02), False),  # PPO-ptx gains less than 0.1
    (_gain(0.15, -0.01), _gain(0.12, 0.01), False),  # PPO's interval reaches 0
])
def test_rlhf_improves_answers_needs_both_gains_and_intervals(ppo, ppo_ptx, reproduced):
  results = {"models": {"ppo": {"gold_gain_vs_sft": ppo},
                        "ppo_ptx": {"gold_gain_vs_sft": ppo_ptx}}}
  claim = claims._rlhf_improves_answers(results)  # pylint: disable=protected-access
  assert claim["reproduced"] is reproduced
  assert claim["measured"]["gold_gain_ppo_ptx"] == ppo_ptx["rate"]


def test_the_large_vanilla_claim_reports_sfts_own_win_as_the_control():
  def stats(rate):
    return {"train_labelers": {"rate": rate, "ci_low": rate - 0.05}}
  results = {
      "models": {"vanilla_big": {"params": 600, "win_rate_vs_sft": stats(0.2)},
                 "vanilla_big_fewshot": {"win_rate_vs_sft": stats(0.3)},
                 "ppo_ptx": {"params": 100}},
      "head_to_head": {"vanilla_big": stats(0.8), "vanilla_big_fewshot": stats(0.7)}}
  claim = claims._aligned_small_beats_large_vanilla(results)  # pylint: disable=protected-access
  assert claim["reproduced"] is True
  assert claim["measured"]["sft_win_rate_vs_large_vanilla"] == pytest.approx(0.8)
  assert claim["measured"]["sft_win_rate_vs_large_vanilla_prompted"] == pytest.approx(0.7)
  assert claim["measured"]["params_ratio"] == 6.0


@pytest.mark.parametrize("low_ppo, low_ptx, reproduced", [
    (0.01, 0.02, True), (0.01, -0.01, False), (0.0, 0.02, False)])
def test_rlhf_improves_correctness_needs_both_intervals_above_zero(low_ppo, low_ptx,
                                                                  reproduced):
  results = {"models": {
      "sft": {"remark_rate": 0.6},
      "ppo": {"credit_gain_vs_sft": _gain(0.05, low_ppo), "remark_rate": 0.0},
      "ppo_ptx": {"credit_gain_vs_sft": _gain(0.05, low_ptx), "remark_rate": 0.1}}}
  claim = claims._rlhf_improves_correctness(results)  # pylint: disable=protected-access
  assert claim["reproduced"] is reproduced
  assert claim["measured"]["remark_rate_sft"] == 0.6


@pytest.mark.parametrize("packed, tokens_per_row", [(64, 64), (0, 96)])
def test_pretraining_flops_count_packed_rows_at_their_length(packed, tokens_per_row):
  config = load_config(DEFAULT_CONFIG)
  config.data.update(pack_pretraining=packed, max_len=96)
  config.pretrain.update(steps=10, batch_size=4)
  config.pretrain_big.update(steps=5, batch_size=2)
  flops = claims.training_flops(config, {"model": 1000, "big_model": 3000})
  # 6 x params x steps x rows x tokens per row, by hand.
  assert flops["pretrain"] == 6 * 1000 * 10 * 4 * tokens_per_row
  assert flops["pretrain_big"] == 6 * 3000 * 5 * 2 * tokens_per_row


def test_an_rm_larger_than_the_policy_is_counted_at_its_size():
  config = load_config(DEFAULT_CONFIG + ":large_rm")  # RM and value model from sft_big
  small, big = 1000, 5000
  flops = claims.training_flops(config, {"model": small, "big_model": big})
  t, k_mean = config.data.max_len, (config.data.testbed.min_responses
                                    + config.data.testbed.max_responses) / 2
  assert flops["rm"] == 6 * big * config.rm.steps * config.rm.batch_size * k_mean * t
  assert flops["sft_big"] == 6 * big * config.sft_big.steps * config.sft_big.batch_size * t
  ppo, rloo = config.ppo, config.rloo
  seq = config.data.max_prompt_len + ppo.max_new_tokens
  # Forwards: the policy samples, its log-probs again, the reference (small); the reward
  # and the value model (big). Updates: the policy and the value model.
  by_hand = (ppo.rollout_batch_size * seq * 2 * (3 * small + 2 * big)
             + ppo.epochs * ppo.rollout_batch_size * seq * 6 * (small + big))
  assert flops["ppo"] == ppo.iterations * by_hand
  # RLOO has no value model: one big forward (the reward), and the policy's update.
  by_hand = (rloo.rollout_batch_size * seq * 2 * (3 * small + big)
             + rloo.epochs * rloo.rollout_batch_size * seq * 6 * small)
  assert flops["rloo"] == rloo.iterations * by_hand
  results = {"flops": {**flops, "pretrain": 1e12}}
  claim = claims._alignment_cost_modest(results)  # pylint: disable=protected-access
  assert claim["measured"]["alignment_flops"] == (
      flops["sft"] + flops["sft_big"] + flops["rm"] + flops["ppo_ptx"])
