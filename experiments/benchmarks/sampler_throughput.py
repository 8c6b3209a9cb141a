"""Throughput of the KV-cached sampler against a naive loop that re-runs the whole sequence.

A GPT-2-small-shaped model (12 layers, d_model 768, 12 heads, vocab 50257), random
init, float32, batch 16 x 64 new tokens from 32-token prompts:
  python experiments/benchmarks/sampler_throughput.py
A 2-layer version that runs in seconds (to check the script itself):
  python experiments/benchmarks/sampler_throughput.py --quick

The naive loop keeps a fixed [B, P + N] buffer and runs a full forward over all of it
for every new token (no cache), so each of its steps costs the same: it runs only
--naive_steps of the N steps and its tokens/s stands for the whole run. Prints figures;
nothing is asserted.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp

from instructjax import sampling
from instructjax.models import CausalLM, ModelConfig


@functools.partial(jax.jit, static_argnames=("model", "config", "steps"))
def naive_generate(model, params, prompt_tokens, rng, *, config, steps):
  """Samples `steps` tokens, each from a full forward pass over the whole buffer."""
  batch, prompt_len = prompt_tokens.shape
  buffer = jnp.concatenate(
      [prompt_tokens, jnp.full((batch, config.max_new_tokens), config.pad_id, jnp.int32)],
      axis=1)  # [B, P + N]

  def step(i, buffer):
    # Causal attention: the unfilled slots to the right cannot change these logits.
    logits = model.apply({"params": params}, buffer)  # [B, P + N, V]
    next_logits = jax.lax.dynamic_index_in_dim(logits, prompt_len - 1 + i, axis=1,
                                               keepdims=False)  # [B, V]
    token, _ = sampling.sample_token(next_logits, jax.random.fold_in(rng, i), config=config)
    return jax.lax.dynamic_update_index_in_dim(buffer, token, prompt_len + i, axis=1)

  return jax.lax.fori_loop(0, steps, step, buffer)


def timed(fn):
  """Runs fn() to completion: -> (seconds, result)."""
  start = time.perf_counter()
  result = jax.block_until_ready(fn())
  return time.perf_counter() - start, result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--prompt_len", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--naive_steps", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3, help="timed calls after warm-up")
  parser.add_argument("--quick", action="store_true", help="2 layers, d_model 128")
  args = parser.parse_args()

  model_config = ModelConfig(
      arch="gpt2", vocab_size=50257, d_model=128 if args.quick else 768,
      n_layers=2 if args.quick else 12, n_heads=4 if args.quick else 12, max_len=1024)
  model = CausalLM(model_config)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  prompts = jax.random.randint(jax.random.key(1), (args.batch, args.prompt_len), 0,
                               model_config.vocab_size)
  prompt_mask = jnp.ones_like(prompts)
  config = sampling.SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0)
  print(f"{jax.devices()[0].platform} ({os.cpu_count()} CPU cores), "
        f"{model_config.num_params() / 1e6:.1f}M params float32, batch {args.batch}, "
        f"prompt {args.prompt_len}, {args.new_tokens} new tokens, temperature 1.0, no EOS")

  def cached(seed):
    return sampling.generate(model, params, prompts, prompt_mask, jax.random.key(seed),
                             config=config)

  first, _ = timed(lambda: cached(0))
  runs = [timed(lambda seed=seed: cached(seed)) for seed in range(1, args.repeats + 1)]
  cached_s = min(seconds for seconds, _ in runs)
  generated = args.batch * int(runs[-1][1].num_steps)
  cached_rate = generated / cached_s
  print(f"KV cache: first call {first:.2f} s (compile ~{first - cached_s:.2f} s); "
        f"after warm-up {cached_s:.2f} s per call (best of {args.repeats}) "
        f"= {cached_rate:.1f} tokens/s, {1e3 * cached_s / args.new_tokens:.1f} ms per step "
        "incl. prefill")

  def naive(seed):
    return naive_generate(model, params, prompts, jax.random.key(seed), config=config,
                          steps=args.naive_steps)

  first, _ = timed(lambda: naive(0))
  naive_s = min(timed(lambda seed=seed: naive(seed))[0] for seed in range(1, args.repeats + 1))
  naive_rate = args.batch * args.naive_steps / naive_s
  print(f"naive, no cache ([{args.batch}, {args.prompt_len + args.new_tokens}] buffer, "
        f"{args.naive_steps} of {args.new_tokens} steps): first call {first:.2f} s "
        f"(compile ~{first - naive_s:.2f} s); after warm-up {naive_s:.2f} s per call "
        f"= {naive_rate:.1f} tokens/s, {1e3 * naive_s / args.naive_steps:.1f} ms per step")
  print(f"speed-up of the KV cache: {cached_rate / naive_rate:.1f}x")


if __name__ == "__main__":
  main()
