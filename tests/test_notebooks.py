"""The notebooks: stored as their generator writes them, and 02 executed on the tiny
`:test` config, starting from the session's `test_run` stages (it trains its own RM, hence
the `slow` marker). Notebook 01 runs on the quick pipeline's run directory, in
test_pipeline.py. The notebooks are stored
without outputs and written by notebooks/make_notebooks.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil

import nbformat
import pytest

from notebook_client import NOTEBOOKS, NUMBER, ROOT, cell_printing, execute, figures, stdout


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
def test_prototype_compares_the_new_loss_with_the_builtin(test_run, tmp_path):
  run_dir = tmp_path / "run"
  for stage in ("testbed", "pretrain", "sft", "rm"):  # the notebook finds them finished
    shutil.copytree(test_run[1] / stage, run_dir / stage)
  # From the repository root (the other place a notebook may start from than notebooks/).
  notebook = execute("02_prototype_a_loss.ipynb", cwd=ROOT, run_dir=run_dir,
                     config="experiments/instructgpt_tiny.py:test")

  check = stdout(cell_printing(notebook, "by hand"))
  by_hand, ours = re.search(rf"by hand {NUMBER}, margin_ranking_loss {NUMBER}", check).groups()
  assert by_hand == ours
  assert (run_dir / "rm_margin" / "metrics.jsonl").exists()

  table = stdout(cell_printing(notebook, "held-out labelers"))
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
  assert figures(notebook) >= 1

  swap = stdout(cell_printing(notebook, "Plackett-Luce DPO"))
  assert re.search(rf"^Plackett-Luce DPO +loss {NUMBER}", swap, re.M), swap
  dpo, pl = re.search(rf"K=2: dpo {NUMBER}, plackett-luce {NUMBER}", swap).groups()
  assert dpo == pl
