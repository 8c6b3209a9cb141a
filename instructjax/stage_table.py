"""The stage graph, written once: every stage, what it starts from, and what runs it.

The pipeline runs the stages in this order, the evaluation finds each model's
architecture here, the report orders its tables by it, and each program looks up its
own config sections here.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage:
  name: str  # also the run directory's subdirectory and the checkpoints' tag
  parents: tuple[str, ...]  # stages whose exports it starts from
  model_section: str  # config section of its architecture
  train_section: str  # config section of its hyperparameters
  program: str  # module that trains it: `python -m <program> --stage=<name>`
  scalar_head: bool = False  # its export is a ScalarModel (the RM), not a CausalLM
  label: str  # how the report names its model


STAGES: tuple[Stage, ...] = (
    Stage(name="pretrain", parents=(), model_section="model", train_section="pretrain",
          program="instructjax.sft", label="Vanilla LM"),
    Stage(name="pretrain_big", parents=(), model_section="big_model",
          train_section="pretrain_big", program="instructjax.sft", label="Large vanilla LM"),
    Stage(name="sft", parents=("pretrain",), model_section="model", train_section="sft",
          program="instructjax.sft", label="SFT"),
    Stage(name="rm", parents=("sft",), model_section="model", train_section="rm",
          program="instructjax.reward", scalar_head=True, label="Reward model"),
    Stage(name="ppo", parents=("sft", "rm"), model_section="model", train_section="ppo",
          program="instructjax.ppo", label="PPO"),
    Stage(name="ppo_ptx", parents=("sft", "rm"), model_section="model", train_section="ppo",
          program="instructjax.ppo", label="PPO-ptx"),
)
NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def stage(name: str) -> Stage:
  """The stage called `name`; ValueError naming the known ones otherwise."""
  for s in STAGES:
    if s.name == name:
      return s
  raise ValueError(f"unknown stage {name!r}; known: {NAMES}")


def run_by(program: str) -> tuple[str, ...]:
  """Names of the stages that `program` (a module name) trains, in pipeline order."""
  return tuple(s.name for s in STAGES if s.program == program)
