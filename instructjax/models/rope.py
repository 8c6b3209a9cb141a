"""Rotary position embeddings, with the scaled variants of Llama-family checkpoints.

`rope_type` follows the names in Hugging Face configs (`rope_parameters.rope_type`):
  default  theta^(-2i/d), as in RoFormer and Llama 1/2, Mistral, Qwen2/3;
  linear   every frequency divided by `factor` (position interpolation, Chen et al. 2023);
  llama3   Llama 3.1+: long wavelengths divided by `factor`, short ones kept, and a
           smooth ramp between them, set by the original context length.
None of these rescale the attention logits, so only the inverse frequencies differ.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

ROPE_TYPES = ("default", "linear", "llama3")


def inverse_frequencies(*, head_dim: int, theta: float, rope_type: str = "default",
                        factor: float = 1.0, low_freq_factor: float = 1.0,
                        high_freq_factor: float = 4.0, original_max_len: int = 0):
  """The rotation speed of each pair of channels: [head_dim / 2] float32, radians/token."""
  if rope_type not in ROPE_TYPES:
    raise ValueError(f"rope_type={rope_type!r} is not one of {ROPE_TYPES}")
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim  # [Dh/2]
  inv_freq = 1.0 / (theta ** exponents)
  if rope_type == "linear":
    return inv_freq / factor
  if rope_type == "default":
    return inv_freq
  # llama3: wavelengths longer than original_max_len / low_freq_factor are interpolated
  # by `factor`; shorter than original_max_len / high_freq_factor are kept; in between,
  # a linear blend in (original_max_len / wavelength).
  wavelength = 2 * math.pi / inv_freq
  ramp = (original_max_len / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
  ramp = jnp.clip(ramp, 0.0, 1.0)  # 0 for long wavelengths, 1 for short ones
  return (1.0 - ramp) * inv_freq / factor + ramp * inv_freq


def apply_rope(x, positions, inv_freq):
  """Rotates x in the rotate-half layout that HF Llama uses.

  x: [B, T, H, Dh]; positions: [B, T] int; inv_freq: [Dh / 2].
  """
  head_dim = x.shape[-1]
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, Dh/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, Dh]
  x32 = x.astype(jnp.float32)
  half = head_dim // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)
