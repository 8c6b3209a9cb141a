"""The main job: the whole InstructGPT recipe on the embedded testbed, then the report.

  python -m instructjax.pipeline --workdir=runs/demo
  python -m instructjax.pipeline --config=experiments/instructgpt_tiny.py:quick --workdir=runs/quick

Stages, each in WORKDIR/<stage>: pretrain (the small vanilla LM), pretrain_big (a larger
one), sft, rm, ppo, ppo_ptx; then eval/results.json and the report (report.md,
report.html, claims.json, plots). Rerunning after an interruption resumes the stage that
was running and reuses the finished ones.
"""

from __future__ import annotations

import json
import os
import time

import ml_collections
from absl import app

from instructjax import cli, claims, final_eval, ppo, report, reward, sft, stage_export
from instructjax.config import model_config
from instructjax.data import sources

STAGES = ("pretrain", "pretrain_big", "sft", "rm", "ppo", "ppo_ptx")


def _run_stage(config, run_dir: str, stage: str) -> None:
  if stage in sft.STAGES:
    sft.run(config, run_dir, stage=stage)
  elif stage == "rm":
    reward.run(config, run_dir)
  else:
    ppo.run(config, run_dir, stage=stage)


class StageTimes:
  """Wall time of each stage, kept in WORKDIR/stage_times.json across reruns."""

  def __init__(self, run_dir: str):
    self.path = os.path.join(run_dir, "stage_times.json")
    self.times = {}
    if os.path.exists(self.path):
      with open(self.path, encoding="utf-8") as f:
        self.times = json.load(f)

  def add(self, stage: str, seconds: float) -> None:
    self.times[stage] = self.times.get(stage, 0.0) + seconds
    with open(self.path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(self.times, f, indent=2)
    os.replace(self.path + ".tmp", self.path)


def _ppo_curve(run_dir: str, stage: str) -> list[dict]:
  path = os.path.join(run_dir, stage, "metrics.jsonl")
  curve = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      curve[row["step"]] = {"iteration": row["step"], "rm_score": row["rm_score"],
                            "gold_score": row.get("gold_score"), "kl_to_ref": row["kl_to_ref"]}
  return [curve[k] for k in sorted(curve)]  # a resumed run may repeat iterations


def run(config: ml_collections.ConfigDict, run_dir: str) -> dict:
  """Runs every stage (reusing finished ones), evaluates, reports; -> the claims."""
  os.makedirs(run_dir, exist_ok=True)
  times = StageTimes(run_dir)
  start = time.time()
  sources.load_data(config, run_dir)  # the testbed, generated once
  times.add("testbed", time.time() - start)
  for i, stage in enumerate(STAGES):
    print(f"=== stage {i + 1}/{len(STAGES)}: {stage} ===", flush=True)
    if stage_export.is_exported(os.path.join(run_dir, stage)):
      print(f"[{stage}] finished earlier, reused", flush=True)
      continue
    start = time.time()
    _run_stage(config, run_dir, stage)
    times.add(stage, time.time() - start)

  results_path = os.path.join(run_dir, "eval", "results.json")
  if os.path.exists(results_path):
    with open(results_path, encoding="utf-8") as f:
      results = json.load(f)
  else:
    print("=== evaluation ===", flush=True)
    start = time.time()
    results = final_eval.evaluate_all(config, run_dir)
    times.add("eval", time.time() - start)
    params = {name: model_config(config[name], field=f"config.{name}").num_params()
              for name in ("model", "big_model")}
    rm_card = stage_export.read_card(os.path.join(run_dir, "rm"), expected_stages=("rm",))
    results.update(
        config=config.to_dict(),
        flops=claims.training_flops(config, params),
        rm_accuracy={"train_labelers": rm_card["final_eval"].get("accuracy_train_labelers"),
                     "heldout_labelers": rm_card["final_eval"].get("accuracy_heldout_labelers")},
        ppo_curves={s: _ppo_curve(run_dir, s) for s in ("ppo", "ppo_ptx")})
    results["claims"] = claims.evaluate_claims(results)
    os.makedirs(os.path.dirname(results_path), exist_ok=True)
    with open(results_path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2, default=_json_default)
    os.replace(results_path + ".tmp", results_path)
  results["stage_times_s"] = times.times
  paths = report.write_report(results, run_dir)
  print("=== claims ===", flush=True)
  for claim in results["claims"]:
    verdict = "reproduced" if claim["reproduced"] else "NOT reproduced"
    print(f"  {claim['id']}: {verdict}", flush=True)
  print(f"report: {paths.get('report.md', run_dir)}", flush=True)
  return results


def _json_default(value):
  if hasattr(value, "tolist"):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def main(argv):
  del argv
  config, run_dir = cli.config_and_workdir()
  run(config, run_dir)


if __name__ == "__main__":
  app.run(main)
