"""The one config type for every model instructjax builds (GPT-2 and Llama architectures)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

from instructjax.models.rope import ROPE_TYPES

ARCHITECTURES = ("gpt2", "llama")
ATTENTION_IMPLEMENTATIONS = ("einsum", "xla", "cudnn")
# Hugging Face model families (config.json's model_type) -> the architecture they use.
FAMILIES = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen2": "llama",
            "qwen3": "llama"}
# What each family's HF implementation fixes; the other fields are free.
_FAMILY_FIXES = {
    "mistral": dict(qkv_bias=False, out_bias=False, mlp_bias=False, qk_norm=False),
    "qwen2": dict(qkv_bias=True, out_bias=False, mlp_bias=False, qk_norm=False),
    "qwen3": dict(mlp_bias=False, qk_norm=True),
    "llama": dict(qk_norm=False, sliding_window=0),
}
_LLAMA_ONLY = dict(qkv_bias=False, out_bias=False, mlp_bias=False, qk_norm=False,
                   sliding_window=0, rope_type="default", rope_factor=1.0)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """Hyperparameters of a decoder-only transformer.

  `arch="gpt2"`: learned positions, LayerNorm, GELU MLP, tied embeddings, biases.
  `arch="llama"`: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention; biases, q/k norms,
  a sliding window and RoPE scaling as the family's checkpoints need:
    Llama 1-3    optional biases (attention_bias, mlp_bias); RoPE default/linear/llama3
    Mistral      sliding_window
    Qwen2 / 2.5  biases on q, k and v only
    Qwen3        RMSNorm on each head's queries and keys (qk_norm), before RoPE
  `family` is the HF model_type `to_hf` writes; "" means `arch`.
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
  rope_type: str = "default"  # "default", "linear" or "llama3" (see models/rope.py)
  rope_factor: float = 1.0  # linear, llama3: how much longer the context was made
  rope_low_freq_factor: float = 1.0  # llama3 only
  rope_high_freq_factor: float = 4.0  # llama3 only
  rope_original_max_len: int = 0  # llama3 only: the context length before scaling
  qkv_bias: bool = False  # llama arch: biases on q/k/v projections (GPT-2 always has them)
  out_bias: bool = False  # llama arch: bias on the attention output projection
  mlp_bias: bool = False  # llama arch: biases in the SwiGLU MLP
  qk_norm: bool = False  # llama arch: RMSNorm over head_dim on q and k (Qwen3)
  sliding_window: int = 0  # attend to at most this many latest tokens; 0 = all (Mistral)
  family: str = ""  # HF model_type for export: gpt2, llama, mistral, qwen2, qwen3
  tie_embeddings: bool = True
  dropout_rate: float = 0.0  # residual, attention-output and embedding dropout
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  remat: bool = False  # rematerialise each block in the backward pass
  # How attention is computed: "einsum" (the reference: explicit fp32 scores), or
  # jax.nn.dot_product_attention with implementation "xla" or "cudnn" (flash attention
  # on NVIDIA GPUs, for the dtypes and head sizes cuDNN supports).
  attention: str = "einsum"

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
    problems += self._family_problems()
    if not 0.0 <= self.dropout_rate < 1.0:
      problems.append(f"dropout_rate={self.dropout_rate} must be in [0, 1)")
    if self.attention not in ATTENTION_IMPLEMENTATIONS:
      problems.append(
          f"attention={self.attention!r} is not one of {ATTENTION_IMPLEMENTATIONS}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        problems.append(f"{name}={getattr(self, name)!r} is not one of {tuple(_DTYPES)}")
    if problems:
      raise ValueError("invalid model config: " + "; ".join(problems))

  def _family_problems(self) -> list[str]:
    family = self.hf_family
    if FAMILIES.get(family, self.arch) != self.arch:
      return [f"family={family!r} uses arch={FAMILIES[family]!r}, not {self.arch!r}"]
    if family not in FAMILIES:
      return [f"family={family!r} is not one of {tuple(FAMILIES)}"]
    problems = []
    fixed = _LLAMA_ONLY if self.arch == "gpt2" else _FAMILY_FIXES[family]
    for name, value in fixed.items():
      if getattr(self, name) != value:
        problems.append(f"{name}={getattr(self, name)!r} is not possible for family "
                        f"{family!r} (needs {value!r})")
    if family in ("llama", "qwen3") and self.qkv_bias != self.out_bias:
      problems.append(f"family {family!r} has one attention_bias: qkv_bias={self.qkv_bias} "
                      f"and out_bias={self.out_bias} must agree")
    if family == "qwen2" and self.n_heads * self.head_dim_ != self.d_model:
      problems.append(f"family 'qwen2' needs n_heads * head_dim == d_model (got "
                      f"{self.n_heads} * {self.head_dim_} != {self.d_model})")
    if self.sliding_window < 0:
      problems.append(f"sliding_window={self.sliding_window} must be >= 0 (0 = off)")
    if self.rope_type not in ROPE_TYPES:
      problems.append(f"rope_type={self.rope_type!r} is not one of {ROPE_TYPES}")
    if self.rope_type != "default" and self.rope_factor < 1.0:
      problems.append(f"rope_factor={self.rope_factor} must be >= 1")
    if self.rope_type == "llama3" and not (
        self.rope_original_max_len > 0
        and self.rope_low_freq_factor < self.rope_high_freq_factor):
      problems.append(
          "rope_type='llama3' needs rope_original_max_len > 0 and rope_low_freq_factor < "
          f"rope_high_freq_factor (got {self.rope_original_max_len}, "
          f"{self.rope_low_freq_factor}, {self.rope_high_freq_factor})")
    return problems

  @property
  def hf_family(self) -> str:
    return self.family or self.arch

  @property
  def use_qkv_bias(self) -> bool:
    return self.arch == "gpt2" or self.qkv_bias

  @property
  def use_out_bias(self) -> bool:
    return self.arch == "gpt2" or self.out_bias

  @property
  def use_mlp_bias(self) -> bool:
    return self.arch == "gpt2" or self.mlp_bias

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
