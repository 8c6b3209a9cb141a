"""Experiment configs: loading `experiments/*.py:variant` files and validating them.

Configs are ml_collections ConfigDicts returned by `get_config(variant)`; command-line
overrides use the usual flags (`--config=experiments/x.py:quick --config.ppo.kl_coef=0.05`).
They are locked, so an unknown key fails, and `validate` checks values up front with a
message naming the field.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from instructjax import advantage_estimators
from instructjax.models.model_config import ModelConfig

# Inside the package, so `pip install .` carries it (experiments/ is not installed).
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                              "instructgpt_tiny.py")


class ConfigError(ValueError):
  """A config field with an impossible value; the message names the field."""


def load_config(spec: str = DEFAULT_CONFIG) -> ml_collections.ConfigDict:
  """'path/to/file.py[:variant]' -> the validated, locked config (for notebooks/tests)."""
  path, _, variant = spec.partition(":")
  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location("instructjax_experiment", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(variant) if variant else module.get_config()
  config.lock()
  validate(config)
  return config


def check_workdir(workdir: str) -> str:
  """-> the absolute run directory, or ConfigError if it cannot be created or written.

  Checked before anything runs, so a bad --workdir fails at once, not after a stage's
  training when the first checkpoint is written. Creates nothing.
  """
  path = os.path.abspath(workdir)
  existing = path
  while not os.path.exists(existing):  # the nearest ancestor that exists
    existing = os.path.dirname(existing)
  problem = None
  if not os.path.isdir(existing):
    problem = (f"{existing} is a file" if existing == path else
               f"{existing} is a file, so no directory can be made under it")
  elif not os.access(existing, os.W_OK | os.X_OK):
    problem = f"{existing} is not writable"
  if problem:
    raise ConfigError(f"--workdir={workdir}: the run directory cannot be written: {problem}")
  return path


def model_config(section: ml_collections.ConfigDict, *, field: str) -> ModelConfig:
  try:
    return ModelConfig(**section.to_dict())
  except (TypeError, ValueError) as error:
    raise ConfigError(f"{field}: {error}") from error


def _require(condition: bool, field: str, message: str) -> None:
  if not condition:
    raise ConfigError(f"config.{field}: {message}")


_TRAIN_SECTIONS = ("pretrain", "pretrain_big", "sft", "sft_big", "rm", "ppo", "dpo", "rloo",
                   "grpo")
_RL_SECTIONS = ("ppo", "rloo", "grpo")  # read by instructjax.ppo
# The preference losses of the dpo section (instructjax.steps.dpo_step), kept here so
# validating a config imports no model code.
_PREFERENCE_LOSSES = ("dpo", "ipo", "plackett_luce")


def _validate_rl(ppo: ml_collections.ConfigDict, section: str) -> None:
  _require(ppo.kl_coef >= 0, f"{section}.kl_coef", f"{ppo.kl_coef} must be >= 0")
  _require(ppo.ptx_coef >= 0, f"{section}.ptx_coef", f"{ppo.ptx_coef} must be >= 0")
  _require(0 < ppo.clip_eps < 1, f"{section}.clip_eps", f"{ppo.clip_eps} must be in (0, 1)")
  _require(0 <= ppo.gae_lambda <= 1, f"{section}.gae_lambda",
           f"{ppo.gae_lambda} must be in [0, 1]")
  _require(0 <= ppo.gamma <= 1, f"{section}.gamma", f"{ppo.gamma} must be in [0, 1]")
  _require(ppo.temperature > 0, f"{section}.temperature", f"{ppo.temperature} must be > 0")
  _require(ppo.rollout_batch_size % ppo.minibatch_size == 0, f"{section}.minibatch_size",
           f"rollout_batch_size={ppo.rollout_batch_size} is not divisible by "
           f"minibatch_size={ppo.minibatch_size}")
  if ppo.adaptive_kl:
    _require(ppo.target_kl > 0, f"{section}.target_kl", "must be > 0 when adaptive_kl is on")
  _require(0 <= ppo.ema_decay < 1, f"{section}.ema_decay",
           f"{ppo.ema_decay} must be in [0, 1)")
  _require(ppo.warmup_steps >= 0, f"{section}.warmup_steps",
           f"{ppo.warmup_steps} must be >= 0")
  _require(ppo.kl_loss_coef >= 0, f"{section}.kl_loss_coef",
           f"{ppo.kl_loss_coef} must be >= 0")
  wrong = advantage_estimators.problem(ppo.advantage, ppo.group_size, ppo.rollout_batch_size)
  if wrong:
    raise ConfigError(f"config.{section}.{wrong[0]}={wrong[1]}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every value that can be checked before building anything."""
  for name in ("model", "big_model"):
    if name in config:
      model_config(config[name], field=f"config.{name}")
  for axis in ("data", "fsdp", "tensor"):
    size = config.mesh[axis]
    _require(size == -1 or size >= 1, f"mesh.{axis}", f"{size} must be >= 1 or -1")
  _require(sum(config.mesh[a] == -1 for a in ("data", "fsdp", "tensor")) <= 1, "mesh",
           "at most one axis may be -1")
  for section in _TRAIN_SECTIONS:
    if section not in config:
      continue
    cfg = config[section]
    for field in ("steps", "batch_size", "accum_steps"):
      if field in cfg:
        _require(cfg[field] >= 1, f"{section}.{field}", f"{cfg[field]} must be >= 1")
    if "batch_size" in cfg and "accum_steps" in cfg:
      _require(cfg.batch_size % cfg.accum_steps == 0, f"{section}.accum_steps",
               f"batch_size={cfg.batch_size} is not divisible by accum_steps={cfg.accum_steps}")
    if "lr" in cfg:
      _require(cfg.lr > 0, f"{section}.lr", f"{cfg.lr} must be positive")
    if "warmup_steps" in cfg and "steps" in cfg:
      _require(0 <= cfg.warmup_steps <= cfg.steps, f"{section}.warmup_steps",
               f"{cfg.warmup_steps} must be in [0, steps={cfg.steps}]")
  for section in (s for s in _RL_SECTIONS if s in config):
    _validate_rl(config[section], section)
  if "rm" in config:
    trunk = config.rm.get("trunk", "sft")
    _require(trunk in ("sft", "sft_big"), "rm.trunk", f"{trunk!r} is not 'sft' or 'sft_big'")
    _require(trunk in config, "rm.trunk",
             f"{trunk!r} needs a config.{trunk} section (its training), which this config "
             "lacks")
  if "dpo" in config:
    dpo = config.dpo
    _require(dpo.loss in _PREFERENCE_LOSSES, "dpo.loss",
             f"{dpo.loss!r} is not one of {_PREFERENCE_LOSSES}")
    _require(dpo.coef > 0, "dpo.coef", f"{dpo.coef} must be > 0 (beta, or IPO's tau)")
  data = config.data
  _require(data.max_prompt_len >= 1, "data.max_prompt_len", "must be >= 1")
  _require(data.max_len > data.max_prompt_len, "data.max_len",
           f"{data.max_len} must exceed max_prompt_len={data.max_prompt_len}")
  _require(list(data.buckets) == sorted(data.buckets) and data.buckets[-1] >= data.max_len,
           "data.buckets", f"{tuple(data.buckets)} must be increasing and end >= max_len")
  if "model" in config:
    _require(data.max_len <= config.model.max_len, "data.max_len",
             f"{data.max_len} exceeds model.max_len={config.model.max_len}")
  packed = data.pack_pretraining
  for name in (n for n in ("model", "big_model") if n in config and packed):
    _require(2 <= packed <= config[name].max_len, "data.pack_pretraining",
             f"{packed} must be 0 (no packing) or in [2, {name}.max_len="
             f"{config[name].max_len}]")
