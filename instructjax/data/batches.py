"""Typed batches that the input pipelines yield and the train steps consume.

Conventions shared by every batch:
  token_mask[b, t] = 1 where tokens[b, t] is a real token, 0 for padding.
  loss_mask[b, t] = 1 where tokens[b, t] is a prediction target (predicted from the
    logits at t - 1): response tokens for SFT, every real token but the first for
    pretraining.
"""

from __future__ import annotations

import flax.struct
import jax


@flax.struct.dataclass
class TokenBatch:
  """Sequences for next-token training (SFT, pretraining, PPO-ptx). Right-padded."""
  tokens: jax.Array  # [B, T] int32
  token_mask: jax.Array  # [B, T] int32
  loss_mask: jax.Array  # [B, T] int32


@flax.struct.dataclass
class RankingBatch:
  """K ranked responses per prompt, one prompt per batch element (InstructGPT RM).

  The K sequences (prompt + response, right-padded) of element b are ordered best
  first, so for i < j response i is preferred to response j. Prompts with fewer than K
  responses are padded with empty sequences whose response_mask is 0.
  """
  tokens: jax.Array  # [B, K, T] int32
  token_mask: jax.Array  # [B, K, T] int32
  loss_mask: jax.Array  # [B, K, T] int32: the response tokens (EOS included), for DPO
  response_mask: jax.Array  # [B, K] int32: 1 = a real response
  labeler: jax.Array  # [B] int32: id of the labeler who ranked them (-1 if unknown)


@flax.struct.dataclass
class PromptBatch:
  """Prompts for RL rollouts and evaluation. Left-padded so generation starts aligned."""
  prompt_tokens: jax.Array  # [B, P] int32
  prompt_mask: jax.Array  # [B, P] int32
  example_index: jax.Array  # [B] int32: row of the source dataset (for gold scoring)
