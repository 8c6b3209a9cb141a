"""Choices on validation: a sweep trains a stage once per value from the same parents
(the script, as a user runs it), and scores only validation prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from instructjax import stage_export
from instructjax.config import load_config
from instructjax.data import sources, testbed
from instructjax.evaluation import measures, validation_sweep
from stage_commands import CONFIG, PPO_FLAGS, REPO


@pytest.fixture
def asked(monkeypatch) -> list[str]:
  """Every prompt `measures.sample_responses` is asked to answer, in order."""
  asked = []
  sample = measures.sample_responses

  def recording(model, params, prompts, *args, **kwargs):
    asked.extend(prompts)
    return sample(model, params, prompts, *args, **kwargs)

  monkeypatch.setattr(measures, "sample_responses", recording)
  return asked


def test_validation_measures_read_only_validation_prompts(test_run, asked):
  config, run_dir = test_run
  scored = validation_sweep.validation_measures(
      config, str(run_dir), "sft")
  bed = sources.load_data(config, str(run_dir)).testbed
  assert asked == [e.prompt for e in bed.val_prompts[:config.eval.prompts]]
  assert not set(asked) & {e.prompt for e in bed.eval_prompts}
  for name, fn in (("gold", testbed.score), ("credit", testbed.credit)):
    each = [fn(bed.example(p), a) for p, a in zip(asked, scored["answers"])]
    assert scored[name]["rate"] == pytest.approx(np.mean(each)), name
    assert scored[name]["n"] == len(asked), name


def test_sweep_trains_each_value_from_the_same_parents(test_run, programs, tmp_path):
  config, run_dir = test_run
  base = tmp_path / "run"
  base.mkdir()
  for name in ("testbed", "pretrain", "pretrain_big", "sft", "sft_big", "rm"):
    os.symlink(run_dir / name, base / name)
  command = [sys.executable, "experiments/validity/validation_sweep.py", f"--config={CONFIG}",
             f"--workdir={base}", *PPO_FLAGS, "--stage=ppo_ptx", "--field=ppo.ptx_coef",
             "--values=0.5,2.0"]
  result = subprocess.run(command, cwd=REPO, env=programs.env, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(base / "sweeps" / "ppo_ptx" / "ppo.ptx_coef.json", encoding="utf-8") as f:
    rows = json.load(f)["rows"]
  assert [r["value"] for r in rows] == ["0.5", "2.0"]
  for value in ("0.5", "2.0"):
    where = validation_sweep.value_dir(str(base), "ppo_ptx", "ppo.ptx_coef", value)
    card = stage_export.read_card(os.path.join(where, "ppo_ptx"),
                                  expected_stages=("ppo_ptx",))
    assert card.ptx_coef == float(value)  # the value reached training
    assert os.path.realpath(os.path.join(where, "sft")) == os.path.realpath(run_dir / "sft")
  assert f"ppo.ptx_coef=2.0: validation gold {rows[1]['gold']['rate']:.3f}" in result.stdout


def test_with_value_casts_to_the_fields_type_and_names_an_unknown_field():
  config = load_config(CONFIG)
  changed = validation_sweep.with_value(config, "ppo.kl_coef", "0.2")
  assert changed.ppo.kl_coef == 0.2 and config.ppo.kl_coef != 0.2  # a copy, a float
  with pytest.raises(KeyError, match="config.ppo has no field 'kl_coeff'"):
    validation_sweep.with_value(config, "ppo.kl_coeff", "0.2")


def test_a_boolean_field_takes_true_or_false_spelled_out():
  config = load_config(CONFIG)
  assert validation_sweep.with_value(config, "rm.likelihood_feature", "false") \
      .rm.likelihood_feature is False
  assert validation_sweep.with_value(config, "rm.likelihood_feature", "True") \
      .rm.likelihood_feature is True
  with pytest.raises(ValueError, match="rm.likelihood_feature is a boolean"):
    validation_sweep.with_value(config, "rm.likelihood_feature", "0")


def test_rm_is_judged_by_its_pick_among_sft_samples_of_validation_prompts(test_run, asked):
  config, run_dir = test_run
  scored = validation_sweep.rm_validation_measures(config, str(run_dir), samples_per_prompt=3)
  bed = sources.load_data(config, str(run_dir)).testbed
  val = [e.prompt for e in bed.val_prompts[:config.eval.prompts]]
  assert asked == [p for p in val for _ in range(3)]  # validation prompts only, 3 each
  for name in ("credit", "gold"):
    pick = scored[f"rm_pick_{name}"]
    assert pick["n"] == len(val)
    # A pick is one of the samples: never above the best one's, on every prompt.
    assert pick["rate"] <= scored[f"best_{name}"] + 1e-9
    assert scored[f"random_{name}"] <= scored[f"best_{name}"] + 1e-9
  card = stage_export.read_card(str(run_dir / "rm"), expected_stages=("rm",))
  assert scored["correctness_accuracy"] == card.final_eval["accuracy_correctness"]


def test_rm_sweep_trains_each_readout(test_run, programs, tmp_path):
  config, run_dir = test_run
  base = tmp_path / "run"
  base.mkdir()
  for name in ("testbed", "pretrain", "pretrain_big", "sft", "sft_big"):
    os.symlink(run_dir / name, base / name)
  command = [sys.executable, "experiments/validity/validation_sweep.py", f"--config={CONFIG}",
             f"--workdir={base}", "--stage=rm", "--field=rm.likelihood_feature",
             "--values=false,true"]
  result = subprocess.run(command, cwd=REPO, env=programs.env, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  for value, feature in (("false", False), ("true", True)):
    where = validation_sweep.value_dir(str(base), "rm", "rm.likelihood_feature", value)
    card = stage_export.read_card(os.path.join(where, "rm"), expected_stages=("rm",))
    assert card.likelihood_feature is feature  # the value reached training
    # The RM's trunk (config.rm.trunk, sft_big in :test) is linked with the rest.
    assert os.path.realpath(os.path.join(where, "sft_big")) == os.path.realpath(
        run_dir / "sft_big")
  with open(base / "sweeps" / "rm" / "rm.likelihood_feature.json", encoding="utf-8") as f:
    rows = json.load(f)["rows"]
  assert [r["value"] for r in rows] == ["false", "true"]
  assert "credit of the RM's pick among 8 SFT samples" in result.stdout
