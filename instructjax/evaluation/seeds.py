"""The headline numbers of several runs that differ only in config.seed, with their
spread: what a reader needs to tell an effect from one run's luck.

`headline(results)` picks the numbers from one run's results.json; `aggregate` gives
each one's mean, sample standard deviation, range and per-seed values; `to_markdown`
is the README's table.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

# The models whose numbers the table shows, in its order (those a run has).
MODELS = ("vanilla_big_fewshot", "sft", "ppo", "ppo_ptx", "dpo", "rloo", "grpo")
# (results key of a model, what the row says)
_MODEL_FIELDS = (
    ("gold_score", "gold score (greedy, test prompts)"),
    ("gold_gain_vs_sft", "gold gain over SFT"),
    ("credit", "credit (correctness before the chatter charge)"),
    ("credit_gain_vs_sft", "credit gain over SFT"),
    ("remark_rate", "share of answers with a remark"),
    ("win_rate_vs_sft/train_labelers", "win rate vs SFT, training labelers"),
    ("win_rate_vs_sft/heldout_labelers", "win rate vs SFT, held-out labelers"),
    ("probe_accuracy", "held-out task formats, accuracy"),
    ("distinct_text_loss", "LM loss on distinct text (nats/token)"),
)


def _get(tree: Mapping[str, Any], path: str) -> Any:
  for key in path.split("/"):
    if not isinstance(tree, Mapping) or key not in tree:
      return None
    tree = tree[key]
  if isinstance(tree, Mapping):  # a {"rate", "ci_low", ...} entry: its point estimate
    tree = tree.get("rate", tree.get("average"))
  if isinstance(tree, Mapping):
    tree = tree.get("accuracy")
  return tree


def headline(results: Mapping[str, Any]) -> dict[str, float]:
  """{row name: value} of one run; rows whose measurement the run lacks are left out."""
  out = {}
  models = results["models"]
  for name in MODELS:
    if name not in models:
      continue
    for path, what in _MODEL_FIELDS:
      value = _get(models[name], path)
      if isinstance(value, (int, float)):
        out[f"{models[name]['label']}: {what}"] = float(value)
  for group, value in results.get("rm_accuracy", {}).items():
    if isinstance(value, (int, float)):
      out[f"reward model accuracy, {group.replace('_', ' ')}"] = float(value)
  for claim in results.get("claims", ()):
    out[f"claim {claim['id']} reproduced"] = float(claim["reproduced"])
  return out


def aggregate(per_seed: Mapping[int, Mapping[str, float]]) -> dict[str, dict]:
  """{row: {mean, std (sample, ddof=1; 0 for one seed), min, max, values {seed: v}}},
  over the seeds that measured the row."""
  rows: dict[str, dict[int, float]] = {}
  for seed, numbers in per_seed.items():
    for row, value in numbers.items():
      rows.setdefault(row, {})[seed] = value
  out = {}
  for row, values in rows.items():
    v = np.asarray(list(values.values()), np.float64)  # [seeds]
    out[row] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "min": float(v.min()), "max": float(v.max()), "values": values}
  return out


def to_markdown(table: Mapping[str, Mapping[str, Any]], seeds: Sequence[int]) -> str:
  """The aggregate as a Markdown table: mean ± std, range, and each seed's value."""
  header = ("| | mean ± std | range | " + " | ".join(f"seed {s}" for s in seeds) + " |\n"
            + "|---|---|---|" + "---|" * len(seeds) + "\n")
  lines = []
  for row, stats in table.items():
    cells = [f"{stats['values'][s]:.3f}" if s in stats["values"] else "n/a" for s in seeds]
    lines.append(f"| {row} | {stats['mean']:.3f} ± {stats['std']:.3f} | "
                 f"{stats['min']:.3f} – {stats['max']:.3f} | " + " | ".join(cells) + " |")
  return header + "\n".join(lines) + "\n"
