"""The pipeline's final report: plots, report.md, a self-contained report.html, claims.json.

`write_report(results, workdir)` takes the evaluation's results.json (as a dict), checks
it, and writes into `workdir`:

  plots/*.png    PPO curves, win rates vs SFT, RM accuracy, pretraining loss, gold score,
                 and where results name the methods compared, their over-optimisation
                 frontier
  report.md      the report, linking the PNGs
  report.html    the same report with the PNGs embedded (no external resources)
  claims.json    the paper's claims with criteria, measurements and verdicts

The report is first built as a list of blocks (headings, tables, ...) and then rendered
twice, so the Markdown and HTML versions cannot drift apart. All text that comes from
results (samples, labels, claim text) is escaped for the format it lands in.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from typing import Any, Mapping, Sequence

from instructjax import stage_table
from instructjax.atomic_write import write_atomic
from instructjax.evaluation import controls_report, plots
from instructjax.evaluation.report_blocks import (Block, Collapsed, Definitions, Heading,
                                                  Image, Paragraph, Table, finite, number)
from instructjax.evaluation.contestants import CHAMPION, LABELER_TITLES

PLOTS_DIR = "plots"
MAX_SAMPLE_PROMPTS = 5  # the report shows every model's responses to this many prompts
MAX_RESPONSE_CHARS = 600  # longer responses are cut in the samples table

_TIMED = ("testbed", *stage_table.NAMES, "eval")  # rows of the compute table, in order
# The compute that produced the final aligned model (PPO-ptx), as in the paper's
# "SFT + PPO-ptx vs GPT-3 pretraining" comparison; the RM is counted too because here
# it is trained on the same small model.
_ALIGNMENT_STAGES = ("sft", "sft_big", "rm", "ppo_ptx")  # sft_big: the RM's own SFT, if any
_PAPER_ALIGNMENT_RATIO = 60 / 3640  # SFT + PPO-ptx vs GPT-3, petaflop/s-days (Ouyang et al.)
_LABELER_GROUPS = tuple(LABELER_TITLES.items())  # (results key, title)


class ReportError(ValueError):
  """results.json lacks a field the report needs; the message gives its path."""


# ----------------------------------------------------------------------------- checks


def _fields(value: Any, names: Sequence[str], where: str) -> None:
  if not isinstance(value, Mapping):
    raise ReportError(f"{where}: expected a dict, got {type(value).__name__}")
  missing = [name for name in names if name not in value]
  if missing:
    raise ReportError(f"{where}: missing field(s) {missing}")


def validate_results(results: Mapping[str, Any]) -> None:
  """Raises ReportError naming the first missing or mistyped field of results.json."""
  _fields(results, ("config", "stage_times_s", "compile_times_s", "models", "head_to_head",
                    "rm_accuracy",
                    "flops", "ppo_curves", "claims"), "results")
  if not results["models"]:
    raise ReportError("results['models']: no models to report")
  for name, model in results["models"].items():
    where = f"results['models'][{name!r}]"
    _fields(model, ("label", "params", "gold_score", "win_rate_vs_sft", "kl_to_sft",
                    "pretrain_loss", "samples"), where)
    for group, _ in _LABELER_GROUPS:
      _fields(model["win_rate_vs_sft"], (group,), f"{where}['win_rate_vs_sft']")
      _fields(model["win_rate_vs_sft"][group], ("rate", "ci_low", "ci_high", "n"),
              f"{where}['win_rate_vs_sft'][{group!r}]")
    for i, sample in enumerate(model["samples"]):
      _fields(sample, ("prompt", "response", "gold"), f"{where}['samples'][{i}]")
  for rival, groups in results["head_to_head"].items():
    _fields(groups, (), f"results['head_to_head'][{rival!r}]")  # {labeler group: stats}
    for group, stats in groups.items():
      _fields(stats, ("rate", "ci_low", "ci_high", "n"),
              f"results['head_to_head'][{rival!r}][{group!r}]")
  _fields(results["rm_accuracy"], [g for g, _ in _LABELER_GROUPS], "results['rm_accuracy']")
  _fields(results["stage_times_s"], (), "results['stage_times_s']")
  _fields(results["flops"], (), "results['flops']")
  for run, points in results["ppo_curves"].items():
    for i, point in enumerate(points):
      _fields(point, ("iteration", "rm_score", "gold_score", "kl_to_ref"),
              f"results['ppo_curves'][{run!r}][{i}]")
  for i, claim in enumerate(results["claims"]):
    where = f"results['claims'][{i}]"
    _fields(claim, ("id", "paper", "criterion", "measured", "reproduced"), where)
    if not isinstance(claim["reproduced"], bool):
      raise ReportError(f"{where}['reproduced']: expected a bool, got "
                        f"{claim['reproduced']!r}")
    _fields(claim["measured"], (), f"{where}['measured']")
  if "methods" in results:
    _check_methods(results["methods"], results["models"])


def _check_methods(methods: Any, models: Mapping[str, Any]) -> None:
  """The methods compared are rows of the methods table: each must be a model."""
  if not isinstance(methods, (list, tuple)):
    raise ReportError(f"results['methods']: expected a list, got {type(methods).__name__}")
  unknown = [name for name in methods if name not in models]
  if unknown:
    raise ReportError(f"results['methods']: {unknown} not in results['models']")


def _sci(value: Any) -> str:
  return f"{value:.2e}" if finite(value) else "n/a"


def _count(value: Any) -> str:
  if not finite(value):
    return "n/a"
  for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
    if abs(value) >= scale:
      return f"{value / scale:.3g}{suffix}"
  return f"{value:g}"


def _seconds(value: Any) -> str:
  if not finite(value):
    return "n/a"
  minutes, seconds = divmod(value, 60.0)
  return f"{int(minutes)} min {seconds:.0f} s" if minutes else f"{seconds:.1f} s"


def rate_with_ci(stats: Mapping[str, Any]) -> str:
  return (f"{number(stats['rate'], 2)} ({number(stats['ci_low'], 2)}–"
          f"{number(stats['ci_high'], 2)}; n={stats['n']})")


def _value(value: Any) -> str:
  """A measurement of any size: FLOP counts in scientific notation, rates as 0.123."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return "n/a" if value is None else str(value)
  if not math.isfinite(value):
    return "n/a"
  if isinstance(value, int) and abs(value) < 1e6:
    return str(value)
  return f"{value:.3g}" if abs(value) >= 1e4 or 0 < abs(value) < 1e-3 else f"{value:.3f}"


