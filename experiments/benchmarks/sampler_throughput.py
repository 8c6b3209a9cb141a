"""The KV-cached sampler against transformers' PyTorch `generate`, side by side in one run.

Same random weights on both sides (written by `hf_interop.to_hf`, read by
`GPT2LMHeadModel.from_pretrained`), float32, batch 16 x 64 new tokens from 32-token
prompts, temperature 0.7, no top-k/top-p, no EOS (every row generates all 64):
  pip install torch==2.13.0   # the peer; without it only our side runs
  python experiments/benchmarks/sampler_throughput.py              # 3.9M and 124M
  python experiments/benchmarks/sampler_throughput.py --quick      # checks the script

Sizes: "3.9M" is GPT-2's shape shrunk in width (12 layers, d_model 64, 4 heads, vocab
50257), "124M" is GPT-2 small. Each side is timed from prompts on the device to tokens
back (best of --repeats calls after one warm-up call, whose extra time is mostly our
compile). Also printed:
  - the step-time limit: a decode step must at least run 2 x N x B FLOPs at the
    measured matmul peak and read its N matrix weights once at the measured memory read
    rate (N: matmul_peak.matmul_params, the unembedding included);
    the larger of the two, over the measured time per new token, is the fraction of the
    limit reached;
  - greedy parity: both sides' greedy tokens on the same prompts, which must be equal.
Prints figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import matmul_peak  # noqa: E402  (a sibling script, not a package)

from instructjax import sampling  # noqa: E402
from instructjax.models import CausalLM, ModelConfig  # noqa: E402
from instructjax.models.hf_interop import to_hf  # noqa: E402

SIZES = {
    "3.9M": dict(d_model=64, n_layers=12, n_heads=4),
    "124M": dict(d_model=768, n_layers=12, n_heads=12),
    "quick": dict(d_model=64, n_layers=2, n_heads=4),
}


def best_seconds(fn, repeats):
  """(first call's seconds, best of `repeats` later calls, the last result)."""
  start = time.perf_counter()
  fn(0)
  first = time.perf_counter() - start
  times, result = [], None
  for seed in range(1, repeats + 1):
    start = time.perf_counter()
    result = fn(seed)
    times.append(time.perf_counter() - start)
  return first, min(times), result


def ours(model, params, prompts, *, new_tokens, repeats, greedy=False):
  config = sampling.SamplingConfig(max_new_tokens=new_tokens, temperature=0.7, greedy=greedy)
  mask = jnp.ones_like(prompts)

  def call(seed):
    out = sampling.generate(model, params, prompts, mask, jax.random.key(seed), config=config)
    return np.asarray(out.tokens)  # on the host, as the peer's tokens are

  return best_seconds(call, repeats)


def peer(hf_dir, prompts, *, new_tokens, repeats, greedy=False):
  import torch
  import transformers
  torch.set_num_threads(os.cpu_count())
  transformers.utils.logging.disable_progress_bar()
  model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
  input_ids = torch.from_numpy(np.asarray(prompts, np.int64))
  sampling_args = (dict(do_sample=False) if greedy else
                   dict(do_sample=True, temperature=0.7, top_k=0, top_p=1.0))

  def call(seed):
    torch.manual_seed(seed)
    with torch.inference_mode():
      out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           pad_token_id=0, use_cache=True, **sampling_args)
    return out.numpy()

  return best_seconds(call, repeats)


def step_limit_seconds(model_config, batch, *, peak_flops, bandwidth):
  """Lower bound on one decode step: its matmul FLOPs at the peak, or reading the
  matrices it multiplies by (float32) at the measured rate."""
  params = matmul_peak.matmul_params(model_config, lm_head=True)
  return max(2 * params * batch / peak_flops, 4 * params / bandwidth)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--prompt_len", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3, help="timed calls after warm-up")
  parser.add_argument("--sizes", default="3.9M,124M")
  parser.add_argument("--quick", action="store_true", help="one 2-layer model, 8 tokens")
  args = parser.parse_args()
  sizes = ["quick"] if args.quick else args.sizes.split(",")
  new_tokens = 8 if args.quick else args.new_tokens
  try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
    have_peer = True
  except ImportError:
    have_peer = False
    print("torch is not installed (pip install torch==2.13.0): timing our side only")

  peak = matmul_peak.measure_matmul_peak_gflops() * 1e9
  bandwidth = matmul_peak.measure_read_bandwidth_gbs() * 1e9
  print(f"{jax.devices()[0].platform}, {os.cpu_count()} CPU cores: matmul peak "
        f"{peak / 1e9:.0f} GFLOP/s, memory read {bandwidth / 1e9:.1f} GB/s; batch "
        f"{args.batch}, prompt {args.prompt_len}, {new_tokens} new tokens, temperature 0.7")
  for size in sizes:
    model_config = ModelConfig(arch="gpt2", vocab_size=50257, max_len=1024, **SIZES[size])
    model = CausalLM(model_config)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    num_params = model_config.num_params()
    prompts = jax.random.randint(jax.random.key(1), (args.batch, args.prompt_len), 0,
                                 model_config.vocab_size)
    generated = args.batch * new_tokens
    limit = step_limit_seconds(model_config, args.batch, peak_flops=peak, bandwidth=bandwidth)
    first, best, _ = ours(model, params, prompts, new_tokens=new_tokens, repeats=args.repeats)
    ours_rate = generated / best
    print(f"\n{size} ({num_params / 1e6:.1f}M params): step-time limit {1e3 * limit:.2f} ms")
    print(f"  instructjax:  {ours_rate:8.0f} new tokens/s, {1e3 * best / new_tokens:6.2f} ms per "
          f"new token ({limit * new_tokens / best:.0%} of the limit); first call {first:.1f} s")
    if not have_peer:
      continue
    with tempfile.TemporaryDirectory() as hf_dir:
      to_hf(model, params, hf_dir)
      first, peer_best, _ = peer(hf_dir, prompts, new_tokens=new_tokens, repeats=args.repeats)
      _, _, peer_greedy = peer(hf_dir, prompts, new_tokens=new_tokens, repeats=1, greedy=True)
    peer_rate = generated / peer_best
    print(f"  transformers: {peer_rate:8.0f} new tokens/s, {1e3 * peer_best / new_tokens:6.2f} ms "
          f"per new token ({limit * new_tokens / peer_best:.0%} of the limit); first call "
          f"{first:.1f} s")
    print(f"  ratio: {ours_rate / peer_rate:.2f}x")
    _, _, our_greedy = ours(model, params, prompts, new_tokens=new_tokens, repeats=1,
                            greedy=True)
    same = int(np.sum(np.all(our_greedy == peer_greedy, axis=1)))
    print(f"  greedy parity: {same} of {args.batch} rows identical")


if __name__ == "__main__":
  main()
