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
