"""Every test sees 8 CPU devices, so sharded code runs on a faked mesh; and the `:test`
config's stages, run once per session by their commands, are shared by every test file
that needs finished stages."""

import os

import filelock
import pytest

# Tests compile far more than they compute: XLA's cheapest backend optimisation level
# cuts the suite's CPU time by about a third. On a loaded 2-core machine the 8 fake
# devices can wait long for each other, so the collective timeout is raised from 40 s.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_backend_optimization_level=0"
    " --xla_cpu_collective_call_terminate_timeout_seconds=600").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The longest files start first, so that with `pytest -n 2 --dist loadfile
# --no-loadscope-reorder` (xdist would otherwise order files by test count) the two
# workers finish together instead of one running the end-to-end tests alone at the end.
# test_multihost.py or test_resume.py builds the session's test_run first, which
# test_ppo_program.py and test_notebooks.py then read.
_SLOW_FIRST = ("test_multihost.py", "test_pipeline.py", "test_resume.py",
               "test_smoke_pipelines.py", "test_steps_sharded.py", "test_ppo_step.py", "test_ppo_program.py",
               "test_notebooks.py")


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.basename(str(item.fspath))
    return _SLOW_FIRST.index(name) if name in _SLOW_FIRST else len(_SLOW_FIRST)
  items.sort(key=rank)  # stable: the order within each file is kept


@pytest.fixture(scope="session")
def shared_tmp(tmp_path_factory):
  """A directory every xdist worker of this session sees (the per-worker base's parent)."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def programs(shared_tmp):
  from stage_commands import Programs  # pylint: disable=import-outside-toplevel
  return Programs(shared_tmp / "xla_cache")


@pytest.fixture(scope="session")
def test_run(shared_tmp, programs):
  """(config, run dir) of every stage of the `:test` config (stage_commands.PPO_OVERRIDES
  for PPO), each run uninterrupted by its command. Built once per session, whichever
  worker asks first, while the others wait; read-only for the tests."""
  from instructjax import stage_table  # pylint: disable=import-outside-toplevel
  from stage_commands import test_config  # pylint: disable=import-outside-toplevel
  run_dir, config = shared_tmp / "test_run", test_config()
  with filelock.FileLock(str(shared_tmp / "test_run.lock")):
    programs.ensure(run_dir, [s.name for s in stage_table.stages_for(config)])
  return config, run_dir
