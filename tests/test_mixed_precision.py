"""bf16 compute with float32 master weights, the real-model configs' default: on a CPU its
SFT loss curve tracks float32's, and the weights and Adam's moments stay float32."""

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np

from instructjax.config import load_config
from instructjax.data.batches import TokenBatch
from instructjax.models import CausalLM, ModelConfig
from instructjax.optimizers import make_optimizer
from instructjax.steps.sft_step import sft_step
from instructjax.train_state import create_train_state

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "experiments")
CFG = ModelConfig(arch="llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4,
                  max_len=16)
STEPS = 30
# bf16 keeps 8 significant bits, so each rounding is off by at most 2^-8 ~ 0.4%. The
# loss is taken in float32 from logits a few roundings deep, and 30 Adam steps let the
# two runs drift apart a little: 2% per step leaves room for that (measured: 0.4% at
# most) but not for weights stored in bf16 too, whose small updates round away (14%).
RTOL = 0.02


def _batch() -> TokenBatch:
  tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, (8, 16), dtype=np.int32)
  ones = np.ones_like(tokens)  # [B, T]
  return TokenBatch(tokens=tokens, token_mask=ones, loss_mask=ones)


def _train(batch: TokenBatch, *, dtype: str):
  """-> ([STEPS] losses, final state): AdamW on one fixed batch from the same init."""
  model = CausalLM(CFG.replace(dtype=dtype, param_dtype="float32"))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch.tokens[:1])["params"]
  tx = make_optimizer(peak_lr=1e-2, warmup_steps=0, total_steps=STEPS)
  state = create_train_state(apply_fn=model.apply, params=params, tx=tx,
                             rng=jax.random.PRNGKey(1))
  step = jax.jit(sft_step)
  losses = []
  for _ in range(STEPS):
    state, metrics = step(state, batch)
    losses.append(metrics["loss"])
  return np.asarray(losses), state


def test_bf16_compute_tracks_float32_and_keeps_float32_weights():
  batch = _batch()
  fp32, _ = _train(batch, dtype="float32")
  bf16, state = _train(batch, dtype="bfloat16")
  assert fp32[-1] < fp32[0] / 2 and bf16[-1] < bf16[0] / 2  # both learn the batch
  np.testing.assert_allclose(bf16, fp32, rtol=RTOL)
  assert not np.array_equal(bf16, fp32)  # the compute really was bf16
  float_leaves = [x for x in jax.tree.leaves((state.params, state.opt_state))
                  if jnp.issubdtype(x.dtype, jnp.floating)]
  assert {x.dtype for x in float_leaves} == {jnp.dtype(jnp.float32)}


def _variants(path: str) -> tuple[str, ...]:
  spec = importlib.util.spec_from_file_location("experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.VARIANTS


def test_real_models_compute_in_bf16_and_cpu_configs_in_float32():
  for path in sorted(glob.glob(os.path.join(EXPERIMENTS, "*.py"))):
    on_cpu = os.path.basename(path) == "instructgpt_tiny.py"
    for variant in _variants(path):
      config = load_config(f"{path}:{variant}" if variant else path)
      expected = "float32" if on_cpu or "smoke" in variant else "bfloat16"
      for section in ("model", "big_model"):
        where = f"{os.path.basename(path)}:{variant} {section}"
        assert config[section].dtype == expected, where
        assert config[section].param_dtype == "float32", where
