"""The report's figures, drawn from the evaluation's results.json and returned as PNG bytes.

Figures are built on `matplotlib.figure.Figure` with an Agg canvas rather than pyplot,
so nothing touches pyplot's global state (safe inside a long-running pipeline).
"""

from __future__ import annotations

import io
import math
import textwrap
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_DPI = 120
_CURVE_PANELS = (("rm_score", "RM score"), ("gold_score", "Gold score"),
                 ("kl_to_ref", "KL to SFT (nats / response)"))
# (results key, axis title) of the frontier's panels, all against KL to SFT.
_FRONTIER_PANELS = (("rm_score_sampled", "RM score (normalised)"),
                    ("gold_score_sampled", "Gold score"))
_LABELER_GROUPS = (("train_labelers", "Training labelers", "#4C72B0"),
                   ("heldout_labelers", "Held-out labelers", "#DD8452"))


def to_png(figure: Figure) -> bytes:
  """The figure as PNG bytes (Agg)."""
  buffer = io.BytesIO()
  FigureCanvasAgg(figure).print_png(buffer)
  return buffer.getvalue()


def _new_figure(width: float, height: float) -> Figure:
  figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
  FigureCanvasAgg(figure)
  return figure


def _wrapped(label: str) -> str:
  # Model labels are long ("Vanilla LM (small, zero-shot)"); wrap so ticks stay apart.
  return "\n".join(textwrap.wrap(label, 13, break_on_hyphens=False)) or label


def _number(value: Any) -> float:
  """A metric as a float; one that was not measured (None) or is inf becomes NaN."""
  if isinstance(value, (int, float)) and math.isfinite(value):
    return float(value)
  return math.nan


def _height(value: Any) -> float:
  """Bar height: unmeasured values draw no bar (their label says n/a)."""
  value = _number(value)
  return 0.0 if math.isnan(value) else value


def _error_bar(rate: Any, bound: Any) -> float:
  """Length of the bar from a rate to one end of its CI; 0 where either is missing."""
  length = abs(_number(bound) - _number(rate))
  return 0.0 if math.isnan(length) else length


def _model_colors(count: int) -> list:
  return [f"C{i % 10}" for i in range(count)]


def ppo_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], *,
               labels: Mapping[str, str]) -> Figure:
  """Three panels (RM score, gold score, KL) over PPO iterations, one line per run."""
  figure = _new_figure(13, 4)
  axes = figure.subplots(1, len(_CURVE_PANELS))
  for ax, (key, title) in zip(axes, _CURVE_PANELS):
    for run, points in curves.items():
      # Skip unmeasured points (e.g. gold score logged every few iterations) so the
      # line joins the measured ones instead of breaking at every gap.
      xy = [(p["iteration"], _number(p[key])) for p in points]
      xy = [(x, y) for x, y in xy if not math.isnan(y)]
      if xy:
        ax.plot(*zip(*xy), marker="o", markersize=3, label=labels.get(run, run))
    ax.set_title(title)
    ax.set_xlabel("PPO iteration")
    ax.set_ylabel(title)
    ax.grid(alpha=0.3)
    if ax.has_data():
      ax.legend()
    else:
      ax.text(0.5, 0.5, "no PPO iterations recorded", ha="center", va="center",
              transform=ax.transAxes)
  figure.suptitle("PPO training curves")
  return figure


def frontier(models: Mapping[str, Mapping[str, Any]], *, names: Sequence[str]) -> Figure:
  """RM score and gold score of each model's temperature-1 samples against its KL to SFT,
  one point per model in `names`, named in each panel's legend: where the RM score keeps rising with KL but
  the gold score does not, the method over-optimises the reward model."""
  figure = _new_figure(12, 4.8)
  axes = figure.subplots(1, len(_FRONTIER_PANELS))
  colors = dict(zip(names, _model_colors(len(names))))
  markers = {name: "osD^vP*X"[i % 8] for i, name in enumerate(names)}
  for ax, (key, title) in zip(axes, _FRONTIER_PANELS):
    for name in names:
      # Few-shot contestants and older results have no sampled scores: no point.
      x, y = _number(models[name].get("kl_to_sft")), _number(models[name].get(key))
      if math.isnan(x) or math.isnan(y):
        continue
      # A legend, not labels by the points: methods often land close together.
      ax.scatter([x], [y], color=colors[name], marker=markers[name], s=60,
                 label=models[name]["label"])
    ax.margins(x=0.1, y=0.1)
    ax.set_title(f"{title} vs KL to SFT")
    ax.set_xlabel("KL to SFT (nats / response)")
    ax.set_ylabel(title)
    ax.grid(alpha=0.3)
    if ax.has_data():
      ax.legend(fontsize="small")
    else:
      ax.text(0.5, 0.5, "no measurements", ha="center", va="center", transform=ax.transAxes)
  figure.suptitle("Over-optimisation frontier (temperature-1 samples)")
  return figure


