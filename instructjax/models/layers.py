"""Transformer building blocks: norms, rotary embeddings, attention with a KV cache, MLPs.

Every parameter is created with logical axis names (see `instructjax.sharding` for the
rule table that maps them onto mesh axes).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from instructjax.models.model_config import ModelConfig
from instructjax.models.rope import apply_rope, inverse_frequencies

_INIT = nn.initializers.normal(stddev=0.02)


def _param_init(init, axes):
  return nn.with_logical_partitioning(init, axes)


class RMSNorm(nn.Module):
  """Llama's norm: x / rms(x) * weight, computed in float32."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x):  # x: [..., D]
    cfg = self.config
    weight = self.param("scale", _param_init(nn.initializers.ones, ("norm",)),
                        (x.shape[-1],), cfg.weight_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.norm_eps)
    return (x32.astype(cfg.compute_dtype) * weight.astype(cfg.compute_dtype))


def make_norm(config: ModelConfig, name: str) -> nn.Module:
  if config.arch == "llama":
    return RMSNorm(config, name=name)
  return nn.LayerNorm(
      epsilon=config.norm_eps, dtype=config.compute_dtype, param_dtype=config.weight_dtype,
      scale_init=_param_init(nn.initializers.ones, ("norm",)),
      bias_init=_param_init(nn.initializers.zeros, ("norm",)), name=name)


