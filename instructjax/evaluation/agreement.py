"""Inter-labeler agreement, reported the way InstructGPT reports it.

InstructGPT (Ouyang et al., 2022, on its human data) found that training labelers
agree with each other on 72.6 +- 1.5% of comparisons and held-out labelers with each
other on 77.3 +- 1.3%. The testbed's labelers are simulated, so their agreement is
computed exactly instead of counted: labelers a and b judge a pair of responses
independently, so they agree with probability p_a p_b + (1 - p_a)(1 - p_b), where p is
each one's probability of preferring the first response (Labeler.
preference_probability). How much held-out labelers agree with training labelers says
whether "the reward model generalises to held-out labelers" could have failed: if the
two groups want the same thing, it holds by construction.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from instructjax.data.testbed.labelers import Labeler
from instructjax.data.testbed.tasks import Example

GROUPS = ("train_train", "train_heldout", "heldout_heldout")


def _judgements(labeler: Labeler, items: Sequence[tuple[Example, Sequence[str]]],
                ) -> tuple[np.ndarray, np.ndarray]:
  """Over every pair (i < j) of every item's responses, in order: P(labeler prefers
  response i) and whether the labeler tells them apart (their utilities differ)."""
  probabilities, decided = [], []
  for example, responses in items:
    utilities = [labeler.utility(example, r) for r in responses]
    for i, j in itertools.combinations(range(len(responses)), 2):
      probabilities.append(
          labeler.preference_probability(example, responses[i], responses[j]))
      decided.append(utilities[i] != utilities[j])
  return np.array(probabilities), np.array(decided, dtype=bool)


def _group(a: Labeler, b: Labeler) -> str:
  return GROUPS[a.held_out + b.held_out]


def labeler_agreement(items: Sequence[tuple[Example, Sequence[str]]],
                      labelers: Sequence[Labeler]) -> dict[str, dict]:
  """How often two labelers agree on which of two responses is better, by group.

  items: (example, responses) pairs, e.g. the RM evaluation prompts with the
  responses ranked for each. For each pair of distinct labelers, the agreement is
  the mean of p_a p_b + (1 - p_a)(1 - p_b) over the response pairs of all items that
  at least one of the two tells apart (a pair both see as a tie says nothing about
  agreement; a labeler pair with no other pair is left out). Labeler pairs are
  grouped as in the paper: "train_train" (two training labelers), "train_heldout"
  and "heldout_heldout".

  Returns {group: {"mean": float | None, "std": float | None, "labeler_pairs": int}}:
  mean and (population) std of the agreement over the group's labeler pairs; None for
  a group with no labeler pairs. Plain Python values, ready for JSON.
  """
  if not items:
    raise ValueError("no items to measure agreement on")
  ids = [labeler.id for labeler in labelers]
  if len(set(ids)) != len(ids):
    raise ValueError(f"labeler ids must be distinct, got {ids}")
  judgements = {labeler.id: _judgements(labeler, items) for labeler in labelers}
  per_group: dict[str, list[float]] = {group: [] for group in GROUPS}
  for a, b in itertools.combinations(labelers, 2):
    p_a, decided_a = judgements[a.id]  # [response pairs]
    p_b, decided_b = judgements[b.id]
    counted = decided_a | decided_b
    if counted.any():
      agree = p_a * p_b + (1.0 - p_a) * (1.0 - p_b)  # [response pairs]
      per_group[_group(a, b)].append(float(agree[counted].mean()))
  return {group: {"mean": float(np.mean(values)) if values else None,
                  "std": float(np.std(values)) if values else None,
                  "labeler_pairs": len(values)}
          for group, values in per_group.items()}
