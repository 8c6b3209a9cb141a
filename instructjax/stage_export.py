"""A finished stage's product: its final parameters plus a small typed card.

`WORKDIR/export/params` (Orbax) and `WORKDIR/export/export.json`, written last, so a
stage whose card exists is finished and the next stage (or a rerun of the pipeline) can
reuse it. Both are written into `WORKDIR/export.tmp` and swapped in by renames, so a
failure or kill never leaves a partial export where a good one was. The card names the
stage, so an RM checkpoint given where a policy is expected is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Iterable

import jax
import orbax.checkpoint as ocp

from instructjax.atomic_write import write_json
from instructjax import multihost
from instructjax.checkpoints import CheckpointError

CARD = "export.json"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportCard:
  """What a stage's export says about itself; export.json holds its fields."""
  stage: str
  model: dict[str, Any]  # the ModelConfig's fields
  steps: int  # optimizer steps (PPO: iterations) it trained for
  final_eval: dict[str, float] = dataclasses.field(default_factory=dict)
  bad_rows: dict[str, int] = dataclasses.field(default_factory=dict)  # skipped, per split
  truncation: dict[str, int] = dataclasses.field(default_factory=dict)  # cut sequences
  # RM: the demonstrations' mean reward (of the exported, rescaled head), subtracted
  # before RL; PPO: the one it used.
  reward_bias: float | None = None
  reward_std: float | None = None  # RM: the std of the raw reward the head was divided by
  # RM: the reward adds a scaled response likelihood (ScalarModel.likelihood_feature).
  likelihood_feature: bool = False
  ptx_coef: float | None = None  # PPO: gamma (0 for plain PPO)
  ema_decay: float | None = None  # PPO: decay of the policy EMA (0 = off)
  ema: bool = False  # these params are the EMA of the policy, not the policy

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, value: dict[str, Any], *, where: str) -> ExportCard:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.name not in value and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if unknown or missing:
      raise CheckpointError(
          f"{where} is not an export card of this version (unknown fields {unknown}, "
          f"missing fields {missing}); rerun that stage in a new --workdir")
    return cls(**value)


def is_exported(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, "export", CARD))


def save_export(workdir: str, params: Any, card: ExportCard) -> None:
  """Writes params then the card into workdir/export; every process must call it (Orbax
  is collective)."""
  export_dir = os.path.abspath(os.path.join(workdir, "export"))
  staging, retired = export_dir + ".tmp", export_dir + ".old"
  if jax.process_index() == 0:
    for leftover in (staging, retired):  # from a killed or failed earlier save
      if os.path.exists(leftover):
        shutil.rmtree(leftover)
  multihost.barrier("export_staging_clean")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(staging, "params"), params)
  checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    write_json(os.path.join(staging, CARD), card.to_json())
    if os.path.exists(export_dir):
      os.rename(export_dir, retired)
    os.rename(staging, export_dir)
    shutil.rmtree(retired, ignore_errors=True)
  multihost.barrier("export_done")  # no process reads it before it is in place


def read_card(workdir: str, *, expected_stages: Iterable[str]) -> ExportCard:
  path = os.path.join(workdir, "export", CARD)
  if not os.path.exists(path):
    raise CheckpointError(
        f"{workdir} holds no finished stage export ({path} is missing); run that stage first")
  with open(path, encoding="utf-8") as f:
    card = ExportCard.from_json(json.load(f), where=path)
  expected = tuple(expected_stages)
  if card.stage not in expected:
    raise CheckpointError(
        f"{workdir} holds a {card.stage!r} export, but one of {expected} is needed here")
  return card


def load_export(workdir: str, abstract_params: Any, *, expected_stages: Iterable[str]):
  """-> (params laid out as abstract_params' shardings say, ExportCard)."""
  card = read_card(workdir, expected_stages=expected_stages)
  params = ocp.StandardCheckpointer().restore(
      os.path.abspath(os.path.join(workdir, "export", "params")), abstract_params)
  return params, card
