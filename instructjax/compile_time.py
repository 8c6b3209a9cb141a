"""Compilation: the seconds this process spent on it, and the persistent cache that lets
a rerun or a resume skip it.

At this project's test sizes compiling is most of a stage's wall time, so the pipeline
records it per stage (`stage_times.json`, the report). The count comes from JAX's own
monitoring events: tracing, lowering to MLIR, and XLA's backend compile (which on a
persistent-cache hit is only the load).
"""

from __future__ import annotations

import os

import jax

_EVENTS = frozenset((
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
))
_total = {"seconds": 0.0, "listening": False}


def _listen(event: str, duration_secs: float, **unused_metadata) -> None:
  if event in _EVENTS:
    _total["seconds"] += duration_secs


def seconds() -> float:
  """Seconds spent compiling in this process since the first call."""
  if not _total["listening"]:
    jax.monitoring.register_event_duration_secs_listener(_listen)
    _total["listening"] = True
  return _total["seconds"]


def use_persistent_cache(workdir: str) -> str:
  """Points JAX's persistent compilation cache at WORKDIR/xla_cache, unless a cache is
  set already (JAX_COMPILATION_CACHE_DIR, or jax.config by the caller); -> the cache
  directory in use."""
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  directory = os.path.join(workdir, "xla_cache")
  jax.config.update("jax_compilation_cache_dir", directory)
  # A stage's many small steps each compile in well under JAX's default 1 s threshold.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
  return directory
