"""Stage 2, the reward model: the SFT trunk with a scalar head, trained on K-wise rankings.

  python -m instructjax.reward --config=experiments/instructgpt_tiny.py --workdir=runs/demo

Starts from WORKDIR/sft's export, or with config.rm.trunk="sft_big" from the large LM's
after SFT (WORKDIR/sft_big: an RM larger than the policy, as the paper's one 6B RM judged
every policy size); the RM has its trunk's architecture (`model_config_of`).

After training it normalises the reward on the demonstrations, as lm-human-preferences
does: the exported head is divided by the demonstrations' reward std (`reward_std` in the
export card) and their mean, in those units, is `reward_bias`, so the normalised reward
r(x, y) - reward_bias has mean 0 and std 1 on the demonstrations. Then beta, the value
clip and the no-EOS penalty mean the same whatever scale the ranking loss left the RM at.
Ranking accuracy on held-out comparisons is reported separately for the labelers who
produced training data and for the held-out labelers; on the testbed, also on pairs that
differ in correctness only (`accuracy_correctness`).
"""

from __future__ import annotations

import functools
import os
import random

import jax
import ml_collections
import numpy as np

from instructjax import (cli, comparisons, hf_import, multihost, sharding, stage_export,
                         stage_table)
from instructjax.data import batching, sources
from instructjax.data.batches import TokenBatch
from instructjax.data.records import RankingRecord
from instructjax.data.testbed import candidates
from instructjax.models import CausalLM, ScalarModel, last_token_value
from instructjax.stage_loop import (Export, StageProgram, batch_advance, cadence, jit_step,
                                    run_stage)
from instructjax.steps.reward_step import ranking_rewards, reward_step
from instructjax.train_state import make_init_state

STAGES = stage_table.run_by("instructjax.reward")  # the RM, and the held-out judge RM


def load_sft_params(sft_dir: str, cfg, mesh, *, stage: str = "sft"):
  """An SFT stage's parameters (the policy's, or sft_big's), laid out on the mesh."""
  params, _ = stage_export.load_export(sft_dir, sharding.abstract_params(CausalLM(cfg), mesh),
                                       expected_stages=(stage,))
  return params


def model_config_of(config: ml_collections.ConfigDict, run_dir: str):
  """The reward models' architecture in this run: that of their trunk's stage
  (config.rm.trunk), which may be larger than the policy's."""
  return hf_import.resolve_model(config, run_dir, stage_table.rm_trunk(config).model_section)


def load_reward_model(cfg, stage_dir: str, mesh, *, stage: str = "rm"):
  """-> (ScalarModel with the readout its export card names, params on the mesh, card) of
  a finished RM stage."""
  card = stage_export.read_card(stage_dir, expected_stages=(stage,))
  model = ScalarModel(cfg, likelihood_feature=card.likelihood_feature)
  params, card = stage_export.load_export(stage_dir, sharding.abstract_params(model, mesh),
                                          expected_stages=(stage,))
  return model, params, card


@functools.partial(jax.jit, static_argnames="apply_fn")
def ranking_scores(params, batch, *, apply_fn):
  """The RM's reward of every ranked response. -> [B, K]"""
  return ranking_rewards(apply_fn, params, batch)


@functools.partial(jax.jit, static_argnames="apply_fn")
def sequence_rewards(params, batch: TokenBatch, *, apply_fn):
  values = apply_fn({"params": params}, batch.tokens, token_mask=batch.token_mask,
                    response_mask=batch.loss_mask)  # [B, T]
  return last_token_value(values, batch.token_mask)  # [B]


def ranking_accuracy(score, rows, batcher, *, mesh, held_out_ids=frozenset(),
                     batch_size: int = 16) -> dict:
  """Pairwise ranking accuracy on rows, overall and split by held-out labelers.
  score: a RankingBatch on the mesh -> a reward per response [B, K] (the RM's, or DPO's
  implicit reward)."""
  correct = {"train_labelers": 0, "heldout_labelers": 0}
  total = {"train_labelers": 0, "heldout_labelers": 0}
  for batch in batching.iterate_once(rows, batcher, batch_size=batch_size):
    batch = sharding.shard_batch(batch, mesh)
    # [B, K], [B, K], [B]: every row on every process
    rewards, masks, labelers = multihost.to_host(
        (score(batch), batch.response_mask, batch.labeler))
    for r, mask, labeler in zip(rewards, masks, labelers):
      k = int(mask.sum())
      if k < 2:
        continue
      group = "heldout_labelers" if int(labeler) in held_out_ids else "train_labelers"
      pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
      correct[group] += sum(r[i] > r[j] for i, j in pairs)
      total[group] += len(pairs)
  out = {f"accuracy_{g}": correct[g] / total[g] for g in total if total[g]}
  out["accuracy"] = sum(correct.values()) / max(sum(total.values()), 1)
  return out


