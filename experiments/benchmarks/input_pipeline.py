"""SFT steps per second with batches made inline vs prefetched by grain, side by side.

HH-RLHF-shaped rows (a multi-turn conversation of ~300 tokens and a ~100-token reply,
random words), a byte-level BPE trained on them, a GPT-2-shaped model (default 4 x 256)
and one padded length, so nothing recompiles between the timed steps:
  python experiments/benchmarks/input_pipeline.py
  python experiments/benchmarks/input_pipeline.py --quick   # checks the script

For each `prefetch` it prints the steps per second, then how long making one batch takes
alone, and the speed-up of prefetching over making batches inline. (Time spent inside
`next()` says little here: with JAX's asynchronous dispatch the loop runs ahead of the
device.) Nothing is asserted.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
import transformers

from instructjax import sharding
from instructjax.data.batching import BatchIterator, SftBatcher
from instructjax.data.records import SftRecord
from instructjax.models import CausalLM, ModelConfig
from instructjax.optimizers import make_optimizer
from instructjax.steps.sft_step import sft_step
from instructjax.train_state import create_train_state

_WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "po", "ri", "su", "te")
          for b in ("bar", "den", "fix", "gol", "hum", "jat", "kor", "lem", "mop", "nix")]


def _rows(n: int, rng: np.random.Generator) -> list[SftRecord]:
  def words(k):
    return " ".join(rng.choice(_WORDS, k))
  rows = []
  for _ in range(n):
    turns = "".join(f"\n\nHuman: {words(40)}\n\nAssistant: {words(40)}" for _ in range(3))
    rows.append(SftRecord(prompt=f"{turns}\n\nHuman: {words(30)}\n\nAssistant:",
                          response=" " + words(int(rng.integers(40, 90)))))
  return rows


def _tokenizer(rows: list[SftRecord]) -> transformers.PreTrainedTokenizerFast:
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=2048, special_tokens=["<eos>"])
  bpe.train_from_iterator((r.prompt + r.response for r in rows), trainer)
  return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>",
                                              pad_token="<eos>")


def _timed(step, state, batches, mesh, steps: int):
  """-> (state, seconds) of `steps` steps."""
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, sharding.shard_batch(next(batches), mesh))
  jax.block_until_ready(metrics)
  return state, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  if args.quick:
    args.d_model, args.layers, args.steps = 64, 1, 3
  rows = _rows(400, np.random.default_rng(0))
  tokenizer = _tokenizer(rows)
  length = 512
  config = ModelConfig(arch="gpt2", vocab_size=len(tokenizer), d_model=args.d_model,
                       n_layers=args.layers, n_heads=max(args.d_model // 64, 1),
                       max_len=length)
  model = CausalLM(config)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  state = create_train_state(
      apply_fn=model.apply, params=params, rng=jax.random.key(1),
      tx=make_optimizer(peak_lr=1e-4, warmup_steps=10, total_steps=1000))
  mesh = sharding.make_mesh(data=-1, fsdp=1, tensor=1)
  step = jax.jit(functools.partial(sft_step, accum_steps=1), donate_argnums=0)

  def batches(prefetch):
    batcher = SftBatcher(tokenizer, buckets=(length,), max_prompt_len=384)
    return BatchIterator(rows, batcher, batch_size=args.batch, seed=0, prefetch=prefetch)

  state, *_ = _timed(step, state, batches(0), mesh, 1)  # compile
  print(f"model: {config.n_layers} x {config.d_model}, {args.batch} x {length} tokens per "
        f"step, {jax.devices()[0].platform}; {args.steps} timed steps per setting")
  rates = {}
  for prefetch in (0, 2):
    iterator = batches(prefetch)
    state, *_ = _timed(step, state, iterator, mesh, 2)  # the worker starts and fills up
    state, total = _timed(step, state, iterator, mesh, args.steps)
    rates[prefetch] = args.steps / total
    print(f"prefetch={prefetch}: {total / args.steps * 1e3:7.1f} ms/step, "
          f"{rates[prefetch]:.2f} steps/s")
  start = time.perf_counter()
  iterator = batches(0)
  for _ in range(args.steps):
    next(iterator)
  making = (time.perf_counter() - start) / args.steps
  print(f"making one batch alone: {making * 1e3:.1f} ms")
  print(f"grain prefetch / inline: {rates[2] / rates[0]:.2f}x steps/s")


if __name__ == "__main__":
  main()