def _measured(measured: Mapping[str, Any]) -> str:
  return "; ".join(f"{name} = {_value(value)}" for name, value in measured.items())


def _verdict(reproduced: bool) -> str:
  return "reproduced" if reproduced else "not reproduced"


# ----------------------------------------------------------------------------- content


def _label(models: Mapping[str, Any], name: str) -> str:
  return models[name]["label"] if name in models else name


def _pair_title(models: Mapping[str, Any], rival: str, group: str) -> str:
  """-> 'PPO-ptx vs <rival's label> (training labelers)'."""
  judges = dict(_LABELER_GROUPS).get(group, group)
  return f"{_label(models, CHAMPION)} vs {_label(models, rival)} ({judges})"


def _summary(results: Mapping[str, Any]) -> str:
  models = results["models"]
  sizes = ", ".join(f"{size}: {_count(models[name]['params'])} parameters"
                    for name, size in (("vanilla", "small"), ("vanilla_big", "big"))
                    if name in models)
  claims = results["claims"]
  reproduced = sum(c["reproduced"] for c in claims)
  return (
      "This report covers one end-to-end InstructGPT run of instructjax, in miniature, on "
      "the embedded testbed: simulated labelers stand in for human ones and a hidden "
      "gold reward measures true response quality. Vanilla language models were "
      f"pretrained on the testbed's corpus ({sizes or 'see the model table'}); the small "
      "one was fine-tuned on labeler demonstrations (SFT); a reward model was trained on "
      "the training labelers' rankings; and the SFT policy was optimised against it with "
      "PPO and with PPO-ptx (PPO with pretraining gradients mixed in). Every model then "
      "answered the same evaluation prompts, and both the training labelers and "
      "held-out labelers, who supplied no training data, compared each answer with "
      f"SFT's. {reproduced} of {len(claims)} of the paper's claims were reproduced. "
      f"Total wall time: {_seconds(sum(results['stage_times_s'].values()))}.")


