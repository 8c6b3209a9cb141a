"""GPT-2 (small, 124M; or medium, 355M) through SFT, RM and PPO(-ptx) on Anthropic HH-RLHF.

Variants, comma-separated: "" GPT-2 small, FSDP over all local devices; "gpu" one 80 GB
GPU; "tpu" a 16-chip slice (v4-32 or v5e-16: data 2 x fsdp 8); "medium" GPT-2 medium
("medium,gpu", "medium,tpu"). GPT-2's vocabulary (50257 = 29 x 1733) cannot be split
over a tensor axis, so every mesh here is data x fsdp only.

Check the config first (seconds; no weights, no data; see instructjax/dry_run.py):
  python -m instructjax.dry_run --config=experiments/gpt2_hh_rlhf.py:gpu

0. Data: download the HH-RLHF files (https://github.com/anthropics/hh-rlhf) into hh-rlhf/,
   keeping their layout <subset>/{train,test}.jsonl.gz (config.data.manual_dir). The
   first stage builds them with the TFDS builder and derives the split files into
   WORKDIR/data (disjoint SFT / RM / PPO prompts in the paper's 13k : 33k : 31k ratio,
   recorded in WORKDIR/data/splits.json); set config.data.pretrain_jsonl and
   heldout_jsonl to {"text": ...} files (e.g. OpenWebText) for PPO-ptx and the held-out
   LM loss.
1. The vanilla LMs: stage 0 imports the Hugging Face checkpoints config.hf_name.model
   and .big_model (hub ids or local directories; architecture from config.json, weights
   from safetensors, tokenizer from the same place; see instructjax/hf_import.py):
     python -m instructjax.sft --config=experiments/gpt2_hh_rlhf.py:gpu \
         --workdir=runs/gpt2_hh --stage=pretrain
     python -m instructjax.sft --config=experiments/gpt2_hh_rlhf.py:gpu \
         --workdir=runs/gpt2_hh --stage=pretrain_big
2-4. SFT, the reward model, then PPO and PPO-ptx (each resumes if interrupted):
     python -m instructjax.sft --config=experiments/gpt2_hh_rlhf.py:gpu \
         --workdir=runs/gpt2_hh --stage=sft
     python -m instructjax.reward --config=experiments/gpt2_hh_rlhf.py:gpu \
         --workdir=runs/gpt2_hh
     python -m instructjax.ppo --config=experiments/gpt2_hh_rlhf.py:gpu \
         --workdir=runs/gpt2_hh --stage=ppo
     python -m instructjax.ppo --config=experiments/gpt2_hh_rlhf.py:gpu \
         --workdir=runs/gpt2_hh --stage=ppo_ptx
Or all of it in one resumable command, with the held-out judge RM (stage rm_judge),
the evaluation and the report (WORKDIR/report.md):
     python -m instructjax.pipeline --config=experiments/gpt2_hh_rlhf.py:gpu --workdir=runs/gpt2_hh
Hyperparameters are the paper's where it gives one (../shared/docs/instructgpt.md),
noted in the comments.

"smoke" runs the same code path on a CPU in minutes (instructjax/configs/smoke.py):
  python -m instructjax.pipeline --config=experiments/gpt2_hh_rlhf.py:smoke --workdir=W \
      --config.hf_name.model=CKPT_DIR --config.data.manual_dir=HH_DIR
Any supported family's checkpoint works with any of these configs: the architecture
comes from the checkpoint.
"""

import ml_collections

from instructjax.configs.smoke import apply_smoke

VARIANTS = ("", "gpu", "tpu", "medium", "medium,gpu", "medium,tpu", "smoke")

# HF hub id -> the real architecture (HF config.json of each checkpoint).
_GPT2 = {
    "gpt2": dict(d_model=768, n_layers=12, n_heads=12),
    "gpt2-medium": dict(d_model=1024, n_layers=24, n_heads=16),
    "gpt2-xl": dict(d_model=1600, n_layers=48, n_heads=25),
}


def _model(hf_name, *, remat):
  return ml_collections.ConfigDict(dict(
      arch="gpt2", vocab_size=50257, **_GPT2[hf_name], n_kv_heads=0, head_dim=0,
      d_ff=0,  # 4 * d_model
      max_len=1024,  # learned positions
      norm_eps=1e-5, rope_theta=10000.0,  # (unused by GPT-2)
      tie_embeddings=True,
      dropout_rate=0.2,  # paper: residual dropout 0.2 in SFT (applies in SFT and RM training)
      dtype="bfloat16",  # compute
      param_dtype="float32",  # weights and optimizer state
      remat=remat,  # recompute each block in the backward pass to save memory
      attention="einsum"))  # "cudnn": cuDNN flash attention on NVIDIA GPUs


