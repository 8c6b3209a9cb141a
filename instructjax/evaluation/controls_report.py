"""The report's sections that show where an effect came from: gold score per task family
for every model, and how each of the run's choices was made (on validation data).

Each returns no blocks for results that lack its measurements (runs from before they
were made), so older results.json files still render.
"""

from __future__ import annotations

from typing import Any, Mapping

from instructjax.data.testbed import FAMILIES
from instructjax.evaluation.report_blocks import Block, Heading, Paragraph, Table, number


def family_blocks(models: Mapping[str, Any]) -> list[Block]:
  """Greedy gold score per task family (columns) for every model (rows)."""
  scored = [m for m in models.values() if m.get("gold_by_family")]
  if not scored:
    return []
  families = [f for f in FAMILIES if any(f in m["gold_by_family"] for m in scored)]
  rows = [(m["label"], number(m.get("credit"), 2), number(m.get("remark_rate"), 2),
           *(number(m["gold_by_family"].get(f), 2) for f in families)) for m in scored]
  return [
      Heading(3, "Gold score per task family"),
      Paragraph("Where a method's gain comes from, on its greedy answers to the test "
                "prompts: credit is how much of the answer is right before the gold "
                "score's charge for extra words, remarks the share of answers ending in "
                "a polite remark; then the gold score per task family. Answers that got "
                "more right raise the credit; dropping the remark only lowers the "
                "remarks."),
      Table(("Model", "Credit", "Remarks", *families), rows),
  ]


def tax_blocks(models: Mapping[str, Any]) -> list[Block]:
  """The alignment tax off the ptx data, per model: held-out task formats by accuracy,
  and LM loss on distinct text, beside the loss on held-out ptx-distribution text."""
  measured = [m for m in models.values() if m.get("probe_accuracy")]
  if not measured:
    return []
  benchmarks = [b for b in measured[0]["probe_accuracy"] if b != "average"]
  rows = [(m["label"], number(m["probe_accuracy"]["average"]["accuracy"]),
           *(number(m["probe_accuracy"][b]["accuracy"], 2) for b in benchmarks),
           number(m.get("distinct_text_loss")), number(m.get("pretrain_loss")))
          for m in measured]
  chance = number(measured[0]["probe_accuracy"]["average"]["chance"], 2)
  return [
      Heading(3, "Alignment tax off the ptx data"),
      Paragraph("The testbed's analogue of the paper's public NLP benchmarks: multiple-"
                "choice probes of what pretraining taught, in formats no training text "
                f"uses, answered by LM likelihood (chance {chance}); and next-token loss "
                "(nats/token) on text of kinds the pretraining documents lack. The last "
                "column is the loss on held-out documents of the ptx distribution itself, "
                "which PPO-ptx trains on, so it is shown but judges no claim."),
      Table(("Model", "Held-out formats (mean)", *benchmarks, "Distinct text loss",
             "Ptx-distribution loss"), rows),
  ]


def agreement_blocks(agreement: Mapping[str, Any] | None) -> list[Block]:
  """Inter-labeler agreement by group, beside the paper's."""
  if not agreement:
    return []
  paper = {"train_train": "72.6 ± 1.5%", "heldout_heldout": "77.3 ± 1.3%"}
  titles = {"train_train": "training with training", "train_heldout":
            "training with held-out", "heldout_heldout": "held-out with held-out"}
  rows = [(titles[g], number(a["mean"]), number(a["std"]), str(a["labeler_pairs"]),
           paper.get(g, "n/a")) for g, a in agreement.items() if a["mean"] is not None]
  return [
      Heading(3, "Labeler agreement"),
      Paragraph("How often two labelers agree on which of two responses to a rm_eval "
                "prompt is better (exact, from their preference probabilities), averaged "
                "over labeler pairs. Held-out labelers weigh partial credit, chatter and "
                "length their own way and some have quirks (liking a polite remark, "
                "counting a near number as wrong), so they can disagree with the reward "
                "model's training labelers."),
      Table(("Labelers", "Agreement", "Std over pairs", "Labeler pairs", "Paper"), rows),
  ]


def choices_blocks(config: Mapping[str, Any]) -> list[Block]:
  """How each hyperparameter of the run was chosen (config.choices)."""
  choices = config.get("choices")
  if not choices:
    return []
  return [
      Heading(2, "How the choices were made"),
      Paragraph("How each of the run's settings was chosen. Those chosen by measurement "
                "were chosen on validation data (the validation prompts, or rm_eval for "
                "the reward model); the test prompts were seen only by this final "
                "evaluation. Settings fixed once, untuned, say so."),
      Table(("Setting", "How it was chosen"), sorted(choices.items())),
  ]
