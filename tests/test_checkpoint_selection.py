"""A stage with `select_by` exports its best evaluated checkpoint (the paper picks its SFT
model on validation), keeps the earlier one on a tie, and picks the same after a kill."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from instructjax import sharding, stage_export
from instructjax.stage_loop import (SELECTED, Export, StageProgram, batch_advance, cadence,
                                   jit_step, train)
from instructjax.steps.sft_step import sft_step
from tests.test_checkpoints import INIT_STATE, TRAIN, _Batches

# The validation metric the evaluation reports after each step 1..6: the best is at step
# 2, and step 4 ties it (the earlier is kept).
SCRIPT = {1: 0.1, 2: 0.5, 3: 0.3, 4: 0.5, 5: 0.2, 6: 0.4}


class _Killed(Exception):
  pass


def _program(workdir, seen: dict, *, kill_at: int = 0) -> StageProgram:
  """Six steps, evaluated after each; `seen` gets each step's host params."""
  mesh, batches = sharding.make_mesh(), _Batches()

  def evaluate(state):
    step = int(state.step)
    if step == kill_at:
      raise _Killed
    seen[step] = jax.device_get(state.params)
    return {"val": SCRIPT[step], "other": -SCRIPT[step]}

  def exports(state, final_eval):
    return [Export(params=state.params, card=stage_export.ExportCard(
        stage="sft", model={}, steps=int(state.step), final_eval=dict(final_eval)))]

  train_cfg = TRAIN.copy_and_resolve_references()
  train_cfg.update(steps=6, eval_every=1, checkpoint_every=1)
  return StageProgram(
      name="sft", workdir=str(workdir), cadence=cadence(train_cfg), mesh=mesh,
      init_state=INIT_STATE, seed=0, iterators={"data": batches},
      build_advance=lambda shardings: batch_advance(jit_step(sft_step, shardings), batches,
                                                    mesh),
      evaluate=evaluate, exports=exports, select_by="val",
      log=ml_collections.ConfigDict(dict(tensorboard=False, wandb_project="")))


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_the_best_evaluated_checkpoint_is_returned_ties_keep_the_earlier(tmp_path):
  seen = {}
  state, evaluation = train(_program(tmp_path, seen))
  assert int(state.step) == 2 and evaluation == {"val": 0.5, "other": -0.5}
  _assert_same(jax.device_get(state.params), seen[2])
  with pytest.raises(AssertionError):  # the selection is not a no-op: 6 differs from 2
    _assert_same(seen[6], seen[2])
  card = stage_export.read_card(str(tmp_path / SELECTED), expected_stages=("sft",))
  assert card.steps == 2


def test_a_killed_stage_selects_the_same_checkpoint_on_rerun(tmp_path):
  seen = {}
  with pytest.raises(_Killed):  # after the best (2) and its tie (4) were evaluated
    train(_program(tmp_path, seen, kill_at=5))
  rerun = {}
  state, evaluation = train(_program(tmp_path, rerun))
  assert 4 not in rerun and 5 in rerun  # resumed from the checkpoint of step 4
  assert int(state.step) == 2 and evaluation["val"] == 0.5
  _assert_same(jax.device_get(state.params), seen[2])
