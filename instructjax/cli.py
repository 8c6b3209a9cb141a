"""Command-line flags shared by the stage programs: --config (ml_collections) and
--workdir. Overrides follow the config file: --config.sft.lr=3e-4. An override of a field
the config does not have stops the program before anything runs, with a one-line message
naming the section and its fields."""

from __future__ import annotations

import difflib
import re
import sys

import jax
import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from instructjax.config import DEFAULT_CONFIG, check_workdir, load_config, validate


# An override as ml_collections finds them in argv: --config.ppo.lr=1e-5, --noconfig.x.
_OVERRIDE = re.compile(r"-{1,2}(?:no)?config\.([^=]+)")


def _override_paths(argv) -> list[str]:
  """The config fields that argv overrides: --config.ppo.lr=1e-5 -> 'ppo.lr'."""
  return [match.group(1) for match in map(_OVERRIDE.match, argv) if match]


def _unknown_override(config, paths) -> str | None:
  """The first of the override paths ('ppo.lr', ...) that names a field `config` lacks,
  as a message naming the section and its fields; None if every path exists."""
  for path in paths:
    node, where = config, "config"
    for key in path.split("."):
      key, indexed = key.partition("[")[0], "[" in key  # data.buckets[0]: check "buckets"
      if not isinstance(node, ml_collections.ConfigDict):
        return (f"--config.{path}: {where} is a {type(node).__name__} value, not a section "
                f"with fields")
      if key not in node:
        known = sorted(node.keys())
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return (f"--config.{path}: {where} has no field {key!r}{hint}; known fields: "
                f"{', '.join(known)}")
      if indexed:
        break
      node, where = node[key], f"{where}.{key}"
  return None


def _define_config_flag() -> flags.FlagHolder:
  """--config, where an unknown override is a flags error naming the field.

  ml_collections applies the overrides while it parses the flag, and one naming a field
  the config lacks fails there with a bare KeyError or AttributeError "'foo'" under a
  long traceback. As a flags error, absl prints it as one line and exits with status 1.
  """
  try:
    holder = config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "experiment config: path/to/file.py[:variant]",
        lock_config=True)
  except (AttributeError, KeyError):
    # Without --config on the command line the default config is loaded, and the
    # overrides applied, right here: when the flag is defined, before absl parses argv.
    problem = _unknown_override(load_config(DEFAULT_CONFIG), _override_paths(sys.argv))
    if problem is None:
      raise
    raise SystemExit(f"FATAL Flags parsing error: {problem}") from None

  flag = flags.FLAGS[holder.name]
  parse = flag.parse

  def parse_or_name_the_field(argument):  # what absl calls for --config=... in argv
    try:
      return parse(argument)
    except (AttributeError, KeyError) as error:
      problem = _unknown_override(flag.parser.parse(argument), _override_paths(sys.argv))
      if problem is None:
        raise
      raise flags.IllegalFlagValueError(problem) from error
  flag.parse = parse_or_name_the_field
  return holder


_CONFIG = _define_config_flag()
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
