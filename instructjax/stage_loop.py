"""The loop every stage runs: sharded state, resume, cadence, NaN policy, logs, export.

A stage supplies a `StageProgram`: its state factory, how to start from its parents'
exports, one step of training (`advance`: an SFT or RM optimizer step, or a PPO
iteration), its evaluation and what it exports. The loop owns everything else, the same
for every stage. Resuming restores the train state AND the data iterators' positions,
so a rerun of an interrupted command reaches the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import jax
import ml_collections
import numpy as np

from instructjax import sharding, stage_export
from instructjax.checkpoints import Checkpointer
from instructjax.run_log import RunLog, progress_bar


class ResumableIterator(Protocol):
  def __iter__(self) -> Iterator[Any]: ...
  def __next__(self) -> Any: ...
  def get_state(self) -> dict: ...
  def set_state(self, state: dict) -> None: ...
  def close(self) -> None: ...


class NonFiniteLossError(FloatingPointError):
  """Too many NaN/Inf updates in a row; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cadence:
  """How long a stage runs and how often it logs, evaluates and checkpoints."""
  total: int  # steps (PPO: iterations) to reach
  log_every: int
  eval_every: int
  checkpoint_every: int
  keep_checkpoints: int
  max_consecutive_skips: int  # NaN/Inf updates in a row before the run stops

  def due(self, every: int, done: int) -> bool:
    return done % every == 0 or done == self.total


@dataclasses.dataclass(frozen=True, kw_only=True)
class Export:
  """One export a finished stage writes: params and card into WORKDIR/<where>/export."""
  params: Any
  card: stage_export.ExportCard
  where: str = ""  # subdirectory of the stage's directory; "" = the stage's own export


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageProgram:
  name: str  # the stage: checkpoint tag, metrics' stage, progress bar
  workdir: str  # the stage's directory
  cadence: Cadence
  mesh: jax.sharding.Mesh
  init_state: Callable[[jax.Array], Any]  # rng -> a fresh state with boxed params
  seed: int
  # state shardings -> advance(state, index) -> (state, metrics): one step or iteration;
  # metrics hold "consecutive_skips" and may be device arrays.
  build_advance: Callable[[Any], Callable[[Any, int], tuple[Any, Mapping[str, Any]]]]
  # Data iterators, by name: their positions go into every checkpoint.
  iterators: Mapping[str, ResumableIterator]
  # A fresh start (not a resume): the fresh state -> the starting state (e.g. with the
  # parents' params). None keeps the fresh init.
  begin: Callable[[Any], Any] | None = None
  evaluate: Callable[[Any], Mapping[str, float]] | None = None
  # An evaluation metric (higher is better) that picks which evaluated checkpoint the
  # stage exports, as the paper picks its SFT model on validation; None: the last.
  select_by: str | None = None
  # (final state, final evaluation) -> the exports, the stage's own last (its card
  # marks the stage finished).
  exports: Callable[[Any, Mapping[str, float]], Sequence[Export]]
  unit: str = "step"  # what one advance is called in messages
  metric_prefix: str = "train/"
  progress_keys: tuple[str, ...] = ("loss",)  # metrics shown on the progress bar
  log: ml_collections.ConfigDict | None = None


def cadence(train: ml_collections.ConfigDict) -> Cadence:
  """The cadence of a stage trained in optimizer steps (a pretrain, sft or rm section)."""
  return Cadence(total=train.steps, log_every=10, eval_every=train.eval_every,
                 checkpoint_every=train.checkpoint_every,
                 keep_checkpoints=train.keep_checkpoints,
                 max_consecutive_skips=train.max_consecutive_skips)


def jit_step(step_fn, state_shardings):
  """A (state, batch, ...) -> (state, metrics) step jitted as every stage runs it: the
  state laid out as state_shardings, and donated."""
  return jax.jit(step_fn, out_shardings=(state_shardings, None), donate_argnums=0)


def batch_advance(step, batches: ResumableIterator, mesh):
  """advance(state, index) for a stage trained on batches: the step on the next one."""
  def advance(state, index):
    del index  # the iterator keeps its own position
    return step(state, sharding.shard_batch(next(batches), mesh))
  return advance


def to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
  return {key: float(np.asarray(value)) for key, value in metrics.items()}


def run_stage(name: str, workdir: str, build: Callable[[], StageProgram]) -> str:
  """Trains stage `name` in `workdir` (built by `build`, which loads its data) unless its
  export exists; -> workdir."""
  if stage_export.is_exported(workdir):
    print(f"[{name}] finished earlier: {workdir}", flush=True)
    return workdir
  program = build()
  state, final_eval = train(program)
  for export in program.exports(state, final_eval):
    stage_export.save_export(os.path.join(workdir, export.where), export.params, export.card)
  print(f"[{name}] done" + "".join(f", {k}={v:.4f}" for k, v in final_eval.items()),
        flush=True)
  return workdir


