"""Executes the stored notebooks as Jupyter would, and reads what their cells printed."""

from __future__ import annotations

import os
import pathlib

import nbclient
import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NUMBER = r"(-?\d+\.\d+)"


def execute(name: str, *, cwd: pathlib.Path, run_dir, config: str):
  """Runs notebooks/<name> from cwd with its config and run directory; -> the notebook
  with outputs. Raises CellExecutionError naming the failing cell."""
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  assert all(not c.get("outputs") for c in notebook.cells), f"{name} is stored with outputs"
  env = {**os.environ,
         "INSTRUCTJAX_NOTEBOOK_CONFIG": config,
         "INSTRUCTJAX_NOTEBOOK_RUN_DIR": str(run_dir),
         # One CPU device (the :test PPO minibatch of 4 does not split 8 ways) and no XLA
         # optimisation: compiling, not running, is most of the time on these configs.
         "XLA_FLAGS": "--xla_backend_optimization_level=0",
         "JAX_PLATFORMS": "cpu"}
  client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=300,
                                   resources={"metadata": {"path": str(cwd)}})
  client.execute(env=env)
  return notebook


def stdout(cell) -> str:
  return "".join(o.get("text", "") for o in cell.outputs
                 if o.output_type == "stream" and o.name == "stdout")


def cell_printing(notebook, marker: str):
  cells = [c for c in notebook.cells if c.cell_type == "code" and marker in stdout(c)]
  assert cells, f"no cell printed {marker!r}"
  return cells[-1]


def figures(notebook) -> int:
  return sum("image/png" in o.get("data", {}) for c in notebook.cells
             if c.cell_type == "code" for o in c.outputs)