def _einsum_attention(q, keys, values, allowed, *, dtype):
  """The reference attention: q [B, T, H, Dh], keys [B, KV, Dh, S], values [B, KV, S, Dh]
  (head-major: the layouts the two matmuls read, so a KV cache kept in them is used
  without a copy at each decode step), allowed [B, T, S] -> [B, T, H, Dh], with the
  scores and softmax in fp32."""
  batch, t, h, dh = q.shape
  kvh = keys.shape[1]
  q = q.reshape(batch, t, kvh, h // kvh, dh)
  scores = jnp.einsum("btkgd,bkds->bkgts", q, keys).astype(jnp.float32) / jnp.sqrt(dh)
  # A finite minimum keeps fully masked rows (left padding) free of NaNs.
  scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  return jnp.einsum("bkgts,bksd->btkgd", probs, values).reshape(batch, t, h, dh)


def _head_major(k, v):
  """k, v [B, T, KV, Dh] -> keys [B, KV, Dh, T], values [B, KV, T, Dh]."""
  return jnp.transpose(k, (0, 2, 3, 1)), jnp.transpose(v, (0, 2, 1, 3))


class Attention(nn.Module):
  """Causal (grouped-query, optionally windowed) self-attention; `decode=True` reads and
  writes a KV cache.

  The cache holds keys and values for `max_len` slots, head-major (see `_einsum_attention`),
  plus a mask of which slots hold real tokens, so left-padded prompts of different
  lengths share one write index.
  """
  config: ModelConfig
  decode: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, positions, token_mask):
    # x: [B, T, D]; positions: [B, T]; token_mask: [B, T] (1 = real token)
    cfg = self.config
    h, kvh, dh = cfg.n_heads, cfg.kv_heads, cfg.head_dim_

    def proj(name, heads, axes):
      return nn.DenseGeneral(
          features=(heads, dh), use_bias=cfg.use_qkv_bias, dtype=cfg.compute_dtype,
          param_dtype=cfg.weight_dtype, kernel_init=_param_init(_INIT, ("embed", axes, "head_dim")),
          bias_init=_param_init(nn.initializers.zeros, (axes, "head_dim")), name=name)(x)

    q = proj("q_proj", h, "heads")  # [B, T, H, Dh]
    k = proj("k_proj", kvh, "kv_heads")  # [B, T, KV, Dh]
    v = proj("v_proj", kvh, "kv_heads")  # [B, T, KV, Dh]
    if cfg.qk_norm:  # Qwen3: over each head's channels, before the rotation
      q = RMSNorm(cfg, name="q_norm")(q)
      k = RMSNorm(cfg, name="k_norm")(k)
    if cfg.arch == "llama":
      inv_freq = inverse_frequencies(
          head_dim=dh, theta=cfg.rope_theta, rope_type=cfg.rope_type, factor=cfg.rope_factor,
          low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
          original_max_len=cfg.rope_original_max_len)  # [Dh/2]
      q = apply_rope(q, positions, inv_freq)
      k = apply_rope(k, positions, inv_freq)

    batch, t = x.shape[0], x.shape[1]
    keys, values = _head_major(k, v)  # [B, KV, Dh, T], [B, KV, T, Dh]
    if self.decode:
      keys, values, key_mask, query_slots = self._update_cache(keys, values, token_mask)
    else:
      key_mask = token_mask
      query_slots = jnp.broadcast_to(jnp.arange(t)[None], (batch, t))  # [B, T]
    key_slots = jnp.arange(values.shape[2])[None, None, :]  # [1, 1, S]
    allowed = key_slots <= query_slots[:, :, None]  # [B, T, S]
    if cfg.sliding_window:
      # Counted in slots, as HF does: left padding sits before every real token, so
      # between real tokens the slot distance is the position distance.
      allowed &= key_slots > query_slots[:, :, None] - cfg.sliding_window
    allowed = allowed & (key_mask[:, None, :] > 0)  # [B, T, S]

    if cfg.attention == "einsum":
      out = _einsum_attention(q, keys, values, allowed, dtype=cfg.compute_dtype)
    else:
      # A fully masked row (left padding) gets uniform weights here, as in the einsum
      # path; its output is never read.
      out = jax.nn.dot_product_attention(
          q, jnp.transpose(keys, (0, 3, 1, 2)), jnp.transpose(values, (0, 2, 1, 3)),
          mask=allowed[:, None], implementation=cfg.attention)  # [B, T, H, Dh]
    out = nn.DenseGeneral(
        features=cfg.d_model, axis=(-2, -1), use_bias=cfg.use_out_bias, dtype=cfg.compute_dtype,
        param_dtype=cfg.weight_dtype,
        kernel_init=_param_init(_INIT, ("heads", "head_dim", "embed")),
        bias_init=_param_init(nn.initializers.zeros, ("embed",)), name="o_proj")(out)
    return nn.Dropout(cfg.dropout_rate)(out, deterministic=self.deterministic)

  def _update_cache(self, keys, values, token_mask):
    """Writes this call's T keys/values (head-major) at the cache index; returns the
    whole cache: keys [B, KV, Dh, S], values [B, KV, S, Dh], mask [B, S], slots [B, T]."""
    batch, kvh, dh, t = keys.shape
    initialised = self.has_variable("cache", "cached_key")
    # At init the input is [B, max_len] and only sizes the cache.
    ck = self.variable("cache", "cached_key", jnp.zeros, keys.shape, keys.dtype)
    cv = self.variable("cache", "cached_value", jnp.zeros, values.shape, values.dtype)
    cm = self.variable("cache", "cache_mask", jnp.zeros, (batch, t), jnp.int32)
    ci = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not initialised:
      slots = jnp.broadcast_to(jnp.arange(t)[None], (batch, t))
      return keys, values, token_mask, slots
    index = ci.value
    ck.value = jax.lax.dynamic_update_slice(ck.value, keys.astype(ck.value.dtype),
                                            (0, 0, 0, index))
    cv.value = jax.lax.dynamic_update_slice(cv.value, values.astype(cv.value.dtype),
                                            (0, 0, index, 0))
    cm.value = jax.lax.dynamic_update_slice(cm.value, token_mask.astype(jnp.int32), (0, index))
    ci.value = index + t
    slots = jnp.broadcast_to(index + jnp.arange(t)[None], (batch, t))  # [B, T]
    return ck.value, cv.value, cm.value, slots


class Mlp(nn.Module):
  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x):  # x: [B, T, D]
    cfg = self.config

    def dense(name, features, axes):
      return nn.Dense(
          features, use_bias=cfg.use_mlp_bias, dtype=cfg.compute_dtype,
          param_dtype=cfg.weight_dtype, kernel_init=_param_init(_INIT, axes),
          bias_init=_param_init(nn.initializers.zeros, axes[1:]), name=name)

    if cfg.arch == "llama":
      hidden = nn.silu(dense("gate_proj", cfg.ff_dim, ("embed", "mlp"))(x)) * dense(
          "up_proj", cfg.ff_dim, ("embed", "mlp"))(x)  # [B, T, F]
    else:
      hidden = nn.gelu(dense("fc_in", cfg.ff_dim, ("embed", "mlp"))(x), approximate=True)
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "act_mlp"))
    out_name = "fc_out" if cfg.arch == "gpt2" else "down_proj"
    out = dense(out_name, cfg.d_model, ("mlp", "embed"))(hidden)
    return nn.Dropout(cfg.dropout_rate)(out, deterministic=self.deterministic)
