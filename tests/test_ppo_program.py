"""The PPO and PPO-ptx stage programs end to end on the `:test` config: the session's
`test_run` (conftest.py), whose stages ran by their commands, is read, never written."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest

from instructjax import ppo, sharding, stage_export, stage_table
from instructjax.checkpoints import CheckpointError
from instructjax.config import model_config
from instructjax.data import batching, sources
from instructjax.evaluation import measures
from instructjax.models import CausalLM
from stage_commands import PPO_OVERRIDES

# What every iteration's line must hold (the list); PPO-ptx adds ptx_loss.
REQUIRED = {"rm_score", "rm_score_normalised", "gold_score", "kl_to_ref", "entropy",
            "clipfrac", "approx_kl", "value_loss", "explained_variance", "response_length",
            "kl_coef"}


def _metrics(stage_dir):
  with open(os.path.join(stage_dir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("stage", ppo.STAGES)
def test_one_metrics_line_per_iteration(test_run, stage):
  config, run_dir = test_run
  section = config[stage_table.stage(stage).train_section]
  lines = _metrics(os.path.join(run_dir, stage))
  assert [line["step"] for line in lines] == list(range(1, section.iterations + 1))
  required = REQUIRED | ({"ptx_loss"} if stage == "ppo_ptx" else set())
  if stage in ("rloo", "grpo"):  # no critic
    required = (required - {"value_loss"}) | ({"kl_loss"} if stage == "grpo" else set())
  for line in lines:
    assert line["stage"] == stage
    assert required <= set(line), f"missing: {sorted(required - set(line))}"
    assert all(math.isfinite(line[key]) for key in required)
    assert line["kl_coef"] == pytest.approx(section.kl_coef)  # adaptive_kl is off
  assert ("ptx_loss" in lines[0]) == (stage == "ppo_ptx")
  assert ("value_loss" in lines[0]) == (stage not in ("rloo", "grpo"))


@pytest.mark.parametrize("stage", ppo.STAGES)
def test_export_names_its_stage(test_run, stage):
  _, run_dir = test_run
  card = stage_export.read_card(os.path.join(run_dir, stage), expected_stages=(stage,))
  assert card.ptx_coef == (PPO_OVERRIDES["ptx_coef"] if stage == "ppo_ptx" else 0.0)


def test_rerun_of_a_finished_stage_returns_at_once(test_run, monkeypatch):
  config, run_dir = test_run
  def fail(*args, **kwargs):
    raise AssertionError("a finished stage must not load its data again")
  monkeypatch.setattr(ppo.sources, "load_data", fail)
  before = _metrics(os.path.join(run_dir, "ppo"))
  assert ppo.run(config, str(run_dir), stage="ppo") == os.path.join(run_dir, "ppo")
  assert _metrics(os.path.join(run_dir, "ppo")) == before


def test_reward_model_export_given_as_the_policy_is_refused(test_run, tmp_path):
  config, run_dir = test_run
  wrong = str(tmp_path)
  os.symlink(os.path.join(run_dir, "testbed"), os.path.join(wrong, "testbed"))
  shutil.copytree(os.path.join(run_dir, "rm", "export"), os.path.join(wrong, "sft", "export"))
  shutil.copytree(os.path.join(run_dir, "rm", "export"), os.path.join(wrong, "rm", "export"))
  with pytest.raises(CheckpointError, match=r"'rm' export.*\('sft',\)"):
    ppo.run(config, wrong, stage="ppo")


def test_ptx_keeps_the_pretraining_loss_lower(test_run):
  """PPO-ptx's point: less drift from the pretraining distribution. On this run (gamma = 1,
  4 iterations) PPO-ptx ends 0.038 nats below PPO on held-out documents, while PPO moves
  the loss by 0.0003 from SFT."""
  config, run_dir = test_run
  data = sources.load_data(config, str(run_dir))
  mesh = sharding.make_mesh(**config.mesh)
  model = CausalLM(model_config(config.model, field="config.model"))
  batcher = batching.PretrainBatcher(data.tokenizer, buckets=tuple(config.data.buckets))
  heldout = data.read("pretrain_heldout")

  def heldout_loss(stage):
    params, _ = stage_export.load_export(os.path.join(run_dir, stage),
                                         sharding.abstract_params(model, mesh),
                                         expected_stages=(stage,))
    return measures.lm_loss(model.apply, params, heldout, batcher, batch_size=8, mesh=mesh)
  assert heldout_loss("ppo_ptx") < heldout_loss("ppo") - 0.01
