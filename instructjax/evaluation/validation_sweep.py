"""Choosing a hyperparameter on validation data: a stage trained once per value, each
from the same finished parents, each scored on the validation prompts only.

  python experiments/validity/validation_sweep.py --workdir=runs/demo --stage=ppo \
      --field=ppo.kl_coef --values=0.02,0.05,0.1

WORKDIR must hold a finished run's parents of the stage (a pipeline run). Each value
trains in WORKDIR/sweeps/<stage>/<field>=<value>, whose testbed and parent stages are
links to WORKDIR's, so every value starts from the same SFT policy and RM. Each export
is scored on the testbed's validation prompts (never the test prompts): the gold score
of its greedy answers (95% interval), the training labelers' win rate against SFT's
answers, and the alignment-tax measurements on the validation probes. An RM is scored
where PPO will use it: on SFT's samples for the validation prompts, by the credit of the
one it ranks first (`rm_validation_measures`). The rows go to
WORKDIR/sweeps/<stage>/<field>.json; the run's config records the choice they support
in its `choices` section.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Sequence

import jax
import ml_collections

import numpy as np

from instructjax import reward, sampling, sharding, stage_table
from instructjax.atomic_write import write_json
from instructjax.data import sources, testbed, tokenize
from instructjax.evaluation import final_eval, judged_eval, measures


def _ancestors(config, name: str) -> list[str]:
  out = []
  for parent in stage_table.parents(config, name):
    out += [a for a in _ancestors(config, parent) + [parent] if a not in out]
  return out


def with_value(config: ml_collections.ConfigDict, field: str,
               value: Any) -> ml_collections.ConfigDict:
  """A copy of config with `field` ("ppo.kl_coef") set to value, cast to its type."""
  out = config.copy_and_resolve_references()
  *sections, key = field.split(".")
  node = out
  for section in sections:
    node = node[section]
  if key not in node:
    raise KeyError(f"--field={field}: config.{'.'.join(sections)} has no field {key!r}")
  node[key] = _parse_bool(field, value) if isinstance(node[key], bool) else type(node[key])(value)
  return out


def _parse_bool(field: str, value: Any) -> bool:
  """bool("False") is True: a boolean field takes true/false spelled out."""
  if isinstance(value, bool):
    return value
  spelled = str(value).strip().lower()
  if spelled not in ("true", "false"):
    raise ValueError(f"--field={field} is a boolean: give true or false, not {value!r}")
  return spelled == "true"


def value_dir(run_dir: str, stage: str, field: str, value: Any) -> str:
  return os.path.join(run_dir, "sweeps", stage, f"{field}={value}")


def _link_parents(config, run_dir: str, where: str, stage: str) -> None:
  """Links the testbed and the stage's ancestors into `where`, from run_dir."""
  os.makedirs(where, exist_ok=True)
  shared = ["testbed"] if stage_table.has_gold(config) and not config.data.dir else []
  for name in shared + _ancestors(config, stage):
    source, link = os.path.join(run_dir, name), os.path.join(where, name)
    if not os.path.exists(source):
      raise FileNotFoundError(f"{source} is missing: run the pipeline in {run_dir} first")
    if not os.path.islink(link):
      os.symlink(os.path.abspath(source), link)


def validation_measures(config, run_dir: str, stage: str, *, sft_answers=None) -> dict:
  """Greedy answers of `stage`'s export in run_dir to the validation prompts, scored:
  gold score and correctness credit (95% CIs) and, given SFT's answers, the training
  labelers' win rate; and the alignment tax on the validation probes and distinct text."""
  data = sources.load_data(config, run_dir)
  mesh = sharding.make_mesh(**config.mesh)
  examples = data.testbed.val_prompts[:config.eval.prompts]
  model, params = final_eval.Models(config, run_dir, mesh)(stage)
  tok = data.tokenizer
  answers = measures.greedy_answers(
      model, params, [e.prompt for e in examples], tok,
      max_new_tokens=config.eval.max_new_tokens, prompt_len=config.data.max_prompt_len,
      mesh=mesh, rng=jax.random.PRNGKey(config.seed))
  out = {name: measures.mean_with_ci([fn(e, a) for e, a in zip(examples, answers)])
         for name, fn in (("gold", testbed.score), ("credit", testbed.credit))}
  out.update(answers=answers,
             **final_eval.tax_measures(config, tok, model, params, split="val", mesh=mesh))
  if sft_answers is not None:
    judges = [l for l in data.testbed.labelers if not l.held_out]
    out["win_rate_vs_sft"] = final_eval.win_rate(examples, answers, sft_answers, judges)
  return out


