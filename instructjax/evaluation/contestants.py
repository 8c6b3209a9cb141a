"""Who the final evaluation compares: every contestant by name, the baseline they are
judged against, and the head-to-head pairing. Plain data, so the report can read it
without loading models."""

from __future__ import annotations

import dataclasses

from instructjax import stage_table


@dataclasses.dataclass(frozen=True, kw_only=True)
class Contestant:
  name: str
  label: str
  stage: str  # whose export holds its params (its architecture: the stage table's)
  few_shot: bool = False
  ema: bool = False  # the stage's EMA policy (WORKDIR/<stage>/ema), not its last params


CONTESTANTS = (
    Contestant(name="vanilla", label="Vanilla LM (zero-shot)", stage="pretrain"),
    Contestant(name="vanilla_fewshot", label="Vanilla LM (few-shot prompted)",
               stage="pretrain", few_shot=True),
    Contestant(name="vanilla_big", label="Large vanilla LM (zero-shot)", stage="pretrain_big"),
    Contestant(name="vanilla_big_fewshot", label="Large vanilla LM (few-shot prompted)",
               stage="pretrain_big", few_shot=True),
    Contestant(name="sft", label="SFT", stage="sft"),
    Contestant(name="ppo", label="PPO", stage="ppo"),
    Contestant(name="ppo_ptx", label="PPO-ptx", stage="ppo_ptx"),
    Contestant(name="dpo", label="DPO (Plackett-Luce, K-wise)", stage="dpo"),
    Contestant(name="rloo", label="RLOO (no critic)", stage="rloo"),
    Contestant(name="grpo", label="GRPO (no critic)", stage="grpo"),
)
# Evaluated where the run keeps an EMA of the policy (config.ppo.ema_decay > 0).
EMA_CONTESTANTS = (
    Contestant(name="ppo_ema", label="PPO (EMA)", stage="ppo", ema=True),
    Contestant(name="ppo_ptx_ema", label="PPO-ptx (EMA)", stage="ppo_ptx", ema=True),
)
# The alignment methods started from SFT, compared in the report's methods table and
# reward-KL frontier (SFT itself is the frontier's origin).
METHODS = ("sft", "ppo", "ppo_ptx", "dpo", "rloo", "grpo")
BASELINE = "sft"  # every contestant's win rate is against this one's answers
CHAMPION = "ppo_ptx"  # the aligned model of the head-to-head comparisons
RIVALS = ("vanilla_big", "vanilla_big_fewshot")  # what CHAMPION meets head to head
# How results name the two groups of judges, and how the report titles them.
LABELER_GROUPS = ("train_labelers", "heldout_labelers")
LABELER_TITLES = {"train_labelers": "training labelers", "heldout_labelers": "held-out labelers"}


def contestants_for(config) -> tuple[Contestant, ...]:
  """The run's contestants: those of the stages it trains, and the EMA policies when
  the PPO stages kept one."""
  trained = {s.name for s in stage_table.stages_for(config)}
  return tuple(c for c in CONTESTANTS + (EMA_CONTESTANTS if config.ppo.ema_decay > 0 else ())
               if c.stage in trained)


def contestant(name: str) -> Contestant:
  known = CONTESTANTS + EMA_CONTESTANTS
  for c in known:
    if c.name == name:
      return c
  raise ValueError(f"unknown contestant {name!r}; known: {[c.name for c in known]}")
