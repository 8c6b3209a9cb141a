"""Llama-family checkpoints through SFT, RM and PPO(-ptx) on Anthropic HH-RLHF.

One config, a variant per starting checkpoint; each also takes "gpu" or "tpu"
("qwen2.5-0.5b,gpu"):
  ""              TinyLlama 1.1B (Llama 2 architecture); large vanilla LM: Llama 2 7B
  "llama3.2-1b"   Llama 3.2 1B (llama3 RoPE scaling, tied head); large: Llama 3.1 8B
  "qwen2.5-0.5b"  Qwen2.5 0.5B (q/k/v biases, tied head); large: Qwen2.5 7B
  "qwen3-0.6b"    Qwen3 0.6B base (q/k RMSNorm, tied head); large: Qwen3 8B base
  "mistral-7b"    Mistral 7B v0.1 (4096-token sliding window). No larger dense Mistral
                  shares its tokenizer, so its vanilla baseline is the same 7B
                  checkpoint: that comparison measures alignment at equal size.
The vanilla LMs are base checkpoints, never chat or instruct models, which are already
aligned. Meshes: no suffix, FSDP over all local devices; "gpu" one 80 GB GPU (four
models: policy, value, reference, reward), or for Mistral 7B one host of 8 such GPUs;
"tpu" a 16-chip slice (v4-32 or v5e-16: data 2 x fsdp 4 x tensor 2).

Check the config first (seconds; no weights, no data; see instructjax/dry_run.py):
  python -m instructjax.dry_run --config=experiments/llama_hh_rlhf.py:qwen2.5-0.5b,gpu

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
     python -m instructjax.sft --config=experiments/llama_hh_rlhf.py:qwen2.5-0.5b,gpu \
         --workdir=runs/qwen_hh --stage=pretrain
     python -m instructjax.sft --config=experiments/llama_hh_rlhf.py:qwen2.5-0.5b,gpu \
         --workdir=runs/qwen_hh --stage=pretrain_big
2-4. SFT, the reward model, then PPO and PPO-ptx (each resumes if interrupted):
     python -m instructjax.sft --config=experiments/llama_hh_rlhf.py:qwen2.5-0.5b,gpu \
         --workdir=runs/qwen_hh --stage=sft
     python -m instructjax.reward --config=experiments/llama_hh_rlhf.py:qwen2.5-0.5b,gpu \
         --workdir=runs/qwen_hh
     python -m instructjax.ppo --config=experiments/llama_hh_rlhf.py:qwen2.5-0.5b,gpu \
         --workdir=runs/qwen_hh --stage=ppo
     python -m instructjax.ppo --config=experiments/llama_hh_rlhf.py:qwen2.5-0.5b,gpu \
         --workdir=runs/qwen_hh --stage=ppo_ptx
Or all of it in one resumable command, with the held-out judge RM (stage rm_judge),
the evaluation and the report (WORKDIR/report.md):
     python -m instructjax.pipeline --config=experiments/llama_hh_rlhf.py:qwen2.5-0.5b,gpu \
         --workdir=runs/qwen_hh
Hyperparameters are the paper's where it gives one (../shared/docs/instructgpt.md),
noted in the comments; its 1.3B model is the closest in size.

"smoke" runs the same code path on a CPU in minutes (instructjax/configs/smoke.py):
  python -m instructjax.pipeline --config=experiments/llama_hh_rlhf.py:smoke --workdir=W \
      --config.hf_name.model=CKPT_DIR --config.data.manual_dir=HH_DIR
Any supported family's checkpoint works with any of these configs: the architecture
comes from the checkpoint.
"""

import ml_collections

from instructjax.configs.smoke import apply_smoke

# The architecture of each HF checkpoint, from its config.json (from_hf checks them).
_LLAMA3_ROPE = dict(rope_type="llama3", rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                    rope_original_max_len=8192, rope_theta=500000.0)
_QWEN = dict(norm_eps=1e-6, rope_theta=1e6)
_CHECKPOINTS = {
    "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": dict(
        vocab_size=32000, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4, d_ff=5632,
        max_len=2048, tie_embeddings=False),
    "meta-llama/Llama-2-7b-hf": dict(
        vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, d_ff=11008,
        max_len=4096, tie_embeddings=False),
    "meta-llama/Llama-3.2-1B": dict(
        vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64,
        d_ff=8192, max_len=131072, rope_factor=32.0, tie_embeddings=True, **_LLAMA3_ROPE),
    "meta-llama/Llama-3.1-8B": dict(
        vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
        max_len=131072, rope_factor=8.0, tie_embeddings=False, **_LLAMA3_ROPE),
    "Qwen/Qwen2.5-0.5B": dict(
        family="qwen2", vocab_size=151936, d_model=896, n_layers=24, n_heads=14,
        n_kv_heads=2, d_ff=4864, max_len=32768, qkv_bias=True, tie_embeddings=True, **_QWEN),
    "Qwen/Qwen2.5-7B": dict(
        family="qwen2", vocab_size=152064, d_model=3584, n_layers=28, n_heads=28,
        n_kv_heads=4, d_ff=18944, max_len=131072, qkv_bias=True, tie_embeddings=False,
        **_QWEN),
    "Qwen/Qwen3-0.6B-Base": dict(
        family="qwen3", vocab_size=151936, d_model=1024, n_layers=28, n_heads=16,
        n_kv_heads=8, head_dim=128, d_ff=3072, max_len=32768, qk_norm=True,
        tie_embeddings=True, **_QWEN),
    "Qwen/Qwen3-8B-Base": dict(
        family="qwen3", vocab_size=151936, d_model=4096, n_layers=36, n_heads=32,
        n_kv_heads=8, head_dim=128, d_ff=12288, max_len=32768, qk_norm=True,
        tie_embeddings=False, **_QWEN),
    "mistralai/Mistral-7B-v0.1": dict(
        family="mistral", vocab_size=32000, d_model=4096, n_layers=32, n_heads=32,
        n_kv_heads=8, d_ff=14336, max_len=32768, sliding_window=4096, tie_embeddings=False),
}
# variant name -> (policy checkpoint, large vanilla checkpoint; same tokenizer)
_MODELS = {
    "": ("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", "meta-llama/Llama-2-7b-hf"),
    "llama3.2-1b": ("meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.1-8B"),
    "qwen2.5-0.5b": ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-7B"),
    "qwen3-0.6b": ("Qwen/Qwen3-0.6B-Base", "Qwen/Qwen3-8B-Base"),
    "mistral-7b": ("mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-v0.1"),
}
VARIANTS = tuple(",".join(filter(None, (name, mesh)))
                 for name in _MODELS for mesh in ("", "gpu", "tpu", "smoke"))