def rm_validation_measures(config, run_dir: str, *, samples_per_prompt: int = 8) -> dict:
  """The RM of run_dir judged where PPO uses it: for each validation prompt, sample
  `samples_per_prompt` answers from SFT (PPO's temperature and length) and take the one
  the RM ranks first. -> credit and gold of its picks, of a random sample (the mean) and
  of the best sample (an oracle's pick); and the RM's accuracy on rm_eval's
  correctness-only pairs, from its export card."""
  data = sources.load_data(config, run_dir)
  mesh = sharding.make_mesh(**config.mesh)
  examples = data.testbed.val_prompts[:config.eval.prompts]
  n = samples_per_prompt
  policy, policy_params = final_eval.Models(config, run_dir, mesh)("sft")
  tok = data.tokenizer
  prompts = [e.prompt for e in examples for _ in range(n)]
  texts = measures.sample_responses(
      policy, policy_params, prompts, tok, sampling_config=sampling.SamplingConfig(
          max_new_tokens=config.ppo.max_new_tokens, temperature=config.ppo.temperature,
          eos_id=tokenize.eos_id(tok), pad_id=tokenize.pad_id(tok)),
      batch_size=64, buckets=(config.data.max_prompt_len,), mesh=mesh,
      rng=jax.random.PRNGKey(config.seed))
  model, params, card = reward.load_reward_model(reward.model_config_of(config, run_dir),
                                                 os.path.join(run_dir, "rm"), mesh)
  scores = judged_eval.score_answers(model, params, prompts, texts, tok, config=config,
                                     mesh=mesh).reshape(-1, n)  # [prompts, n]
  scores = np.where(np.array([t.strip() == "" for t in texts]).reshape(-1, n), -np.inf,
                    scores)  # an empty answer is never the RM's pick
  by_sample = {name: np.array([fn(e, t) for e, t in zip(
      (e for e in examples for _ in range(n)), texts)]).reshape(-1, n)
               for name, fn in (("credit", testbed.credit), ("gold", testbed.score))}
  picked = np.argmax(scores, axis=1)  # [prompts]
  out = {"correctness_accuracy": card.final_eval.get("accuracy_correctness"),
         "samples_per_prompt": n}
  for name, values in by_sample.items():
    out[f"rm_pick_{name}"] = measures.mean_with_ci(values[np.arange(len(values)), picked])
    out[f"random_{name}"] = float(values.mean())
    out[f"best_{name}"] = float(values.max(axis=1).mean())
  return out


def _rm_row(config, where: str, value) -> dict:
  scored = rm_validation_measures(config, where)
  print(f"[sweep] rm value {value}: credit of the RM's pick among "
        f"{scored['samples_per_prompt']} SFT samples {scored['rm_pick_credit']['rate']:.3f} "
        f"(random {scored['random_credit']:.3f}, best {scored['best_credit']:.3f}); gold "
        f"{scored['rm_pick_gold']['rate']:.3f}; correctness-only accuracy on rm_eval "
        f"{scored['correctness_accuracy']:.3f}", flush=True)
  return {"value": value, **scored}


def sweep(config: ml_collections.ConfigDict, run_dir: str, *, stage: str, field: str,
          values: Sequence[Any]) -> list[dict]:
  """Trains `stage` once per value of `field` and scores each on validation; -> rows
  {value, gold, credit, win_rate_vs_sft, probe_accuracy, distinct_text_loss}, also
  written to WORKDIR/sweeps/<stage>/<field>.json with SFT's."""
  run = importlib.import_module(stage_table.stage(stage).program).run
  rm = stage == "rm"
  sft = {} if rm else validation_measures(config, run_dir, "sft")
  rows = []
  for value in values:
    cfg = with_value(config, field, value)
    where = value_dir(run_dir, stage, field, value)
    _link_parents(cfg, run_dir, where, stage)
    run(cfg, where, stage=stage)
    if rm:
      rows.append(_rm_row(cfg, where, value))
      continue
    scored = validation_measures(cfg, where, stage, sft_answers=sft["answers"])
    rows.append({"value": value, **{k: v for k, v in scored.items() if k != "answers"}})
    print(f"[sweep] {stage} {field}={value}: validation gold {scored['gold']['rate']:.3f} "
          f"(CI {scored['gold']['ci_low']:.3f}-{scored['gold']['ci_high']:.3f}), credit "
          f"{scored['credit']['rate']:.3f} (SFT {sft['credit']['rate']:.3f}), win rate "
          f"vs SFT {scored['win_rate_vs_sft']['rate']:.3f}, held-out formats "
          f"{scored['probe_accuracy']['average']['accuracy']:.3f}, distinct text loss "
          f"{scored['distinct_text_loss']:.3f}", flush=True)
  write_json(os.path.join(run_dir, "sweeps", stage, f"{field}.json"),
             {"stage": stage, "field": field, "sft": {k: v for k, v in sft.items()
                                                      if k != "answers"}, "rows": rows})
  return rows