def _claim_blocks(claims: Sequence[Mapping[str, Any]]) -> list[Block]:
  failed = [c["id"] for c in claims if not c["reproduced"]]
  outcome = (f"{len(claims) - len(failed)} of {len(claims)} claims reproduced."
             + (f" Not reproduced: {', '.join(failed)}." if failed else ""))
  return [
      Heading(2, "Claims"),
      Heading(3, "Criteria"),
      Paragraph("Each claim of the paper is checked against a criterion fixed before "
                "the measurements were made:"),
      Definitions([(c["id"], c["criterion"]) for c in claims]),
      Heading(3, "Results"),
      Table(("Claim", "Paper", "Measured", "Reproduced"),
            [(c["id"], c["paper"], _measured(c["measured"]), _verdict(c["reproduced"]))
             for c in claims]),
      Paragraph(outcome),
  ]


def _model_blocks(results: Mapping[str, Any]) -> list[Block]:
  models = results["models"]
  rows = [(m["label"], _count(m["params"]), number(m["gold_score"]),
           rate_with_ci(m["win_rate_vs_sft"]["train_labelers"]),
           rate_with_ci(m["win_rate_vs_sft"]["heldout_labelers"]),
           number(m["kl_to_sft"]), number(m["pretrain_loss"])) for m in models.values()]
  blocks: list[Block] = [
      Heading(2, "Models"),
      Paragraph("Win rates are the fraction of comparisons in which labelers preferred "
                "the model's response to SFT's, with a 95% confidence interval. KL to "
                "SFT is in nats per response on the model's own samples; pretraining "
                "loss is the next-token loss (nats per token) on held-out documents of "
                "the ptx distribution, which PPO-ptx trains on: the alignment tax is "
                "measured off it (held-out task formats and distinct text, below)."),
      Table(("Model", "Params", "Gold score", "Win vs SFT, training labelers (95% CI; n)",
             "Win vs SFT, held-out labelers (95% CI; n)", "KL to SFT", "Pretraining loss"), rows),
  ]
  if results["head_to_head"]:
    pairs = [(_pair_title(models, rival, group), rate_with_ci(stats))
             for rival, groups in results["head_to_head"].items()
             for group, stats in groups.items()]
    blocks += [Heading(3, "Head to head"),
               Paragraph("Rate at which the first model's response was preferred."),
               Table(("Comparison", "Win rate (95% CI; n)"), pairs)]
  return blocks


def _method_row(results: Mapping[str, Any], name: str) -> tuple[str, ...]:
  """Quality, drift from SFT and cost of one method; the cost is its own stage's only."""
  model = results["models"][name]
  stage = model.get("stage", name)
  return (model["label"], number(model["gold_score"]),
          rate_with_ci(model["win_rate_vs_sft"]["train_labelers"]),
          rate_with_ci(model["win_rate_vs_sft"]["heldout_labelers"]),
          number(model["kl_to_sft"]), number(model.get("rm_score_sampled")),
          number(model.get("gold_score_sampled")), _sci(results["flops"].get(stage)),
          _seconds(results["stage_times_s"].get(stage)))


def _method_blocks(results: Mapping[str, Any]) -> list[Block]:
  """The alignment methods started from SFT side by side; none for results that do not
  name them (runs from before they were compared)."""
  if "methods" not in results:
    return []
  return [
      Heading(2, "Methods compared"),
      Paragraph("Each method starts from SFT. Gold score and win rates are on its greedy "
                "answers to the evaluation prompts; KL to SFT, RM score (normalised) and "
                "gold score (samples) are on its temperature-1 samples of the same "
                "prompts, one point of the over-optimisation frontier. Training FLOPs and "
                "wall time are the method's own stage only (not SFT's or the reward "
                "model's)."),
      Table(("Method", "Gold score (greedy)", "Win vs SFT, training labelers (95% CI; n)",
             "Win vs SFT, held-out labelers (95% CI; n)", "KL to SFT", "RM score (samples)",
             "Gold score (samples)", "Training FLOPs", "Wall time"),
            [_method_row(results, name) for name in results["methods"]]),
  ]