def _model(hf_name, *, remat):
  return ml_collections.ConfigDict(dict(
      arch="llama", family="llama", n_kv_heads=0,  # 0: as many as n_heads (no GQA)
      head_dim=0,  # 0: d_model // n_heads
      norm_eps=1e-5, rope_theta=10000.0, rope_type="default", rope_factor=1.0,
      rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_max_len=0,
      qkv_bias=False, out_bias=False, mlp_bias=False, qk_norm=False,
      sliding_window=0,  # 0: every earlier token is attended to
      dropout_rate=0.2,  # paper: residual dropout 0.2 in SFT (applies in SFT and RM training)
      dtype="bfloat16",  # compute
      param_dtype="float32",  # weights and optimizer state
      remat=remat,  # recompute each block in the backward pass to save memory
      attention="einsum",  # "cudnn": cuDNN flash attention on NVIDIA GPUs
  ) | _CHECKPOINTS[hf_name])


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
  name, mesh = (variant.rsplit(",", 1) if "," in variant
                else ("", variant) if variant in ("gpu", "tpu", "smoke") else (variant, ""))
  model, big_model = _MODELS[name]
  config = ml_collections.ConfigDict()
  config.seed = 0  # every rng in the run derives from it

  # The HF checkpoints stage 0 imports as the vanilla LMs (step 1 of the docstring).
  config.hf_name = ml_collections.ConfigDict(dict(
      model=model,
      big_model=big_model,  # the larger vanilla LM the aligned one is compared with
  ))
  # The policy, and the trunk of the reward and value models.
  config.model = _model(model, remat=True)
  # Evaluated as imported, never trained: "aligned small beats large vanilla".
  config.big_model = _model(big_model, remat=True)

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
      tokenizer_vocab_size=config.model.vocab_size,  # (testbed only) the tokenizer's size
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
  config.pretrain = _train(steps=1000, batch_size=64, lr=2e-5, warmup_steps=100,
                           weight_decay=0.1)
  config.pretrain_big = _train(steps=1000, batch_size=64, lr=1e-5, warmup_steps=100,
                               weight_decay=0.1)
  # About 2 epochs of 32k demonstrations at batch 32 (paper: 16 epochs, 9.65e-6, batch 32
  # at 1.3B).
  config.sft = _train(steps=2000, batch_size=32, lr=9.65e-6)
  # One epoch of 64k comparisons (paper: 1 epoch, 64 prompts a batch, 9e-6 at 6B).
  config.rm = _train(steps=1000, batch_size=64, lr=9e-6)
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
      lr=5e-6,
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
      few_shot=3,  # demonstrations in the few-shot prompt of the vanilla LM
      max_new_tokens=128,
  ))
  config.log = ml_collections.ConfigDict(dict(tensorboard=True, wandb_project=""))

  if mesh == "gpu" and name == "mistral-7b":  # one host of 8 x 80 GB GPUs
    config.mesh.update(data=1, fsdp=8, tensor=1)
    config.ppo.update(rollout_batch_size=64, minibatch_size=8, ptx_batch_size=32,
                      iterations=4000)
  elif mesh == "gpu":  # one 80 GB GPU
    config.mesh.update(data=1, fsdp=1, tensor=1)
    config.sft.accum_steps = 4
    config.rm.accum_steps = 8
    # Policy + value (trained, with Adam and the EMA) and reference + reward (frozen)
    # leave room for small rollouts only; ptx rows 4x (not 8x) the minibatch.
    config.ppo.update(rollout_batch_size=64, minibatch_size=8, ptx_batch_size=32,
                      iterations=4000)
  elif mesh == "smoke":
    apply_smoke(config)
  elif mesh == "tpu":  # 16 chips: every batch divides data x fsdp = 8
    config.mesh.update(data=2, fsdp=4, tensor=2)
  return config
