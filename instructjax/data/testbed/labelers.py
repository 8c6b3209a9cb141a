"""Simulated labelers who rank responses and judge pairs, as InstructGPT's did.

A labeler's utility for a response is its gold score plus a personal quirk (a
preference for longer or shorter responses). Rankings follow the Plackett-Luce model:
the best response is drawn first with probability proportional to
exp(utility / temperature), then the best of the rest, and so on. Temperature is the
labeler's noise; at temperature 0 a labeler ranks by utility exactly (ties go to the
response listed first). A pairwise judgement is the same model with two responses:
P(a beats b) = sigmoid((utility(a) - utility(b)) / temperature).
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Sequence

from instructjax.data.testbed import tasks
from instructjax.data.testbed.tasks import Example


@dataclasses.dataclass(frozen=True, kw_only=True)
class Labeler:
  """One simulated labeler."""
  id: int
  temperature: float  # Plackett-Luce noise; 0 ranks by utility exactly
  length_bias: float = 0.0  # utility per response word: > 0 likes long, < 0 short
  held_out: bool = False  # held-out labelers judge evaluations only

  def __post_init__(self):
    if not self.temperature >= 0.0:
      raise ValueError(f"labeler {self.id}: temperature={self.temperature} must be >= 0")

  def utility(self, example: Example, response: str) -> float:
    return tasks.score(example, response) + self.length_bias * len(response.split())

  def rank(self, example: Example, responses: Sequence[str],
           rng: random.Random) -> list[int]:
    """Indices of `responses`, best first (a permutation of range(len(responses)))."""
    if not responses:
      raise ValueError(f"labeler {self.id}: no responses to rank for {example.prompt!r}")
    utilities = [self.utility(example, r) for r in responses]
    if self.temperature == 0.0:
      return sorted(range(len(responses)), key=lambda i: (-utilities[i], i))
    remaining = list(range(len(responses)))
    order = []
    while remaining:
      top = max(utilities[i] for i in remaining)  # subtracted for stable exp
      weights = [math.exp((utilities[i] - top) / self.temperature) for i in remaining]
      pick = rng.choices(range(len(remaining)), weights=weights)[0]
      order.append(remaining.pop(pick))
    return order

  def preference_probability(self, example: Example, response_a: str,
                             response_b: str) -> float:
    """P(this labeler prefers response_a to response_b); 0.5 for a tie at temperature 0."""
    gap = self.utility(example, response_a) - self.utility(example, response_b)
    if self.temperature == 0.0:
      return 0.5 if gap == 0.0 else float(gap > 0.0)
    return 1.0 / (1.0 + math.exp(-gap / self.temperature))

  def prefer(self, example: Example, response_a: str, response_b: str,
             rng: random.Random) -> bool:
    """One pairwise judgement: True if response_a is preferred to response_b."""
    return rng.random() < self.preference_probability(example, response_a, response_b)


def make_labelers(rng: random.Random, *, n_train: int, n_held_out: int,
                  temperature_range: tuple[float, float] = (0.05, 0.2),
                  length_bias_range: tuple[float, float] = (-0.03, 0.03),
                  ) -> tuple[Labeler, ...]:
  """A pool of labelers drawn from one distribution; ids n_train.. are held out."""
  if n_train < 1 or n_held_out < 0:
    raise ValueError(f"need n_train >= 1 and n_held_out >= 0, got {n_train}, {n_held_out}")
  return tuple(
      Labeler(id=i, temperature=rng.uniform(*temperature_range),
              length_bias=rng.uniform(*length_bias_range), held_out=i >= n_train)
      for i in range(n_train + n_held_out))