def _reward_model_blocks(accuracy: Mapping[str, float]) -> list[Block]:
  rows = [(title, number(accuracy[group])) for group, title in _LABELER_GROUPS]
  if accuracy.get("correctness") is not None:
    rows.append(("Correctness only: the ideal answer vs a near miss (a word dropped, "
                 "swapped or wrong)", number(accuracy["correctness"])))
  return [
      Heading(2, "Reward model"),
      Paragraph("Pairwise accuracy on the rm_eval prompts: how often the reward model "
                "scores the response a labeler preferred above the other one (0.5 is "
                "chance)."),
      Table(("Comparisons", "Accuracy"), rows),
  ]


def time_rows(times: Mapping[str, float], compiling: Mapping[str, float],
              stages: Sequence[str]) -> list[tuple[str, str]]:
  """(wall time, of which compiling) cells of each stage, then of the total."""
  cells = [(_seconds(times.get(s)), _seconds(compiling.get(s))) for s in stages]
  return cells + [(_seconds(sum(times.values())), _seconds(sum(compiling.values())))]


def _compute_blocks(results: Mapping[str, Any]) -> list[Block]:
  flops, times = results["flops"], results["stage_times_s"]
  stages = [s for s in _TIMED if s in flops or s in times]
  stages += [s for s in list(flops) + list(times) if s not in stages]
  cells = time_rows(times, results["compile_times_s"], stages)
  rows = [(s, _sci(flops.get(s)), *c) for s, c in zip(stages, cells)]
  rows.append(("total", _sci(sum(flops.values())), *cells[-1]))
  counted = [s for s in _ALIGNMENT_STAGES if s in flops]
  alignment = sum(flops[s] for s in counted)
  pretrain = flops.get("pretrain", 0.0)
  ratio = (f"{alignment / pretrain:.2%}" if finite(pretrain) and pretrain > 0
           else "n/a (no pretraining FLOPs)")
  return [
      Heading(2, "Compute"),
      Table(("Stage", "FLOPs", "Wall time", "of which compiling"), rows),
      Paragraph(f"Alignment compute ({' + '.join(counted)}) relative to "
                f"pretraining the small model: {ratio} (paper, 175B: SFT + PPO-ptx vs "
                f"GPT-3 pretraining = {_PAPER_ALIGNMENT_RATIO:.2%})."),
  ]


_FIGURES = (
    ("ppo_curves", "RM score, gold score and KL to the SFT policy over PPO iterations."),
    ("win_rate_vs_sft", "Win rate against SFT per model, training vs held-out labelers "
                        "(95% CI; dashed line: tie)."),
    ("rm_accuracy", "Reward-model accuracy on comparisons by training and held-out "
                    "labelers."),
    ("pretrain_loss", "Loss per model on held-out documents of the ptx distribution "
                      "(PPO-ptx trains on it; the alignment tax is measured off it)."),
    ("gold_score", "Mean gold score per model."),
    ("frontier", "RM score and gold score of each method's temperature-1 samples against "
                 "its KL to SFT: the over-optimisation frontier."),
)


def _figure_captions(results: Mapping[str, Any]) -> list[tuple[str, str]]:
  """(name, caption) of the figures this report has, in order: the frontier only where
  results name the methods compared (older results lack its measurements). Both the
  images drawn and the Image blocks come from here, so each block has its image."""
  return [(name, caption) for name, caption in _FIGURES
          if name != "frontier" or "methods" in results]


