"""A finished stage's product: its final parameters plus a small JSON card.

`WORKDIR/export/params` (Orbax) and `WORKDIR/export/export.json`, written last, so a
stage whose card exists is finished and the next stage (or a rerun of the pipeline) can
reuse it. Both are written into `WORKDIR/export.tmp` and swapped in by renames, so a
failure or kill never leaves a partial export where a good one was. The card names the
stage, so an RM checkpoint given where a policy is expected is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Iterable

import jax
import orbax.checkpoint as ocp

from instructjax.checkpoints import CheckpointError

CARD = "export.json"


def is_exported(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, "export", CARD))


def save_export(workdir: str, params: Any, *, stage: str, card: dict) -> None:
  """Writes params then the card; every process must call it (Orbax is collective)."""
  export_dir = os.path.abspath(os.path.join(workdir, "export"))
  staging, retired = export_dir + ".tmp", export_dir + ".old"
  if jax.process_index() == 0:
    for leftover in (staging, retired):  # from a killed or failed earlier save
      if os.path.exists(leftover):
        shutil.rmtree(leftover)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(staging, "params"), params)
  checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    with open(os.path.join(staging, CARD), "w", encoding="utf-8") as f:
      json.dump({"stage": stage, **card}, f, indent=2)
    if os.path.exists(export_dir):
      os.rename(export_dir, retired)
    os.rename(staging, export_dir)
    shutil.rmtree(retired, ignore_errors=True)


def read_card(workdir: str, *, expected_stages: Iterable[str]) -> dict:
  path = os.path.join(workdir, "export", CARD)
  if not os.path.exists(path):
    raise CheckpointError(
        f"{workdir} holds no finished stage export ({path} is missing); run that stage first")
  with open(path, encoding="utf-8") as f:
    card = json.load(f)
  expected = tuple(expected_stages)
  if card.get("stage") not in expected:
    raise CheckpointError(
        f"{workdir} holds a {card.get('stage')!r} export, but one of {expected} is needed "
        f"here")
  return card


def load_export(workdir: str, abstract_params: Any, *, expected_stages: Iterable[str]):
  """-> (params laid out as abstract_params' shardings say, card)."""
  card = read_card(workdir, expected_stages=expected_stages)
  params = ocp.StandardCheckpointer().restore(
      os.path.abspath(os.path.join(workdir, "export", "params")), abstract_params)
  return params, card
