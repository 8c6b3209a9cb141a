"""Exact resume after SIGKILL, for each stage program (pretrain, sft, rm).

Each stage's command runs once uninterrupted (the reference) and once SIGKILLed after
its first checkpoint exists, then rerun to completion. The exported parameters, the
export card and the last checkpoint (parameters, optimizer state, step, rng, data
position) must be bit-for-bit equal to the reference's: same config, same 8 CPU devices.
The kill lands at a random moment after checkpoint 3 is complete for sft and rm, and for
pretrain while the asynchronous save of checkpoint 6 is half-written.

All runs are subprocesses sharing a persistent XLA compilation cache: compiling is most
of a run's time, and the interrupted runs compile what the reference already did. (The
reference is a subprocess too, so both sides are the very command a user reruns.)
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax.core import meta

from instructjax import sft, sharding, stage_export
from instructjax.checkpoints import Checkpointer
from instructjax.config import DEFAULT_CONFIG, load_config, model_config
from instructjax.models import CausalLM, ScalarModel

CONFIG = DEFAULT_CONFIG + ":test"  # 6 steps per stage, checkpoints at 3 and 6
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARENT = {"pretrain": None, "sft": "pretrain", "rm": "sft"}


class _Programs:
  """Runs the stage commands with a shared compilation cache."""

  def __init__(self, cache_dir):
    self.env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache_dir),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")

  @staticmethod
  def command(run_dir, stage: str) -> list[str]:
    program = "instructjax.reward" if stage == "rm" else "instructjax.sft"
    flags = [] if stage == "rm" else [f"--stage={stage}"]
    return [sys.executable, "-m", program, *flags, f"--config={CONFIG}",
            f"--workdir={run_dir}"]

  def start(self, run_dir, stage: str, log) -> subprocess.Popen:
    return subprocess.Popen(self.command(run_dir, stage), cwd=REPO, env=self.env, stdout=log,
                            stderr=subprocess.STDOUT)

  def run(self, run_dir, stage: str) -> subprocess.CompletedProcess:
    result = subprocess.run(self.command(run_dir, stage), cwd=REPO, env=self.env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"{stage} in {run_dir}:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
  return _Programs(tmp_path_factory.mktemp("xla_cache"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(config, run dir) of the uninterrupted runs; a test runs the stages it needs."""
  return load_config(CONFIG), tmp_path_factory.mktemp("reference")


def _listing(directory) -> list[str]:
  return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def _kill(proc, ckpt_dir, *, when: str, output) -> str:
  """SIGKILLs proc after ckpt_dir/3 is complete: after a random delay (when="random") or
  as soon as checkpoint 6's temporary directory appears (when="during_save").
  -> a description of the moment, for failure messages."""
  deadline = time.monotonic() + 300

  def wait_for(condition, what):
    while not condition():
      if proc.poll() is not None:
        raise AssertionError(f"the run exited (rc={proc.returncode}) before {what}:\n"
                             + open(output, encoding="utf-8").read()[-3000:])
      assert time.monotonic() < deadline, f"timed out waiting for {what}"
      time.sleep(0.005)

  wait_for(lambda: "3" in _listing(ckpt_dir), "checkpoint 3 was complete")
  if when == "during_save":
    wait_for(lambda: any(n.startswith("6.") for n in _listing(ckpt_dir)),
             "checkpoint 6's save began")
    moment = "during the save of checkpoint 6"
  else:
    delay = random.uniform(0.0, 0.3)
    time.sleep(delay)
    moment = f"{delay:.3f} s after checkpoint 3"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return f"{moment}; checkpoints then: {_listing(ckpt_dir)}"


def _model(config, stage: str):
  cfg = model_config(config.model, field="config.model")
  return ScalarModel(cfg) if stage == "rm" else CausalLM(cfg)


def _export(config, run_dir, stage: str):
  mesh = sharding.make_mesh(**config.mesh)
  abstract = sharding.abstract_params(_model(config, stage), mesh)
  params, card = stage_export.load_export(str(run_dir / stage), abstract,
                                          expected_stages=(stage,))
  return jax.device_get(params), card


def _last_checkpoint(config, run_dir, stage: str):
  """-> (step, side data, the state's arrays) of the newest checkpoint."""
  mesh = sharding.make_mesh(**config.mesh)
  init = sft.make_init_state(_model(config, stage), config[stage], config.data.buckets[0])
  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  checkpointer = Checkpointer(str(run_dir / stage / "checkpoints"), stage=stage)
  state, extra, step = checkpointer.restore_latest(
      meta.unbox(abstract), sharding.logical_shardings(abstract, mesh))
  checkpointer.close()
  arrays = dict(params=state.params, opt_state=state.opt_state, step=state.step,
                rng=state.rng, skipped_updates=state.skipped_updates)
  return step, extra, jax.device_get(arrays)


def _assert_trees_equal(got, expected, what: str):
  assert jax.tree.structure(got) == jax.tree.structure(expected), what
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b, err_msg=f"{what} {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("stage, when", [
    ("pretrain", "during_save"), ("sft", "random"), ("rm", "random")])
def test_killed_stage_resumes_exactly(programs, reference, tmp_path, stage, when):
  config, ref_dir = reference
  chain = {"pretrain": ["pretrain"], "sft": ["pretrain", "sft"],
           "rm": ["pretrain", "sft", "rm"]}[stage]
  for name in chain:
    if not stage_export.is_exported(str(ref_dir / name)):
      programs.run(ref_dir, name)

  # The interrupted run starts from the same testbed files and previous-stage export.
  run_dir = tmp_path / "run"
  shutil.copytree(ref_dir / "testbed", run_dir / "testbed")
  if PARENT[stage]:
    shutil.copytree(ref_dir / PARENT[stage] / "export", run_dir / PARENT[stage] / "export")
  ckpt_dir = run_dir / stage / "checkpoints"
  output = tmp_path / "killed.log"
  with open(output, "w", encoding="utf-8") as log:
    proc = programs.start(run_dir, stage, log)
    try:
      moment = _kill(proc, ckpt_dir, when=when, output=output)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  assert proc.returncode == -signal.SIGKILL, moment
  assert not stage_export.is_exported(str(run_dir / stage)), moment
  if when == "during_save":
    assert _listing(ckpt_dir) == ["3", "6.orbax-checkpoint-tmp"], moment

  rerun = programs.run(run_dir, stage)
  resumed = {"during_save": f"[{stage}] resumed from step 3"}.get(when, f"[{stage}] resumed")
  assert resumed in rerun.stdout, f"{moment}\n{rerun.stdout}"
  assert _listing(ckpt_dir) == ["3", "6"], moment

  params, card = _export(config, run_dir, stage)
  ref_params, ref_card = _export(config, ref_dir, stage)
  assert card == ref_card, moment  # steps, final evals, truncation counts, reward bias
  _assert_trees_equal(params, ref_params, f"{moment}: exported params")
  step, extra, arrays = _last_checkpoint(config, run_dir, stage)
  ref_step, ref_extra, ref_arrays = _last_checkpoint(config, ref_dir, stage)
  assert step == ref_step == 6
  assert extra == ref_extra, moment  # data position and truncation counts
  _assert_trees_equal(arrays, ref_arrays, f"{moment}: checkpoint 6")
