"""Command-line flags shared by the stage programs: --config (ml_collections) and
--workdir. Overrides follow the config file: --config.sft.lr=3e-4."""

from __future__ import annotations

import jax
from absl import flags, logging
from ml_collections import config_flags

from instructjax.config import DEFAULT_CONFIG, check_workdir, validate

_CONFIG = config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "experiment config: path/to/file.py[:variant]",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "the run's directory")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "multi-host run: call jax.distributed.initialize() first (it "
    "reads the coordinator from the TPU / SLURM / JAX_COORDINATOR_ADDRESS environment)")
_STAGE = flags.DEFINE_string(
    "stage", "", "which stage a program runs: instructjax.sft takes pretrain, pretrain_big "
    "or sft (default); instructjax.ppo takes ppo (default) or ppo_ptx")


def stage(default: str) -> str:
  return _STAGE.value or default


def config_and_workdir():
  """The parsed, validated config and the absolute run directory (call inside main)."""
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  config = _CONFIG.value
  validate(config)
  return config, check_workdir(_WORKDIR.value)
