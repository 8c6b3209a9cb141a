"""Who the final evaluation compares: every contestant by name, the baseline they are
judged against, and the head-to-head pairing. Plain data, so the report can read it
without loading models."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class Contestant:
  name: str
  label: str
  stage: str  # whose export holds its params (its architecture: the stage table's)
  few_shot: bool = False


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
)
BASELINE = "sft"  # every contestant's win rate is against this one's answers
CHAMPION = "ppo_ptx"  # the aligned model of the head-to-head comparisons
RIVALS = ("vanilla_big", "vanilla_big_fewshot")  # what CHAMPION meets head to head
# How results name the two groups of judges, and how the report titles them.
LABELER_GROUPS = ("train_labelers", "heldout_labelers")
LABELER_TITLES = {"train_labelers": "training labelers", "heldout_labelers": "held-out labelers"}


def contestant(name: str) -> Contestant:
  for c in CONTESTANTS:
    if c.name == name:
      return c
  raise ValueError(f"unknown contestant {name!r}; known: {[c.name for c in CONTESTANTS]}")