def _figures(results: Mapping[str, Any]) -> dict[str, bytes]:
  models = results["models"]
  labels = {name: _label(models, name) for name in results["ppo_curves"]}
  draw = {
      "ppo_curves": lambda: plots.ppo_curves(results["ppo_curves"], labels=labels),
      "win_rate_vs_sft": lambda: plots.win_rates(models),
      "rm_accuracy": lambda: plots.rm_accuracy(results["rm_accuracy"]),
      "pretrain_loss": lambda: plots.model_bars(
          models, key="pretrain_loss", ylabel="Held-out NLL (nats / token)",
          title="Loss on held-out ptx-distribution documents"),
      "gold_score": lambda: plots.model_bars(models, key="gold_score",
                                             ylabel="Mean gold score",
                                             title="Gold score per model"),
      "frontier": lambda: plots.frontier(models, names=results["methods"]),
  }
  return {name: plots.to_png(draw[name]()) for name, _ in _figure_captions(results)}


def _sample_blocks(models: Mapping[str, Any]) -> list[Block]:
  first = next(iter(models.values()))
  prompts = [s["prompt"] for s in first["samples"][:MAX_SAMPLE_PROMPTS]]
  blocks: list[Block] = [Heading(2, "Sample responses")]
  if not prompts:
    return blocks + [Paragraph("No samples were recorded.")]
  for i, prompt in enumerate(prompts, 1):
    rows = []
    for model in models.values():
      sample = next((s for s in model["samples"] if s["prompt"] == prompt), None)
      if sample is None:
        rows.append((model["label"], "(no response recorded)", "n/a"))
        continue
      response = sample["response"]
      if len(response) > MAX_RESPONSE_CHARS:
        response = response[:MAX_RESPONSE_CHARS] + " [...]"
      rows.append((model["label"], response, number(sample["gold"])))
    blocks += [Heading(3, f"Prompt {i}"), Paragraph(prompt),
               Table(("Model", "Response", "Gold"), rows)]
  return blocks


def report_blocks(results: Mapping[str, Any]) -> list[Block]:
  """The report's content, in order, independent of output format."""
  return [
      Heading(1, "instructjax: InstructGPT in miniature"),
      Paragraph(_summary(results)),
      *_claim_blocks(results["claims"]),
      *controls_report.choices_blocks(results["config"]),
      *_model_blocks(results),
      *_method_blocks(results),
      *controls_report.family_blocks(results["models"]),
      *controls_report.tax_blocks(results["models"]),
      *_reward_model_blocks(results["rm_accuracy"]),
      *controls_report.agreement_blocks(results.get("labeler_agreement")),
      *_compute_blocks(results),
      Heading(2, "Plots"),
      *[Image(name, caption) for name, caption in _figure_captions(results)],
      *_sample_blocks(results["models"]),
      Heading(2, "Config"),
      Collapsed("Config of this run (click to expand)",
                json.dumps(_plain_json(results["config"]), indent=2)),
  ]


# ----------------------------------------------------------------------------- rendering

# ASCII punctuation that Markdown could read as markup; CommonMark allows "\" before it.
# "_" inside a word (ppo_ptx) cannot start emphasis, so only "_" at a word edge is escaped.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]{}|<>&#~!]|(?<!\w)_|_(?!\w))")


def _md(text: Any) -> str:
  escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))
  return "<br>".join(escaped.splitlines())  # a table cell must stay on one line


def _html(text: Any) -> str:
  return "<br>".join(html.escape(str(text), quote=True).splitlines())


def _png_path(name: str) -> str:
  return f"{PLOTS_DIR}/{name}.png"


def to_markdown(blocks: Sequence[Block]) -> str:
  out = []
  for block in blocks:
    if isinstance(block, Heading):
      out.append(f"{'#' * block.level} {_md(block.text)}")
    elif isinstance(block, Paragraph):
      out.append(_md(block.text))
    elif isinstance(block, Definitions):
      out.append("\n".join(f"- **{_md(term)}**: {_md(text)}" for term, text in block.items))
    elif isinstance(block, Table):
      lines = ["| " + " | ".join(_md(h) for h in block.header) + " |",
               "|" + "---|" * len(block.header)]
      lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in block.rows]
      out.append("\n".join(lines))
    elif isinstance(block, Image):
      out.append(f"![{_md(block.caption)}]({_png_path(block.name)})\n\n*{_md(block.caption)}*")
    elif isinstance(block, Collapsed):
      # A fence longer than any backtick run in the text cannot be closed by it.
      fence = "`" * max(3, 1 + max((len(r) for r in re.findall("`+", block.text)), default=0))
      out.append(f"<details><summary>{html.escape(block.summary)}</summary>\n\n"
                 f"{fence}json\n{block.text}\n{fence}\n\n</details>")
    else:
      raise TypeError(f"unknown report block {block!r}")
  return "\n\n".join(out) + "\n"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: .35em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-style: italic; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: 0.85em; }
