"""Pretraining throughput: one document per padded row vs documents packed into full rows.

The testbed's pretraining documents (about 25 tokens each) and its BPE, the default
config's vanilla LMs (2 x 64 and 4 x 128), side by side in one process:
  python experiments/benchmarks/pretrain_packing.py
  python experiments/benchmarks/pretrain_packing.py --quick   # checks the script

"padded": the default config's old rows, 32 documents a step, each padded to its
bucket (32 / 64 / 96; in practice 64, since the longest of 32 documents is over 32
tokens). "packed": `data.packing`, 16 rows of 64 tokens, every one real. Each setting
prints ms per step and real (non-padding) tokens per second, then the packed / padded
ratio of real tokens per second. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import transformers

from instructjax import sharding
from instructjax.data import testbed
from instructjax.data.batches import TokenBatch
from instructjax.data.batching import BatchIterator, PackedBatcher, PretrainBatcher
from instructjax.data.packing import pack_documents
from instructjax.data.records import TextRecord
from instructjax.models import CausalLM, ModelConfig
from instructjax.optimizers import make_optimizer
from instructjax.steps.sft_step import sft_step
from instructjax.train_state import create_train_state


def _documents(n: int):
  """-> (the testbed's first n pretraining documents, its tokenizer)."""
  bed = testbed.build_testbed(seed=0, sizes=testbed.TestbedSizes(pretrain=n))
  directory = tempfile.mkdtemp()
  testbed.train_tokenizer(bed, directory, vocab_size=1024)
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  return [TextRecord(text) for text in bed.pretrain], tokenizer


def _rate(step, state, batches, mesh, steps: int, *, lengths) -> tuple[float, float]:
  """-> (seconds per step, real tokens per second) over `steps` steps, after a step at
  each padded length in `lengths`, so that nothing compiles while timed."""
  rows = batches.batch_size
  # Twice: the first step's output state is committed to the mesh and its step counter
  # no longer weakly typed, so the second compiles anew.
  for length in (*lengths, *lengths):
    blank = np.zeros((rows, length), np.int32)  # [B, T]
    state, metrics = step(state, sharding.shard_batch(
        TokenBatch(tokens=blank, token_mask=blank + 1, loss_mask=blank + 1), mesh))
  jax.block_until_ready(metrics)
  real = 0
  start = time.perf_counter()
  for _ in range(steps):
    batch = next(batches)
    real += int(batch.token_mask.sum())
    state, metrics = step(state, sharding.shard_batch(batch, mesh))
  jax.block_until_ready(metrics)
  seconds = time.perf_counter() - start
  return seconds / steps, real / seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  docs, tokenizer = _documents(300 if args.quick else 5000)
  steps = 3 if args.quick else args.steps
  mesh = sharding.make_mesh(data=-1, fsdp=1, tensor=1)
  settings = {
      "padded": (docs, PretrainBatcher(tokenizer, buckets=(32, 64, 96)), 32, (32, 64, 96)),
      "packed": (pack_documents(tokenizer, docs, length=64),
                 PackedBatcher(tokenizer, length=64), 16, (64,)),
  }
  for d_model, layers in ((64, 2), (128, 4)):
    config = ModelConfig(arch="gpt2", vocab_size=1024, d_model=d_model, n_layers=layers,
                         n_heads=4, max_len=96)
    model = CausalLM(config)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    step = jax.jit(functools.partial(sft_step, accum_steps=1), donate_argnums=0)
    rates = {}
    for name, (rows, batcher, batch_size, lengths) in settings.items():
      state = create_train_state(  # a copy of the params: the step donates its state
          apply_fn=model.apply, params=jax.tree.map(jnp.copy, params), rng=jax.random.key(1),
          tx=make_optimizer(peak_lr=1e-3, warmup_steps=10, total_steps=1000))
      batches = BatchIterator(rows, batcher, batch_size=batch_size, seed=0)
      per_step, rates[name] = _rate(step, state, batches, mesh, steps, lengths=lengths)
      batches.close()
      print(f"{layers} x {d_model}, {name:6s} ({batch_size} rows): {per_step * 1e3:6.1f} "
            f"ms/step, {rates[name]:8.0f} real tokens/s")
    print(f"{layers} x {d_model}: packed / padded real tokens/s = "
          f"{rates['packed'] / rates['padded']:.2f}x")


if __name__ == "__main__":
  main()
