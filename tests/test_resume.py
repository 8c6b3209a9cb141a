"""Exact resume after SIGKILL: each stage program (pretrain, sft, rm, ppo_ptx) and the
whole pipeline killed in the middle of a stage.

Each stage's command runs once uninterrupted (the reference) and once SIGKILLed after
its first checkpoint exists, then rerun to completion. The exported parameters, the
export card, the last checkpoint (parameters, optimizer state, step, rng, data
positions; for PPO also the KL coefficient and the EMA policy) and the metrics of every
step must be bit-for-bit equal to the reference's: same config, same 8 CPU devices.
The kill lands at a random moment after checkpoint 3 is complete for sft and rm; for
pretrain while the asynchronous save of checkpoint 6 is half-written; for PPO-ptx (4
iterations, checkpoints at 2 and 4, so that the rerun replays two iterations with the
prompt and pretraining-data iterators restored) while checkpoint 4 is half-written.

The pipeline (`python -m instructjax.pipeline`) starts from the reference's exports of
the stages before PPO and is killed in PPO while checkpoint 4 is half-written; its rerun
must say it resumed PPO, leave the finished exports untouched, and finish with ppo and
ppo_ptx exports equal to the per-stage reference runs' (the pipeline runs the same stage
code with the same config; its evaluation and report are not compared).

All runs are subprocesses sharing a persistent XLA compilation cache: compiling is most
of a run's time, and the interrupted runs compile what the reference already did. The
reference runs are the session's `test_run` (conftest.py), each stage's command run once
uninterrupted, so both sides are the very command a user reruns.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time

import jax
import numpy as np
import pytest
from flax.core import meta

from instructjax import ppo, sharding, stage_export, stage_table
from instructjax.checkpoints import Checkpointer
from instructjax.config import model_config
from instructjax.models import CausalLM, ScalarModel
from instructjax.train_state import make_init_state

PARENTS = {"pretrain": (), "sft": ("pretrain",), "rm": ("sft", "sft_big"), "ppo": ("sft", "rm"),
           "ppo_ptx": ("sft", "rm")}
# stage -> (the checkpoint after which the kill lands, the last checkpoint)
CHECKPOINTS = {"ppo_ptx": (2, 4)}


def _listing(directory) -> list[str]:
  return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def _kill(proc, ckpt_dir, *, after: int, during_save_of: int | None = None, output,
          timeout: float = 300) -> str:
  """SIGKILLs proc once checkpoint `after` in ckpt_dir is complete: as soon as the
  temporary directory of checkpoint `during_save_of`'s asynchronous save appears, or,
  without one, after a random delay of 0-0.3 s.
  -> a description of the moment, for failure messages."""
  deadline = time.monotonic() + timeout

  def wait_for(condition, what):
    while not condition():
      if proc.poll() is not None:
        raise AssertionError(f"the run exited (rc={proc.returncode}) before {what}:\n"
                             + open(output, encoding="utf-8").read()[-3000:])
      assert time.monotonic() < deadline, f"timed out waiting for {what}"
      time.sleep(0.005)

  wait_for(lambda: str(after) in _listing(ckpt_dir), f"checkpoint {after} was complete")
  if during_save_of is not None:
    wait_for(lambda: any(n.startswith(f"{during_save_of}.") for n in _listing(ckpt_dir)),
             f"checkpoint {during_save_of}'s save began")
    moment = f"during the save of checkpoint {during_save_of}"
  else:
    delay = random.uniform(0.0, 0.3)
    time.sleep(delay)
    moment = f"{delay:.3f} s after checkpoint {after}"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return f"{moment}; checkpoints then: {_listing(ckpt_dir)}"


def _start_and_kill(programs, run_dir, stage: str, ckpt_dir, output, **when) -> str:
  """Starts `stage`'s command (or the pipeline's) in run_dir and SIGKILLs it (_kill)."""
  with open(output, "w", encoding="utf-8") as log:
    proc = programs.start(run_dir, stage, log)
    try:
      moment = _kill(proc, ckpt_dir, output=output, **when)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  assert proc.returncode == -signal.SIGKILL, moment
  return moment


def _rm_config(config):
  section = stage_table.rm_trunk(config).model_section  # the RM has its trunk's shape
  return model_config(config[section], field=f"config.{section}")


def _model(config, stage: str):
  if stage == "rm":
    return ScalarModel(_rm_config(config), likelihood_feature=config.rm.likelihood_feature)
  return CausalLM(model_config(config.model, field="config.model"))


def _export(config, run_dir, stage: str):
  mesh = sharding.make_mesh(**config.mesh)
  abstract = sharding.abstract_params(_model(config, stage), mesh)
  params, card = stage_export.load_export(str(run_dir / stage), abstract,
                                          expected_stages=(stage,))
  return jax.device_get(params), card


def _init_state(config, stage: str):
  """The stage's state factory, as its program builds it: rng -> boxed state."""
  if stage in ppo.STAGES:
    cfg = model_config(config.model, field="config.model")
    policy, value_model, _ = ppo.make_models(
        cfg, rm_cfg=_rm_config(config), likelihood_feature=config.rm.likelihood_feature)
    return ppo.make_init_state(config.ppo, policy, value_model)
  return make_init_state(_model(config, stage), config[stage], config.data.buckets[0])


