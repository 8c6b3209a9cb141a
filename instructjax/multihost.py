"""Several processes, one run: JAX's distributed runtime, and what host-side code needs on it.

A multi-host run is the same program on every process (one per host), joined by
`jax.distributed` (`start`). Arrays on the mesh are global; code that reads them on the
host uses `to_host`, which gathers every row to every process, so host-side decisions
(decoding, gold scores, PPO's minibatch cut, metrics) are the same everywhere. Files
outside Orbax are written by process 0 alone (`is_writer`), and readers wait for it
(`barrier`). A process that fails posts its error to the coordination service and leaves
at once; every other process sees it within a second (`fail_fast`), names it, and stops,
instead of waiting in a collective for a peer that is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import threading
import time
import traceback

import jax
import numpy as np
from jax.experimental import multihost_utils

FIRST_ERROR_KEY = "instructjax/first_error"
HEARTBEAT_TIMEOUT_S = 10  # a process killed outright is noticed by the others this fast
_POLL_S = 0.5


def is_writer() -> bool:
  """Whether this process writes the run's files outside Orbax (process 0 does)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (a no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def to_host(tree):
  """numpy copies of a tree of arrays, every row on every process: a global array that
  spans other processes' devices is all-gathered, anything else is fetched."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(get, tree)


def start(*, coordinator_address: str | None, num_processes: int | None,
          process_id: int | None, initialization_timeout_s: int = 120) -> None:
  """jax.distributed.initialize, from these arguments where given and otherwise from the
  environment (TPU VMs, SLURM, JAX_COORDINATOR_ADDRESS), with gloo collectives on CPU.
  A process other than 0 first waits for the coordinator's port, so an address nobody
  answers is a RuntimeError naming it (the runtime itself would abort the process)."""
  # Only the CPU backend reads it; GPUs and TPUs keep their own collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address and process_id:
    _wait_for_port(coordinator_address, timeout_s=initialization_timeout_s,
                   who=f"process {process_id} of {num_processes}")
  print(f"joining {num_processes or 'the'} processes through the coordinator at "
        f"{coordinator_address or '(from the environment)'}, waiting up to "
        f"{initialization_timeout_s} s for all of them", flush=True)
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id, initialization_timeout=initialization_timeout_s,
      heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S, shutdown_timeout_seconds=30)


def _wait_for_port(address: str, *, timeout_s: float, who: str) -> None:
  host, _, port = address.rpartition(":")
  deadline = time.time() + timeout_s
  while True:
    try:
      socket.create_connection((host, int(port)), timeout=1.0).close()
      return
    except OSError as error:
      if time.time() >= deadline:
        raise RuntimeError(
            f"{who} could not join the run: nothing answered at the coordinator "
            f"{address} for {timeout_s} s ({error}). Start process 0 there, check that "
            "every process got the same --coordinator_address and that the port is "
            "reachable") from None
      time.sleep(0.5)


def check_same_config(config) -> None:
  """ValueError on every process when the processes were given different configs."""
  if jax.process_count() == 1:
    return
  digest = hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).digest()
  mine = np.frombuffer(digest[:8], np.int64)  # [1]
  every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1)  # [processes]
  differ = [i for i, d in enumerate(every) if d != every[0]]
  if differ:
    raise ValueError(
        f"the processes' configs differ (processes {differ} disagree with process 0): "
        "give every process the same --config and overrides")


def _client():
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  return distributed.global_state.client


@contextlib.contextmanager
def fail_fast():
  """Runs the block so that one process's failure stops them all within seconds.

  A process whose block raises posts the error to the coordination service and exits
  with status 1 at once (not through JAX's shutdown barrier, which would wait for peers
  stuck in a collective). A watcher thread in every process polls for a posted error and
  exits the same way, printing which process failed and its error. On one process this
  is just the block.
  """
  client = _client() if jax.process_count() > 1 else None
  if client is None:
    yield
    return
  done = threading.Event()
  watcher = threading.Thread(target=_watch, args=(client, done), daemon=True)
  watcher.start()
  try:
    yield
  except BaseException as error:  # pylint: disable=broad-except
    message = (f"process {jax.process_index()}: {type(error).__name__}: {error}\n"
               + "".join(traceback.format_exception(error)))
    print(message, file=sys.stderr, flush=True)
    try:
      client.key_value_set(FIRST_ERROR_KEY, message)
    except Exception:  # pylint: disable=broad-except
      pass  # another process posted first
    if jax.process_index() == 0:
      # Process 0 hosts the coordination service: leaving at once would abort the
      # others before their watchers read the error. Give them time to exit first.
      time.sleep(4 * _POLL_S)
    os._exit(1)  # pylint: disable=protected-access
  finally:
    done.set()


def _watch(client, done: threading.Event) -> None:
  while not done.wait(_POLL_S):
    try:
      posted = client.key_value_try_get(FIRST_ERROR_KEY)
    except Exception:  # pylint: disable=broad-except
      continue  # not posted yet
    first_line = posted.splitlines()[0]
    print(f"process {jax.process_index()} stops: the run failed on {first_line}\n{posted}",
          file=sys.stderr, flush=True)
    os._exit(1)  # pylint: disable=protected-access
