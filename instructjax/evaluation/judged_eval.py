"""The final evaluation where no gold score exists (real data): judged by reward models.

For the vanilla LMs (small and large), SFT, PPO and PPO-ptx, on the held-out evaluation
prompts (the test split; no stage trains on them): greedy answers; their win rate
against SFT's answers as judged by two reward models, with 95% intervals over prompts;
the KL to SFT on the model's own samples; the mean answer length in tokens; and the
loss on held-out text. The judges:
  rm        the RM that PPO optimised: its verdict overstates PPO's gain (PPO was
            trained to please it), as the paper's training labelers would;
  rm_judge  a held-out RM, trained from SFT on a share of the comparisons that neither
            the RM nor PPO saw: the stand-in for the paper's held-out labelers.
A judge's preference for answer a over b is its Bradley-Terry probability
sigmoid(r(x, a) - r(x, b)), the model the RM was trained under. What this cannot
measure: human preference. There are no human labelers here, and two RMs trained from
the same SFT model on the same kind of data share its blind spots.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import ml_collections
import numpy as np

from instructjax import multihost, reward, sharding
from instructjax.data import batching, records, sources
from instructjax.evaluation import final_eval, measures
from instructjax.evaluation.contestants import BASELINE, contestant, contestants_for
from instructjax.models import ScalarModel

JUDGES = ("rm", "rm_judge")  # how results name the judges (also their stages)
JUDGE_TITLES = {"rm": "RM used by PPO", "rm_judge": "held-out judge RM"}


def judged_win_rate(scores: np.ndarray, baseline: np.ndarray) -> dict:
  """Mean Bradley-Terry preference for each answer over the baseline's, with a 95%
  normal-approximation interval over prompts. scores, baseline: [N] rewards."""
  return measures.mean_with_ci(1.0 / (1.0 + np.exp(-(scores - baseline))))  # [N] -> stats


def score_answers(model: ScalarModel, params, prompts: Sequence[str], answers: Sequence[str],
                  tokenizer, *, config: ml_collections.ConfigDict, mesh) -> np.ndarray:
  """A reward model's score of each (prompt, answer): [N], at the answer's EOS."""
  batcher = batching.SftBatcher(tokenizer, buckets=tuple(config.data.buckets),
                                max_prompt_len=config.data.max_prompt_len)
  rows = [records.SftRecord(p, a) for p, a in zip(prompts, answers)]
  scores = []
  for batch in batching.iterate_once(rows, batcher, batch_size=32):
    scores.extend(multihost.to_host(reward.sequence_rewards(
        params, sharding.shard_batch(batch, mesh), apply_fn=model.apply)))
  return np.asarray(scores[:len(rows)])


def _answer_lengths(answers: Sequence[str], tokenizer) -> float:
  return float(np.mean([len(tokenizer(a, add_special_tokens=False)["input_ids"])
                        for a in answers]))


def evaluate_judged(config: ml_collections.ConfigDict, run_dir: str) -> dict:
  """-> the 'models' and 'rm_accuracy' sections of results.json: models[name] = {label,
  params, win_rate_vs_sft[judge], mean_reward[judge], kl_to_sft, answer_tokens,
  heldout_loss, samples}; rm_accuracy[judge] = ranking accuracy on rm_eval."""
  data = sources.load_data(config, run_dir)
  mesh = sharding.make_mesh(**config.mesh)
  prompts = [r.prompt for r in data.read("eval_prompts")][:config.eval.prompts]
  models = final_eval.Models(config, run_dir, mesh)
  rm_cfg = reward.model_config_of(config, run_dir)
  judges = {judge: reward.load_reward_model(rm_cfg, os.path.join(run_dir, judge), mesh,
                                            stage=judge) for judge in JUDGES}
  rng = jax.random.PRNGKey(config.seed + 7)
  tok = data.tokenizer
  doc_batcher = batching.PretrainBatcher(tok, buckets=tuple(config.data.buckets))
  heldout_docs = data.read("pretrain_heldout")
  answers, results = {}, {}
  for c in (c for c in contestants_for(config) if not c.few_shot):
    model, params = models(c.stage, ema=c.ema)
    answers[c.name] = measures.greedy_answers(
        model, params, prompts, tok, max_new_tokens=config.eval.max_new_tokens,
        prompt_len=config.data.max_prompt_len, mesh=mesh, rng=rng)
    results[c.name] = {
        "label": c.label, "params": model.config.num_params(),
        "answer_tokens": _answer_lengths(answers[c.name], tok),
        "heldout_loss": measures.lm_loss(model.apply, params, heldout_docs, doc_batcher,
                                         batch_size=32, mesh=mesh),
        "samples": [{"prompt": p, "response": r}
                    for p, r in zip(prompts[:final_eval.N_SAMPLES], answers[c.name])]}
  sft_model, sft_params = models(BASELINE)
  for judge, (scalar, params, card) in judges.items():
    scores = {name: score_answers(scalar, params, prompts, a, tok, config=config, mesh=mesh)
              - card.reward_bias for name, a in answers.items()}
    for name, result in results.items():
      result.setdefault("win_rate_vs_sft", {})[judge] = judged_win_rate(
          scores[name], scores[BASELINE])
      result.setdefault("mean_reward", {})[judge] = float(scores[name].mean())
  for name, result in results.items():
    c = contestant(name)
    model, params = models(c.stage, ema=c.ema)
    result["kl_to_sft"] = final_eval.sampled_measures(
        model, params, sft_model, sft_params, prompts, tok,
        prompt_len=config.data.max_prompt_len, max_new_tokens=config.eval.max_new_tokens,
        mesh=mesh, rng=rng)["kl"]
  accuracy = {judge: card.final_eval.get("accuracy") for judge, (_, _, card) in judges.items()}
  return {"models": results, "rm_accuracy": accuracy}
