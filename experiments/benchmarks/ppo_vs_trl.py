"""One PPO iteration of instructjax against TRL's PPOTrainer, on the same random weights.

  pip install torch==2.13.0 trl==1.12.0   # the peer (without them the script says so, exits 0)
  python experiments/benchmarks/ppo_vs_trl.py                             # 96 new tokens, 1 epoch
  python experiments/benchmarks/ppo_vs_trl.py --new_tokens 32 --epochs 4  # TRL's 4 epochs
  python experiments/benchmarks/ppo_vs_trl.py --quick                     # checks the script

Models: policy, its frozen reference, reward model and value model, all GPT-2-shaped:
vocab 2048, d_model 256, 4 layers, 4 heads, 128 positions, 3.70M parameters each,
float32 on both sides. Random init; the reference is the policy and the value model is
the RM (value head bias 0), as a PPO run starts. The RM's scalar head, zero at init, is
drawn at random so responses score differently. The weights go to PyTorch through
instructjax.models.to_hf and load as GPT2LMHeadModel / GPT2ForSequenceClassification.

An iteration: 16 prompts of 32 random tokens (no padding), 96 new tokens each at
temperature 1 with no EOS, so every response has full length on both sides; then
--epochs passes over the rollout in one minibatch of all 16 (InstructGPT: one epoch).
Both sides take the other hyperparameters (lr, clip ranges, beta, vf_coef, gamma,
lambda) from the tiny config's ppo section; none changes what an iteration computes.

What is timed, per iteration:
  instructjax: `instructjax.ppo.collect` (sampling.generate: prefill + KV-cached decode;
    score_rollout: forwards of policy, reference, RM and value model, rewards, GAE; the
    rollout copied to the host) then `instructjax.ppo.update` (the jitted, donated
    ppo_step on each minibatch), built as instructjax/ppo.py builds them. The first
    iteration compiles all of them. Without EOS every score is the config's
    no_eos_penalty; the RM still runs, so no FLOP is skipped.
  TRL: one pass of PPOTrainer.train()'s loop, from one on_step_end callback to the next
    (the first from on_train_begin): HF generate (KV cache, logits kept), forwards of
    reference, value model and RM, rewards, GAE, the PPO epochs with torch AdamW, and
    its per-iteration metrics and two gc.collect() calls. Constructing the trainer is
    timed apart as setup. Set against PPOConfig's defaults: fp32 (bf16=False), no
    gradient checkpointing, no sample generations for display, no logging output.
    torch.set_num_threads(CPU count). TRL treats the pad id (2047, in no prompt) as
    padding wherever it is sampled (about 0.75 tokens an iteration); no FLOP changes.
TRL takes the policy's log-probs from the logits that generate kept, so its scoring runs
one forward fewer than ours (which recomputes them so the first PPO ratio is exactly 1);
each side's model FLOPs count what it runs. FLOPs follow matmul_peak.py (PaLM style);
generation counts as one forward over prompt + response. Prints figures; nothing is
asserted. Time it on an idle machine: with every core in use by torch's OpenMP
threads, any other load makes each small op wait for a descheduled thread (a small
matmul ran 30-80x slower on 2 busy cores), far more than it slows XLA.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import tempfile
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from instructjax import ppo as ppo_program
from instructjax import sampling, sharding
from instructjax.configs.instructgpt_tiny import get_config
from instructjax.data.batches import PromptBatch
from instructjax.models import ModelConfig, to_hf
from matmul_peak import matmul_params, measure_matmul_peak_gflops, transformer_flops


def build_instructjax(ppo, model_config: ModelConfig, prompts: np.ndarray):
  """The ppo program's models, state, experience and update step on one device.
  -> (state, iteration(state, index) -> (state, {phase: seconds}), initial weights
  {'policy', 'reward'} to export)."""
  policy, value_model, reward_model = ppo_program.make_models(model_config)
  mesh = sharding.make_mesh()
  state, shardings = sharding.create_sharded(
      ppo_program.make_init_state(ppo, policy, value_model), mesh, jax.random.PRNGKey(0))
  reward_params = meta.unbox(jax.jit(reward_model.init)(
      jax.random.key(1), jnp.zeros((1, 8), jnp.int32))["params"])
  head = reward_params["scalar_head"]
  head["kernel"] = 0.02 * jax.random.normal(jax.random.key(2), head["kernel"].shape)
  copy = lambda tree: jax.tree.map(lambda x: x.copy(), tree)  # the state is donated
  value = copy(reward_params)
  value["scalar_head"]["bias"] = jnp.zeros((1,), jnp.float32)  # reward_bias 0
  # Laid out as the state's value trunk, as the program's `begin` does: params without
  # the state's shardings would make the first update compile a second time.
  value = jax.tree.map(lambda x, like: jax.device_put(x, like.sharding), value,
                       state.params["value"])
  state = state.replace(params={"policy": state.params["policy"], "value": value})
  config = sampling.SamplingConfig(max_new_tokens=ppo.max_new_tokens,
                                   temperature=ppo.temperature, eos_id=None)
  experience = ppo_program.Experience(
      sample=lambda params, tokens, mask, rng: sampling.generate(policy, params, tokens, mask,
                                                                 rng, config=config),
      score=ppo_program.build_scorer(ppo, policy, value_model, reward_model, reward_bias=0.0),
      ref_params=copy(state.params["policy"]), reward_params=reward_params, gold=None)
  step = ppo_program.build_update(ppo, policy, value_model, prompt_len=prompts.shape[1],
                                  ptx_coef=0.0, state_shardings=shardings)
  batch = sharding.shard_batch(PromptBatch(
      prompt_tokens=prompts, prompt_mask=np.ones_like(prompts),
      example_index=np.arange(len(prompts), dtype=np.int32)), mesh)

  def iteration(state, index):
    rollout, _, times = ppo_program.collect(
        state, batch, jax.random.fold_in(state.rng, index), experience=experience)
    start = time.perf_counter()
    state, _ = ppo_program.update(state, rollout, step=step, ptx=None, mesh=mesh, ppo=ppo,
                                  order=np.random.default_rng([0, index]))
    return state, {"sample": times["time_sample_s"], "score": times["time_score_s"],
                   "update": time.perf_counter() - start}

  weights = {"policy": (policy, copy(state.params["policy"])),
             "reward": (reward_model, copy(reward_params))}
  return state, iteration, weights


def time_instructjax(state, iteration, *, iterations: int) -> list[dict]:
  """-> each iteration's {phase: seconds}, with 'total'; the first compiles."""
  runs = []
  for index in range(iterations):
    start = time.perf_counter()
    state, phases = iteration(state, index)
    runs.append({**phases, "total": time.perf_counter() - start})
  return runs


