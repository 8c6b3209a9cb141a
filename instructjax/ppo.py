"""Stage 3, RL from the reward model: PPO (`--stage=ppo`) or PPO-ptx (`--stage=ppo_ptx`).

  python -m instructjax.ppo --config=experiments/instructgpt_tiny.py --workdir=runs/demo
  python -m instructjax.ppo --stage=ppo_ptx --workdir=runs/demo   # + pretraining gradients

The policy starts from WORKDIR/sft, the value model from WORKDIR/rm (a separate trunk);
the frozen SFT policy is the KL reference and the frozen RM the reward. Each iteration
samples a rollout, then takes `epochs` x (rollout_batch_size / minibatch_size) PPO
steps. Writes WORKDIR/<stage>/{metrics.jsonl, tensorboard/, checkpoints/, export/} and
resumes from its last checkpoint (state, KL coefficient, data positions).
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app

from instructjax import cli, evaluation, rl, sampling, sharding, stage_export
from instructjax.checkpoints import Checkpointer
from instructjax.config import ConfigError, model_config
from instructjax.data import pipeline, sources, testbed, tokenize
from instructjax.models import CausalLM, ScalarModel
from instructjax.rollout import rollout_stats, score_rollout
from instructjax.run_log import RunLog, progress_bar
from instructjax.steps.ppo_step import PPOState, ppo_step
from instructjax.train_loop import NonFiniteLossError, to_floats

STAGES = ("ppo", "ppo_ptx")


def make_optimizer(ppo: ml_collections.ConfigDict, total_steps: int):
  """Adam over {'policy', 'value'}; the value trunk's steps are value_lr_scale larger."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=ppo.lr, warmup_steps=min(10, total_steps - 1),
      decay_steps=max(total_steps, 11), end_value=ppo.lr * 0.1)

  def scale_value(updates, state, params=None):
    del params
    return {**updates, "value": jax.tree.map(lambda u: u * ppo.value_lr_scale,
                                             updates["value"])}, state

  return optax.chain(optax.clip_by_global_norm(ppo.grad_clip_norm), optax.adam(schedule),
                     optax.GradientTransformation(lambda _: optax.EmptyState(), scale_value))


_rollout_stats = jax.jit(rollout_stats)


def make_init_state(policy, scalar, tx, ppo: ml_collections.ConfigDict):
  """rng -> a PPOState with freshly initialised (boxed) policy and value params."""
  example = jnp.zeros((1, 8), jnp.int32)

  def init_state(rng):
    params = {"policy": policy.init(rng, example)["params"],
              "value": scalar.init(rng, example)["params"]}
    return PPOState.create(
        apply_fn=None, params=params, tx=tx, rng=rng, skipped_updates=jnp.zeros((), jnp.int32),
        ema_policy=params["policy"] if ppo.ema_decay > 0 else {},
        kl_coef=jnp.asarray(ppo.kl_coef, jnp.float32))
  return init_state


def make_update_step(ppo: ml_collections.ConfigDict, policy, scalar, *, prompt_len: int,
                     ptx_coef: float):
  """ppo_step with this config's hyperparameters bound: (state, minibatch, ptx_batch)."""
  return functools.partial(
      ppo_step, policy=policy, value_model=scalar, prompt_len=prompt_len,
      temperature=ppo.temperature, clip_eps=ppo.clip_eps, value_clip=ppo.value_clip,
      vf_coef=ppo.vf_coef, ptx_coef=ptx_coef, ema_decay=ppo.ema_decay)


