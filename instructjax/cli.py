"""The stage programs' command line: --config (ml_collections), --workdir, --distributed
(with --coordinator_address, --num_processes, --process_id), --stage. Nothing here runs at import: the flags are defined by `main`, which only a
program's `python -m` entry point calls. Overrides follow the config file:
--config.sft.lr=3e-4. An override of a field the config does not have stops the program
before anything runs, with a one-line message naming the section and its fields."""

from __future__ import annotations

import difflib
import re
import sys
from typing import Any, Callable, Sequence

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from instructjax import compile_time, multihost
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


def define_config_flag() -> flags.FlagHolder:
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


def main(run: Callable[..., Any], *, stages: Sequence[str] = (),
         default_stage: str = "") -> None:
  """A stage program's command line: defines --config, --workdir, --distributed (and
  --stage when the program trains several stages), parses argv, and calls
  run(config, workdir) or run(config, workdir, stage=...). Flags exist only once this
  runs, so importing a program defines none."""
  config_flag = define_config_flag()
  workdir_flag = flags.DEFINE_string("workdir", "runs/demo", "the run's directory")
  distributed_flag = flags.DEFINE_bool(
      "distributed", False, "multi-host run: join the other processes with "
      "jax.distributed.initialize() first (the coordinator, process count and id come "
      "from the flags below or from the TPU / SLURM / JAX_COORDINATOR_ADDRESS environment)")
  coordinator_flag = flags.DEFINE_string(
      "coordinator_address", None, "with --distributed: host:port of process 0")
  processes_flag = flags.DEFINE_integer("num_processes", None,
                                        "with --distributed: how many processes")
  process_id_flag = flags.DEFINE_integer("process_id", None,
                                         "with --distributed: this process's index")
  timeout_flag = flags.DEFINE_integer(
      "coordinator_timeout_s", 120, "with --distributed: how long to wait for every "
      "process to join before giving up with an error")
  stage_flag = None
  if stages:
    stage_flag = flags.DEFINE_enum("stage", default_stage, list(stages),
                                   "which stage this program runs")

  def program(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    if distributed_flag.value:
      multihost.start(coordinator_address=coordinator_flag.value,
                      num_processes=processes_flag.value, process_id=process_id_flag.value,
                      initialization_timeout_s=timeout_flag.value)
    with multihost.fail_fast():
      config = config_flag.value
      validate(config)
      multihost.check_same_config(config)
      workdir = check_workdir(workdir_flag.value)
      compile_time.use_persistent_cache(workdir)  # a rerun or resume skips compiling
      if stage_flag is None:
        run(config, workdir)
      else:
        run(config, workdir, stage=stage_flag.value)
  # absl.app defines flags of its own (--pdb, profiling) when imported: only here.
  from absl import app  # pylint: disable=import-outside-toplevel
  app.run(program)