def time_trl(checkpoints: str, prompts: np.ndarray, *, pad_id: int, vocab_size: int,
             ppo, iterations: int) -> tuple[float, list[float]]:
  """Runs PPOTrainer for `iterations` batches of all the prompts.
  -> (setup seconds, each iteration's seconds)."""
  # pylint: disable=import-outside-toplevel
  os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
  import datasets
  import tokenizers
  import torch
  import transformers
  from trl.experimental.ppo import PPOConfig, PPOTrainer

  torch.set_num_threads(os.cpu_count())
  transformers.logging.set_verbosity_error()
  transformers.logging.disable_progress_bar()

  class Clock(transformers.TrainerCallback):
    """perf_counter at the start of training and at the end of each iteration."""
    def __init__(self):
      self.marks = []

    def on_train_begin(self, *_, **__):
      self.marks.append(time.perf_counter())

    def on_step_end(self, *_, **__):
      self.marks.append(time.perf_counter())

  # TRL calls gc.collect() twice an iteration. Here it would also walk every object JAX
  # and instructjax made, which a process running TRL alone lacks; frozen, they are
  # skipped (TRL's own imports too, so this favours TRL slightly).
  gc.freeze()
  start = time.perf_counter()
  # TRL needs a tokenizer for its pad id and its collator: one word per token id.
  words = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=words, pad_token=f"t{pad_id}", eos_token=f"t{pad_id}")
  load = lambda cls, name: cls.from_pretrained(os.path.join(checkpoints, name),
                                               dtype=torch.float32)
  batch = len(prompts)
  clock = Clock()
  dataset = datasets.Dataset.from_dict({"input_ids": prompts.tolist()})
  with warnings.catch_warnings():
    # Deprecation notes, and the variance of one ratio statistic: none changes the timing.
    warnings.simplefilter("ignore")
    args = PPOConfig(
        output_dir=os.path.join(checkpoints, "trl"), report_to="none", save_strategy="no",
        disable_tqdm=True, seed=0, bf16=False, gradient_checkpointing=False,
        per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        num_mini_batches=1, local_rollout_forward_batch_size=batch,
        total_episodes=batch * iterations, num_ppo_epochs=ppo.epochs,
        response_length=ppo.max_new_tokens, temperature=ppo.temperature, stop_token=None,
        num_sample_generations=0, learning_rate=ppo.lr, kl_coef=ppo.kl_coef,
        cliprange=ppo.clip_eps, cliprange_value=ppo.value_clip, vf_coef=ppo.vf_coef,
        gamma=ppo.gamma, lam=ppo.gae_lambda)
    trainer = PPOTrainer(
        args=args, processing_class=tokenizer,
        model=load(transformers.GPT2LMHeadModel, "policy"),
        ref_model=load(transformers.GPT2LMHeadModel, "policy"),
        reward_model=load(transformers.GPT2ForSequenceClassification, "reward"),
        value_model=load(transformers.GPT2ForSequenceClassification, "reward"),
        train_dataset=dataset, eval_dataset=dataset, callbacks=[clock])
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    if trainer.policy_model.generation_config.eos_token_id is not None:
      raise RuntimeError("TRL's policy would stop at EOS; responses must have full length")
    setup = time.perf_counter() - start
    trainer.train()
  gc.unfreeze()
  return setup, list(np.diff(clock.marks))


