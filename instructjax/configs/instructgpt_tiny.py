"""The whole InstructGPT recipe on the embedded testbed, sized for a 2-core laptop.

Run the whole pipeline (about 10 minutes on 2 CPU cores):
  python -m instructjax.pipeline --workdir=runs/demo
The variant the tests run (minutes; PPO already beats SFT on its rollouts):
  python -m instructjax.pipeline --config=experiments/instructgpt_tiny.py:quick --workdir=runs/quick
This file ships inside the package (it is the programs' default --config);
experiments/instructgpt_tiny.py names it beside the other experiment configs.
One stage alone, with an override:
  python -m instructjax.sft --config=experiments/instructgpt_tiny.py --workdir=runs/demo \
      --config.sft.lr=3e-4

Values are scaled down from the paper's (Ouyang et al. 2022, summarised in the project's
shared docs/instructgpt.md); the paper's own value is given in a comment where the field
has one.
"""

import ml_collections

VARIANTS = ("", "quick", "test")  # every variant the dry-run test checks


def _train(*, steps, batch_size, lr, warmup_steps, weight_decay=0.0, accum_steps=1,
           eval_every=0, checkpoint_every=0, grad_clip_norm=1.0):
  return ml_collections.ConfigDict(dict(
      steps=steps,  # optimizer steps in this stage
      batch_size=batch_size,  # global batch (sequences, or prompts for the RM)
      accum_steps=accum_steps,  # microbatches per step (gradient accumulation)
      lr=lr,  # peak learning rate; linear warmup then cosine decay to 10%
      warmup_steps=warmup_steps,
      weight_decay=weight_decay,  # AdamW decay on matrices only
      grad_clip_norm=grad_clip_norm,  # global-norm clipping; 0 turns it off
      eval_every=eval_every or max(1, steps // 4),  # steps between evaluations
      checkpoint_every=checkpoint_every or max(1, steps // 4),  # steps between checkpoints
      keep_checkpoints=2,  # Orbax keeps this many, newest first
      max_consecutive_skips=5,  # NaN/Inf updates in a row before the run stops
  ))


def _ppo():
  """Stage 3's section: PPO and PPO-ptx."""
  return ml_collections.ConfigDict(dict(
      iterations=40,  # rollout + update rounds (paper: 256k episodes)
      rollout_batch_size=64,  # prompts per rollout (paper: 512)
      minibatch_size=32,  # (paper: 64)
      epochs=2,  # passes over each rollout (paper: 1)
      lr=1e-4,  # peak; linear warmup, then cosine decay to 10% over all updates
      warmup_steps=10,  # optimizer steps
      value_lr_scale=3.0,  # value-model learning rate = lr * this
      kl_coef=0.05,  # beta (paper: 0.02; this tiny RM is easier to over-optimise)
      adaptive_kl=False,  # Ziegler et al. controller instead of a fixed beta
      target_kl=6.0,
      kl_horizon=10000,
      # gamma of --stage=ppo_ptx (--stage=ppo uses 0) (paper: 27.8); at 1.0 the ptx term
      # pulls this tiny policy back to vanilla LM text and keeps less of RLHF's gain.
      ptx_coef=0.3,
      ptx_batch_size=32,  # pretraining sequences per update (paper: 8x the RL batch)
      clip_eps=0.2,  # policy ratio clip (paper: 0.2)
      value_clip=0.2,
      vf_coef=0.5,
      gamma=1.0,  # discount (paper: 1)
      gae_lambda=0.95,  # (paper: 0.95)
      temperature=1.0,  # sampling temperature; also divides logits in the update
      max_new_tokens=16,
      whiten_rewards=False,
      no_eos_penalty=-1.0,  # reward for a response that never emits EOS
      # Advantage estimator: "gae" (PPO, with a value model), or a critic-free group
      # baseline over group_size samples per prompt, "rloo" or "grpo" (no value model).
      advantage="gae",
      group_size=1,  # samples per prompt (1 for GAE)
      kl_loss_coef=0.0,  # GRPO's KL-to-reference loss term (k3); PPO's KL is in the reward
      ema_decay=0.0,  # EMA of policy weights (paper: 0.992); 0 = off
      grad_clip_norm=1.0,
      checkpoint_every=10,
      keep_checkpoints=2,
      max_consecutive_skips=5,
  ))


def _critic_free(advantage: str):
  """The rloo / grpo section: PPO's, with a group baseline in place of the value model.
  A rollout of 64 samples holds 16 prompts x 4 samples, so each method sees the same
  number of samples per iteration as PPO (a quarter of its prompts)."""
  section = _ppo()
  section.update(advantage=advantage, group_size=4, ptx_coef=0.0)
  if advantage == "grpo":
    # GRPO's KL is a loss term (Shao et al.: 0.04), not a penalty in the reward.
    section.update(kl_coef=0.0, kl_loss_coef=0.05)
  return section


def _dpo():
  """The dpo section: offline preference optimisation on the RM's K-wise comparisons
  (the same rankings, policy samples included), from SFT, with SFT as the reference."""
  section = _train(steps=150, batch_size=16, lr=1e-4, warmup_steps=10)  # ~2 epochs
  section.loss = "plackett_luce"  # K-wise; or "dpo" / "ipo" on the ranking's pairs
  section.coef = 0.1  # beta (dpo, plackett_luce) or tau (ipo); Rafailov et al.: 0.1
  return section


def get_config(variant: str = ""):
  config = ml_collections.ConfigDict()
  config.seed = 0  # every rng in the run derives from it
  # Hugging Face checkpoints (hub id or directory) to import as the vanilla LMs instead
  # of pretraining them; "" = pretrain on the testbed (instructjax.hf_import).
  config.hf_name = ml_collections.ConfigDict(dict(model="", big_model=""))

  # The small vanilla LM: the one SFT, the RM and PPO start from.
  config.model = ml_collections.ConfigDict(dict(
      arch="gpt2", vocab_size=1024, d_model=64, n_layers=2, n_heads=4, n_kv_heads=0,
      head_dim=0, d_ff=0, max_len=96, norm_eps=1e-5, rope_theta=10000.0,
      tie_embeddings=True,
      dropout_rate=0.0,  # paper: residual dropout 0.2 in SFT; tiny models underfit with it
      dtype="float32", param_dtype="float32", remat=False,
      attention="einsum"))  # or "xla" / "cudnn": jax.nn.dot_product_attention
  # A vanilla LM ~6x larger, for the "aligned small beats large vanilla" claim.
  config.big_model = config.model.copy_and_resolve_references()
  config.big_model.update(d_model=128, n_layers=4)

  # Device mesh (data x fsdp x tensor); -1 takes the devices that are left.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  config.data = ml_collections.ConfigDict(dict(
      source="testbed",  # "testbed" (embedded, no downloads) or "jsonl" (the *_path fields)
      dir="",  # where the testbed's JSONL files and tokenizer go; "" = WORKDIR/testbed
      tokenizer="",  # HF tokenizer directory; "" = the testbed's own BPE tokenizer
      tokenizer_vocab_size=1024,  # the testbed BPE's size; must fit model.vocab_size
      # Sizes of the generated testbed (instructjax.data.testbed.TestbedSizes).
      testbed=ml_collections.ConfigDict(dict(
          pretrain=30_000, pretrain_heldout=1_000, sft=1_200, rm_train=1_200, rm_eval=200,
          ppo=2_400, eval=300, train_labelers=6, heldout_labelers=3, min_responses=4,
          max_responses=9,
          # Demonstrations ending in a polite remark (extra words to the gold score):
          # the habit SFT copies and the labelers' preferences should train away.
          remark_fraction=0.6)),
      max_prompt_len=48,  # prompts longer than this are cut from the left
      max_len=96,  # prompt + response; responses are cut from the right
      buckets=(32, 64, 96),  # padded lengths, so steps compile a bounded number of times
      skip_bad_rows=False,  # True: skip malformed rows and count them instead of failing
      prefetch=2,  # batches tokenized ahead on a grain worker thread (0: inline)
  ))

  config.pretrain = _train(steps=1500, batch_size=32, lr=3e-3, warmup_steps=100,
                           weight_decay=0.01)
  # Half the small model's tokens: ~6x the parameters would otherwise triple the run.
  config.pretrain_big = _train(steps=750, batch_size=32, lr=2e-3, warmup_steps=50,
                               weight_decay=0.01)
  # ~19 epochs (paper: 16): the tiny model needs them, and a high rate, to learn the tasks.
  config.sft = _train(steps=700, batch_size=32, lr=3e-3, warmup_steps=50)
  # ~4 epochs of the 1,200 ranked prompts (paper: 1 epoch, as the RM overfits). Here one
  # epoch (75 steps) left it at pairwise accuracy 0.68 / 0.68 on rm_eval (training /
  # held-out labelers) against 0.72 / 0.72 at 300 steps, from the same SFT model.
  config.rm = _train(steps=300, batch_size=16, lr=5e-4, warmup_steps=20)
  # Share of each prompt's K ranked responses that are samples of the SFT policy (the
  # paper's labelers rank model outputs); the rest are the testbed's synthetic ones.
  config.rm.policy_sample_fraction = 0.5
  # On real data (no gold score): the share of rm_train prompts held out for the judge
  # RM of the final evaluation (stage rm_judge), never seen by the RM or PPO.
  config.rm.judge_fraction = 0.2

  config.ppo = _ppo()
  # Methods beyond InstructGPT, compared with PPO in the same evaluation; delete a
  # section to skip its stage (instructjax.stage_table).
  config.dpo = _dpo()
  config.rloo = _critic_free("rloo")
  config.grpo = _critic_free("grpo")
  config.eval = ml_collections.ConfigDict(dict(
      prompts=200,  # evaluation prompts per model
      few_shot=3,  # demonstrations in the few-shot prompt of the vanilla LM
      max_new_tokens=16,
  ))
  config.log = ml_collections.ConfigDict(dict(tensorboard=True, wandb_project=""))

  if variant == "quick":
    _quick(config)
  elif variant == "test":
    _test(config)
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: '', 'quick', 'test'")
  return config


