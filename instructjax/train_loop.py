"""The loop that stages 0-2 share: sharded state, resume, steps, evals, checkpoints.

The loop owns no model or loss: a stage passes its state factory, its jit-able step
and its data iterator. Resuming restores the train state AND the iterator position, so
a rerun of an interrupted command reaches the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Iterator, Protocol

import jax
import ml_collections
import numpy as np

from instructjax import sharding
from instructjax.checkpoints import Checkpointer
from instructjax.run_log import RunLog, progress_bar
from instructjax.train_state import TrainState


class ResumableIterator(Protocol):
  def __iter__(self) -> Iterator[Any]: ...
  def __next__(self) -> Any: ...
  def get_state(self) -> dict: ...
  def set_state(self, state: dict) -> None: ...


class NonFiniteLossError(FloatingPointError):
  """Too many NaN/Inf updates in a row; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageSpec:
  name: str  # "pretrain", "sft", "rm": also the checkpoint's stage tag
  workdir: str
  train: ml_collections.ConfigDict  # a train section of the config (steps, batch, ...)
  mesh: jax.sharding.Mesh
  init_state: Callable[[jax.Array], TrainState]  # rng -> state with boxed params
  step: Callable[..., tuple[TrainState, dict]]  # (state, batch) -> (state, metrics)
  batches: ResumableIterator  # host batches (numpy pytrees)
  evaluate: Callable[[TrainState], dict] | None = None
  # abstract params (with shardings) -> starting params (e.g. the previous stage's);
  # None starts from the fresh init. Not called when resuming from a checkpoint.
  load_params: Callable[[Any], Any] | None = None
  seed: int = 0
  log: ml_collections.ConfigDict | None = None


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a tree of arrays: a restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


def to_floats(metrics: dict) -> dict:
  return {key: float(np.asarray(value)) for key, value in metrics.items()}


def run_stage(spec: StageSpec) -> TrainState:
  """Trains to spec.train.steps, resuming from spec.workdir's checkpoints; returns the
  final state (sharded)."""
  cfg = spec.train
  rng = jax.random.PRNGKey(spec.seed)
  state, state_shardings = sharding.create_sharded(spec.init_state, spec.mesh, rng)
  # A fresh step counter is weakly typed (it starts as a Python 0) and a restored one is
  # not; one type keeps fresh and resumed runs on the same compiled step.
  state = state.replace(step=state.step.astype(state.step.dtype))
  checkpointer = Checkpointer(os.path.join(spec.workdir, "checkpoints"),
                              keep=cfg.keep_checkpoints, stage=spec.name)
  restored = checkpointer.restore_latest(state, state_shardings)
  if restored is not None:
    state, extra, step = restored
    spec.batches.set_state(extra["data"])
    print(f"[{spec.name}] resumed from step {step}", flush=True)
  elif spec.load_params is not None:
    state = state.replace(params=spec.load_params(abstract_like(state.params)))
  log_cfg = spec.log or ml_collections.ConfigDict(dict(tensorboard=True, wandb_project=""))
  run_log = RunLog(spec.workdir, stage=spec.name, tensorboard=log_cfg.tensorboard,
                   wandb_project=log_cfg.wandb_project)
  step_fn = jax.jit(spec.step, out_shardings=(state_shardings, None), donate_argnums=0)
  start = int(state.step)
  bar = progress_bar(total=cfg.steps, initial=start, desc=spec.name)
  t0 = time.time()
  try:
    for step in range(start, cfg.steps):
      batch = sharding.shard_batch(next(spec.batches), spec.mesh)
      state, metrics = step_fn(state, batch)
      done = step + 1
      if int(metrics["consecutive_skips"]) >= cfg.max_consecutive_skips:
        raise NonFiniteLossError(
            f"[{spec.name}] step {done}: loss or gradients were NaN/Inf for "
            f"{int(metrics['consecutive_skips'])} updates in a row (loss={float(metrics['loss'])}, "
            f"grad_norm={float(metrics['grad_norm'])}); parameters were not updated and the "
            f"last good checkpoint in {checkpointer.directory} is intact")
      if done % 10 == 0 or done == cfg.steps:
        run_log.write(done, {**to_floats(metrics), "steps_per_s": (done - start) /
                             max(time.time() - t0, 1e-9)}, prefix="train/")
        bar.set_postfix(loss=f"{float(metrics['loss']):.3f}")
      if spec.evaluate is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
        run_log.write(done, to_floats(spec.evaluate(state)), prefix="eval/")
      if done % cfg.checkpoint_every == 0 or done == cfg.steps:
        checkpointer.save(done, state, extra={"data": spec.batches.get_state()})
      bar.update(1)
  finally:
    bar.close()
    checkpointer.close()
    run_log.close()
  return state
