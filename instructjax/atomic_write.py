"""Whole-file writes: a reader sees the old file or the complete new one, never a part.

Every file outside Orbax that a run rereads (stage times, results, cards, caches, the
report) goes through here, so a kill mid-write cannot leave a truncated file behind. In
a multi-host run only process 0 writes them: the others hold the same content.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import jax


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
  """Writes data to a temporary file beside path, then renames it over path (on process
  0 of a multi-host run; the others return)."""
  if jax.process_index() != 0:
    return
  path = os.fspath(path)
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  # A unique name: two writers of one path (e.g. two processes) cannot share a temp file.
  handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                 dir=directory)
  try:
    with os.fdopen(handle, "wb") as f:
      f.write(data.encode("utf-8") if isinstance(data, str) else data)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str | os.PathLike, value: Any, **dumps_kwargs) -> None:
  """json.dumps(value, indent=2, **dumps_kwargs) + newline, written atomically."""
  write_atomic(path, json.dumps(value, indent=2, **dumps_kwargs) + "\n")
