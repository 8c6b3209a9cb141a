"""GPT-2 small (124M) through SFT, RM and PPO(-ptx) on OpenAI's TL;DR summarization data.

The summarize-from-feedback setting (Stiennon et al. 2020) that InstructGPT builds on:
Reddit posts, human-written TL;DRs as demonstrations, and pairwise comparisons of
summaries. Variants: "" FSDP over all local devices; "gpu" one 80 GB GPU; "tpu" a
16-chip slice (v4-32 or v5e-16: data 2 x fsdp 8). GPT-2's vocabulary (50257 = 29 x 1733)
cannot be split over a tensor axis, so every mesh here is data x fsdp only.

Check the config first (seconds; no weights, no data; see instructjax/dry_run.py):
  python -m instructjax.dry_run --config=experiments/gpt2_tldr.py:gpu

0. Data: copy the comparisons from https://openaipublic.blob.core.windows.net/
   summarize-from-feedback/dataset/comparisons/ (batch*.json) into tldr/comparisons/
   (config.data.manual_dir is tldr), and the filtered TL;DR demonstrations
   (datasets/tldr_3_filtered/{train,valid,test}.jsonl) into tldr_sft/
   (config.data.sft_manual_dir). The first stage builds both with their TFDS builders
   and derives the split files into WORKDIR/data: SFT on the demonstrations whose post
   no comparison has, the comparisons' train posts divided into disjoint RM / PPO
   prompts, and valid2 for the RM's test comparisons and the evaluation prompts
   (splits.json records it); set config.data.pretrain_jsonl and heldout_jsonl to
   {"text": ...} files for PPO-ptx and the held-out LM loss. With sft_manual_dir="" and
   split_fractions=(13, 33, 31), the preferred summaries of an SFT share of the
   comparisons' posts are the demonstrations instead.
1. The vanilla LMs: stage 0 imports the Hugging Face checkpoints config.hf_name.model
   and .big_model (hub ids or local directories; architecture from config.json, weights
   from safetensors, tokenizer from the same place; see instructjax/hf_import.py):
     python -m instructjax.sft --config=experiments/gpt2_tldr.py:gpu \
         --workdir=runs/gpt2_tldr --stage=pretrain
     python -m instructjax.sft --config=experiments/gpt2_tldr.py:gpu \
         --workdir=runs/gpt2_tldr --stage=pretrain_big
2-4. SFT, the reward model, then PPO and PPO-ptx (each resumes if interrupted):
     python -m instructjax.sft --config=experiments/gpt2_tldr.py:gpu \
         --workdir=runs/gpt2_tldr --stage=sft
     python -m instructjax.reward --config=experiments/gpt2_tldr.py:gpu \
         --workdir=runs/gpt2_tldr
     python -m instructjax.ppo --config=experiments/gpt2_tldr.py:gpu \
         --workdir=runs/gpt2_tldr --stage=ppo
     python -m instructjax.ppo --config=experiments/gpt2_tldr.py:gpu \
         --workdir=runs/gpt2_tldr --stage=ppo_ptx
Or all of it in one resumable command, with the held-out judge RM (stage rm_judge),
the evaluation and the report (WORKDIR/report.md):
     python -m instructjax.pipeline --config=experiments/gpt2_tldr.py:gpu --workdir=runs/gpt2_tldr
Hyperparameters are InstructGPT's where it gives one (../shared/docs/instructgpt.md),
noted in the comments; lengths follow Stiennon et al.

"smoke" runs the same code path on a CPU in minutes (instructjax/configs/smoke.py):
  python -m instructjax.pipeline --config=experiments/gpt2_tldr.py:smoke --workdir=W \
      --config.hf_name.model=CKPT_DIR --config.data.manual_dir=TLDR_DIR \
      --config.data.sft_manual_dir=TLDR_SFT_DIR
Any supported family's checkpoint works with any of these configs: the architecture
comes from the checkpoint.
"""

import ml_collections

from instructjax.configs.smoke import apply_smoke

VARIANTS = ("", "gpu", "tpu", "smoke")


