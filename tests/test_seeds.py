"""The seeds table: headline numbers picked from results.json, mean and sample std by
hand, rows a seed lacks, and the Markdown table."""

from __future__ import annotations

import pytest

from instructjax.evaluation import seeds


def _results(gold_sft, gold_ppo, gain, reproduced, *, with_probe=True):
  ppo = {"label": "PPO", "gold_score": gold_ppo,
         "gold_gain_vs_sft": {"rate": gain, "ci_low": gain - 0.1, "ci_high": gain + 0.1},
         "win_rate_vs_sft": {"train_labelers": {"rate": 0.6}, "heldout_labelers": {"rate": 0.55}}}
  if with_probe:
    ppo["probe_accuracy"] = {"average": {"accuracy": 0.4}}
  return {"models": {"sft": {"label": "SFT", "gold_score": gold_sft}, "ppo": ppo,
                     "unlisted": {"label": "X", "gold_score": 9.0}},
          "rm_accuracy": {"train_labelers": 0.7, "correctness": None},
          "claims": [{"id": "c", "reproduced": reproduced}]}


def test_headline_picks_point_estimates_and_skips_what_is_missing():
  row = seeds.headline(_results(0.2, 0.3, 0.1, True))
  assert row == {
      "SFT: gold score (greedy, test prompts)": 0.2,
      "PPO: gold score (greedy, test prompts)": 0.3,
      "PPO: gold gain over SFT": 0.1,
      "PPO: win rate vs SFT, training labelers": 0.6,
      "PPO: win rate vs SFT, held-out labelers": 0.55,
      "PPO: held-out task formats, accuracy": 0.4,
      "reward model accuracy, train labelers": 0.7,
      "claim c reproduced": 1.0,
  }


def test_aggregate_by_hand():
  per_seed = {0: seeds.headline(_results(0.2, 0.3, 0.1, True)),
              1: seeds.headline(_results(0.4, 0.5, 0.2, False, with_probe=False)),
              2: seeds.headline(_results(0.3, 0.1, -0.3, True))}
  table = seeds.aggregate(per_seed)
  sft = table["SFT: gold score (greedy, test prompts)"]
  # mean 0.3; deviations -0.1, 0.1, 0: sample variance 0.02 / 2 = 0.01
  assert sft["mean"] == pytest.approx(0.3) and sft["std"] == pytest.approx(0.1)
  assert (sft["min"], sft["max"]) == (0.2, 0.4)
  assert table["claim c reproduced"]["mean"] == pytest.approx(2 / 3)
  probe = table["PPO: held-out task formats, accuracy"]
  assert probe["values"] == {0: 0.4, 2: 0.4} and probe["std"] == 0.0
  markdown = seeds.to_markdown(table, [0, 1, 2])
  assert "| SFT: gold score (greedy, test prompts) | 0.300 ± 0.100 | 0.200 – 0.400 | " \
         "0.200 | 0.400 | 0.300 |" in markdown
  assert "| 0.400 | n/a | 0.400 |" in markdown
