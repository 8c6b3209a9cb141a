"""Every test sees 8 CPU devices, so sharded code runs on a faked mesh."""

import os

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
_SLOW_FIRST = ("test_resume.py", "test_pipeline.py", "test_notebooks.py",
               "test_ppo_program.py", "test_steps_sharded.py", "test_ppo_step.py")


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.basename(str(item.fspath))
    return _SLOW_FIRST.index(name) if name in _SLOW_FIRST else len(_SLOW_FIRST)
  items.sort(key=rank)  # stable: the order within each file is kept
