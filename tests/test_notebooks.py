"""Executes both notebooks on the tiny `:test` config and checks what they print and plot.

Every stage really runs (a few minutes in all), hence the `slow` marker. The notebooks
share one run directory, so the second reuses the SFT checkpoint and RM of the first.
The notebooks are stored without outputs and written by notebooks/make_notebooks.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re

import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NUMBER = r"(-?\d+\.\d+)"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp("notebook_run")


def _execute(name: str, *, cwd: pathlib.Path, run_dir: pathlib.Path):
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  assert all(not c.get("outputs") for c in notebook.cells), f"{name} is stored with outputs"
  env = {**os.environ,
         "INSTRUCTJAX_NOTEBOOK_CONFIG": "experiments/instructgpt_tiny.py:test",
         "INSTRUCTJAX_NOTEBOOK_RUN_DIR": str(run_dir),
         # One CPU device (the :test PPO minibatch of 4 does not split 8 ways) and no XLA
         # optimisation: compiling, not running, is most of the time on this config.
         "XLA_FLAGS": "--xla_backend_optimization_level=0",
         "JAX_PLATFORMS": "cpu"}
  client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=300,
                                   resources={"metadata": {"path": str(cwd)}})
  client.execute(env=env)  # raises CellExecutionError naming the failing cell
  return notebook


def _stdout(cell) -> str:
  return "".join(o.get("text", "") for o in cell.outputs
                 if o.output_type == "stream" and o.name == "stdout")


def _cell_printing(notebook, marker: str):
  cells = [c for c in notebook.cells if c.cell_type == "code" and marker in _stdout(c)]
  assert cells, f"no cell printed {marker!r}"
  return cells[-1]


def _figures(notebook) -> int:
  return sum("image/png" in o.get("data", {}) for c in notebook.cells
             if c.cell_type == "code" for o in c.outputs)


def test_stored_notebooks_match_their_generator():
  spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS / "make_notebooks.py")
  generator = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(generator)
  for name, cells in (("01_quickstart.ipynb", generator.QUICKSTART),
                      ("02_prototype_a_loss.ipynb", generator.PROTOTYPE)):
    stored = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert stored == generator.make_notebook(cells, prefix=name[:2]), (
        f"{name} differs from notebooks/make_notebooks.py: edit the script and rerun it")


@pytest.mark.slow
def test_quickstart_runs_every_stage(run_dir):
  # From notebooks/, as Jupyter starts it: the notebook must find the repository root.
  notebook = _execute("01_quickstart.ipynb", cwd=NOTEBOOKS, run_dir=run_dir)

  for stage in ("pretrain", "sft", "rm", "ppo", "ppo_ptx"):
    assert (run_dir / stage / "export" / "export.json").exists(), stage
  assert _stdout(_cell_printing(notebook, "ideal answer:")).count("ideal answer:") == 3
  ranking = _stdout(_cell_printing(notebook, "ranked by labeler"))
  assert len(re.findall(r"^  \d\. gold \d\.\d\d ", ranking, re.M)) >= 4  # K >= 4 responses
  assert _figures(notebook) >= 5  # pretrain, SFT, RM, PPO curves, comparison

  table = _stdout(_cell_printing(notebook, "win vs SFT"))
  rows = {m[0]: [float(x) for x in m[1:]] for m in re.findall(
      rf"^(vanilla|SFT|PPO|PPO-ptx) +{NUMBER} +{NUMBER} +{NUMBER}$", table, re.M)}
  assert set(rows) == {"vanilla", "SFT", "PPO", "PPO-ptx"}, table
  for name, (gold, win, loss) in rows.items():
    assert 0.0 <= gold <= 1.0 and 0.0 <= win <= 1.0 and loss > 0.0, (name, table)
  # SFT against itself: identical answers, so every labeler is indifferent.
  assert rows["SFT"][1] == 0.5


@pytest.mark.slow
def test_prototype_compares_the_new_loss_with_the_builtin(run_dir):
  # From the repository root this time (the other place a notebook may start from).
  notebook = _execute("02_prototype_a_loss.ipynb", cwd=ROOT, run_dir=run_dir)

  check = _stdout(_cell_printing(notebook, "by hand"))
  by_hand, ours = re.search(rf"by hand {NUMBER}, margin_ranking_loss {NUMBER}", check).groups()
  assert by_hand == ours
  assert (run_dir / "rm_margin" / "metrics.jsonl").exists()

  table = _stdout(_cell_printing(notebook, "held-out labelers"))
  rows = {m[0]: (float(m[1]), float(m[2])) for m in re.findall(
      rf"^(built-in ranking loss|margin loss \(m=[\d.]+\)) +{NUMBER} +{NUMBER}$", table,
      re.M)}
  assert len(rows) == 2, table
  for train_acc, heldout_acc in rows.values():
    assert 0.0 <= train_acc <= 1.0 and 0.0 <= heldout_acc <= 1.0, table
  with open(run_dir / "rm" / "export" / "export.json", encoding="utf-8") as f:
    builtin = json.load(f)["final_eval"]
  assert rows["built-in ranking loss"] == pytest.approx(
      (builtin["accuracy_train_labelers"], builtin["accuracy_heldout_labelers"]), abs=5e-4)
  assert _figures(notebook) >= 1
