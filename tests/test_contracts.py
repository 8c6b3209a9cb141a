"""The contracts between the package's parts: the stage table, the export card, atomic
writes, and programs that can be imported without touching the command line."""

from __future__ import annotations

import importlib
import json
import os

import pytest
from absl import flags

from instructjax import atomic_write, stage_export, stage_table
from instructjax.checkpoints import CheckpointError
from instructjax.configs.instructgpt_tiny import get_config
from instructjax.evaluation import contestants

PROGRAMS = ("instructjax.sft", "instructjax.reward", "instructjax.ppo", "instructjax.dpo",
            "instructjax.pipeline",
            "instructjax.dry_run", "instructjax.export")


def test_importing_a_program_defines_no_flags():
  # The libraries the programs import define absl flags of their own; only ours count.
  for library in ("absl.app", "absl.logging", "orbax.checkpoint", "grain",
                  "tensorflow_datasets"):
    importlib.import_module(library)
  before = set(flags.FLAGS)
  for name in PROGRAMS:
    importlib.import_module(name)
  assert not {"config", "workdir", "stage", "distributed", "mode"} & set(flags.FLAGS)
  assert set(flags.FLAGS) == before


def test_stage_table_is_a_graph_in_run_order():
  seen = set()
  for stage in stage_table.STAGES:
    assert set(stage.parents) <= seen, f"{stage.name} runs before its parents"
    seen.add(stage.name)
    program = importlib.import_module(stage.program)
    assert stage.name in stage_table.run_by(stage.program)
    assert callable(program.run)
  with pytest.raises(ValueError, match=r"unknown stage 'kto'; known: \('pretrain'"):
    stage_table.stage("kto")


def test_optional_stages_run_only_with_their_config_section():
  config = get_config("test")
  names = [s.name for s in stage_table.stages_for(config)]
  assert names[-3:] == ["dpo", "rloo", "grpo"]
  del config["dpo"], config["grpo"]
  assert [s.name for s in stage_table.stages_for(config)] == [
      n for n in names if n not in ("dpo", "grpo")]
  # Their contestants go with them.
  assert {c.name for c in contestants.contestants_for(config)} >= {"ppo", "rloo"}
  assert not {"dpo", "grpo"} & {c.name for c in contestants.contestants_for(config)}


def test_every_contestant_is_a_stage_found_by_name():
  for c in contestants.CONTESTANTS + contestants.EMA_CONTESTANTS:
    assert contestants.contestant(c.name) is c
    assert stage_table.stage(c.stage).name == c.stage
  assert all(stage_table.stage(c.stage).program == "instructjax.ppo"
             for c in contestants.EMA_CONTESTANTS)  # only PPO keeps an EMA
  assert {contestants.BASELINE, contestants.CHAMPION, *contestants.RIVALS} <= {
      c.name for c in contestants.CONTESTANTS}
  with pytest.raises(ValueError, match="unknown contestant 'gpt4'"):
    contestants.contestant("gpt4")


def test_export_card_round_trip_and_foreign_cards(tmp_path):
  card = stage_export.ExportCard(stage="rm", model={"d_model": 8}, steps=3, reward_bias=0.25,
                                 final_eval={"accuracy": 0.7})
  path = tmp_path / "rm" / "export" / stage_export.CARD
  atomic_write.write_json(path, card.to_json())
  assert stage_export.read_card(str(tmp_path / "rm"), expected_stages=("rm",)) == card
  atomic_write.write_json(path, {**card.to_json(), "reward_scale": 2.0})
  with pytest.raises(CheckpointError, match=r"unknown fields \['reward_scale'\]"):
    stage_export.read_card(str(tmp_path / "rm"), expected_stages=("rm",))
  atomic_write.write_json(path, {"stage": "rm"})
  with pytest.raises(CheckpointError, match=r"missing fields \['model', 'steps'\]"):
    stage_export.read_card(str(tmp_path / "rm"), expected_stages=("rm",))


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
  path = tmp_path / "times.json"
  atomic_write.write_json(path, {"sft": 1.0})

  def fail(*args, **kwargs):
    raise OSError("disk full (simulated)")
  monkeypatch.setattr(os, "replace", fail)
  with pytest.raises(OSError, match="disk full"):
    atomic_write.write_json(path, {"sft": 2.0})
  assert json.loads(path.read_text()) == {"sft": 1.0}
  assert os.listdir(tmp_path) == ["times.json"]  # no temporary file left behind
