"""The decoder-only transformer: a shared trunk, an LM head, and a scalar head.

Parameter tree (the same for every family, so checkpoints map one to one):
  transformer/{wte, wpe (gpt2), block_0 .. block_{L-1}, ln_f}
  lm_head (untied only) | scalar_head (+ likelihood_scale, and lm_head if untied)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from instructjax.models.model_config import ModelConfig
from instructjax.models.layers import Attention, Mlp, make_norm

_EMBED_INIT = nn.initializers.normal(stddev=0.02)


def default_positions(token_mask):
  """Position of each token counting only real tokens, so left padding is harmless."""
  return jnp.maximum(jnp.cumsum(token_mask, axis=-1) - 1, 0)  # [B, T]


class Block(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, token_mask, deterministic, decode):  # x: [B, T, D]
    cfg = self.config
    attn = Attention(cfg, decode=decode, deterministic=deterministic, name="attn")
    x = x + attn(make_norm(cfg, "ln_1")(x), positions, token_mask)
    x = x + Mlp(cfg, deterministic=deterministic, name="mlp")(make_norm(cfg, "ln_2")(x))
    return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))


class Trunk(nn.Module):
  """Token (+ position) embeddings, the blocks, and the final norm: hidden states."""
  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.wte = nn.Embed(
        cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
        embedding_init=nn.with_logical_partitioning(_EMBED_INIT, ("vocab", "embed")))
    if cfg.arch == "gpt2":
      self.wpe = nn.Embed(
          cfg.max_len, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
          embedding_init=nn.with_logical_partitioning(_EMBED_INIT, ("positions", "embed")))
    # deterministic and decode (call arguments 4 and 5, counting self) are static.
    block_cls = nn.remat(Block, static_argnums=(4, 5)) if cfg.remat else Block
    self.blocks = [block_cls(cfg, name=f"block_{i}") for i in range(cfg.n_layers)]
    self.ln_f = make_norm(cfg, "ln_f")
    self.embed_dropout = nn.Dropout(cfg.dropout_rate)

  def __call__(self, tokens, *, positions=None, token_mask=None, deterministic=True,
               decode=False):
    # tokens: [B, T] -> hidden: [B, T, D]
    cfg = self.config
    if token_mask is None:
      token_mask = jnp.ones_like(tokens)
    if positions is None:
      positions = default_positions(token_mask)
    x = self.wte(tokens)
    if cfg.arch == "gpt2":
      x = x + self.wpe(positions)
    x = self.embed_dropout(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    for block in self.blocks:
      x = block(x, positions, token_mask, deterministic, decode)
    return self.ln_f(x)


class CausalLM(nn.Module):
  """Next-token logits. `apply({'params': p}, tokens)` -> logits [B, T, V] (float32);
  with `last_only=True`, those of the last column alone, [B, 1, V] (a sampler's prefill
  needs no others, and at GPT-2's vocabulary the unembedding of every prompt token costs
  a third of the prefill)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens, *, positions=None, token_mask=None, deterministic=True,
               decode=False, last_only=False):
    cfg = self.config
    trunk = Trunk(cfg, name="transformer")
    hidden = trunk(tokens, positions=positions, token_mask=token_mask,
                   deterministic=deterministic, decode=decode)  # [B, T, D]
    if last_only:
      hidden = hidden[:, -1:]  # [B, 1, D]
    logits = _unembed(cfg, trunk, hidden)
    return logits.astype(jnp.float32)  # [B, T, V]


def _unembed(cfg: ModelConfig, trunk: Trunk, hidden):
  """hidden: [B, T, D] -> next-token logits [B, T, V], with the tied embedding or an
  `lm_head` (the CausalLM's parameter name, so a reward model started from the policy
  copies it)."""
  if cfg.tie_embeddings:
    logits = trunk.wte.attend(hidden)
  else:
    logits = nn.Dense(
        cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
        kernel_init=nn.with_logical_partitioning(_EMBED_INIT, ("embed", "vocab")),
        name="lm_head")(hidden)
  return nn.with_logical_constraint(logits, ("batch", "length", "act_vocab"))


class ScalarModel(nn.Module):
  """The trunk with a scalar head instead of the unembedding: a value per position (with
  likelihood_feature, plus a scaled likelihood of the response so far).

  Reward models read it at the last real token (`last_token_value`); value models use
  every position.
  """
  config: ModelConfig
  # The RM's head has no bias: the ranking loss cannot see one (it cancels in r_w - r_l),
  # so its gradient is pure rounding noise that Adam would amplify; its offset is set
  # after training (reward normalisation). A value model needs one, to start at the
  # normalised reward.
  head_bias: bool = False

  # Also add likelihood_scale x the mean log-probability of the response tokens so far,
  # under the trunk's own unembedding. A trunk started from the SFT policy knows which
  # answers are right (its likelihood puts the ideal answer above a one-word-wrong one
  # 93% of the time), but a head on the last hidden state does not read that out (0.50).
  likelihood_feature: bool = False

  @nn.compact
  def __call__(self, tokens, *, positions=None, token_mask=None, response_mask=None,
               deterministic=True):
    """tokens, token_mask, response_mask (1 on the scored response tokens, EOS included;
    needed with likelihood_feature): [B, T] -> a value per position [B, T]."""
    cfg = self.config
    trunk = Trunk(cfg, name="transformer")
    hidden = trunk(tokens, positions=positions, token_mask=token_mask,
                   deterministic=deterministic)  # [B, T, D]
    value = nn.Dense(
        1, use_bias=self.head_bias, dtype=jnp.float32, param_dtype=cfg.weight_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed", "scalar")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("scalar",)),
        name="scalar_head")(hidden.astype(jnp.float32))[..., 0]  # [B, T]
    if not self.likelihood_feature:
      return value
    if response_mask is None:
      if not self.is_initializing():
        raise ValueError("ScalarModel(likelihood_feature=True) needs response_mask: [B, T], "
                         "1 on the response tokens it scores")
      response_mask = jnp.zeros_like(tokens)
    logits = _unembed(cfg, trunk, hidden[:, :-1]).astype(jnp.float32)  # [B, T-1, V]
    logprobs = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None],
                                   axis=-1)[..., 0]  # [B, T-1]: log p(token t+1 | <= t)
    logprobs = jnp.pad(logprobs, ((0, 0), (1, 0)))  # [B, T]: token 0 has no prediction
    scored = (jnp.asarray(response_mask) > 0).at[:, 0].set(False).astype(jnp.float32)  # [B, T]
    mean_so_far = (jnp.cumsum(logprobs * scored, axis=-1)
                   / jnp.maximum(jnp.cumsum(scored, axis=-1), 1.0))  # [B, T]
    # Starts at 1: the likelihood's own ranking, which the ranking loss then adjusts.
    scale = self.param("likelihood_scale",
                       nn.with_logical_partitioning(nn.initializers.ones, ()), (), jnp.float32)
    return value + scale * mean_so_far


def last_token_value(values, token_mask):
  """values: [..., T], token_mask: [..., T] -> value at the last real token: [...]."""
  positions = jnp.arange(token_mask.shape[-1])
  last = jnp.max(jnp.where(token_mask > 0, positions, 0), axis=-1)  # [...]
  return jnp.take_along_axis(values, last[..., None], axis=-1)[..., 0]
