"""TinyLlama 1.1B (Llama-2 architecture) through SFT, RM and PPO(-ptx) on Anthropic HH-RLHF.

The vanilla LM is TinyLlama's final base checkpoint (3T tokens), not its chat model,
which is already aligned. Variants: "" FSDP over all local devices; "gpu" one 80 GB GPU
(four 1.1B models: policy, value, reference, reward); "tpu" a 16-chip slice (v4-32 or
v5e-16: data 2 x fsdp 4 x tensor 2).

Why not Llama 3.2 1B: its checkpoint uses "llama3" RoPE scaling, which
instructjax.models.from_hf refuses (only unscaled RoPE is implemented).

Check the config first (seconds; no weights, no data; see instructjax/dry_run.py):
  python -m instructjax.dry_run --config=experiments/llama_hh_rlhf.py:gpu

0. Data: the same split files as experiments/gpt2_hh_rlhf.py (its step 0) in
   data/hh_rlhf; only the tokenizer differs, and it runs on the fly.
1. The vanilla LM: import the Hugging Face checkpoint (config.hf_name.model) as the
   finished stage 0, which SFT starts from:
python - <<'EOF'
from instructjax import stage_export
from instructjax.models import from_hf
model, params = from_hf("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T")
stage_export.save_export("runs/llama_hh/pretrain", params, stage_export.ExportCard(
    stage="pretrain", model=model.config.__dict__, steps=0))
EOF
2-4. SFT, the reward model, then PPO and PPO-ptx (each resumes if interrupted):
     python -m instructjax.sft --config=experiments/llama_hh_rlhf.py:gpu \
         --workdir=runs/llama_hh --stage=sft
     python -m instructjax.reward --config=experiments/llama_hh_rlhf.py:gpu \
         --workdir=runs/llama_hh
     python -m instructjax.ppo --config=experiments/llama_hh_rlhf.py:gpu \
         --workdir=runs/llama_hh --stage=ppo
     python -m instructjax.ppo --config=experiments/llama_hh_rlhf.py:gpu \
         --workdir=runs/llama_hh --stage=ppo_ptx
Hyperparameters are the paper's where it gives one (../shared/docs/instructgpt.md),
noted in the comments; its 1.3B model is the closest in size.
"""

import ml_collections

VARIANTS = ("", "gpu", "tpu")


def _model(*, d_model, n_layers, n_heads, n_kv_heads, d_ff, max_len, remat):
  return ml_collections.ConfigDict(dict(
      arch="llama", vocab_size=32000, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
      n_kv_heads=n_kv_heads,  # grouped-query attention when fewer than n_heads
      head_dim=0,  # d_model // n_heads = 64 (TinyLlama) or 128 (Llama 2 7B)
      d_ff=d_ff,  # SwiGLU width
      max_len=max_len,  # max_position_embeddings (RoPE: bounds nothing but the config)
      norm_eps=1e-5, rope_theta=10000.0,
      tie_embeddings=False,  # separate lm_head
      dropout_rate=0.2,  # paper: residual dropout 0.2 in SFT (applies in SFT and RM training)
      dtype="bfloat16",  # compute
      param_dtype="float32",  # weights and optimizer state
      remat=remat))  # recompute each block in the backward pass to save memory


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

  # The HF checkpoints the vanilla LMs start from (step 1 of the docstring).
  config.hf_name = ml_collections.ConfigDict(dict(
      model="TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
      # The larger vanilla LM the aligned one is compared with (same tokenizer).
      big_model="meta-llama/Llama-2-7b-hf",
  ))
  # The policy, and the trunk of the reward and value models.
  config.model = _model(d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4, d_ff=5632,
                        max_len=2048, remat=True)
  # Evaluated as imported, never trained: "aligned small beats large vanilla".
  config.big_model = _model(d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                            d_ff=11008, max_len=4096, remat=True)

  # Device mesh (data x fsdp x tensor); -1 takes the devices that are left.
  config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))

  config.data = ml_collections.ConfigDict(dict(
      source="jsonl",  # split files in `dir` (experiments/gpt2_hh_rlhf.py, step 0)
      dir="data/hh_rlhf",  # {sft, rm_train, rm_eval, ppo_prompts, eval_prompts, pretrain,
                           # pretrain_heldout}.jsonl
      tokenizer=config.hf_name.model,  # HF tokenizer (hub id or directory)
      tokenizer_vocab_size=32000,  # (testbed only) the tokenizer's size
      max_responses=2,  # K responses per ranked prompt: HH-RLHF pairs
      max_prompt_len=384,  # tokens; longer conversations are cut from the left
      max_len=512,  # prompt + response; responses are cut from the right
      buckets=(128, 256, 384, 512),  # padded lengths: a bounded number of compilations
      skip_bad_rows=True,  # some HH pairs diverge before the last turn: skip and count
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

  if variant == "gpu":  # one 80 GB GPU
    config.mesh.update(data=1, fsdp=1, tensor=1)
    config.sft.accum_steps = 4
    config.rm.accum_steps = 8
    # Policy + value (trained, with Adam and the EMA) and reference + reward (frozen)
    # leave room for small rollouts only; ptx rows 4x (not 8x) the minibatch.
    config.ppo.update(rollout_batch_size=64, minibatch_size=8, ptx_batch_size=32,
                      iterations=4000)
  elif variant == "tpu":  # 16 chips: every batch divides data x fsdp = 8
    config.mesh.update(data=2, fsdp=4, tensor=2)
  return config
