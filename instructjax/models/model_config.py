"""The one config type for every model instructjax builds (GPT-2 and Llama families)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

ARCHITECTURES = ("gpt2", "llama")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """Hyperparameters of a decoder-only transformer.

  `arch="gpt2"`: learned positions, LayerNorm, GELU MLP, tied embeddings, biases.
  `arch="llama"`: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, no biases.
  """

  arch: Literal["gpt2", "llama"] = "gpt2"
  vocab_size: int = 512
  d_model: int = 64  # width of the residual stream
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int = 0  # 0 means n_heads (multi-head attention); fewer is GQA
  head_dim: int = 0  # 0 means d_model // n_heads
  d_ff: int = 0  # 0 means 4 * d_model
  max_len: int = 128  # longest sequence (learned positions, KV cache size)
  norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  tie_embeddings: bool = True
  dropout_rate: float = 0.0  # residual, attention-output and embedding dropout
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  remat: bool = False  # rematerialise each block in the backward pass

  def __post_init__(self):
    problems = []
    if self.arch not in ARCHITECTURES:
      problems.append(f"arch={self.arch!r} is not one of {ARCHITECTURES}")
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_len"):
      if getattr(self, name) <= 0:
        problems.append(f"{name}={getattr(self, name)} must be positive")
    if self.n_heads > 0 and self.kv_heads > 0 and self.n_heads % self.kv_heads:
      problems.append(
          f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.kv_heads}")
    if self.head_dim == 0 and self.n_heads > 0 and self.d_model % self.n_heads:
      problems.append(
          f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; set head_dim")
    if self.arch == "llama" and self.head_dim_ % 2:
      problems.append(f"head_dim={self.head_dim_} must be even for RoPE")
    if not 0.0 <= self.dropout_rate < 1.0:
      problems.append(f"dropout_rate={self.dropout_rate} must be in [0, 1)")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        problems.append(f"{name}={getattr(self, name)!r} is not one of {tuple(_DTYPES)}")
    if problems:
      raise ValueError("invalid model config: " + "; ".join(problems))

  @property
  def kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def head_dim_(self) -> int:
    return self.head_dim or self.d_model // self.n_heads

  @property
  def ff_dim(self) -> int:
    return self.d_ff or 4 * self.d_model

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def weight_dtype(self):
    return _DTYPES[self.param_dtype]

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    """Parameter count, for FLOP estimates (6 * params * tokens)."""
    d, f, v = self.d_model, self.ff_dim, self.vocab_size
    q = self.n_heads * self.head_dim_
    kv = self.kv_heads * self.head_dim_
    attn = d * (q + 2 * kv) + q * d
    mlp = (3 if self.arch == "llama" else 2) * d * f
    embed = v * d * (1 if self.tie_embeddings else 2)
    pos = self.max_len * d if self.arch == "gpt2" else 0
    return self.n_layers * (attn + mlp) + embed + pos