def _quick(config) -> None:
  """What the tests run: minutes; RLHF's first effect, not all claims."""
  for section, steps in (("pretrain", 200), ("pretrain_big", 40), ("sft", 150), ("rm", 60)):
    config[section].update(steps=steps, eval_every=steps // 2, checkpoint_every=steps // 2,
                           warmup_steps=10)
  for section in ("ppo", "rloo"):
    config[section].update(iterations=12, rollout_batch_size=32, minibatch_size=16,
                           ptx_batch_size=8, lr=3e-4, checkpoint_every=6)
  config.ppo.ptx_coef = 1.0
  # DPO and GRPO run in :test (their programs' tests and the two-process run); here
  # they would only lengthen the test suite, and RLOO stands for the methods beyond PPO.
  del config["dpo"], config["grpo"]
  config.eval.prompts = 32
  config.data.testbed.update(pretrain=5_000, pretrain_heldout=200, sft=300, rm_train=300,
                             rm_eval=64, ppo=400, eval=64)


def _test(config) -> None:
  """Seconds per stage: for tests of the programs' plumbing."""
  config.model.update(d_model=32, max_len=64)
  config.big_model.update(d_model=32, n_layers=2, max_len=64)
  config.data.update(max_prompt_len=40, max_len=64, buckets=(64,))
  for section in ("pretrain", "pretrain_big", "sft", "rm"):
    config[section].update(steps=6, batch_size=8, eval_every=3, checkpoint_every=3,
                           warmup_steps=1)
  # Batches divide the 8 fake CPU devices the tests run on.
  for section in ("ppo", "rloo", "grpo"):
    config[section].update(iterations=2, rollout_batch_size=16, minibatch_size=8,
                           ptx_batch_size=8, max_new_tokens=6, checkpoint_every=1)
  for section in ("rloo", "grpo"):
    config[section].group_size = 2  # 8 prompts a rollout, one per fake device
  config.dpo.update(steps=4, batch_size=8, eval_every=2, checkpoint_every=2, warmup_steps=1)
  config.eval.update(prompts=8, max_new_tokens=6)
  config.data.testbed.update(pretrain=300, pretrain_heldout=20, sft=40, rm_train=40,
                             rm_eval=16, ppo=40, eval=16)