def run(config: ml_collections.ConfigDict, run_dir: str, *, stage: str = "ppo") -> str:
  if stage not in STAGES:
    raise ValueError(f"unknown stage {stage!r}; known: {STAGES}")
  ppo = config.ppo
  ptx_coef = ppo.ptx_coef if stage == "ppo_ptx" else 0.0
  if stage == "ppo_ptx" and ptx_coef <= 0:
    raise ConfigError("config.ppo.ptx_coef must be > 0 for --stage=ppo_ptx")
  stage_dir = os.path.join(run_dir, stage)
  if stage_export.is_exported(stage_dir):
    print(f"[{stage}] finished earlier: {stage_dir}", flush=True)
    return stage_dir
  cfg = model_config(config.model, field="config.model")
  data = sources.load_data(config, run_dir)
  mesh = sharding.make_mesh(**config.mesh)
  for field in ("rollout_batch_size", "minibatch_size", "ptx_batch_size"):
    sharding.check_batch_divides(ppo[field], mesh, field=f"config.ppo.{field}")
  policy, scalar = CausalLM(cfg), ScalarModel(cfg)
  tok = data.tokenizer

  # Frozen models: the SFT policy (reference) and the reward model with its bias.
  ref_params, _ = stage_export.load_export(
      os.path.join(run_dir, "sft"), sharding.abstract_params(policy, mesh),
      expected_stages=("sft",))
  reward_params, rm_card = stage_export.load_export(
      os.path.join(run_dir, "rm"), sharding.abstract_params(scalar, mesh),
      expected_stages=("rm",))
  reward_bias = float(rm_card["reward_bias"])

  minibatches = ppo.rollout_batch_size // ppo.minibatch_size
  total_steps = ppo.iterations * ppo.epochs * minibatches
  tx = make_optimizer(ppo, total_steps)

  init_state = make_init_state(policy, scalar, tx, ppo)
  state, state_shardings = sharding.create_sharded(init_state, mesh,
                                                   jax.random.PRNGKey(config.seed))
  prompt_rows = data.read("ppo_prompts", skip_bad_rows=config.data.skip_bad_rows)
  prompt_len = config.data.max_prompt_len
  prompts = pipeline.BatchIterator(
      prompt_rows, pipeline.PromptBatcher(tok, buckets=(prompt_len,)),
      batch_size=ppo.rollout_batch_size, seed=config.seed)
  ptx = None
  if ptx_coef > 0:
    ptx = pipeline.BatchIterator(
        data.read("pretrain"), pipeline.PretrainBatcher(tok, buckets=tuple(config.data.buckets)),
        batch_size=ppo.ptx_batch_size, seed=config.seed + 1)

  checkpointer = Checkpointer(os.path.join(stage_dir, "checkpoints"),
                              keep=ppo.keep_checkpoints, stage=stage)
  restored = checkpointer.restore_latest(state, state_shardings)
  if restored is not None:
    state, extra, start = restored
    prompts.set_state(extra["prompts"])
    if ptx is not None:
      ptx.set_state(extra["ptx"])
    print(f"[{stage}] resumed from iteration {start}", flush=True)
  else:
    start = 0
    value_init = jax.tree.map(lambda x: x.copy(), reward_params)  # value model <- RM
    state = state.replace(params={"policy": jax.tree.map(lambda x: x.copy(), ref_params),
                                  "value": value_init})
    if ppo.ema_decay > 0:
      state = state.replace(ema_policy=jax.tree.map(lambda x: x.copy(), ref_params))

  sampling_config = sampling.SamplingConfig(
      max_new_tokens=ppo.max_new_tokens, temperature=ppo.temperature,
      eos_id=tokenize.eos_id(tok), pad_id=tokenize.pad_id(tok))
  score_fn = functools.partial(
      score_rollout, policy=policy, value_model=scalar, reward_model=scalar,
      temperature=ppo.temperature, reward_bias=reward_bias, gamma=ppo.gamma,
      lam=ppo.gae_lambda, whiten_rewards=ppo.whiten_rewards, no_eos_penalty=ppo.no_eos_penalty)
  step_fn = jax.jit(make_update_step(ppo, policy, scalar, prompt_len=prompt_len,
                                     ptx_coef=ptx_coef),
                    out_shardings=(state_shardings, None), donate_argnums=0)

  run_log = RunLog(stage_dir, stage=stage, tensorboard=config.log.tensorboard,
                   wandb_project=config.log.wandb_project)
  bar = progress_bar(total=ppo.iterations, initial=start, desc=stage)
  examples = data.testbed.ppo_prompts if data.testbed is not None else None
  try:
    for iteration in range(start, ppo.iterations):
      t0 = time.time()
      batch = sharding.shard_batch(next(prompts), mesh)
      rng = jax.random.fold_in(state.rng, iteration)
      frozen = {"policy": state.params["policy"], "value": state.params["value"],
                "ref": ref_params, "reward": reward_params}
      sample = sampling.generate(policy, state.params["policy"], batch.prompt_tokens,
                                 batch.prompt_mask, rng, config=sampling_config)
      jax.block_until_ready(sample)
      t_sample = time.time() - t0
      rollout = score_fn(frozen, sample, batch.prompt_mask, batch.example_index,
                         state.kl_coef)
      stats = to_floats(_rollout_stats(rollout))
      # One copy to the host; minibatches are cut there and placed back on the mesh.
      # (Gathering them op by op on sharded arrays launched dozens of tiny collective
      # programs per iteration, slow and, on faked CPU devices, prone to stalls.)
      rollout = jax.device_get(rollout)
      t_score = time.time() - t0 - t_sample
      if examples is not None:
        responses = evaluation.decode_responses(
            tok, rollout.tokens[:, prompt_len:], rollout.response_mask,
            eos_id=sampling_config.eos_id)
        index = np.asarray(rollout.example_index)
        stats["gold_score"] = float(np.mean(
            [testbed.score(examples[int(i)], r) for i, r in zip(index, responses)]))
      t1 = time.time()
      update_metrics = []
      order_rng = np.random.default_rng([config.seed, iteration])
      for _ in range(ppo.epochs):
        order = order_rng.permutation(ppo.rollout_batch_size)
        for m in range(minibatches):
          idx = order[m * ppo.minibatch_size:(m + 1) * ppo.minibatch_size]
          minibatch = sharding.shard_batch(jax.tree.map(lambda x, i=idx: x[i], rollout), mesh)
          ptx_batch = sharding.shard_batch(next(ptx), mesh) if ptx is not None else None
          state, metrics = step_fn(state, minibatch, ptx_batch)
          update_metrics.append(metrics)
      updates = {k: float(np.mean([float(m[k]) for m in update_metrics]))
                 for k in update_metrics[-1]}
      if int(update_metrics[-1]["consecutive_skips"]) >= ppo.max_consecutive_skips:
        raise NonFiniteLossError(
            f"[{stage}] iteration {iteration + 1}: loss or gradients were NaN/Inf for "
            f"{int(update_metrics[-1]['consecutive_skips'])} updates in a row "
            f"(loss={updates['loss']}); the last good checkpoint in "
            f"{checkpointer.directory} is intact")
      kl_coef = float(state.kl_coef)
      if ppo.adaptive_kl:
        kl_coef = float(rl.adaptive_kl_coef(kl_coef, observed_kl=stats["kl_to_ref"],
                                            target_kl=ppo.target_kl, horizon=ppo.kl_horizon,
                                            n_steps=ppo.rollout_batch_size))
        state = state.replace(kl_coef=jax.device_put(jnp.asarray(kl_coef, jnp.float32),
                                                     state_shardings.kl_coef))
      done = iteration + 1
      run_log.write(done, {**stats, **updates, "kl_coef": kl_coef,
                           "time_sample_s": t_sample, "time_score_s": t_score,
                           "time_update_s": time.time() - t1,
                           "time_iteration_s": time.time() - t0})
      bar.set_postfix(rm=f"{stats['rm_score']:.2f}", kl=f"{stats['kl_to_ref']:.2f}")
      bar.update(1)
      if done % ppo.checkpoint_every == 0 or done == ppo.iterations:
        extra = {"prompts": prompts.get_state()}
        if ptx is not None:
          extra["ptx"] = ptx.get_state()
        checkpointer.save(done, state, extra=extra)
  finally:
    bar.close()
    checkpointer.close()
    run_log.close()
  card = {"model": cfg.__dict__, "iterations": ppo.iterations, "ptx_coef": ptx_coef,
          "reward_bias": reward_bias, "ema_decay": ppo.ema_decay}
  if ppo.ema_decay > 0:  # first: the main export's card marks the stage finished
    stage_export.save_export(os.path.join(stage_dir, "ema"), state.ema_policy,
                             stage=stage, card={**card, "ema": True})
  stage_export.save_export(stage_dir, state.params["policy"], stage=stage, card=card)
  print(f"[{stage}] done", flush=True)
  return stage_dir


def main(argv):
  del argv
  config, run_dir = cli.config_and_workdir()
  run(config, run_dir, stage=cli.stage("ppo"))


if __name__ == "__main__":
  app.run(main)