def iteration_flops(config: ModelConfig, *, batch: int, seq_len: int, epochs: int,
                    scoring_forwards: int) -> dict[str, float]:
  """Model FLOPs of an iteration's phases over batch x seq_len tokens. sample: one policy
  forward over prompt + response; score: the reference's, RM's and value model's
  forwards, and the policy's when scoring_forwards is 4 (ours; TRL reuses the logits of
  generate); update: epochs x forward + backward of policy and value model."""
  def flops(*, lm_head, backward):
    return transformer_flops(params=matmul_params(config, lm_head=lm_head),
                             tokens=batch * seq_len, n_layers=config.n_layers,
                             d_model=config.d_model, seq_len=seq_len, backward=backward)
  lm, scalar = flops(lm_head=True, backward=False), flops(lm_head=False, backward=False)
  return {"sample": lm, "score": (scoring_forwards - 2) * lm + 2 * scalar,
          "update": epochs * (flops(lm_head=True, backward=True)
                              + flops(lm_head=False, backward=True))}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16, help="prompts per iteration")
  parser.add_argument("--prompt_len", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=96)
  parser.add_argument("--epochs", type=int, default=1, help="PPO epochs over the rollout")
  parser.add_argument("--repeats", type=int, default=3, help="warm iterations after the first")
  parser.add_argument("--quick", action="store_true",
                      help="2 layers, d_model 64, 4 prompts of 8 + 8 tokens")
  args = parser.parse_args()
  missing = [name for name in ("torch", "trl") if importlib.util.find_spec(name) is None]
  if missing:
    print(f"ppo_vs_trl: skipped, {' and '.join(missing)} not installed "
          "(pip install torch==2.13.0 trl==1.12.0)")
    return
  if args.quick:
    args.batch, args.prompt_len, args.new_tokens = 4, 8, 8

  model_config = ModelConfig(arch="gpt2", vocab_size=2048, d_model=64 if args.quick else 256,
                             n_layers=2 if args.quick else 4, n_heads=4, max_len=128)
  ppo = get_config().ppo
  ppo.update(rollout_batch_size=args.batch, minibatch_size=args.batch, epochs=args.epochs,
             max_new_tokens=args.new_tokens, temperature=1.0, iterations=1 + args.repeats)
  pad_id = model_config.vocab_size - 1  # TRL masks it as padding: no prompt holds it
  prompts = np.random.default_rng(0).integers(
      0, pad_id, (args.batch, args.prompt_len)).astype(np.int32)  # [B, P]
  peak = measure_matmul_peak_gflops()
  print(f"{jax.devices()[0].platform}, {os.cpu_count()} CPU cores, float32 matmul peak "
        f"{peak:.1f} GFLOP/s (jnp.dot 2048^2)")
  print(f"4 GPT-2-shaped models of {model_config.num_params() / 1e6:.2f}M params "
        f"({model_config.n_layers} layers, d_model {model_config.d_model}, vocab "
        f"{model_config.vocab_size}); {args.batch} prompts x ({args.prompt_len} + "
        f"{args.new_tokens}) tokens, temperature 1, no EOS; {args.epochs} epoch(s) of one "
        f"minibatch of {args.batch}")

  state, iteration, weights = build_instructjax(ppo, model_config, prompts)
  with tempfile.TemporaryDirectory() as checkpoints:
    for name, (model, params) in weights.items():
      to_hf(model, params, os.path.join(checkpoints, name),
            token_ids={"pad_token_id": pad_id})
    ours = time_instructjax(state, iteration, iterations=1 + args.repeats)
    setup, theirs = time_trl(checkpoints, prompts, pad_id=pad_id,
                             vocab_size=model_config.vocab_size, ppo=ppo,
                             iterations=1 + args.repeats)

  shape = dict(batch=args.batch, seq_len=args.prompt_len + args.new_tokens, epochs=args.epochs)
  flops = iteration_flops(model_config, **shape, scoring_forwards=4)
  trl_flops = sum(iteration_flops(model_config, **shape, scoring_forwards=3).values())
  warm = ours[1:]
  best = min(run["total"] for run in warm)
  median = {k: statistics.median(run[k] for run in warm) for k in warm[0]}
  print(f"instructjax: first iteration {ours[0]['total']:.2f} s (mostly compile; "
        + ", ".join(f"{k} {ours[0][k]:.2f}" for k in flops)
        + f"); warm, {args.repeats} iterations: best {best:.3f} s, median "
        f"{median['total']:.3f} s (median " + ", ".join(f"{k} {median[k]:.3f}" for k in flops)
        + ")")
  trl_best, trl_median = min(theirs[1:]), statistics.median(theirs[1:])
  print(f"TRL PPOTrainer: setup {setup:.2f} s; first iteration {theirs[0]:.2f} s; warm, "
        f"{args.repeats} iterations: best {trl_best:.3f} s, median {trl_median:.3f} s")
  print(f"TRL / instructjax, warm iteration: {trl_best / best:.2f}x (best), "
        f"{trl_median / median['total']:.2f}x (median)")
  print(f"model FLOPs per iteration: instructjax {sum(flops.values()) / 1e9:.2f} G ("
        + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in flops.items())
        + f"); TRL {trl_flops / 1e9:.2f} G (its scoring runs 3 forwards to our 4)")

  def rate(flop, seconds):
    gflops = flop / seconds / 1e9
    return f"{gflops:.1f} GFLOP/s = {100 * gflops / peak:.1f}%"
  print(f"of the matmul peak, best warm iteration: instructjax {rate(sum(flops.values()), best)}"
        f", TRL {rate(trl_flops, trl_best)}; instructjax's phases (median): "
        + ", ".join(f"{k} {rate(flops[k], median[k])}" for k in flops))


if __name__ == "__main__":
  main()