"""


def to_html(blocks: Sequence[Block], *, images: Mapping[str, bytes]) -> str:
  """The report as one HTML page; images are embedded as base64 PNG data URIs."""
  title = next((b.text for b in blocks if isinstance(b, Heading)), "Report")
  out = []
  for block in blocks:
    if isinstance(block, Heading):
      out.append(f"<h{block.level}>{_html(block.text)}</h{block.level}>")
    elif isinstance(block, Paragraph):
      out.append(f"<p>{_html(block.text)}</p>")
    elif isinstance(block, Definitions):
      items = "".join(f"<li><strong>{_html(term)}</strong>: {_html(text)}</li>"
                      for term, text in block.items)
      out.append(f"<ul>{items}</ul>")
    elif isinstance(block, Table):
      head = "".join(f"<th>{_html(h)}</th>" for h in block.header)
      body = "".join("<tr>" + "".join(f"<td>{_html(c)}</td>" for c in row) + "</tr>"
                     for row in block.rows)
      out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    elif isinstance(block, Image):
      data = base64.b64encode(images[block.name]).decode("ascii")
      out.append(f'<figure><img alt="{_html(block.caption)}" '
                 f'src="data:image/png;base64,{data}"><figcaption>{_html(block.caption)}'
                 "</figcaption></figure>")
    elif isinstance(block, Collapsed):
      out.append(f"<details><summary>{_html(block.summary)}</summary>"
                 f"<pre>{html.escape(block.text)}</pre></details>")
    else:
      raise TypeError(f"unknown report block {block!r}")
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          f"<title>{_html(title)}</title><style>{_CSS}</style></head><body>\n"
          + "\n".join(out) + "\n</body></html>\n")


# ----------------------------------------------------------------------------- files


def _plain_json(value: Any) -> Any:
  """value with NaN/inf as None, so the JSON written is strict (parsable anywhere)."""
  if isinstance(value, Mapping):
    return {str(k): _plain_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain_json(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def claims_summary(results: Mapping[str, Any]) -> dict[str, Any]:
  """The content of claims.json."""
  fields = ("id", "paper", "criterion", "measured", "reproduced")
  return _plain_json({
      "claims": [{f: claim[f] for f in fields} for claim in results["claims"]],
      "config": results["config"],
      "stage_times_s": results["stage_times_s"],
      "compile_times_s": results["compile_times_s"],
      "total_time_s": sum(results["stage_times_s"].values()),
  })


def write_report(results: dict, workdir: str) -> dict[str, str]:
  """Writes the plots, report.md, report.html and claims.json into workdir.

  Returns {path relative to workdir: absolute path} of every file written:
  'report.md', 'report.html', 'claims.json' and 'plots/<name>.png' for ppo_curves,
  win_rate_vs_sft, rm_accuracy, pretrain_loss, gold_score, and frontier where results
  has "methods". Raises ReportError if results lacks a field the report needs.
  """
  validate_results(results)
  os.makedirs(os.path.join(workdir, PLOTS_DIR), exist_ok=True)
  images = _figures(results)
  blocks = report_blocks(results)
  outputs = {_png_path(name): png for name, png in images.items()}
  outputs["report.md"] = to_markdown(blocks).encode("utf-8")
  outputs["report.html"] = to_html(blocks, images=images).encode("utf-8")
  outputs["claims.json"] = (json.dumps(claims_summary(results), indent=2, allow_nan=False)
                            + "\n").encode("utf-8")
  paths = {}
  for relative, data in outputs.items():
    paths[relative] = os.path.join(workdir, relative)
    write_atomic(paths[relative], data)
  return paths