def _last_checkpoint(config, run_dir, stage: str):
  """-> (step, side data, the state's arrays) of the newest checkpoint."""
  mesh = sharding.make_mesh(**config.mesh)
  abstract = jax.eval_shape(_init_state(config, stage), jax.random.PRNGKey(0))
  checkpointer = Checkpointer(str(run_dir / stage / "checkpoints"), stage=stage)
  state, extra, step = checkpointer.restore_latest(
      meta.unbox(abstract), sharding.logical_shardings(abstract, mesh))
  checkpointer.close()
  arrays = dict(params=state.params, opt_state=state.opt_state, step=state.step,
                rng=state.rng, skipped_updates=state.skipped_updates)
  if stage in ppo.STAGES:
    arrays.update(kl_coef=state.kl_coef, ema_policy=state.ema_policy)
  return step, extra, jax.device_get(arrays)


def _metrics(run_dir, stage: str) -> dict:
  """{(step, keys): values} of metrics.jsonl, the last line of each (a rerun repeats the
  steps after its checkpoint), wall-clock times left out."""
  lines = {}
  with open(run_dir / stage / "metrics.jsonl", encoding="utf-8") as f:
    for line in f:
      row = {k: v for k, v in json.loads(line).items()
             if not (k == "time" or k.startswith("time_") or k.endswith("per_s"))}
      lines[row["step"], tuple(sorted(row))] = row
  return lines


def _assert_trees_equal(got, expected, what: str):
  assert jax.tree.structure(got) == jax.tree.structure(expected), what
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b, err_msg=f"{what} {jax.tree_util.keystr(path)}")


def _assert_exports_equal(config, run_dir, ref_dir, stage: str, moment: str):
  params, card = _export(config, run_dir, stage)
  ref_params, ref_card = _export(config, ref_dir, stage)
  assert card == ref_card, f"{moment}: {stage}"  # steps, final evals, truncation counts, ...
  _assert_trees_equal(params, ref_params, f"{moment}: {stage}'s exported params")


@pytest.mark.parametrize("stage, when", [
    ("pretrain", "during_save"), ("sft", "random"), ("rm", "random"),
    ("ppo_ptx", "during_save")])
def test_killed_stage_resumes_exactly(programs, test_run, tmp_path, stage, when):
  config, ref_dir = test_run  # the uninterrupted runs
  first, last = CHECKPOINTS.get(stage, (3, 6))

  # The interrupted run starts from the same testbed files and previous-stage exports.
  run_dir = tmp_path / "run"
  shutil.copytree(ref_dir / "testbed", run_dir / "testbed")
  for parent in PARENTS[stage]:
    shutil.copytree(ref_dir / parent / "export", run_dir / parent / "export")
  ckpt_dir = run_dir / stage / "checkpoints"
  moment = _start_and_kill(programs, run_dir, stage, ckpt_dir, tmp_path / "killed.log",
                           after=first, during_save_of=last if when == "during_save" else None)
  assert not stage_export.is_exported(str(run_dir / stage)), moment
  if when == "during_save":
    assert _listing(ckpt_dir) == [str(first), f"{last}.orbax-checkpoint-tmp"], moment

  rerun = programs.run(run_dir, stage)
  unit = "iteration" if stage in ppo.STAGES else "step"
  resumed = f"[{stage}] resumed from {unit} {first}" if when == "during_save" else (
      f"[{stage}] resumed from {unit} ")
  assert resumed in rerun.stdout, f"{moment}\n{rerun.stdout}"
  assert _listing(ckpt_dir) == [str(first), str(last)], moment

  _assert_exports_equal(config, run_dir, ref_dir, stage, moment)
  step, extra, arrays = _last_checkpoint(config, run_dir, stage)
  ref_step, ref_extra, ref_arrays = _last_checkpoint(config, ref_dir, stage)
  assert step == ref_step == last
  assert extra == ref_extra, moment  # data positions (and truncation counts)
  _assert_trees_equal(arrays, ref_arrays, f"{moment}: checkpoint {last}")
  assert _metrics(run_dir, stage) == _metrics(ref_dir, stage), moment


def _export_files(stage_dir) -> dict:
  """{path: (size, mtime, bytes)} of every file of the stage's export."""
  files = {}
  for root, _, names in os.walk(stage_dir / "export"):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[path] = (os.path.getsize(path), os.stat(path).st_mtime_ns, f.read())
  return files


def test_killed_pipeline_resumes_mid_stage(programs, test_run, tmp_path):
  config, ref_dir = test_run  # the uninterrupted runs
  names = [s.name for s in stage_table.stages_for(config)]
  before_ppo = names[:names.index("ppo")]  # pretrain, pretrain_big, sft, sft_big, rm
  # The pipeline finds the reference's stages before PPO finished (their own kills are
  # tested above) and is killed in PPO, while checkpoint 4 is half-written.
  run_dir = tmp_path / "run"
  shutil.copytree(ref_dir / "testbed", run_dir / "testbed")
  for stage in before_ppo:
    shutil.copytree(ref_dir / stage / "export", run_dir / stage / "export")
  before = {stage: _export_files(run_dir / stage) for stage in before_ppo}
  first, last = CHECKPOINTS["ppo_ptx"]
  moment = _start_and_kill(programs, run_dir, "pipeline", run_dir / "ppo" / "checkpoints",
                           tmp_path / "killed.log", after=first, during_save_of=last)
  assert not stage_export.is_exported(str(run_dir / "ppo")), moment

  rerun = programs.run(run_dir, "pipeline", timeout=900)
  for stage in before_ppo:
    assert f"[{stage}] finished earlier, reused" in rerun.stdout, f"{moment}\n{rerun.stdout}"
    assert _export_files(run_dir / stage) == before[stage], f"{moment}: {stage} was rewritten"
  assert f"[ppo] resumed from iteration {first}" in rerun.stdout, f"{moment}\n{rerun.stdout}"
  assert os.path.exists(run_dir / "report.md"), moment
  for stage in ("ppo", "ppo_ptx"):
    _assert_exports_equal(config, run_dir, ref_dir, stage, moment)
