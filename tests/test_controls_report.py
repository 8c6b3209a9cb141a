"""The report's control sections from hand-made results: per-family gold, labeler
agreement, how choices were made; none of them for results that lack the numbers."""

from __future__ import annotations

from instructjax.evaluation import controls_report
from instructjax.evaluation.report import to_markdown


def test_family_table_has_a_row_per_scored_model_and_families_in_testbed_order():
  models = {"sft": {"label": "SFT", "gold_by_family": {"sort": 0.25, "reverse": 0.5},
                    "credit": 0.875, "remark_rate": 0.5},
            "ppo": {"label": "PPO", "gold_by_family": {"reverse": 0.75}},
            "old": {"label": "Old run"}}
  markdown = to_markdown(controls_report.family_blocks(models))
  # FAMILIES order: reverse before sort
  assert "| Model | Credit | Remarks | reverse | sort |" in markdown
  assert "| SFT | 0.88 | 0.50 | 0.50 | 0.25 |" in markdown
  assert "| PPO | n/a | n/a | 0.75 | n/a |" in markdown
  assert "Old run" not in markdown
  assert controls_report.family_blocks({"old": {"label": "Old"}}) == []


def test_agreement_table_beside_the_papers_numbers():
  agreement = {"train_train": {"mean": 0.78, "std": 0.03, "labeler_pairs": 15},
               "train_heldout": {"mean": 0.71, "std": 0.05, "labeler_pairs": 18},
               "heldout_heldout": {"mean": None, "std": None, "labeler_pairs": 0}}
  markdown = to_markdown(controls_report.agreement_blocks(agreement))
  assert "| training with training | 0.780 | 0.030 | 15 | 72.6 ± 1.5% |" in markdown
  assert "| training with held-out | 0.710 | 0.050 | 18 | n/a |" in markdown
  assert "held-out with held-out |" not in markdown  # no pairs in that group
  assert controls_report.agreement_blocks(None) == []


def test_choices_table_from_the_config():
  markdown = to_markdown(controls_report.choices_blocks(
      {"choices": {"ppo_kl_coef": "0.05: best validation gold", "a": "b"}}))
  # sorted by setting
  assert markdown.index("| a | b |") < markdown.index(
      "| ppo_kl_coef | 0.05: best validation gold |")
  assert controls_report.choices_blocks({}) == []
