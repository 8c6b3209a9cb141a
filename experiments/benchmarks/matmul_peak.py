"""This machine's measured float32 matmul peak and memory read rate, and the model-FLOP
counts the benchmarks divide by them.

  python experiments/benchmarks/matmul_peak.py              # 2048 x 2048, best of 5
  python experiments/benchmarks/matmul_peak.py --size 4096

FLOP convention (PaLM, Chowdhery et al. 2022, appendix B): a forward pass costs
2 x N x tokens + 4 x L x d_model x S x tokens, where N counts the parameters that
multiply every token (the blocks' matrices, plus the unembedding when there is an LM
head; not the embedding and position lookups, not biases or norms) and the second
term is attention's QK^T and AV over the full sequence length S (not halved for the
causal mask). Forward + backward is 3x the forward: 6N + 12LdS per token. These are
model FLOPs: what the model needs, not what an implementation runs (no recompute).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from instructjax.models import ModelConfig


def measure_matmul_peak_gflops(*, size: int = 2048, repeats: int = 5) -> float:
  """GFLOP/s of a jitted float32 [size, size] x [size, size] jnp.dot, best of repeats."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  return 2 * size**3 / _best_seconds(jax.jit(jnp.dot), a, b, repeats=repeats) / 1e9


def _best_seconds(fn, *args, repeats: int) -> float:
  """Best of `repeats` timed calls of fn(*args), after one that compiles it."""
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def measure_read_bandwidth_gbs(*, megabytes: int = 512, repeats: int = 5) -> float:
  """GB/s of a jitted sum over a float32 array of `megabytes`, best of repeats: the rate
  at which a step can stream weights that do not fit in cache."""
  x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
  return x.nbytes / _best_seconds(jax.jit(jnp.sum), x, repeats=repeats) / 1e9


def matmul_params(config: ModelConfig, *, lm_head: bool) -> int:
  """N of the convention: the blocks' matrices, plus V x d_model for an LM head (tied
  or not); a scalar head's d_model is left out."""
  embeddings = config.vocab_size * config.d_model * (1 if config.tie_embeddings else 2)
  positions = config.max_len * config.d_model if config.arch == "gpt2" else 0
  blocks = config.num_params() - embeddings - positions
  return blocks + (config.vocab_size * config.d_model if lm_head else 0)


def transformer_flops(*, params: int, tokens: int, n_layers: int, d_model: int,
                      seq_len: int, backward: bool) -> float:
  """Model FLOPs of a forward (backward=False) or forward + backward over `tokens`
  tokens in sequences of seq_len; params is `matmul_params`'s N."""
  per_param, per_attention = (6, 12) if backward else (2, 4)
  return (per_param * params + per_attention * n_layers * d_model * seq_len) * tokens


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=2048)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  peak = measure_matmul_peak_gflops(size=args.size, repeats=args.repeats)
  print(f"{jax.devices()[0].platform}: float32 matmul {args.size} x {args.size}, best of "
        f"{args.repeats}: {peak:.1f} GFLOP/s; memory read "
        f"{measure_read_bandwidth_gbs(repeats=args.repeats):.1f} GB/s")


if __name__ == "__main__":
  main()
