"""Stage 3, RL from the reward model: PPO (`--stage=ppo`), PPO-ptx (`--stage=ppo_ptx`),
and the critic-free RLOO (`--stage=rloo`) and GRPO (`--stage=grpo`).

  python -m instructjax.ppo --config=experiments/instructgpt_tiny.py --workdir=runs/demo
  python -m instructjax.ppo --stage=ppo_ptx --workdir=runs/demo   # + pretraining gradients
  python -m instructjax.ppo --stage=rloo --workdir=runs/demo      # config.rloo's section

Each stage reads its own config section (the stage table's train_section). Its
`advantage` field picks the estimator: "gae" with a value model, or "rloo" / "grpo",
which draw `group_size` samples per prompt and baseline each with its group, with no
value model at all. That halves the trained state (params and Adam moments: 4.1 MB to
2.1 MB at the tiny config), so the model-sized buffers held drop from 8 to 5 (policy,
its two moments, the frozen reference and RM); it also drops one of the 5 forward
passes of a rollout and half of each update's backward. The loop below is the same for
all of them.

The policy starts from WORKDIR/sft, the value model from WORKDIR/rm (a separate trunk,
whose head bias starts at -reward_bias, so its first values are the normalised reward
the rollouts are scored with); the frozen SFT policy is the KL reference and the frozen
RM the reward. Each iteration is two named steps: `collect` samples a rollout and scores
it, then `update` takes `epochs` x (rollout_batch_size / minibatch_size) PPO steps on it.
Writes WORKDIR/<stage>/{metrics.jsonl, tensorboard/, checkpoints/, export/} and resumes
from its last checkpoint (state, KL coefficient, data positions).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from instructjax import (advantage_estimators, cli, hf_import, multihost, reward, rl, sampling,
                         sharding, stage_export, stage_table)
from instructjax.config import ConfigError
from instructjax.data import batching, sources, testbed, tokenize
from instructjax.data.batches import PromptBatch
from instructjax.evaluation import measures
from instructjax.models import CausalLM, ScalarModel
from instructjax.optimizers import learning_rate_schedule
from instructjax.rollout import Rollout, rollout_stats, score_rollout
from instructjax.stage_loop import Cadence, Export, StageProgram, jit_step, run_stage, to_floats
from instructjax.steps.ppo_step import PPOState, ppo_step

STAGES = stage_table.run_by("instructjax.ppo")


# ----------------------------------------------------------------------------- builders
# What a run executes, built once from the config; the dry run lowers the same.


def updates_per_iteration(ppo: ml_collections.ConfigDict) -> int:
  return ppo.epochs * (ppo.rollout_batch_size // ppo.minibatch_size)


def make_optimizer(ppo: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam over {'policy', 'value'} (or {'policy'}) on the usual warmup + cosine schedule
  over every update of the run; the value trunk's steps are value_lr_scale larger."""
  schedule = learning_rate_schedule(peak_lr=ppo.lr, warmup_steps=ppo.warmup_steps,
                                    total_steps=ppo.iterations * updates_per_iteration(ppo))

  def scale_value(updates, state, params=None):
    del params
    if "value" not in updates:  # a critic-free run
      return updates, state
    return {**updates, "value": jax.tree.map(lambda u: u * ppo.value_lr_scale,
                                             updates["value"])}, state

  return optax.chain(optax.clip_by_global_norm(ppo.grad_clip_norm), optax.adam(schedule),
                     optax.GradientTransformation(lambda _: optax.EmptyState(), scale_value))


def make_models(cfg, *, rm_cfg=None, critic: bool = True, likelihood_feature: bool = False
                ) -> tuple[CausalLM, ScalarModel | None, ScalarModel]:
  """-> (policy, value model or None without a critic, reward model). The policy has
  architecture cfg; the RM rm_cfg (default cfg: `reward.model_config_of`). The value model
  is the RM with a head bias, so it can start where the normalised reward is (see `begin`
  in `_program`); likelihood_feature: the RM's (its export card says)."""
  rm_cfg = cfg if rm_cfg is None else rm_cfg
  value_model = (ScalarModel(rm_cfg, head_bias=True, likelihood_feature=likelihood_feature)
                 if critic else None)
  return (CausalLM(cfg), value_model,
          ScalarModel(rm_cfg, likelihood_feature=likelihood_feature))


def has_critic(ppo: ml_collections.ConfigDict) -> bool:
  return advantage_estimators.NEEDS_VALUE_MODEL[ppo.advantage]