def win_rates(models: Mapping[str, Mapping[str, Any]], *,
              groups: Sequence[tuple[str, str, str]] = _LABELER_GROUPS,
              title: str = "Labeler preference for each model over SFT (95% CI)") -> Figure:
  """Win rate against SFT per model with CI error bars, for each group of judges:
  (results key, legend title, color)."""
  names = list(models)
  figure = _new_figure(max(8.0, 1.5 * len(names)), 4.8)
  ax = figure.subplots()
  width = 0.38
  for g, (group, legend, color) in enumerate(groups):
    stats = [models[name]["win_rate_vs_sft"][group] for name in names]
    rates = [_height(s["rate"]) for s in stats]  # [M]
    below = [_error_bar(s["rate"], s["ci_low"]) for s in stats]  # [M]
    above = [_error_bar(s["rate"], s["ci_high"]) for s in stats]  # [M]
    xs = [i + (g - 0.5) * width for i in range(len(names))]
    ax.bar(xs, rates, width, yerr=[below, above], capsize=4, color=color, label=legend)
  ax.axhline(0.5, color="black", linestyle="--", linewidth=1, label="Tie with SFT")
  ax.set_xticks(range(len(names)), [_wrapped(models[n]["label"]) for n in names])
  ax.set_ylim(0.0, 1.0)
  ax.set_xlabel("Model")
  ax.set_ylabel("Win rate against SFT")
  ax.set_title(title)
  ax.legend(loc="upper left")
  ax.grid(axis="y", alpha=0.3)
  return figure


def rm_accuracy(accuracy: Mapping[str, float]) -> Figure:
  """Reward-model pairwise accuracy on comparisons by training vs held-out labelers."""
  figure = _new_figure(5, 4)
  ax = figure.subplots()
  groups = [g for g in _LABELER_GROUPS if g[0] in accuracy]
  values = [_number(accuracy[key]) for key, _, _ in groups]
  bars = ax.bar([title for _, title, _ in groups], [_height(v) for v in values],
                color=[color for _, _, color in groups])
  ax.bar_label(bars, labels=[_fmt(v) for v in values])
  ax.axhline(0.5, color="black", linestyle="--", linewidth=1, label="Chance")
  ax.set_ylim(0.0, 1.0)
  ax.set_xlabel("Labelers who made the comparisons")
  ax.set_ylabel("Pairwise accuracy")
  ax.set_title("Reward-model accuracy")
  ax.legend(loc="lower right")
  return figure


def model_bars(models: Mapping[str, Mapping[str, Any]], *, key: str, ylabel: str,
               title: str) -> Figure:
  """One bar per model for the scalar `models[name][key]`, values printed on top."""
  names = list(models)
  figure = _new_figure(max(8.0, 1.3 * len(names)), 4.5)
  ax = figure.subplots()
  values = [_number(models[name][key]) for name in names]
  bars = ax.bar(range(len(names)), [_height(v) for v in values],
                color=_model_colors(len(names)))
  ax.bar_label(bars, labels=[_fmt(v) for v in values])
  ax.axhline(0.0, color="black", linewidth=0.8)
  ax.margins(y=0.12)  # room for the value labels
  ax.set_xticks(range(len(names)), [_wrapped(models[n]["label"]) for n in names])
  ax.set_xlabel("Model")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(axis="y", alpha=0.3)
  return figure


def _fmt(value: float) -> str:
  return "n/a" if math.isnan(value) else f"{value:.3g}"
