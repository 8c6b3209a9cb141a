"""The main job: the whole InstructGPT recipe, then the evaluation and the report.

  python -m instructjax.pipeline --workdir=runs/demo
  python -m instructjax.pipeline --config=experiments/instructgpt_tiny.py:quick --workdir=runs/quick
  python -m instructjax.pipeline --config=experiments/gpt2_hh_rlhf.py:gpu --workdir=runs/gpt2_hh

Stages, each in WORKDIR/<stage>, in the order of `instructjax.stage_table.STAGES`:
pretrain (the small vanilla LM, or the imported checkpoint config.hf_name.model),
pretrain_big (a larger one), sft, rm, on real data rm_judge (a held-out RM that only
judges), ppo, ppo_ptx, and where the config has their sections the methods compared with
them (dpo, rloo, grpo); then eval/results.json and the report (report.md, report.html,
plots, and on the testbed claims.json). On the testbed the evaluation scores answers
with the gold score and the simulated labelers (`evaluation.final_eval`); on real data,
with the RM and the held-out judge RM (`evaluation.judged_eval`). Rerunning after an
interruption resumes the stage that was running and reuses the finished ones.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import time

import ml_collections

from instructjax import (cli, compile_time, dry_run, hf_import, sharding, stage_export,
                         stage_table)
from instructjax.atomic_write import write_json
from instructjax.data import sources
from instructjax.evaluation import (agreement, claims, final_eval, judged_eval, judged_report,
                                    report)
from instructjax.evaluation.contestants import LABELER_GROUPS, METHODS


class StageTimes:
  """Wall time of each stage and the part of it spent compiling, kept in
  WORKDIR/stage_times.json ({"wall_s": {stage: s}, "compile_s": {stage: s}}) and summed
  across reruns."""

  def __init__(self, run_dir: str):
    self.path = os.path.join(run_dir, "stage_times.json")
    self.times, self.compile = {}, {}
    if os.path.exists(self.path):
      with open(self.path, encoding="utf-8") as f:
        saved = json.load(f)
      # A run begun before compile times were kept holds {stage: wall seconds} only.
      self.times, self.compile = ((saved["wall_s"], saved["compile_s"]) if "wall_s" in saved
                                  else (saved, {}))

  @contextlib.contextmanager
  def timing(self, stage: str):
    """Adds the block's wall and compile seconds to the stage's."""
    wall, compiling = time.time(), compile_time.seconds()
    yield
    for totals, spent in ((self.times, time.time() - wall),
                          (self.compile, compile_time.seconds() - compiling)):
      totals[stage] = totals.get(stage, 0.0) + spent
    write_json(self.path, {"wall_s": self.times, "compile_s": self.compile})


def _run_program(config: ml_collections.ConfigDict, run_dir: str, stage: stage_table.Stage):
  """Runs one stage with the program the stage table names."""
  return importlib.import_module(stage.program).run(config, run_dir, stage=stage.name)


def _ppo_curve(run_dir: str, stage: str) -> list[dict]:
  path = os.path.join(run_dir, stage, "metrics.jsonl")
  curve = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      curve[row["step"]] = {"iteration": row["step"], "rm_score": row["rm_score"],
                            "gold_score": row.get("gold_score"), "kl_to_ref": row["kl_to_ref"]}
  return [curve[k] for k in sorted(curve)]  # a resumed run may repeat iterations


def _agreement(config: ml_collections.ConfigDict, run_dir: str) -> dict:
  """Inter-labeler agreement on the rm_eval prompts' responses (each prompt once)."""
  bed = sources.load_data(config, run_dir).testbed
  items = {r.example.prompt: (r.example, r.responses) for r in bed.rm_eval}
  return agreement.labeler_agreement(list(items.values()), bed.labelers)


def evaluate(config: ml_collections.ConfigDict, run_dir: str) -> dict:
  """The final evaluation of every model, plus compute, RM accuracy, PPO curves and the
  claims judged on them: the content of eval/results.json."""
  results = final_eval.evaluate_all(config, run_dir)
  params = {name: hf_import.resolve_model(config, run_dir, name).num_params()
            for name in ("model", "big_model")}
  rm_card = stage_export.read_card(os.path.join(run_dir, "rm"), expected_stages=("rm",))
  results.update(
      config=config.to_dict(),
      flops=claims.training_flops(config, params),
      rm_accuracy={group: rm_card.final_eval.get(f"accuracy_{group}")
                   for group in (*LABELER_GROUPS, "correctness")},
      ppo_curves={s.name: _ppo_curve(run_dir, s.name) for s in stage_table.stages_for(config)
                  if s.program == "instructjax.ppo"},
      methods=[name for name in METHODS if name in results["models"]],
      labeler_agreement=_agreement(config, run_dir))
  results["claims"] = claims.evaluate_claims(results)
  return results


def evaluate_judged(config: ml_collections.ConfigDict, run_dir: str) -> dict:
  """The evaluation on real data (no gold score): the content of eval/results.json."""
  results = judged_eval.evaluate_judged(config, run_dir)
  results.update(config=config.to_dict(), text_sources=sources.text_sources(config, run_dir))
  return results


def run(config: ml_collections.ConfigDict, run_dir: str) -> dict:
  """Runs every stage (reusing finished ones), evaluates, reports; -> the results."""
  os.makedirs(run_dir, exist_ok=True)
  times = StageTimes(run_dir)
  gold = stage_table.has_gold(config)
  # A batch the devices cannot split stops the run here, not after hours of earlier stages.
  dry_run.check_batches(config, sharding.make_mesh(**config.mesh))
  with times.timing("testbed" if gold else "data"):
    sources.load_data(config, run_dir)  # the testbed or the split files, made once
  stages = stage_table.stages_for(config)
  for i, stage in enumerate(stages):
    print(f"=== stage {i + 1}/{len(stages)}: {stage.name} ===", flush=True)
    if stage_export.is_exported(os.path.join(run_dir, stage.name)):
      print(f"[{stage.name}] finished earlier, reused", flush=True)
      continue
    with times.timing(stage.name):
      _run_program(config, run_dir, stage)

  results_path = os.path.join(run_dir, "eval", "results.json")
  if os.path.exists(results_path):
    with open(results_path, encoding="utf-8") as f:
      results = json.load(f)
  else:
    print("=== evaluation ===", flush=True)
    with times.timing("eval"):
      results = evaluate(config, run_dir) if gold else evaluate_judged(config, run_dir)
    write_json(results_path, results, default=_json_default)
  results["stage_times_s"], results["compile_times_s"] = times.times, times.compile
  if not gold:
    paths = judged_report.write_judged_report(results, run_dir)
    print(f"report: {paths['report.md']}", flush=True)
    return results
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


if __name__ == "__main__":
  cli.main(run)
