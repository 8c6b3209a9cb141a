"""The DPO stage program end to end on the `:test` config (the session's `test_run`,
read, never written): it trains on the RM's comparisons from SFT, its implicit reward
ranks held-out comparisons above chance, and bad configs are refused by name."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from instructjax import dpo, hf_import, reward, sharding, stage_export
from instructjax.config import ConfigError, load_config, validate
from instructjax.data import batching, sources
from instructjax.models import CausalLM
from stage_commands import CONFIG


def test_trains_every_step_with_finite_losses(test_run):
  config, run_dir = test_run
  with open(os.path.join(run_dir, "dpo", "metrics.jsonl"), encoding="utf-8") as f:
    train = [row for row in map(json.loads, f) if "train/loss" in row]
  assert [row["step"] for row in train][-1] == config.dpo.steps
  assert all(math.isfinite(row["train/loss"]) for row in train)
  card = stage_export.read_card(os.path.join(run_dir, "dpo"), expected_stages=("dpo",))
  assert card.steps == config.dpo.steps


def test_implicit_reward_ranks_held_out_comparisons_above_chance(test_run):
  """Recomputed here from the export, with numpy's pairwise count: SFT's implicit reward
  is 0 for every response (it is its own reference), so any accuracy above 0 is learnt."""
  config, run_dir = test_run
  data = sources.load_data(config, str(run_dir))
  mesh = sharding.make_mesh(**config.mesh)
  model = CausalLM(hf_import.resolve_model(config, str(run_dir), "model"))
  params, card = stage_export.load_export(
      os.path.join(run_dir, "dpo"), sharding.abstract_params(model, mesh),
      expected_stages=("dpo",))
  ref = reward.load_sft_params(os.path.join(run_dir, "sft"), model.config, mesh)
  rows = data.read("rm_eval")
  batcher = batching.RankingBatcher(data.tokenizer, buckets=tuple(config.data.buckets),
                                    max_prompt_len=config.data.max_prompt_len,
                                    k_max=max(len(r.responses) for r in rows))
  correct = total = 0
  for batch in batching.iterate_once(rows, batcher, batch_size=8):
    rewards = np.asarray(dpo.implicit_rewards(params, ref, sharding.shard_batch(batch, mesh),
                                              apply_fn=model.apply))  # [B, K], best first
    for r, mask in zip(rewards, np.asarray(batch.response_mask)):
      k = int(mask.sum())
      correct += sum(r[i] > r[j] for i in range(k) for j in range(i + 1, k))
      total += k * (k - 1) // 2
  assert correct / total == pytest.approx(card.final_eval["accuracy"], abs=1e-6)
  assert correct / total > 0.5


@pytest.mark.parametrize("field, value, message", [
    ("loss", "kto", "dpo.loss: 'kto' is not one of"),
    ("coef", 0.0, "dpo.coef: 0.0 must be > 0"),
])
def test_bad_dpo_config_is_refused_by_name(field, value, message):
  config = load_config(CONFIG)
  config.dpo[field] = value
  with pytest.raises(ConfigError, match=message):
    validate(config)


def test_a_config_without_a_dpo_section_cannot_run_the_stage(tmp_path):
  config = load_config(CONFIG)
  with config.unlocked():
    del config["dpo"]
  with pytest.raises(ValueError, match="config.dpo, which this config lacks"):
    dpo.run(config, str(tmp_path))
