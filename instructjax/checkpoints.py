"""Orbax checkpoints of a train state plus JSON side data (data position, metadata).

A rerun of the same command resumes from the newest checkpoint that restores; a damaged
or half-written newest one is reported, set aside as `<step>.damaged`, and the previous
good one is used instead.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from instructjax import sharding


class CheckpointError(RuntimeError):
  """No checkpoint could be restored, or one belongs to another stage."""


class Checkpointer:
  """Keep-N asynchronous checkpoints under `directory`; every process must call save."""

  def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True,
               stage: str):
    self.directory = epath.Path(directory).absolute()
    self.stage = stage
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True))

  def save(self, step: int, state: Any, *, extra: dict | None = None,
           force: bool = False) -> bool:
    extra = {"stage": self.stage, **(extra or {})}
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      extra=ocp.args.JsonSave(extra)), force=force)

  def restore_latest(self, state_template: Any, shardings: Any):
    """-> (state, extra, step) from the newest good checkpoint, or None if there is none.

    state_template gives shapes/dtypes (it may be abstract); shardings where to put them.
    """
    abstract = sharding.abstract_tree(state_template, shardings)
    steps = sorted(self._manager.all_steps(), reverse=True)
    damaged = []
    for i, step in enumerate(steps):
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                          extra=ocp.args.JsonRestore()))
      except Exception as error:  # pylint: disable=broad-except
        older = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "none older"
        logging.warning("checkpoint %s/%d is damaged (%s: %s); %s", self.directory, step,
                        type(error).__name__, str(error)[:200], older)
        print(f"warning: checkpoint step {step} in {self.directory} cannot be restored "
              f"({type(error).__name__}); {older}", flush=True)
        damaged.append(step)
        continue
      extra = dict(restored["extra"])
      if extra.get("stage") != self.stage:
        raise CheckpointError(
            f"checkpoint {self.directory}/{step} is a {extra.get('stage')!r} checkpoint, "
            f"expected {self.stage!r}")
      self._set_aside(damaged)
      return restored["state"], extra, step
    if steps:
      raise CheckpointError(f"no checkpoint in {self.directory} could be restored "
                            f"(tried steps {steps})")
    return None

  def _set_aside(self, steps: list[int]) -> None:
    """Renames damaged steps to `<step>.damaged`: Orbax skips saving a step that exists,
    so left in place they would never be rewritten. Nothing is deleted."""
    if not steps:
      return
    if jax.process_index() == 0:
      for step in steps:
        source = self.directory / str(step)
        target = self.directory / f"{step}.damaged"
        if target.exists():
          target.rmtree()  # set aside by an earlier rerun
        source.rename(target)
        print(f"warning: moved damaged checkpoint {source} to {target}", flush=True)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("instructjax_checkpoints_set_aside")
    self._manager.reload()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