def correctness_rows(bed, rows, *, seed: int) -> list[RankingRecord]:
  """For each testbed prompt of `rows`: the ideal answer ranked above each of its near
  misses (`candidates.near_misses`), as K = 2 rankings with no labeler."""
  rng = random.Random(f"instructjax-correctness/{seed}")
  prompts = dict.fromkeys(r.prompt for r in rows)  # distinct, in order
  out = []
  for prompt in prompts:
    example = bed.example(prompt)
    out += [RankingRecord(prompt, (example.answer, miss), (0, 1))
            for miss in candidates.near_misses(example, rng)]
  return out


def demonstration_rewards(apply_fn, params, rows, batcher, *, mesh) -> np.ndarray:
  """The RM's reward of every demonstration (prompt + response + EOS). -> [N]"""
  values = []
  for batch in batching.iterate_once(rows, batcher, batch_size=16):
    batch = sharding.shard_batch(batch, mesh)
    r, token_mask = multihost.to_host(
        (sequence_rewards(params, batch, apply_fn=apply_fn), batch.token_mask))
    values.extend(r[token_mask.sum(-1) > 0])
  return np.asarray(values, np.float64)


def normalised_head(params, rewards: np.ndarray):
  """-> (params with the scalar head (and the likelihood scale, if any) divided by the
  rewards' std, the rewards' mean in the new units, the std). An RM that scores every
  demonstration alike is left unscaled, as there is no spread to normalise."""
  std = float(np.std(rewards))
  scale = 1.0 / std if std > 1e-6 else 1.0
  scaled = {name: jax.tree.map(lambda a: a * scale, params[name])
            for name in ("scalar_head", "likelihood_scale") if name in params}
  return {**params, **scaled}, float(np.mean(rewards)) * scale, std


def start_from_sft(state, sft_params):
  """The RM's starting state, laid out as state's params are: the SFT policy's trunk (and
  unembedding, where untied), a zero scalar head, and the likelihood scale, if any, at
  its initial 1."""
  head = jax.tree.map(lambda a: jax.device_put(np.zeros(a.shape, a.dtype), a.sharding),
                      state.params["scalar_head"])
  copied = {name: sft_params[name] for name in ("transformer", "lm_head")
            if name in state.params}
  return state.replace(params={**state.params, **copied, "scalar_head": head})


def build_step(train: ml_collections.ConfigDict, state_shardings):
  """The jitted reward-model step of config.rm."""
  return jit_step(functools.partial(reward_step, accum_steps=train.accum_steps),
                  state_shardings)


def run(config: ml_collections.ConfigDict, run_dir: str, *, stage: str = "rm") -> str:
  """Runs (or resumes, or skips if finished) an RM stage; returns its directory."""
  if stage not in STAGES:
    raise ValueError(f"unknown stage {stage!r}; known: {STAGES}")
  if stage_table.stage(stage) not in stage_table.stages_for(config):
    raise ValueError(f"stage {stage!r} judges runs without a gold score; "
                     f"config.data.source={config.data.source!r} has one")
  return run_stage(stage, os.path.join(run_dir, stage),
                   lambda: _program(config, run_dir, stage))


def judge_share(rows, *, fraction: float, seed: int):
  """-> (rows for the RM, rows for the judge RM): the judge gets `fraction` of the distinct
  prompts, chosen by a seeded permutation, so the two never see the same prompt."""
  prompts = sorted({r.prompt for r in rows})
  order = np.random.default_rng([seed, 17]).permutation(len(prompts))
  n_judge = int(round(fraction * len(prompts)))
  if not 0 < n_judge < len(prompts):
    raise ValueError(
        f"config.rm.judge_fraction={fraction} of {len(prompts)} rm_train prompts leaves the "
        "RM or the judge RM without data; choose a fraction in (0, 1) or add comparisons")
  judged = {prompts[i] for i in order[:n_judge]}
  return [r for r in rows if r.prompt not in judged], [r for r in rows if r.prompt in judged]