def make_init_state(ppo: ml_collections.ConfigDict, policy, value_model):
  """rng -> a PPOState with freshly initialised (boxed) policy and value params."""
  tx = make_optimizer(ppo)
  example = jnp.zeros((1, 8), jnp.int32)

  def init_state(rng):
    params = {"policy": policy.init(rng, example)["params"]}
    if value_model is not None:
      params["value"] = value_model.init(rng, example)["params"]
    return PPOState.create(
        apply_fn=None, params=params, tx=tx, rng=rng, skipped_updates=jnp.zeros((), jnp.int32),
        ema_policy=params["policy"] if ppo.ema_decay > 0 else {},
        kl_coef=jnp.asarray(ppo.kl_coef, jnp.float32))
  return init_state


def build_sampler(ppo: ml_collections.ConfigDict, policy, *, eos_id: int, pad_id: int):
  """(policy params, prompt_tokens [B, P], prompt_mask [B, P], rng) -> SampleOutput."""
  config = sampling.SamplingConfig(max_new_tokens=ppo.max_new_tokens,
                                   temperature=ppo.temperature, eos_id=eos_id, pad_id=pad_id)
  return functools.partial(sampling.generate, policy, config=config)


def build_scorer(ppo: ml_collections.ConfigDict, policy, value_model, reward_model, *,
                 reward_bias: float):
  """(params {'policy', 'value', 'ref', 'reward'}, SampleOutput, prompt_mask, example_index,
  kl_coef) -> Rollout: steps 2-6 of the rollout, one jit."""
  return functools.partial(
      score_rollout, policy=policy, value_model=value_model, reward_model=reward_model,
      temperature=ppo.temperature, reward_bias=reward_bias, gamma=ppo.gamma,
      lam=ppo.gae_lambda, whiten_rewards=ppo.whiten_rewards, no_eos_penalty=ppo.no_eos_penalty,
      advantage=ppo.advantage, group_size=ppo.group_size)


def build_update(ppo: ml_collections.ConfigDict, policy, value_model, *, prompt_len: int,
                 ptx_coef: float, state_shardings):
  """The jitted PPO(-ptx) step: (state, minibatch Rollout, ptx TokenBatch | None)."""
  return jit_step(functools.partial(
      ppo_step, policy=policy, value_model=value_model, prompt_len=prompt_len,
      temperature=ppo.temperature, clip_eps=ppo.clip_eps, value_clip=ppo.value_clip,
      vf_coef=ppo.vf_coef, ptx_coef=ptx_coef, ema_decay=ppo.ema_decay,
      kl_loss_coef=ppo.kl_loss_coef), state_shardings)


# ----------------------------------------------------------------------------- one iteration


_rollout_stats = jax.jit(rollout_stats)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Experience:
  """What `collect` uses besides the train state."""
  sample: Callable[..., sampling.SampleOutput]  # build_sampler's
  score: Callable[..., Rollout]  # build_scorer's
  ref_params: Any  # the frozen SFT policy
  reward_params: Any  # the frozen reward model
  gold: Callable[[Rollout], float] | None  # the testbed's gold score of a rollout


def collect(state: PPOState, batch, rng, *, experience: Experience):
  """Samples a response to every prompt of batch and scores it.
  -> (the Rollout on the host, its stats, the seconds each part took)."""
  t0 = time.time()
  sample = experience.sample(state.params["policy"], batch.prompt_tokens, batch.prompt_mask,
                             rng)
  jax.block_until_ready(sample)
  t_sample = time.time() - t0
  frozen = {**state.params, "ref": experience.ref_params,
            "reward": experience.reward_params}  # 'value' only with a critic
  rollout = experience.score(frozen, sample, batch.prompt_mask, batch.example_index,
                             state.kl_coef)
  stats = to_floats(_rollout_stats(rollout))
  # One copy to the host, every row on every process; minibatches are cut there, the
  # same on every process, and placed back on the mesh. (Gathering them op by op on
  # sharded arrays launched dozens of tiny collective programs per iteration, slow and,
  # on faked CPU devices, prone to stalls.)
  rollout = multihost.to_host(rollout)
  times = {"time_sample_s": t_sample, "time_score_s": time.time() - t0 - t_sample}
  if experience.gold is not None:
    stats["gold_score"] = experience.gold(rollout)
  return rollout, stats, times


