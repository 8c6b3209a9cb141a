"""Metrics out of a run: JSON lines always, TensorBoard, W&B when asked; a progress bar.

Only process 0 writes; other processes get a logger that does nothing.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np
import tqdm


def _plain(value: Any):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class RunLog:
  """Appends {'step', 'stage', 'time', **metrics} lines to WORKDIR/metrics.jsonl."""

  def __init__(self, workdir: str, *, stage: str, tensorboard: bool = True,
               wandb_project: str = ""):
    self.enabled = jax.process_index() == 0
    self.stage = stage
    self._tb = None
    self._wandb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard", stage))
    if wandb_project:
      import wandb  # pylint: disable=import-outside-toplevel
      self._wandb = wandb.init(project=wandb_project, name=f"{os.path.basename(workdir)}-{stage}",
                               dir=workdir, resume="allow")

  def write(self, step: int, metrics: Mapping[str, Any], *, prefix: str = "") -> None:
    if not self.enabled:
      return
    plain = {prefix + k: _plain(v) for k, v in metrics.items()}
    record = {"stage": self.stage, "step": int(step), "time": time.time(), **plain}
    self._jsonl.write(json.dumps(record, allow_nan=True) + "\n")
    self._jsonl.flush()
    for key, value in plain.items():
      if isinstance(value, (int, float)) and math.isfinite(value):
        if self._tb is not None:
          self._tb.add_scalar(f"{self.stage}/{key}", value, step)
    if self._wandb is not None:
      self._wandb.log({f"{self.stage}/{k}": v for k, v in plain.items()}, step=step)

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()


def progress_bar(*, total: int, initial: int, desc: str):
  """A tqdm bar (rate and ETA) on process 0 only."""
  return tqdm.tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                   disable=jax.process_index() != 0, mininterval=1.0)
