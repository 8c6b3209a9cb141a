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


def test_validation_measures_read_only_validation_prompts(test_run, monkeypatch):
  config, run_dir = test_run
  asked = []
  sample = measures.sample_responses

  def recording(model, params, prompts, *args, **kwargs):
    asked.extend(prompts)
    return sample(model, params, prompts, *args, **kwargs)

  monkeypatch.setattr(measures, "sample_responses", recording)
  scored = validation_sweep.validation_measures(
      config, str(run_dir), "sft")
  bed = sources.load_data(config, str(run_dir)).testbed
  assert asked == [e.prompt for e in bed.val_prompts[:config.eval.prompts]]
  assert not set(asked) & {e.prompt for e in bed.eval_prompts}
  gold = [testbed.score(bed.example(p), a) for p, a in zip(asked, scored["answers"])]
  assert scored["gold"]["rate"] == pytest.approx(np.mean(gold))
  assert scored["gold"]["n"] == len(asked)


def test_sweep_trains_each_value_from_the_same_parents(test_run, programs, tmp_path):
  config, run_dir = test_run
  base = tmp_path / "run"
  base.mkdir()
  for name in ("testbed", "pretrain", "sft", "rm"):
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