def _train(*, steps, batch_size, lr, warmup_steps=0, weight_decay=0.0, accum_steps=1,
           grad_clip_norm=1.0):
  return ml_collections.ConfigDict(dict(
      steps=steps,  # optimizer steps in this stage
      batch_size=batch_size,  # global batch (sequences, or prompts for the RM)
      accum_steps=accum_steps,  # microbatches per step (gradient accumulation)
      lr=lr,  # peak learning rate; linear warmup then cosine decay to 10% (as the paper)
      warmup_steps=warmup_steps,  # paper: no warmup
      weight_decay=weight_decay,  # AdamW decay on matrices only
      grad_clip_norm=grad_clip_norm,  # global-norm clipping; 0 turns it off
      eval_every=max(1, steps // 10),  # steps between evaluations
      checkpoint_every=max(1, steps // 20),  # steps between checkpoints
      keep_checkpoints=2,  # Orbax keeps this many, newest first
      max_consecutive_skips=5,  # NaN/Inf updates in a row before the run stops
  ))


def get_config(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
  options = set(variant.split(","))
  medium = "medium" in options
  config = ml_collections.ConfigDict()
  config.seed = 0  # every rng in the run derives from it

  # The HF checkpoints stage 0 imports as the vanilla LMs (step 1 of the docstring).
  config.hf_name = ml_collections.ConfigDict(dict(
      model="gpt2-medium" if medium else "gpt2",
      big_model="gpt2-xl",  # the larger vanilla LM the aligned one is compared with
  ))
  # The policy, and the trunk of the reward and value models.
  config.model = _model(config.hf_name.model, remat=medium or "tpu" in options)
  # Evaluated as imported, never trained: "aligned small beats large vanilla".
  config.big_model = _model(config.hf_name.big_model, remat=True)

  # Device mesh (data x fsdp x tensor); -1 takes the devices that are left.
  config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))

  config.data = ml_collections.ConfigDict(dict(
      source="tfds",  # built from the published files (docstring step 0)
      dataset="hh_rlhf",  # instructjax.data.tfds_builders.DATASETS
      subsets=("harmless-base", "helpful-base", "helpful-online",
               "helpful-rejection-sampled"),  # every HH-RLHF subset
      manual_dir="hh-rlhf",  # the published layout: <subset>/{train,test}.jsonl.gz
      dir="",  # where the derived split files go; "" = WORKDIR/data
      # SFT : RM : PPO shares of the train split's prompts (paper: 13k : 33k : 31k);
      # disjoint by prompt. The test split gives the RM's test comparisons and the
      # evaluation prompts.
      split_fractions=(13, 33, 31),
      split_seed=0,  # the seed of the prompt assignment (its own, so model seeds vary alone)
      # {"text": ...} lines for PPO-ptx and the held-out LM loss (e.g. OpenWebText); ""
      # lets the demonstrations / the test comparisons stand in (the report says so).
      pretrain_jsonl="",
      heldout_jsonl="",
      sft_manual_dir="",  # (TL;DR only) demonstrations from the filtered TL;DR files
      # HF tokenizer (hub id or directory): the policy checkpoint's, also when
      # --config.hf_name.model overrides it.
      tokenizer=config.hf_name.get_ref("model"),
      tokenizer_vocab_size=50257,  # (testbed only) the tokenizer's size
      max_responses=2,  # K responses per ranked prompt: HH-RLHF pairs
      max_prompt_len=384,  # tokens; longer conversations are cut from the left
      max_len=512,  # prompt + response; responses are cut from the right
      buckets=(128, 256, 384, 512),  # padded lengths: a bounded number of compilations
      pack_pretraining=0,  # --stage=pretrain rows: one document each (a long one fills it)
      skip_bad_rows=True,  # skip and count malformed rows (file:line) rather than stop
      prefetch=2,  # batches tokenized ahead on a grain worker thread (0: inline)
  ))

  # Stage 0 is the imported checkpoint (docstring step 1): these two sections only
  # matter for continued pretraining with --stage=pretrain / pretrain_big.
  config.pretrain = _train(steps=1000, batch_size=64, lr=6e-5, warmup_steps=100,
                           weight_decay=0.1)
  config.pretrain_big = _train(steps=1000, batch_size=64, lr=3e-5, warmup_steps=100,
                               weight_decay=0.1)
  # About 4 epochs of 32k demonstrations (paper: 16 epochs of 13k, 9.65e-6 at 1.3B).
  config.sft = _train(steps=2000, batch_size=64, lr=2e-5 if medium else 3e-5)
  # One epoch of 64k comparisons (paper: 1 epoch, 64 prompts a batch, 9e-6 at 6B).
  config.rm = _train(steps=1000, batch_size=64, lr=1e-5)
  # The held-out judge RM of the final evaluation (stage rm_judge) trains on this share
  # of the rm_train prompts, which the RM and PPO never see.
  config.rm.judge_fraction = 0.2
  # The paper's RM: a head on the last token, which an HF *ForSequenceClassification holds.
  config.rm.likelihood_feature = False

  config.ppo = ml_collections.ConfigDict(dict(
      iterations=500,  # rollout + update rounds: 256k episodes (paper: 256k)
      rollout_batch_size=512,  # prompts per rollout (paper: 512)
      minibatch_size=64,  # (paper: 64)
      epochs=1,  # passes over each rollout (paper: 1)
      lr=1e-5 if medium else 1.5e-5,
      warmup_steps=10,  # optimizer steps of linear warmup, then cosine decay to 10%
      value_lr_scale=1.0,  # value-model learning rate = lr * this
      kl_coef=0.02,  # beta (paper: 0.02)
      adaptive_kl=False,  # Ziegler et al. controller instead of a fixed beta (paper: fixed)
      target_kl=6.0,  # nats per response, for the adaptive controller
      kl_horizon=10000,  # its horizon in episodes
      ptx_coef=27.8,  # gamma for --stage=ppo_ptx (paper: 27.8); --stage=ppo ignores it
      ptx_batch_size=512,  # pretraining sequences per update (paper: 8x the minibatch)
      clip_eps=0.2,  # policy ratio clip (paper: 0.2)
      value_clip=0.2,  # value prediction clip around the rollout's values
      vf_coef=0.5,  # weight of the value loss
      gamma=1.0,  # discount (paper: 1)
      gae_lambda=0.95,  # (paper: 0.95)
      temperature=1.0,  # sampling temperature; also divides logits in the update (paper: 1)
      max_new_tokens=128,  # response length limit (max_prompt_len + this <= max_len)
      whiten_rewards=False,
      no_eos_penalty=-1.0,  # reward for a response that never emits EOS
      # Advantage estimator: "gae" (PPO, with a value model), or a critic-free group
      # baseline over group_size samples per prompt, "rloo" or "grpo" (no value model).
      advantage="gae",
      group_size=1,  # samples per prompt (1 for GAE)
      kl_loss_coef=0.0,  # GRPO's KL-to-reference loss term (k3); PPO's KL is in the reward
      ema_decay=0.992,  # EMA of policy weights (paper: 0.992); 0 = off
      grad_clip_norm=1.0,
      checkpoint_every=25,  # iterations between checkpoints
      keep_checkpoints=2,
      max_consecutive_skips=5,
  ))
  config.eval = ml_collections.ConfigDict(dict(
      prompts=500,  # evaluation prompts per model
      few_shot=1,  # demonstrations in the vanilla LM's prompt: one fits 1024 positions
      max_new_tokens=128,
  ))
  config.log = ml_collections.ConfigDict(dict(tensorboard=True, wandb_project=""))

  if "gpu" in options:  # one 80 GB GPU
    config.mesh.update(data=1, fsdp=1, tensor=1)
    # Microbatches of 32 sequences (16 for medium); an RM prompt is K = 2 sequences.
    # XLA:CPU plans 78 GiB of temporaries for a whole SFT batch of GPT-2 small, 40 in two.
    config.sft.accum_steps = 4 if medium else 2
    config.rm.accum_steps = 8 if medium else 4
    # Full-vocabulary logits of 512 rollouts x 512 tokens do not fit next to the four
    # models; a quarter of the paper's rollout, and 4x (not 8x) pretraining rows.
    config.ppo.update(rollout_batch_size=128, minibatch_size=16, ptx_batch_size=64,
                      iterations=2000)
  elif "tpu" in options:  # 16 chips: every batch divides data x fsdp = 16
    config.mesh.update(data=2, fsdp=8, tensor=1)
  elif "smoke" in options:
    apply_smoke(config)
  return config
