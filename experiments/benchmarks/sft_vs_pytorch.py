"""Tokens per second of the jitted SFT step against a plain PyTorch training step, on the
same weights and the same batch.

  pip install torch==2.13.0   # the peer (without it the script says so and exits)
  python experiments/benchmarks/sft_vs_pytorch.py            # GPT-2 small (124M), 4 x 128
  python experiments/benchmarks/sft_vs_pytorch.py --batch 8 --length 256 --steps 5
  python experiments/benchmarks/sft_vs_pytorch.py --quick    # 2 layers: checks the script

Random init, float32, GPT-2 small's shape (vocab 50257, d_model 768, 12 heads, 12
layers); random tokens, the loss on all but each sequence's first quarter (its prompt).
  instructjax: instructjax.steps.sft_step, jitted with the state donated, as
    sft_step_throughput.py builds it: forward, masked next-token loss, backward,
    clipping to global norm 1, AdamW (b2 0.95, no decay).
  PyTorch: transformers' GPT2LMHeadModel loaded from instructjax.models.to_hf's export
    of the same params (the attention implementation transformers picks), in train
    mode: forward, masked next-token cross-entropy, backward, clip_grad_norm_(1.0),
    torch.optim.AdamW (b2 0.95, no decay); torch.set_num_threads(CPU count).
Each side runs one untimed first step (compile, warm-up), then --steps timed steps. Prints
tokens/s, the step-time ratio and model GFLOP/s (matmul_peak.py's PaLM-style count)
as a fraction of the measured matmul peak; nothing is asserted.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from instructjax.data.batches import TokenBatch
from instructjax.models import CausalLM, ModelConfig, to_hf
from instructjax.optimizers import make_optimizer
from instructjax.steps.sft_step import sft_step
from instructjax.train_state import create_train_state
from matmul_peak import matmul_params, measure_matmul_peak_gflops, transformer_flops

LR = 1e-4


def time_instructjax(model: CausalLM, params, batch: TokenBatch, *, steps: int):
  """-> (first step seconds, seconds per step after it, the first step's loss)."""
  state = create_train_state(
      apply_fn=model.apply, params=params, rng=jax.random.key(1),
      tx=make_optimizer(peak_lr=LR, warmup_steps=10, total_steps=1000))
  step = jax.jit(functools.partial(sft_step, accum_steps=1), donate_argnums=0)
  start = time.perf_counter()
  state, metrics = jax.block_until_ready(step(state, batch))
  first = time.perf_counter() - start
  first_loss = float(metrics["loss"])
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  return first, (time.perf_counter() - start) / steps, first_loss


def time_pytorch(checkpoint: str, batch: TokenBatch, *, steps: int):
  """-> (first step seconds, seconds per step after it, the first step's loss, the
  attention implementation)."""
  # pylint: disable=import-outside-toplevel
  import torch
  import transformers

  torch.set_num_threads(os.cpu_count())
  transformers.logging.disable_progress_bar()
  model = transformers.GPT2LMHeadModel.from_pretrained(checkpoint, dtype=torch.float32)
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95),
                                weight_decay=0.0)
  tokens = torch.from_numpy(np.asarray(batch.tokens, np.int64))  # [B, T]
  attention_mask = torch.from_numpy(np.asarray(batch.token_mask, np.int64))  # [B, T]
  loss_mask = torch.from_numpy(np.asarray(batch.loss_mask[:, 1:], np.float32))  # [B, T-1]

  def step():
    logits = model(input_ids=tokens, attention_mask=attention_mask).logits  # [B, T, V]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")  # [B(T-1)]
    loss = (nll * loss_mask.flatten()).sum() / loss_mask.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()

  start = time.perf_counter()
  first_loss = float(step())
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    step()
  return (first, (time.perf_counter() - start) / steps, first_loss,
          model.config._attn_implementation)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--steps", type=int, default=3, help="timed steps after the first")
  parser.add_argument("--quick", action="store_true", help="2 layers")
  args = parser.parse_args()
  if importlib.util.find_spec("torch") is None:
    print("sft_vs_pytorch: skipped, torch not installed (pip install torch==2.13.0)")
    return

  config = ModelConfig(arch="gpt2", vocab_size=50257, d_model=768,
                       n_layers=2 if args.quick else 12, n_heads=12, max_len=1024)
  model = CausalLM(config)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  shape = (args.batch, args.length)
  loss_mask = np.broadcast_to(np.arange(args.length) >= args.length // 4, shape)
  batch = TokenBatch(
      tokens=jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, shape),
                         jnp.int32),
      token_mask=jnp.ones(shape, jnp.int32), loss_mask=jnp.asarray(loss_mask, jnp.int32))
  peak = measure_matmul_peak_gflops()
  print(f"GPT-2 shape: {config.n_layers} layers, {config.num_params() / 1e6:.1f}M params, "
        f"float32, {args.batch} x {args.length} tokens per step; {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPU cores, float32 matmul peak {peak:.1f} GFLOP/s")

  with tempfile.TemporaryDirectory() as checkpoint:
    to_hf(model, params, checkpoint)  # before the jitted step donates params
    ours_first, ours, ours_loss = time_instructjax(model, params, batch, steps=args.steps)
    theirs_first, theirs, theirs_loss, attention = time_pytorch(checkpoint, batch,
                                                                steps=args.steps)

  tokens = args.batch * args.length
  flops = transformer_flops(params=matmul_params(config, lm_head=True), tokens=tokens,
                            n_layers=config.n_layers, d_model=config.d_model,
                            seq_len=args.length, backward=True)
  for name, first, seconds in (("instructjax (jit)", ours_first, ours),
                               (f"PyTorch (GPT2LMHeadModel, {attention})", theirs_first,
                                theirs)):
    gflops = flops / seconds / 1e9
    print(f"{name}: first step {first:.2f} s; step {seconds:.3f} s (mean of {args.steps}) "
          f"-> {tokens / seconds:,.0f} tokens/s, {gflops:.1f} GFLOP/s = "
          f"{100 * gflops / peak:.1f}% of the matmul peak")
  print(f"PyTorch / instructjax step time: {theirs / ours:.2f}x; first-step loss "
        f"{ours_loss:.4f} (instructjax), {theirs_loss:.4f} (PyTorch)")


if __name__ == "__main__":
  main()
