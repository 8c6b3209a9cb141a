"""Stage 1, supervised fine-tuning (and stage 0, pretraining the vanilla LM).

  python -m instructjax.sft --config=experiments/instructgpt_tiny.py --workdir=runs/demo
  python -m instructjax.sft --stage=pretrain --workdir=runs/demo   # stage 0

SFT trains on demonstrations with the loss on response tokens only and starts from the
pretrained LM (`--stage=sft_big`: the large one, a trunk for a reward model larger than
the policy, config.rm.trunk); `--stage=pretrain` (or `pretrain_big`, the larger vanilla LM) trains a
fresh model on the documents (packed into full rows, `data.packing`, when
config.data.pack_pretraining is set), or, with config.hf_name.model (big_model) set, imports
that Hugging Face checkpoint instead (`instructjax.hf_import`). Writes
WORKDIR/<stage>/{metrics.jsonl, tensorboard/, checkpoints/, export/}; a rerun resumes
from the last checkpoint, data position included, and a finished stage is not run again.
"""

from __future__ import annotations

import functools
import os

import jax
import ml_collections

from instructjax import cli, hf_import, sharding, stage_export, stage_table
from instructjax.data import batching, packing, sources
from instructjax.evaluation import measures
from instructjax.models import CausalLM
from instructjax.stage_loop import (Export, StageProgram, batch_advance, cadence, jit_step,
                                    run_stage)
from instructjax.steps.sft_step import sft_step
from instructjax.train_state import make_init_state

STAGES = stage_table.run_by("instructjax.sft")


def build_step(train: ml_collections.ConfigDict, state_shardings):
  """The jitted SFT / pretraining step of this train section."""
  return jit_step(functools.partial(sft_step, accum_steps=train.accum_steps),
                  state_shardings)


def run(config: ml_collections.ConfigDict, run_dir: str, *, stage: str = "sft") -> str:
  """Runs (or resumes, or skips if finished) one stage; returns its directory."""
  if stage not in STAGES:
    raise ValueError(f"unknown stage {stage!r}; known: {sorted(STAGES)}")
  spec = stage_table.stage(stage)
  if not spec.parents and hf_import.hf_source(config, spec.model_section):
    return hf_import.import_stage(config, run_dir, stage)  # stage 0 from a checkpoint
  return run_stage(stage, os.path.join(run_dir, stage),
                   lambda: _program(config, run_dir, stage_table.stage(stage)))


def _program(config, run_dir: str, stage: stage_table.Stage) -> StageProgram:
  train = config[stage.train_section]
  cfg = hf_import.resolve_model(config, run_dir, stage.model_section)
  data = sources.load_data(config, run_dir)
  mesh = sharding.make_mesh(**config.mesh)
  sharding.check_batch_divides(train.batch_size, mesh,
                               field=f"config.{stage.train_section}.batch_size")
  model = CausalLM(cfg)
  buckets = tuple(config.data.buckets)
  if stage.parents:
    rows = data.read("sft", skip_bad_rows=config.data.skip_bad_rows)
    batcher = batching.SftBatcher(data.tokenizer, buckets=buckets,
                                  max_prompt_len=config.data.max_prompt_len)
  else:
    rows, batcher = _pretraining_rows(config, data)
  batches = batching.BatchIterator(rows, batcher, batch_size=train.batch_size,
                                   seed=config.seed, prefetch=config.data.prefetch)

  def begin(state):  # SFT starts from the pretrained LM
    (parent,) = stage.parents
    params, _ = stage_export.load_export(os.path.join(run_dir, parent),
                                         sharding.abstract_tree(state.params),
                                         expected_stages=stage.parents)
    return state.replace(params=params)

  def exports(state, final_eval):
    return [Export(params=state.params, card=stage_export.ExportCard(
        stage=stage.name, model=cfg.__dict__, steps=int(state.step), final_eval=final_eval,
        bad_rows=data.bad_rows, truncation=batcher.stats.as_dict()))]

  return StageProgram(
      name=stage.name, workdir=os.path.join(run_dir, stage.name), cadence=cadence(train),
      mesh=mesh, init_state=make_init_state(model, train, buckets[0]), seed=config.seed,
      build_advance=lambda shardings: batch_advance(build_step(train, shardings), batches,
                                                    mesh),
      iterators={"data": batches}, begin=begin if stage.parents else None,
      evaluate=_evaluator(config, data, model, mesh, answers=bool(stage.parents)),
      exports=exports,
      select_by=SELECT_BY if stage.parents and data.testbed is not None else None,
      log=config.log)


def _pretraining_rows(config, data):
  """-> (records, batcher): packed rows of config.data.pack_pretraining tokens, or with
  0 one document per row, padded to its bucket."""
  docs = data.read("pretrain", skip_bad_rows=config.data.skip_bad_rows)
  length = config.data.pack_pretraining  # config.validate: within the models' max_len
  if not length:
    return docs, batching.PretrainBatcher(data.tokenizer, buckets=tuple(config.data.buckets))
  return (packing.pack_documents(data.tokenizer, docs, length=length),
          batching.PackedBatcher(data.tokenizer, length=length))


# The metric that picks SFT's exported checkpoint: the paper picks by RM score on its
# validation prompts; here the RM is trained from this model, so the testbed's gold
# score of greedy answers to the validation prompts (never the test prompts) picks.
SELECT_BY = "val_gold_score"


def _evaluator(config, data, model, mesh, *, answers: bool):
  """Held-out pretraining loss; plus, where `answers` (SFT, not pretraining), the gold
  score of greedy answers to the validation prompts and what it is made of (credit,
  remark rate, extra words)."""
  heldout = data.read("pretrain_heldout")
  batcher = batching.PretrainBatcher(data.tokenizer, buckets=tuple(config.data.buckets))
  n_prompts = config.eval.prompts

  def evaluate(state):
    metrics = {"heldout_pretrain_loss": measures.lm_loss(
        model.apply, state.params, heldout, batcher, batch_size=32, mesh=mesh,
        max_batches=8)}
    if answers and data.testbed is not None:
      examples = data.testbed.val_prompts[:n_prompts]
      responses = measures.greedy_answers(
          model, state.params, [e.prompt for e in examples], data.tokenizer,
          max_new_tokens=config.eval.max_new_tokens, prompt_len=config.data.max_prompt_len,
          mesh=mesh, rng=jax.random.PRNGKey(config.seed))
      metrics[SELECT_BY] = measures.mean_gold_score(examples, responses)
      metrics.update({f"val_{name}": value for name, value
                      in measures.correctness_and_habit(examples, responses).items()})
    return metrics
  return evaluate


if __name__ == "__main__":
  cli.main(run, stages=STAGES, default_stage="sft")
