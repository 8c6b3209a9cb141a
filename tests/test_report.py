"""write_report on a fake results.json: files, PNGs, self-contained HTML, claims, escaping."""

from __future__ import annotations

import base64
import copy
import json
import math
import os
import re
import struct

import pytest

from instructjax.evaluation import plots, report

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_EVIL = '<script>alert("x")</script> & a|b *bold* `code`'
_PROMPTS = ["Reverse the list: 3 1 2", "Sort the words: pear apple fig",
            "Count the vowels in: banana", "Repeat twice: hi", "Add: 2 + 5",
            "A sixth prompt the report does not show"]
# name: (label, params, gold, train win, held-out win, kl (None: not measured), pretrain loss)
_MODELS = {
    "vanilla": ("Vanilla LM (small, zero-shot)", 1_210_000, -0.41, 0.12, 0.14, 3.9, 2.11),
    "vanilla_fewshot": ("Vanilla LM (small, few-shot)", 1_210_000, -0.22, 0.21, 0.22, None,
                        2.11),
    "vanilla_big": ("Vanilla LM (big, zero-shot)", 9_870_000, -0.30, 0.18, 0.19, 3.5, 1.84),
    "vanilla_big_fewshot": ("Vanilla LM (big, few-shot)", 9_870_000, -0.05, 0.31, 0.30, None,
                            1.84),
    "sft": ("SFT", 1_210_000, 0.35, 0.50, 0.50, 0.0, 2.30),
    "ppo": ("PPO", 1_210_000, 0.61, 0.71, 0.69, 4.2, 2.62),
    "ppo_ptx": ("PPO-ptx", 1_210_000, 0.58, 0.69, 0.70, 4.0, 2.35),
}
_CLAIM_IDS = ("aligned_small_beats_large_vanilla", "alignment_cost_modest",
              "held_out_labelers_generalize", "ptx_reduces_alignment_tax",
              "win_rate_ordering")
_NOT_REPRODUCED = "win_rate_ordering"
_STAGE_TIMES = {"testbed": 1.5, "pretrain": 120.0, "pretrain_big": 300.0, "sft": 30.0,
                "rm": 20.0, "ppo": 90.0, "ppo_ptx": 110.0, "eval": 45.5}
_TOTAL_TIME = 717.0  # hand sum of _STAGE_TIMES
_COMPILE_TIMES = {"pretrain": 10.0, "ppo_ptx": 25.25}  # "eval" was not measured
_PLOTS = ("plots/ppo_curves.png", "plots/win_rate_vs_sft.png", "plots/rm_accuracy.png",
          "plots/pretrain_loss.png", "plots/gold_score.png")
# Results that name the methods compared: two more contestants started from SFT, DPO
# exported by a stage of another name and RLOO without a "stage" key (its name is its
# stage). name: (label, gold, train win, held-out win, kl, stage, FLOPs, wall seconds)
_NEW_METHODS = {
    "dpo_pl": ("DPO (Plackett-Luce)", 0.52, 0.66, 0.64, 2.1, "dpo", 7.25e12, 42.0),
    "rloo": ("RLOO", 0.55, 0.68, 0.67, 3.3, None, 4.5e13, 185.0),
}
_METHODS = ["sft", "ppo", "ppo_ptx", "dpo_pl", "rloo"]
# name: (RM score, gold score) of temperature-1 samples; None: not measured
_SAMPLED = {"vanilla": (-0.8, -0.4), "vanilla_fewshot": (None, None),
            "vanilla_big": (-0.6, -0.3), "vanilla_big_fewshot": (None, None),
            "sft": (0.0, 0.33), "ppo": (1.21, 0.57), "ppo_ptx": (1.02, 0.55),
            "dpo_pl": (0.74, 0.49), "rloo": (0.98, None)}


