"""Offline preference optimisation from SFT: DPO, IPO or Plackett-Luce DPO (`--stage=dpo`).

  python -m instructjax.dpo --config=experiments/instructgpt_tiny.py --workdir=runs/demo

Trains the SFT policy directly on the comparisons the reward model learned from (the
same rankings, with the SFT policy's own samples where the RM stage added them), with
the frozen SFT policy as the reference and no reward model or sampling at all.
config.dpo.loss picks the loss (`instructjax.steps.dpo_step.PREFERENCE_LOSSES`); the
default, Plackett-Luce, uses each ranking of K responses whole, as the K-wise RM does.
Its evaluation is the implicit reward's ranking accuracy, coef * (log pi - log pi_ref)
summed over the response, on the RM's held-out comparisons, split by labeler group as
the RM's is. Writes WORKDIR/dpo/{metrics.jsonl, tensorboard/, checkpoints/, export/} and
resumes like every stage.
"""

from __future__ import annotations

import functools
import os

import jax
import ml_collections

from instructjax import cli, hf_import, reward, sharding, stage_export, stage_table
from instructjax.data import batching, sources
from instructjax.data.batches import RankingBatch
from instructjax.models import CausalLM
from instructjax.stage_loop import (Export, StageProgram, batch_advance, cadence, jit_step,
                                    run_stage)
from instructjax.steps.dpo_step import dpo_step, ranked_logprobs
from instructjax.train_state import make_init_state

STAGES = stage_table.run_by("instructjax.dpo")


def build_step(train: ml_collections.ConfigDict, state_shardings):
  """The jitted preference step of config.dpo: (state, batch, ref_params)."""
  return jit_step(functools.partial(dpo_step, loss=train.loss, coef=train.coef,
                                    accum_steps=train.accum_steps), state_shardings)


@functools.partial(jax.jit, static_argnames="apply_fn")
def implicit_rewards(params, ref_params, batch: RankingBatch, *, apply_fn):
  """Summed log pi - log pi_ref of every ranked response: the implicit reward up to
  the coefficient, which does not change a ranking. -> [B, K]"""
  return (ranked_logprobs(apply_fn, params, batch)
          - ranked_logprobs(apply_fn, ref_params, batch))


def run(config: ml_collections.ConfigDict, run_dir: str, *, stage: str = "dpo") -> str:
  """Runs (or resumes, or skips if finished) the DPO stage; returns its directory."""
  if stage not in STAGES:
    raise ValueError(f"unknown stage {stage!r}; known: {STAGES}")
  if "dpo" not in config:
    raise ValueError("--stage=dpo trains from config.dpo, which this config lacks")
  return run_stage(stage, os.path.join(run_dir, stage),
                   lambda: _program(config, run_dir, stage))


def _program(config, run_dir: str, stage: str) -> StageProgram:
  train = config.dpo
  cfg = hf_import.resolve_model(config, run_dir, "model")
  data = sources.load_data(config, run_dir)
  mesh = sharding.make_mesh(**config.mesh)
  sharding.check_batch_divides(train.batch_size, mesh, field="config.dpo.batch_size")
  model = CausalLM(cfg)
  buckets = tuple(config.data.buckets)
  rows = reward.training_rows(config, data, mesh, run_dir)  # the RM's comparisons
  eval_rows = data.read("rm_eval", skip_bad_rows=config.data.skip_bad_rows)
  k_max = max(len(r.responses) for r in rows + eval_rows)

  def ranking_batcher():
    return batching.RankingBatcher(data.tokenizer, buckets=buckets,
                                   max_prompt_len=config.data.max_prompt_len, k_max=k_max)

  batcher = ranking_batcher()
  batches = batching.BatchIterator(rows, batcher, batch_size=train.batch_size,
                                   seed=config.seed, prefetch=config.data.prefetch)
  eval_batcher = ranking_batcher()
  held_out = frozenset(
      l.id for l in data.testbed.labelers if l.held_out) if data.testbed else frozenset()
  ref_params = reward.load_sft_params(os.path.join(run_dir, "sft"), cfg, mesh)

  def begin(state):
    return state.replace(params=jax.tree.map(lambda x: x.copy(), ref_params))

  def build_advance(shardings):
    step = build_step(train, shardings)
    return batch_advance(lambda state, batch: step(state, batch, ref_params), batches, mesh)

  def evaluate(state):
    return reward.ranking_accuracy(
        functools.partial(implicit_rewards, state.params, ref_params, apply_fn=model.apply),
        eval_rows, eval_batcher, mesh=mesh, held_out_ids=held_out)

  def exports(state, final_eval):
    return [Export(params=state.params, card=stage_export.ExportCard(
        stage=stage, model=cfg.__dict__, steps=int(state.step), final_eval=final_eval,
        bad_rows=data.bad_rows, truncation=batcher.stats.as_dict()))]

  return StageProgram(
      name=stage, workdir=os.path.join(run_dir, stage), cadence=cadence(train), mesh=mesh,
      init_state=make_init_state(model, train, buckets[0]), seed=config.seed,
      build_advance=build_advance, iterators={"data": batches}, begin=begin,
      evaluate=evaluate, exports=exports, log=config.log)


if __name__ == "__main__":
  cli.main(run, stages=STAGES, default_stage="dpo")
