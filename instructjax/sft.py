"""Stage 1, supervised fine-tuning (and stage 0, pretraining the vanilla LM).

  python -m instructjax.sft --config=experiments/instructgpt_tiny.py --workdir=runs/demo
  python -m instructjax.sft --stage=pretrain --workdir=runs/demo   # stage 0

SFT trains on demonstrations with the loss on response tokens only and starts from the
pretrained LM; `--stage=pretrain` (or `pretrain_big`, the larger vanilla LM) trains a
fresh model on whole documents. Writes WORKDIR/<stage>/{metrics.jsonl, tensorboard/,
checkpoints/, export/}; a rerun resumes from the last checkpoint, data position
included, and a finished stage is not run again.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
from absl import app

from instructjax import cli, evaluation, sharding, stage_export
from instructjax.config import model_config
from instructjax.data import pipeline, sources
from instructjax.models import CausalLM
from instructjax.optimizers import make_optimizer
from instructjax.steps.sft_step import sft_step
from instructjax.train_loop import StageSpec, run_stage
from instructjax.train_state import create_train_state

# stage -> (train section, model section, stage it starts from)
STAGES = {
    "pretrain": ("pretrain", "model", None),
    "pretrain_big": ("pretrain_big", "big_model", None),
    "sft": ("sft", "model", "pretrain"),
}


def make_init_state(model, train: ml_collections.ConfigDict, example_len: int):
  tx = make_optimizer(peak_lr=train.lr, warmup_steps=train.warmup_steps,
                      total_steps=train.steps, weight_decay=train.weight_decay,
                      grad_clip_norm=train.grad_clip_norm)

  def init_state(rng):
    params = model.init(rng, jnp.zeros((1, example_len), jnp.int32))["params"]
    return create_train_state(apply_fn=model.apply, params=params, tx=tx, rng=rng)
  return init_state


def run(config: ml_collections.ConfigDict, run_dir: str, *, stage: str = "sft") -> str:
  """Runs (or resumes, or skips if finished) one stage; returns its directory."""
  if stage not in STAGES:
    raise ValueError(f"unknown stage {stage!r}; known: {sorted(STAGES)}")
  section, model_section, parent = STAGES[stage]
  stage_dir = os.path.join(run_dir, stage)
  if stage_export.is_exported(stage_dir):
    print(f"[{stage}] finished earlier: {stage_dir}", flush=True)
    return stage_dir
  train = config[section]
  cfg = model_config(config[model_section], field=f"config.{model_section}")
  data = sources.load_data(config, run_dir)
  mesh = sharding.make_mesh(**config.mesh)
  sharding.check_batch_divides(train.batch_size, mesh, field=f"config.{section}.batch_size")
  model = CausalLM(cfg)
  buckets = tuple(config.data.buckets)
  if parent is None:
    rows = data.read("pretrain", skip_bad_rows=config.data.skip_bad_rows)
    batcher = pipeline.PretrainBatcher(data.tokenizer, buckets=buckets)
  else:
    rows = data.read("sft", skip_bad_rows=config.data.skip_bad_rows)
    batcher = pipeline.SftBatcher(data.tokenizer, buckets=buckets,
                                  max_prompt_len=config.data.max_prompt_len)
  batches = pipeline.BatchIterator(rows, batcher, batch_size=train.batch_size,
                                   seed=config.seed)
  load_params = None
  if parent is not None:
    parent_dir = os.path.join(run_dir, parent)

    def load_params(abstract):
      params, _ = stage_export.load_export(parent_dir, abstract,
                                           expected_stages=("pretrain",))
      return params

  spec = StageSpec(
      name=stage, workdir=stage_dir, train=train, mesh=mesh,
      init_state=make_init_state(model, train, buckets[0]),
      step=sft_step if train.accum_steps == 1 else _accumulating(train.accum_steps),
      batches=batches, evaluate=_evaluator(config, data, model, mesh, stage=stage),
      load_params=load_params, seed=config.seed, log=config.log)
  state = run_stage(spec)
  final = spec.evaluate(state)
  stage_export.save_export(stage_dir, state.params, stage=stage, card={
      "model": cfg.__dict__, "steps": int(state.step),
      "final_eval": {k: float(v) for k, v in final.items()},
      "bad_rows": data.bad_rows, "truncation": batcher.stats.as_dict()})
  print(f"[{stage}] done: " + ", ".join(f"{k}={float(v):.4f}" for k, v in final.items()),
        flush=True)
  return stage_dir


def _accumulating(accum_steps: int):
  def step(state, batch):
    return sft_step(state, batch, accum_steps=accum_steps)
  return step


def _evaluator(config, data, model, mesh, *, stage: str):
  """Held-out pretraining loss; plus the gold score of greedy answers after SFT."""
  heldout = data.read("pretrain_heldout")
  batcher = pipeline.PretrainBatcher(data.tokenizer, buckets=tuple(config.data.buckets))
  n_prompts = config.eval.prompts

  def evaluate(state):
    metrics = {"heldout_pretrain_loss": evaluation.lm_loss(
        model.apply, state.params, heldout, batcher, batch_size=32, mesh=mesh,
        max_batches=8)}
    if stage == "sft" and data.testbed is not None:
      examples = data.testbed.eval_prompts[:n_prompts]
      responses = evaluation.sample_responses(
          model, state.params, [e.prompt for e in examples], data.tokenizer,
          sampling_config=evaluation.greedy_config(
              data.tokenizer, max_new_tokens=config.eval.max_new_tokens),
          batch_size=32, buckets=(config.data.max_prompt_len,), mesh=mesh,
          rng=jax.random.PRNGKey(config.seed))
      metrics["gold_score"] = evaluation.mean_gold_score(examples, responses)
    return metrics
  return evaluate


def main(argv):
  del argv
  config, run_dir = cli.config_and_workdir()
  run(config, run_dir, stage=cli.stage("sft"))


if __name__ == "__main__":
  app.run(main)