def _restore_or_begin(program: StageProgram, state, shardings, checkpointer):
  """-> (the state to train from, the steps or iterations it has done)."""
  restored = checkpointer.restore_latest(state, shardings)
  if restored is not None:
    state, extra, step = restored
    for key, iterator in program.iterators.items():
      iterator.set_state(extra[key])
    print(f"[{program.name}] resumed from {program.unit} {step}", flush=True)
    return state, step
  return (program.begin(state) if program.begin is not None else state), 0


SELECTED = "selected"  # the stage's subdirectory holding its best checkpoint so far


def _keep_if_best(program: StageProgram, state, evaluation: Mapping[str, float]) -> None:
  """Saves state's params as the selected checkpoint if `evaluation` beats the saved one
  on program.select_by (ties keep the earlier)."""
  if program.select_by not in evaluation:
    raise KeyError(f"[{program.name}] select_by={program.select_by!r} is not one of its "
                   f"evaluation's metrics {sorted(evaluation)}")
  where = os.path.join(program.workdir, SELECTED)
  if stage_export.is_exported(where):
    best = stage_export.read_card(where, expected_stages=(program.name,))
    if not evaluation[program.select_by] > best.final_eval[program.select_by]:
      return
  card = program.exports(state, evaluation)[-1].card
  stage_export.save_export(where, state.params, card)


def _selected(program: StageProgram, state) -> tuple[Any, dict[str, float]]:
  """-> (state with the selected checkpoint's params and step, its evaluation)."""
  where = os.path.join(program.workdir, SELECTED)
  params, card = stage_export.load_export(where, sharding.abstract_tree(state.params),
                                          expected_stages=(program.name,))
  print(f"[{program.name}] exports {program.unit} {card.steps} of {int(state.step)}: the "
        f"best {program.select_by}={card.final_eval[program.select_by]:.4f}", flush=True)
  step = np.asarray(card.steps, dtype=state.step.dtype)
  return state.replace(params=params, step=step), dict(card.final_eval)


def _check_finite(program: StageProgram, done: int, metrics, checkpointer) -> None:
  skips = int(metrics["consecutive_skips"])
  if skips >= program.cadence.max_consecutive_skips:
    shown = ", ".join(f"{k}={float(metrics[k])}" for k in ("loss", "grad_norm") if k in metrics)
    raise NonFiniteLossError(
        f"[{program.name}] {program.unit} {done}: loss or gradients were NaN/Inf for "
        f"{skips} updates in a row ({shown}); parameters were not updated and the last "
        f"good checkpoint in {checkpointer.directory} is intact")


def train(program: StageProgram) -> tuple[Any, dict[str, float]]:
  """Trains to program.cadence.total, resuming from the stage's checkpoints.
  -> (final state, sharded; its evaluation, {} without one); with program.select_by, the
  selected checkpoint's params and step in place of the final ones, and its evaluation."""
  every = program.cadence
  state, shardings = sharding.create_sharded(program.init_state, program.mesh,
                                             jax.random.PRNGKey(program.seed))
  # A fresh step counter is weakly typed (it starts as a Python 0) and a restored one is
  # not; one type keeps fresh and resumed runs on the same compiled step.
  state = state.replace(step=state.step.astype(state.step.dtype))
  checkpointer = Checkpointer(os.path.join(program.workdir, "checkpoints"),
                              keep=every.keep_checkpoints, stage=program.name)
  log_cfg = program.log or ml_collections.ConfigDict(dict(tensorboard=True, wandb_project=""))
  run_log = RunLog(program.workdir, stage=program.name, tensorboard=log_cfg.tensorboard,
                   wandb_project=log_cfg.wandb_project)
  final_eval = None
  try:
    state, start = _restore_or_begin(program, state, shardings, checkpointer)
    advance = program.build_advance(shardings)
    with progress_bar(total=every.total, initial=start, desc=program.name) as bar:
      t0 = time.time()
      for index in range(start, every.total):
        state, metrics = advance(state, index)
        done = index + 1
        _check_finite(program, done, metrics, checkpointer)
        if every.due(every.log_every, done):
          rate = (done - start) / max(time.time() - t0, 1e-9)
          run_log.write(done, {**to_floats(metrics), f"{program.unit}s_per_s": rate},
                        prefix=program.metric_prefix)
          bar.set_postfix({k: f"{float(metrics[k]):.3f}" for k in program.progress_keys})
        if program.evaluate is not None and every.due(every.eval_every, done):
          final_eval = to_floats(program.evaluate(state))
          run_log.write(done, final_eval, prefix="eval/")
          if program.select_by is not None:
            _keep_if_best(program, state, final_eval)
        if every.due(every.checkpoint_every, done):
          checkpointer.save(done, state, extra={k: it.get_state()
                                                for k, it in program.iterators.items()})
        bar.update(1)
  finally:
    checkpointer.close()
    run_log.close()
    for iterator in program.iterators.values():
      iterator.close()  # stops a prefetching worker
  if final_eval is None:  # resumed from the last checkpoint: nothing left to train
    final_eval = to_floats(program.evaluate(state)) if program.evaluate is not None else {}
  if program.select_by is not None:
    return _selected(program, state)
  return state, final_eval
