"""optax optimizers: AdamW with linear warmup + cosine decay, clipping, decay masks."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(*, peak_lr: float, warmup_steps: int, total_steps: int,
                           final_lr_fraction: float = 0.1) -> optax.Schedule:
  """Linear warmup from 0 to peak, then cosine decay to final_lr_fraction * peak."""
  warmup_steps = max(0, min(warmup_steps, total_steps - 1))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_lr, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=peak_lr * final_lr_fraction)


def decay_mask(params):
  """Weight decay on matrices only: biases, norm scales and scalars are not decayed."""
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(*, peak_lr: float, warmup_steps: int, total_steps: int,
                   weight_decay: float = 0.0, grad_clip_norm: float = 1.0,
                   b1: float = 0.9, b2: float = 0.95,
                   final_lr_fraction: float = 0.1) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(peak_lr=peak_lr, warmup_steps=warmup_steps,
                                    total_steps=total_steps,
                                    final_lr_fraction=final_lr_fraction)
  parts = []
  if grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay,
                           mask=decay_mask))
  return optax.chain(*parts)
