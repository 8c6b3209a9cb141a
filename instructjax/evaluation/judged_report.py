"""The report of a run on real data (no gold score): report.md, report.html and a plot.

Built from the results of `judged_eval.evaluate_judged` with the same blocks and
renderers as the testbed's report (`instructjax.evaluation.report`), so both formats
carry the same content. It states first what it cannot measure.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from instructjax.atomic_write import write_atomic
from instructjax.evaluation import plots
from instructjax.evaluation.judged_eval import JUDGE_TITLES, JUDGES
from instructjax.evaluation.report import (PLOTS_DIR, rate_with_ci, time_rows, to_html,
                                           to_markdown)
from instructjax.evaluation.report_blocks import (Block, Collapsed, Heading, Image,
                                                  Paragraph, Table, number)

_JUDGE_GROUPS = tuple(zip(JUDGES, (JUDGE_TITLES[j] for j in JUDGES), ("#4C72B0", "#DD8452")))
MAX_RESPONSE_CHARS = 600

LIMITS = (
    "What this report cannot measure: human preference. No human labeler saw these "
    "answers. Win rates are the Bradley-Terry preferences of two reward models trained "
    "from the same SFT model: the RM that PPO optimised (which PPO learned to please, so "
    "its verdict overstates PPO's gain) and a held-out judge RM trained on comparisons that "
    "neither the RM nor PPO saw. Both share the SFT model's blind spots.")


def _text_note(results: Mapping[str, Any]) -> str:
  stood_in = results.get("text_sources") or {}
  if not stood_in:
    return "Held-out text and ptx text came from the config."
  return "Text that stood in, as no file was given: " + "; ".join(
      f"{split}: {source}" for split, source in stood_in.items()) + "."


def report_blocks(results: Mapping[str, Any]) -> list[Block]:
  models = results["models"]
  rows = [(m["label"], *(rate_with_ci(m["win_rate_vs_sft"][j]) for j in JUDGES),
           number(m["kl_to_sft"], 2), number(m["answer_tokens"], 1), number(m["heldout_loss"]))
          for m in models.values()]
  blocks: list[Block] = [
      Heading(1, "instructjax: InstructGPT on real data"),
      Paragraph(LIMITS),
      Paragraph(_text_note(results)),
      Heading(2, "Every model against SFT, on held-out prompts"),
      Table(("Model", *(f"win rate vs SFT, {JUDGE_TITLES[j]} (95% CI)" for j in JUDGES),
             "KL to SFT (nats)", "answer tokens", "held-out LM loss"), rows),
      Heading(2, "Reward models"),
      Table(("Judge", "ranking accuracy on the test comparisons"),
            [(JUDGE_TITLES[j], number(results["rm_accuracy"].get(j))) for j in JUDGES]),
      Image("win_rate_vs_sft", "Win rate against SFT, by judge (95% CI)"),
      Heading(2, "Sample responses")]
  first = next(iter(models.values()))
  for i, sample in enumerate(first["samples"], 1):
    answers = [(m["label"], next((s["response"] for s in m["samples"]
                                  if s["prompt"] == sample["prompt"]), "")[:MAX_RESPONSE_CHARS])
               for m in models.values()]
    blocks += [Heading(3, f"Prompt {i}"), Paragraph(sample["prompt"]),
               Table(("Model", "Response"), answers)]
  times = results["stage_times_s"]
  cells = time_rows(times, results["compile_times_s"], list(times))
  blocks += [Heading(2, "Time"), Table(("Stage", "Wall time", "of which compiling"),
                                       [(s, *c) for s, c in zip([*times, "total"], cells)])]
  return blocks + [Heading(2, "Config"), Collapsed(
      "Config of this run (click to expand)", json.dumps(results["config"], indent=2))]


def write_judged_report(results: Mapping[str, Any], workdir: str) -> dict[str, str]:
  """Writes report.md, report.html and plots/win_rate_vs_sft.png into workdir; returns
  {path relative to workdir: absolute path}."""
  png = plots.to_png(plots.win_rates(
      results["models"], groups=_JUDGE_GROUPS,
      title="Reward-model preference for each model over SFT (95% CI)"))
  blocks = report_blocks(results)
  outputs = {f"{PLOTS_DIR}/win_rate_vs_sft.png": png,
             "report.md": to_markdown(blocks).encode("utf-8"),
             "report.html": to_html(blocks, images={"win_rate_vs_sft": png}).encode("utf-8")}
  paths = {}
  for relative, data in outputs.items():
    paths[relative] = os.path.join(workdir, relative)
    write_atomic(paths[relative], data)
  return paths