def training_rows(config, data, mesh, run_dir: str, stage: str = "rm"):
  """config.data's rm_train rankings, less the judge RM's share where there is a judge; on
  the testbed, with part of each prompt's responses replaced by the SFT policy's samples
  (ranked again by the same labeler)."""
  rows = data.read("rm_train", skip_bad_rows=config.data.skip_bad_rows)
  if not stage_table.has_gold(config):
    rm_rows, judge_rows = judge_share(rows, fraction=config.rm.judge_fraction,
                                      seed=config.seed)
    return judge_rows if stage == "rm_judge" else rm_rows
  if data.testbed is None or config.rm.policy_sample_fraction <= 0:
    return rows
  policy = hf_import.resolve_model(config, run_dir, "model")
  return comparisons.cached(os.path.join(run_dir, stage, "comparisons.jsonl"), lambda: (
      comparisons.with_policy_samples(
          data.testbed.rm_train, data.testbed.labelers, CausalLM(policy),
          load_sft_params(os.path.join(run_dir, "sft"), policy, mesh), data.tokenizer,
          fraction=config.rm.policy_sample_fraction, temperature=1.0,
          max_new_tokens=config.ppo.max_new_tokens,
          prompt_len=config.data.max_prompt_len, mesh=mesh, seed=config.seed)))


def _program(config, run_dir: str, stage: str) -> StageProgram:
  train = config.rm
  trunk = stage_table.rm_trunk(config)
  cfg = model_config_of(config, run_dir)
  data = sources.load_data(config, run_dir)
  mesh = sharding.make_mesh(**config.mesh)
  sharding.check_batch_divides(train.batch_size, mesh, field="config.rm.batch_size")
  model = ScalarModel(cfg, likelihood_feature=train.likelihood_feature)
  buckets = tuple(config.data.buckets)
  eval_rows = data.read("rm_eval", skip_bad_rows=config.data.skip_bad_rows)
  rows = training_rows(config, data, mesh, run_dir, stage)
  k_max = max(len(r.responses) for r in rows + eval_rows)
  batcher = batching.RankingBatcher(data.tokenizer, buckets=buckets,
                                    max_prompt_len=config.data.max_prompt_len, k_max=k_max)
  eval_batcher = batching.RankingBatcher(data.tokenizer, buckets=buckets,
                                         max_prompt_len=config.data.max_prompt_len,
                                         k_max=k_max)
  batches = batching.BatchIterator(rows, batcher, batch_size=train.batch_size,
                                   seed=config.seed, prefetch=config.data.prefetch)
  held_out = frozenset(
      l.id for l in data.testbed.labelers if l.held_out) if data.testbed else frozenset()

  def begin(state):
    return start_from_sft(state, load_sft_params(os.path.join(run_dir, trunk.name), cfg, mesh,
                                                 stage=trunk.name))

  # Pairs that differ in correctness only, on the rm_eval prompts: whether the RM can
  # judge an answer, not only its length or a remark.
  correctness = (correctness_rows(data.testbed, eval_rows, seed=config.seed)
                 if data.testbed else [])

  def evaluate(state):
    score = functools.partial(ranking_scores, state.params, apply_fn=model.apply)
    metrics = ranking_accuracy(score, eval_rows, eval_batcher, mesh=mesh,
                               held_out_ids=held_out)
    if correctness:
      metrics["accuracy_correctness"] = ranking_accuracy(
          score, correctness, eval_batcher, mesh=mesh)["accuracy"]
    return metrics

  def exports(state, final_eval):
    sft_batcher = batching.SftBatcher(data.tokenizer, buckets=buckets,
                                      max_prompt_len=config.data.max_prompt_len)
    params, bias, std = normalised_head(state.params, demonstration_rewards(
        model.apply, state.params, data.read("sft"), sft_batcher, mesh=mesh))
    print(f"[{stage}] demonstrations' raw reward std {std:.4f}; normalised, "
          f"reward_bias={bias:.4f}", flush=True)
    return [Export(params=params, card=stage_export.ExportCard(
        stage=stage, model=cfg.__dict__, steps=int(state.step), reward_bias=bias,
        reward_std=std, likelihood_feature=train.likelihood_feature, final_eval=final_eval,
        bad_rows=data.bad_rows))]

  return StageProgram(
      name=stage, workdir=os.path.join(run_dir, stage), cadence=cadence(train),
      mesh=mesh, init_state=make_init_state(model, train, buckets[0]), seed=config.seed,
      build_advance=lambda shardings: batch_advance(build_step(train, shardings), batches,
                                                    mesh),
      iterators={"data": batches}, begin=begin, evaluate=evaluate, exports=exports,
      log=config.log)


if __name__ == "__main__":
  cli.main(run, stages=STAGES, default_stage="rm")