def update(state: PPOState, rollout: Rollout, *, step, ptx, mesh,
           ppo: ml_collections.ConfigDict, order: np.random.Generator):
  """`epochs` passes over the rollout in shuffled minibatches, each with the next ptx
  batch when ptx is given. -> (state, metrics averaged over the updates)."""
  size = ppo.minibatch_size
  metrics = []
  for _ in range(ppo.epochs):
    permutation = order.permutation(ppo.rollout_batch_size)
    for m in range(ppo.rollout_batch_size // size):
      idx = permutation[m * size:(m + 1) * size]
      minibatch = sharding.shard_global_batch(jax.tree.map(lambda x, i=idx: x[i], rollout),
                                              mesh)
      ptx_batch = sharding.shard_batch(next(ptx), mesh) if ptx is not None else None
      state, step_metrics = step(state, minibatch, ptx_batch)
      metrics.append(step_metrics)
  means = {k: float(np.mean([float(m[k]) for m in metrics])) for k in metrics[-1]}
  means["consecutive_skips"] = int(metrics[-1]["consecutive_skips"])  # a count, not a mean
  return state, means


def adapt_kl(state: PPOState, kl_to_ref: float, *, ppo: ml_collections.ConfigDict,
             sharding_of_kl):
  """The Ziegler et al. controller's next beta when config.ppo.adaptive_kl; else as is.
  -> (state, beta)."""
  kl_coef = float(state.kl_coef)
  if not ppo.adaptive_kl:
    return state, kl_coef
  kl_coef = float(rl.adaptive_kl_coef(kl_coef, observed_kl=kl_to_ref, target_kl=ppo.target_kl,
                                      horizon=ppo.kl_horizon, n_steps=ppo.rollout_batch_size))
  return state.replace(kl_coef=jax.device_put(jnp.asarray(kl_coef, jnp.float32),
                                              sharding_of_kl)), kl_coef


# ----------------------------------------------------------------------------- the program


def run(config: ml_collections.ConfigDict, run_dir: str, *, stage: str = "ppo") -> str:
  """Runs (or resumes, or skips if finished) an RL stage; returns its directory."""
  if stage not in STAGES:
    raise ValueError(f"unknown stage {stage!r}; known: {STAGES}")
  section = stage_table.stage(stage).train_section
  if section not in config:
    raise ConfigError(f"--stage={stage} trains from config.{section}, which this config "
                      "lacks")
  train = config[section]
  if stage == "ppo_ptx" and train.ptx_coef <= 0:
    raise ConfigError("config.ppo.ptx_coef must be > 0 for --stage=ppo_ptx")
  wrong = advantage_estimators.problem(train.advantage, train.group_size,
                                      train.rollout_batch_size)
  if wrong:
    raise ConfigError(f"config.{section}.{wrong[0]}={wrong[1]}")
  return run_stage(stage, os.path.join(run_dir, stage),
                   lambda: _program(config, run_dir, stage))


def _gold_scorer(bed: testbed.Testbed, tokenizer, *, prompt_len: int):
  """A rollout -> the mean gold score of its responses (testbed PPO prompts)."""
  def gold(rollout: Rollout) -> float:
    responses = measures.decode_responses(
        tokenizer, rollout.tokens[:, prompt_len:], rollout.response_mask,
        eos_id=tokenize.eos_id(tokenizer))
    return float(np.mean([testbed.score(bed.ppo_prompts[int(i)], r)
                          for i, r in zip(np.asarray(rollout.example_index), responses)]))
  return gold


def _iterators(config, data, ppo, *, ptx: bool) -> dict[str, batching.BatchIterator]:
  tok = data.tokenizer
  prompt_rows = data.read("ppo_prompts", skip_bad_rows=config.data.skip_bad_rows)
  iterators = {"prompts": batching.BatchIterator(
      prompt_rows, batching.PromptBatcher(tok, buckets=(config.data.max_prompt_len,)),
      batch_size=ppo.rollout_batch_size // ppo.group_size, seed=config.seed,
      prefetch=config.data.prefetch)}
  if ptx:
    iterators["ptx"] = batching.BatchIterator(
        data.read("pretrain"), batching.PretrainBatcher(tok, buckets=tuple(config.data.buckets)),
        batch_size=ppo.ptx_batch_size, seed=config.seed + 1,
        prefetch=config.data.prefetch)
  return iterators


def repeat_prompts(batch: PromptBatch, group_size: int) -> PromptBatch:
  """Each prompt group_size times in a row (rows g*G .. g*G+G-1 share a prompt), as the
  group baselines expect. Host arrays in, host arrays out."""
  return jax.tree.map(lambda x: np.repeat(np.asarray(x), group_size, axis=0), batch)


def _program(config, run_dir: str, stage: str) -> StageProgram:
  section = stage_table.stage(stage).train_section
  ppo = config[section]
  ptx_coef = ppo.ptx_coef if stage == "ppo_ptx" else 0.0
  cfg = hf_import.resolve_model(config, run_dir, "model")
  data = sources.load_data(config, run_dir)
  mesh = sharding.make_mesh(**config.mesh)
  for field in ("rollout_batch_size", "minibatch_size", "ptx_batch_size"):
    sharding.check_batch_divides(ppo[field], mesh, field=f"config.{section}.{field}")
  rm_cfg = reward.model_config_of(config, run_dir)
  reward_model, reward_params, rm_card = reward.load_reward_model(
      rm_cfg, os.path.join(run_dir, "rm"), mesh)
  policy, value_model, _ = make_models(cfg, rm_cfg=rm_cfg, critic=has_critic(ppo),
                                       likelihood_feature=reward_model.likelihood_feature)
  tok, prompt_len = data.tokenizer, config.data.max_prompt_len
  ref_params, _ = stage_export.load_export(
      os.path.join(run_dir, "sft"), sharding.abstract_params(policy, mesh),
      expected_stages=("sft",))
  experience = Experience(
      sample=build_sampler(ppo, policy, eos_id=tokenize.eos_id(tok), pad_id=tokenize.pad_id(tok)),
      score=build_scorer(ppo, policy, value_model, reward_model,
                         reward_bias=rm_card.reward_bias),
      ref_params=ref_params, reward_params=reward_params,
      gold=(_gold_scorer(data.testbed, tok, prompt_len=prompt_len)
            if data.testbed is not None else None))
  iterators = _iterators(config, data, ppo, ptx=ptx_coef > 0)

  def build_advance(shardings):
    step = build_update(ppo, policy, value_model, prompt_len=prompt_len, ptx_coef=ptx_coef,
                        state_shardings=shardings)

    def advance(state, iteration):
      t0 = time.time()
      batch = sharding.shard_batch(repeat_prompts(next(iterators["prompts"]), ppo.group_size),
                                   mesh)
      rollout, stats, times = collect(state, batch, jax.random.fold_in(state.rng, iteration),
                                      experience=experience)
      t1 = time.time()
      state, updates = update(state, rollout, step=step, ptx=iterators.get("ptx"), mesh=mesh,
                              ppo=ppo, order=np.random.default_rng([config.seed, iteration]))
      state, kl_coef = adapt_kl(state, stats["kl_to_ref"], ppo=ppo,
                                sharding_of_kl=shardings.kl_coef)
      return state, {**stats, **updates, "kl_coef": kl_coef, **times,
                     "time_update_s": time.time() - t1, "time_iteration_s": time.time() - t0}
    return advance

  def begin(state):  # policy and EMA <- SFT, value model <- RM - reward_bias
    copy = functools.partial(jax.tree.map, lambda x: x.copy())
    state = state.replace(ema_policy=copy(ref_params)) if ppo.ema_decay > 0 else state
    if value_model is None:
      return state.replace(params={"policy": copy(ref_params)})
    value = copy(reward_params)
    bias = state.params["value"]["scalar_head"]["bias"]  # [1]
    value["scalar_head"]["bias"] = jax.device_put(
        np.full(bias.shape, -rm_card.reward_bias, bias.dtype), bias.sharding)
    return state.replace(params={"policy": copy(ref_params), "value": value})

  def exports(state, final_eval):
    del final_eval  # PPO's measurements are its per-iteration metrics
    card = stage_export.ExportCard(stage=stage, model=cfg.__dict__, steps=ppo.iterations,
                                   ptx_coef=ptx_coef, reward_bias=rm_card.reward_bias,
                                   ema_decay=ppo.ema_decay)
    ema = ([Export(params=state.ema_policy, card=dataclasses.replace(card, ema=True),
                   where="ema")] if ppo.ema_decay > 0 else [])
    return [*ema, Export(params=state.params["policy"], card=card)]  # the stage's own last

  return StageProgram(
      name=stage, workdir=os.path.join(run_dir, stage),
      cadence=Cadence(total=ppo.iterations, log_every=1, eval_every=ppo.iterations,
                      checkpoint_every=ppo.checkpoint_every,
                      keep_checkpoints=ppo.keep_checkpoints,
                      max_consecutive_skips=ppo.max_consecutive_skips),
      mesh=mesh, init_state=make_init_state(ppo, policy, value_model), seed=config.seed,
      build_advance=build_advance, iterators=iterators, begin=begin, exports=exports,
      unit="iteration", metric_prefix="", progress_keys=("rm_score", "kl_to_ref"),
      log=config.log)


if __name__ == "__main__":
  cli.main(run, stages=STAGES, default_stage="ppo")
