"""The stage graph, written once: every stage, what it starts from, and what runs it.

The pipeline runs the stages in this order with the programs named here, the evaluation
finds each model's architecture here, the report orders its tables by it, and each
program takes its stage names (and SFT its config sections) from here.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage:
  name: str  # also the run directory's subdirectory and the checkpoints' tag
  parents: tuple[str, ...]  # stages whose exports (or, DPO: comparisons) it starts from
  model_section: str  # config section of its architecture
  train_section: str  # config section of its hyperparameters
  program: str  # module that trains it: `python -m <program> --stage=<name>`
  # Only where no gold score exists (config.data.source != "testbed"): the held-out
  # reward model that judges the final evaluation, trained on comparisons no other
  # stage sees and never used in PPO.
  judge_only: bool = False
  # Run only where the config has its train_section (sft_big, and the methods compared
  # with PPO).
  optional: bool = False


STAGES: tuple[Stage, ...] = (
    Stage(name="pretrain", parents=(), model_section="model", train_section="pretrain",
          program="instructjax.sft"),
    Stage(name="pretrain_big", parents=(), model_section="big_model",
          train_section="pretrain_big", program="instructjax.sft"),
    Stage(name="sft", parents=("pretrain",), model_section="model", train_section="sft",
          program="instructjax.sft"),
    # The large LM after SFT on the same demonstrations: a reward model larger than the
    # policy starts from it where config.rm.trunk says so (see `rm_trunk`).
    Stage(name="sft_big", parents=("pretrain_big",), model_section="big_model",
          train_section="sft_big", program="instructjax.sft", optional=True),
    # The RMs' architecture is their trunk's (`rm_trunk`), not model_section's; their
    # comparisons' policy samples come from sft.
    Stage(name="rm", parents=("sft", "sft_big"), model_section="model", train_section="rm",
          program="instructjax.reward"),
    Stage(name="rm_judge", parents=("sft", "sft_big"), model_section="model",
          train_section="rm", program="instructjax.reward", judge_only=True),
    Stage(name="ppo", parents=("sft", "rm"), model_section="model", train_section="ppo",
          program="instructjax.ppo"),
    Stage(name="ppo_ptx", parents=("sft", "rm"), model_section="model", train_section="ppo",
          program="instructjax.ppo"),
    # Methods beyond InstructGPT, on the same SFT policy, RM and comparisons; a config
    # without their section does not run them.
    Stage(name="dpo", parents=("sft", "rm"), model_section="model", train_section="dpo",
          program="instructjax.dpo", optional=True),
    Stage(name="rloo", parents=("sft", "rm"), model_section="model", train_section="rloo",
          program="instructjax.ppo", optional=True),
    Stage(name="grpo", parents=("sft", "rm"), model_section="model", train_section="grpo",
          program="instructjax.ppo", optional=True),
)
NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def has_gold(config) -> bool:
  """Whether the run's data can score answers itself (the testbed), so no judge RM."""
  return config.data.source == "testbed"


def stages_for(config) -> tuple[Stage, ...]:
  """The stages a run of `config` trains, in order."""
  return tuple(s for s in STAGES if not (s.judge_only and has_gold(config))
               and not (s.optional and s.train_section not in config))


def parents(config, name: str) -> tuple[str, ...]:
  """The parents of stage `name` that a run of `config` trains (an optional one, such as
  sft_big, only where the config has its section)."""
  trained = {s.name for s in stages_for(config)}
  return tuple(p for p in stage(name).parents if p in trained)


def rm_trunk(config) -> Stage:
  """The SFT stage the reward models (and PPO's value model) start from, whose
  architecture they have: config.rm.trunk, "sft" (the policy's size) or "sft_big" (the
  larger LM after SFT: the paper's one 6B RM for every policy size)."""
  return stage(config.rm.get("trunk", "sft"))  # config.validate checks it names one


def stage(name: str) -> Stage:
  """The stage called `name`; ValueError naming the known ones otherwise."""
  for s in STAGES:
    if s.name == name:
      return s
  raise ValueError(f"unknown stage {name!r}; known: {NAMES}")


def run_by(program: str) -> tuple[str, ...]:
  """Names of the stages that `program` (a module name) trains, in pipeline order."""
  return tuple(s.name for s in STAGES if s.program == program)