def _stats(rate: float, n: int = 200) -> dict:
  return {"rate": rate, "ci_low": max(rate - 0.07, 0.0), "ci_high": min(rate + 0.07, 1.0),
          "n": n}


def _curve(final_rm: float) -> list[dict]:
  # Gold score is not measured at every iteration (None), as in the pipeline's logs.
  return [{"iteration": i, "rm_score": final_rm * i / 9,
           "gold_score": 0.35 + 0.03 * i if i % 3 == 0 else None,
           "kl_to_ref": 0.5 * i} for i in range(10)]


def _fake_results() -> dict:
  models = {}
  for name, (label, params, gold, win_train, win_heldout, kl, loss) in _MODELS.items():
    samples = [{"prompt": p, "response": f"answer {i} of {label}", "gold": gold + 0.01 * i}
               for i, p in enumerate(_PROMPTS)]
    models[name] = {
        "label": label, "params": params, "gold_score": gold,
        "win_rate_vs_sft": {"train_labelers": _stats(win_train),
                            "heldout_labelers": _stats(win_heldout)},
        "kl_to_sft": kl, "pretrain_loss": loss, "samples": samples}
  models["ppo"]["samples"][0]["response"] = _EVIL
  claims = [{"id": claim_id, "paper": f"The paper's {claim_id} claim.",
             "criterion": f"CRITERION {i}: a threshold on the measurement",
             "measured": {"value": 0.640 + i / 1000}, "reproduced": claim_id != _NOT_REPRODUCED}
            for i, claim_id in enumerate(_CLAIM_IDS)]
  claims[1]["measured"] |= {"alignment_flops": 6.5e13, "pretrain_flops": 2_000_000_000_000_000}
  return {
      "config": {"seed": 0, "ppo": {"kl_coef": 0.02, "ptx_coef": 27.8},
                 "model": {"d_model": 64, "n_layers": 2}},
      "stage_times_s": dict(_STAGE_TIMES),
      "compile_times_s": dict(_COMPILE_TIMES),
      "models": models,
      "head_to_head": {"vanilla_big": {"train_labelers": _stats(0.81),
                                       "heldout_labelers": _stats(0.79)},
                       "vanilla_big_fewshot": {"train_labelers": _stats(0.66),
                                               "heldout_labelers": _stats(0.64)}},
      "rm_accuracy": {"train_labelers": 0.71, "heldout_labelers": 0.68},
      "flops": {"pretrain": 2.0e15, "pretrain_big": 1.6e16, "sft": 1.0e13, "rm": 5.0e12,
                "ppo": 3.0e13, "ppo_ptx": 5.0e13},
      "ppo_curves": {"ppo": _curve(1.2), "ppo_ptx": _curve(1.0)},
      "claims": claims,
  }


def _with_methods() -> dict:
  results = _fake_results()
  models = results["models"]
  for name, (label, gold, win_train, win_heldout, kl, stage, flops, seconds) in (
      _NEW_METHODS.items()):
    models[name] = copy.deepcopy(models["ppo"]) | {
        "label": label, "gold_score": gold, "kl_to_sft": kl,
        "win_rate_vs_sft": {"train_labelers": _stats(win_train),
                            "heldout_labelers": _stats(win_heldout)}}
    models[name].pop("stage", None)
    if stage is not None:
      models[name]["stage"] = stage
    results["flops"][stage or name] = flops
    results["stage_times_s"][stage or name] = seconds
  for name in ("vanilla", "vanilla_fewshot"):
    models[name]["stage"] = "pretrain"
  for name in ("vanilla_big", "vanilla_big_fewshot"):
    models[name]["stage"] = "pretrain_big"
  for name, (rm, gold) in _SAMPLED.items():
    models[name] |= {"rm_score_sampled": rm, "gold_score_sampled": gold}
  results["methods"] = list(_METHODS)
  return results


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  return workdir, report.write_report(_fake_results(), workdir)


