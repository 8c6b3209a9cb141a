"""Tokens per second of the jitted SFT step at GPT-2 small's shape (124M parameters).

Random init, float32, one device, batch x length tokens per step (default 8 x 256):
  python experiments/benchmarks/sft_step_throughput.py
  python experiments/benchmarks/sft_step_throughput.py --quick   # 2 layers: checks the script

Prints compile time, seconds per step, tokens/s and model GFLOP/s (6 x parameters x
tokens, plus attention); nothing is asserted.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from instructjax.data.batches import TokenBatch
from instructjax.models import CausalLM, ModelConfig
from instructjax.optimizers import make_optimizer
from instructjax.steps.sft_step import sft_step
from instructjax.train_state import create_train_state


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  config = ModelConfig(arch="gpt2", vocab_size=50257, d_model=768, n_layers=2 if args.quick
                       else 12, n_heads=12, max_len=1024)
  model = CausalLM(config)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  state = create_train_state(
      apply_fn=model.apply, params=params, rng=jax.random.key(1),
      tx=make_optimizer(peak_lr=1e-4, warmup_steps=10, total_steps=1000))
  rng = np.random.default_rng(0)
  shape = (args.batch, args.length)
  batch = TokenBatch(tokens=jnp.asarray(rng.integers(0, config.vocab_size, shape), jnp.int32),
                     token_mask=jnp.ones(shape, jnp.int32), loss_mask=jnp.ones(shape, jnp.int32))
  step = jax.jit(functools.partial(sft_step, accum_steps=1), donate_argnums=0)

  start = time.perf_counter()
  state, metrics = jax.block_until_ready(step(state, batch))
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  per_step = (time.perf_counter() - start) / args.steps

  tokens = args.batch * args.length
  n_params = sum(x.size for x in jax.tree.leaves(params))
  attention = 12 * config.n_layers * config.d_model * args.length * tokens  # fwd + bwd
  flops = 6 * n_params * tokens + attention
  print(f"GPT-2 shape: {config.n_layers} layers, {n_params / 1e6:.1f}M parameters, "
        f"{args.batch} x {args.length} tokens per step, {jax.devices()[0].platform}")
  print(f"first step (compile + run): {compile_s:.1f} s")
  print(f"step: {per_step:.3f} s  ->  {tokens / per_step:,.0f} tokens/s, "
        f"{flops / per_step / 1e9:.1f} GFLOP/s of model FLOPs")


if __name__ == "__main__":
  main()