def _model(*, d_model, n_layers, n_heads, remat):
  return ml_collections.ConfigDict(dict(
      arch="gpt2", vocab_size=50257, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
      n_kv_heads=0, head_dim=0,
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
  config = ml_collections.ConfigDict()
  config.seed = 0  # every rng in the run derives from it

  # The HF checkpoints stage 0 imports as the vanilla LMs (step 1 of the docstring).
  config.hf_name = ml_collections.ConfigDict(dict(
      model="gpt2",
      big_model="gpt2-xl",  # the larger vanilla LM the aligned one is compared with
  ))
  # The policy, and the trunk of the reward and value models.
  config.model = _model(d_model=768, n_layers=12, n_heads=12, remat=variant == "tpu")
  # Evaluated as imported, never trained: "aligned small beats large vanilla".
  config.big_model = _model(d_model=1600, n_layers=48, n_heads=25, remat=True)

  # Device mesh (data x fsdp x tensor); -1 takes the devices that are left.
  config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))

  config.data = ml_collections.ConfigDict(dict(
      source="tfds",  # built from the published files (docstring step 0)
      dataset="tldr",  # instructjax.data.tfds_builders.DATASETS
      subsets=(),  # (HH-RLHF only)
      manual_dir="tldr",  # the published layout: comparisons/batch*.json
      dir="",  # where the derived split files go; "" = WORKDIR/data
      # SFT : RM : PPO shares of the train split's prompts, disjoint by prompt; SFT's is
      # 0 as its demonstrations come from sft_manual_dir (Stiennon et al.). The
      # comparisons' valid2 split gives the RM's test comparisons and the eval prompts.
      split_fractions=(0, 33, 31),
      split_seed=0,  # the seed of the prompt assignment (its own, so model seeds vary alone)
      # {"text": ...} lines for PPO-ptx and the held-out LM loss (e.g. OpenWebText); ""
      # lets the demonstrations / the test comparisons stand in (the report says so).
      pretrain_jsonl="",
      heldout_jsonl="",
      # The filtered TL;DR demonstrations (train.jsonl, ...): SFT's data, as in the paper.
      sft_manual_dir="tldr_sft",
      # HF tokenizer (hub id or directory): the policy checkpoint's, also when
      # --config.hf_name.model overrides it.
      tokenizer=config.hf_name.get_ref("model"),
      tokenizer_vocab_size=50257,  # (testbed only) the tokenizer's size
      max_responses=2,  # K responses per ranked prompt: pairwise comparisons
      max_prompt_len=512,  # tokens; longer prompts lose their start (subreddit, title)
      max_len=576,  # prompt + summary; summaries are cut from the right
      buckets=(256, 384, 512, 576),  # padded lengths: a bounded number of compilations
      pack_pretraining=0,  # --stage=pretrain rows: one document each (a long one fills it)
      skip_bad_rows=True,  # skip and count malformed rows rather than stop
      prefetch=2,  # batches tokenized ahead on a grain worker thread (0: inline)
  ))

  # Stage 0 is the imported checkpoint (docstring step 1): these two sections only
  # matter for continued pretraining with --stage=pretrain / pretrain_big.
  config.pretrain = _train(steps=1000, batch_size=64, lr=6e-5, warmup_steps=100,
                           weight_decay=0.1)
  config.pretrain_big = _train(steps=1000, batch_size=64, lr=3e-5, warmup_steps=100,
                               weight_decay=0.1)
  # Two epochs of 117k posts (paper: 16 epochs of 13k demonstrations, 9.65e-6 at 1.3B).
  config.sft = _train(steps=3600, batch_size=64, lr=3e-5)
  # One epoch of 93k comparisons (paper: 1 epoch, 64 prompts a batch, 9e-6 at 6B).
  config.rm = _train(steps=1450, batch_size=64, lr=1e-5)
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
      lr=1.5e-5,
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
      max_new_tokens=48,  # summary length limit (Stiennon et al.: 48 tokens)
      whiten_rewards=False,
      no_eos_penalty=-1.0,  # reward for a summary that never emits EOS
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
      few_shot=0,  # demonstrations in the vanilla LM's prompt: "TL;DR:" alone asks for a
                   # summary, and a second post would not fit 1024 positions
      max_new_tokens=48,
  ))
  config.log = ml_collections.ConfigDict(dict(tensorboard=True, wandb_project=""))

  if variant == "gpu":  # one 80 GB GPU
    config.mesh.update(data=1, fsdp=1, tensor=1)
    # Microbatches of 32 sequences; an RM prompt is K = 2 sequences. (XLA:CPU plans
    # 78 GiB of temporaries for a whole SFT batch of 64 x 512 tokens, 40 in two.)
    config.sft.accum_steps = 2
    config.rm.accum_steps = 4
    # Full-vocabulary logits of 512 rollouts x 560 tokens do not fit next to the four
    # models; a quarter of the paper's rollout, and 4x (not 8x) pretraining rows.
    config.ppo.update(rollout_batch_size=128, minibatch_size=16, ptx_batch_size=64,
                      iterations=2000)
  elif variant == "tpu":  # 16 chips: every batch divides data x fsdp = 16
    config.mesh.update(data=2, fsdp=8, tensor=1)
  elif variant == "smoke":
    apply_smoke(config)
  return config