@pytest.fixture(scope="module")
def written_methods(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run_methods"))
  return workdir, report.write_report(_with_methods(), workdir)


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def test_every_file_is_written(written):
  workdir, paths = written
  assert set(paths) == {*_PLOTS, "report.md", "report.html", "claims.json"}
  for relative, path in paths.items():
    assert path == os.path.join(workdir, relative)
    assert os.path.isfile(path) and os.path.getsize(path) > 0
  leftovers = [name for _, _, names in os.walk(workdir) for name in names
               if name.endswith(".tmp")]
  assert not leftovers  # atomic writes clean up their temp files


def test_plots_are_real_pngs(written):
  _, paths = written
  for name in _PLOTS:
    with open(paths[name], "rb") as f:
      data = f.read()
    assert data[:8] == _PNG_MAGIC, name
    assert len(data) > 10_000, (name, len(data))
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 500 and height >= 400, (name, width, height)


def test_html_is_self_contained(written):
  _, paths = written
  page = _read(paths["report.html"])
  assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
  assert "<link" not in page and "@import" not in page
  embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
  assert len(embedded) == 5
  with open(paths["plots/win_rate_vs_sft.png"], "rb") as f:
    assert f.read() in [base64.b64decode(e) for e in embedded]


def test_markdown_links_every_plot(written):
  workdir, paths = written
  text = _read(paths["report.md"])
  links = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
  assert len(links) == 5
  for link in links:
    assert not os.path.isabs(link)
    assert os.path.isfile(os.path.join(workdir, link))


def test_claims_json_matches_input(written):
  _, paths = written
  claims = json.loads(_read(paths["claims.json"]))
  assert [c["id"] for c in claims["claims"]] == list(_CLAIM_IDS)
  for claim in claims["claims"]:
    assert claim["reproduced"] is (claim["id"] != _NOT_REPRODUCED)
    assert set(claim) == {"id", "paper", "criterion", "measured", "reproduced"}
  assert claims["total_time_s"] == pytest.approx(_TOTAL_TIME)
  assert claims["stage_times_s"] == _STAGE_TIMES
  assert claims["compile_times_s"] == _COMPILE_TIMES
  assert claims["config"]["ppo"]["ptx_coef"] == 27.8


def _claim_row(markdown: str, claim_id: str) -> str:
  start = f"| {claim_id} |"
  return next(line for line in markdown.splitlines() if line.startswith(start))


def test_not_reproduced_claim_is_said_plainly(written):
  _, paths = written
  markdown = _read(paths["report.md"])
  for claim_id in _CLAIM_IDS:
    verdict = "not reproduced" if claim_id == _NOT_REPRODUCED else "reproduced"
    assert _claim_row(markdown, claim_id).endswith(f"| {verdict} |")
  assert "<td>not reproduced</td>" in _read(paths["report.html"])


def test_criteria_come_before_the_claims_numbers(written):
  _, paths = written
  for text in (_read(paths["report.md"]), _read(paths["report.html"])):
    table = text.index("Reproduced")  # the claims table's header
    first_number = text.index("0.640", table)  # the first measured value
    for i in range(len(_CLAIM_IDS)):
      assert text.index(f"CRITERION {i}:") < table < first_number


def test_sample_text_is_escaped(written):
  _, paths = written
  page = _read(paths["report.html"])
  assert "<script>" not in page
  assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; a|b" in page
  text = _read(paths["report.md"])
  assert "<script>" not in text
  row = next(line for line in text.splitlines() if "alert" in line)
  assert row.count(" | ") == 2  # the sample's own "|" must not add a column
  assert "A sixth prompt" not in text  # at most five prompts are shown


def test_tables_show_measurements(written):
  _, paths = written
  text = _read(paths["report.md"])
  vanilla = next(line for line in text.splitlines()
                 if line.startswith("| Vanilla LM (small, zero-shot) | 1.21M |"))
  assert "| 0.12 (0.05–0.19; n=200) | 0.14 (0.07–0.21; n=200) | 3.900 | 2.110 |" in vanilla
  fewshot = next(line for line in text.splitlines()
                 if line.startswith("| Vanilla LM (small, few-shot) | 1.21M |"))
  assert "| n/a | 2.110 |" in fewshot  # KL to SFT was not measured
  assert ("| PPO-ptx vs Vanilla LM (big, few-shot) (held-out labelers) | "
          "0.64 (0.57–0.71; n=200) |") in text
  assert "alignment_flops = 6.5e+13; pretrain_flops = 2e+15" in text
  assert "| training labelers | 0.710 |" in text
  assert "| ppo_ptx | 5.00e+13 | 1 min 50 s | 25.2 s |" in text
  assert "| eval | n/a | 45.5 s | n/a |" in text
  assert "| total | 1.81e+16 | 11 min 57 s | 35.2 s |" in text  # hand sums
  assert "3.25%" in text  # (1e13 + 5e12 + 5e13) / 2e15


def test_samples_show_every_model_for_the_same_prompts(written):
  _, paths = written
  text = _read(paths["report.md"])
  for name, (label, *_) in _MODELS.items():
    for i in range(5):
      if (name, i) != ("ppo", 0):
        assert f"answer {i} of {label}" in text


def _section(markdown: str, heading: str) -> list[str]:
  """The lines of a '## heading' section, up to the next '## '."""
  lines = markdown.splitlines()
  start = lines.index(f"## {heading}")
  end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
  return lines[start + 1:end]


def test_results_without_methods_have_no_methods_section(written):
  _, paths = written
  assert "plots/frontier.png" not in paths
  for text in (_read(paths["report.md"]), _read(paths["report.html"])):
    assert "Methods compared" not in text
    assert "over-optimisation frontier" not in text


def test_methods_add_the_frontier_plot(written_methods):
  workdir, paths = written_methods
  assert set(paths) == {*_PLOTS, "plots/frontier.png", "report.md", "report.html",
                        "claims.json"}
  with open(paths["plots/frontier.png"], "rb") as f:
    data = f.read()
  assert data[:8] == _PNG_MAGIC and data[12:16] == b"IHDR"
  width, height = struct.unpack(">II", data[16:24])
  assert width >= 1000 and height >= 400, (width, height)
  page = _read(paths["report.html"])
  embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
  assert data in [base64.b64decode(e) for e in embedded] and len(embedded) == 6
  links = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", _read(paths["report.md"]))
  assert "plots/frontier.png" in links and len(links) == 6


def test_methods_table_shows_each_methods_measurements(written_methods):
  _, paths = written_methods
  text = _read(paths["report.md"])
  headings = [line for line in text.splitlines() if line.startswith("## ")]
  assert headings.index("## Methods compared") == headings.index("## Models") + 1
  rows = [line for line in _section(text, "Methods compared") if line.startswith("| ")][1:]
  assert [row.split(" | ")[0] for row in rows] == [
      "| SFT", "| PPO", "| PPO-ptx", "| DPO (Plackett-Luce)", "| RLOO"]
  # The stage named by the model ("dpo"), not the model's name, holds its cost.
  assert rows[3] == ("| DPO (Plackett-Luce) | 0.520 | 0.66 (0.59–0.73; n=200) | "
                     "0.64 (0.57–0.71; n=200) | 2.100 | 0.740 | 0.490 | 7.25e+12 | 42.0 s |")
  assert rows[4].endswith("| 3.300 | 0.980 | n/a | 4.50e+13 | 3 min 5 s |")  # no gold
  assert rows[1].endswith("| 4.200 | 1.210 | 0.570 | 3.00e+13 | 1 min 30 s |")
  assert rows[0].endswith("| 0.000 | 0.000 | 0.330 | 1.00e+13 | 30.0 s |")
  assert "<td>7.25e+12</td><td>42.0 s</td>" in _read(paths["report.html"])


def test_method_without_stage_cost_says_na(tmp_path):
  results = _with_methods()
  del results["flops"]["rloo"], results["stage_times_s"]["rloo"]
  text = _read(report.write_report(results, str(tmp_path))["report.md"])
  row = next(line for line in _section(text, "Methods compared") if line.startswith("| RLOO"))
  assert row.endswith("| n/a | n/a |")


def test_frontier_plots_one_labelled_point_per_measured_model():
  models = _with_methods()["models"]
  models["ppo"]["rm_score_sampled"] = math.nan
  figure = plots.frontier(models, names=["vanilla_fewshot", "sft", "ppo", "dpo_pl", "rloo"])
  rm_panel, gold_panel = figure.axes
  assert rm_panel.get_legend_handles_labels()[1] == ["SFT", "DPO (Plackett-Luce)", "RLOO"]
  assert [tuple(c.get_offsets()[0]) for c in rm_panel.collections] == [
      (0.0, 0.0), (2.1, 0.74), (3.3, 0.98)]
  assert gold_panel.get_legend_handles_labels()[1] == ["SFT", "PPO", "DPO (Plackett-Luce)"]
  assert [tuple(c.get_offsets()[0]) for c in gold_panel.collections] == [
      (0.0, 0.33), (4.2, 0.57), (2.1, 0.49)]
  assert plots.to_png(figure)[:8] == _PNG_MAGIC


def test_frontier_without_measurements_says_so():
  models = _fake_results()["models"]  # older results: no sampled scores at all
  figure = plots.frontier(models, names=["sft", "ppo", "vanilla_fewshot"])
  for panel in figure.axes:
    assert not panel.collections
    assert [t.get_text() for t in panel.texts] == ["no measurements"]
  assert plots.to_png(figure)[:8] == _PNG_MAGIC


def test_unmeasured_values_still_give_a_report(tmp_path):
  results = _fake_results()
  results["claims"][0]["measured"]["value"] = math.nan
  results["rm_accuracy"]["heldout_labelers"] = None
  results["ppo_curves"] = {"ppo": [], "ppo_ptx": []}
  paths = report.write_report(results, str(tmp_path))
  assert "| held-out labelers | n/a |" in _read(paths["report.md"])

  def reject(constant):
    raise AssertionError(f"non-standard JSON constant {constant}")

  claims = json.loads(_read(paths["claims.json"]), parse_constant=reject)
  assert claims["claims"][0]["measured"]["value"] is None


@pytest.mark.parametrize("breakage, message", [
    (lambda r: r["models"]["ppo"].pop("kl_to_sft"), r"\['models'\]\['ppo'\].*kl_to_sft"),
    (lambda r: r["models"]["sft"]["win_rate_vs_sft"]["heldout_labelers"].pop("ci_low"),
     r"\['sft'\]\['win_rate_vs_sft'\]\['heldout_labelers'\].*ci_low"),
    (lambda r: r["claims"][2].update(reproduced="yes"),
     r"\['claims'\]\[2\]\['reproduced'\].*bool"),
    (lambda r: r.pop("flops"), r"results: missing field.*flops"),
    (lambda r: r["ppo_curves"]["ppo"][3].pop("kl_to_ref"),
     r"\['ppo_curves'\]\['ppo'\]\[3\].*kl_to_ref"),
    (lambda r: r.update(methods=["sft", "ppo", "grpo"]), r"\['methods'\].*'grpo'.*models"),
    (lambda r: r.update(methods="ppo"), r"\['methods'\].*list"),
])
def test_bad_results_name_the_field(tmp_path, breakage, message):
  results = copy.deepcopy(_fake_results())
  breakage(results)
  with pytest.raises(report.ReportError, match=message):
    report.write_report(results, str(tmp_path))
  assert not os.listdir(tmp_path)  # nothing written from bad input
