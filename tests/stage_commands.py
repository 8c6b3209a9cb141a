"""The stage programs as a user runs them (`python -m instructjax.<program>`), on the
`:test` config, for the tests that need real runs: subprocesses sharing one persistent
XLA compilation cache, since compiling is most of a run's time at this size."""

from __future__ import annotations

import os
import subprocess
import sys

from instructjax import stage_export, stage_table
from instructjax.config import DEFAULT_CONFIG, load_config

CONFIG = DEFAULT_CONFIG + ":test"  # 6 steps per stage, checkpoints at 3 and 6
# PPO gets 4 iterations with checkpoints at 2 and 4 (the :test variant has 2 and 1), and
# gamma = 1, so that PPO-ptx's pull towards the pretraining text shows in a few updates.
PPO_OVERRIDES = {"iterations": 4, "checkpoint_every": 2, "ptx_coef": 1.0}
PPO_FLAGS = [f"--config.ppo.{key}={value}" for key, value in PPO_OVERRIDES.items()]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAMS = {**{s.name: s.program for s in stage_table.STAGES},
            "pipeline": "instructjax.pipeline"}


def test_config():
  """The config the commands run, as the programs see it after PPO_FLAGS."""
  config = load_config(CONFIG)
  config.ppo.update(PPO_OVERRIDES)
  return config


class Programs:
  """Runs the stage commands (or the pipeline's) with a shared compilation cache."""

  def __init__(self, cache_dir):
    self.env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache_dir),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")

  @staticmethod
  def command(run_dir, stage: str) -> list[str]:
    flags = [f"--stage={stage}"] if stage != "pipeline" else []
    flags += [f"--config={CONFIG}", f"--workdir={run_dir}"]
    if stage in ("ppo", "ppo_ptx", "pipeline"):
      flags += PPO_FLAGS  # after --config, as ml_collections requires
    return [sys.executable, "-m", PROGRAMS[stage], *flags]

  def start(self, run_dir, stage: str, log) -> subprocess.Popen:
    return subprocess.Popen(self.command(run_dir, stage), cwd=REPO, env=self.env, stdout=log,
                            stderr=subprocess.STDOUT)

  def run(self, run_dir, stage: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(self.command(run_dir, stage), cwd=REPO, env=self.env,
                            capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{stage} in {run_dir}:\n{result.stderr[-3000:]}"
    return result

  def ensure(self, run_dir, stages) -> None:
    """Runs each of the stages that is not exported in run_dir yet, in order."""
    for name in stages:
      if not stage_export.is_exported(str(run_dir / name)):
        self.run(run_dir, name)
