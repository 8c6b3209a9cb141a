"""Attention through jax.nn.dot_product_attention (`ModelConfig.attention="xla"`) equals
the einsum reference path: full forwards over left-padded batches, and the KV-cache
sampler, for multi-head, grouped-query, sliding-window and q/k-normed attention."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax import sampling
from instructjax.models import CausalLM, ModelConfig

_BASE = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_len=48)
CONFIGS = {
    "gpt2": ModelConfig(arch="gpt2", **_BASE),
    "llama_gqa": ModelConfig(arch="llama", n_kv_heads=2, **_BASE),
    "mistral_window": ModelConfig(arch="llama", family="mistral", n_kv_heads=2,
                                  sliding_window=5, **_BASE),
    "qwen3_qk_norm": ModelConfig(arch="llama", family="qwen3", n_kv_heads=1, qk_norm=True,
                                 **_BASE),
}
B, P = 4, 12


def _left_padded(rng):
  lengths = np.array([P, 7, 3, 1])  # [B]
  mask = (np.arange(P)[None] >= P - lengths[:, None]).astype(np.int32)  # [B, P]
  tokens = rng.integers(1, _BASE["vocab_size"], (B, P)).astype(np.int32) * mask  # [B, P]
  return jnp.asarray(tokens), jnp.asarray(mask)


def _pair(name, **changes):
  """(einsum model, xla model, shared params) for CONFIGS[name]."""
  cfg = dataclasses.replace(CONFIGS[name], **changes)
  reference = CausalLM(cfg)
  fused = CausalLM(dataclasses.replace(cfg, attention="xla"))
  params = reference.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  return reference, fused, params


@pytest.mark.parametrize("name", CONFIGS)
def test_forward_equals_the_einsum_path(name):
  reference, fused, params = _pair(name)
  tokens, mask = _left_padded(np.random.default_rng(0))
  want = reference.apply({"params": params}, tokens, token_mask=mask)  # [B, P, V]
  got = fused.apply({"params": params}, tokens, token_mask=mask)
  real = np.asarray(mask, bool)  # padded positions' outputs are never read
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=2e-5,
                             rtol=1e-5)


@pytest.mark.parametrize("name", CONFIGS)
def test_kv_cache_sampler_equals_the_einsum_path(name):
  reference, fused, params = _pair(name)
  tokens, mask = _left_padded(np.random.default_rng(1))
  config = sampling.SamplingConfig(max_new_tokens=10, temperature=0.8)
  want = sampling.generate(reference, params, tokens, mask, jax.random.key(2), config=config)
  got = sampling.generate(fused, params, tokens, mask, jax.random.key(2), config=config)
  np.testing.assert_array_equal(got.tokens, want.tokens)  # same rng: the same draws
  np.testing.assert_allclose(got.logprobs, want.logprobs, atol=2e-5)


def test_bfloat16_stays_close_to_the_einsum_path():
  reference, fused, params = _pair("llama_gqa", dtype="bfloat16")
  tokens, mask = _left_padded(np.random.default_rng(3))
  want = reference.apply({"params": params}, tokens, token_mask=mask).astype(jnp.float32)
  got = fused.apply({"params": params}, tokens, token_mask=mask).astype(jnp.float32)
  real = np.asarray(mask, bool)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=0.1)


def test_an_unknown_implementation_is_refused_by_name():
  with pytest.raises(ValueError, match=r"attention='flash' is not one of \('einsum'"):
    ModelConfig(attention="flash")
