"""Simulated labelers who rank responses and judge pairs, as InstructGPT's did.

A labeler's utility for a response has the gold score's shape, weighed the labeler's
own way, plus quirks:

  utility = max(0, credit ** partial_credit_power - extra_word_penalty * extra words)
            + remark_bonus (if the response has a polite remark) + length_bias * words

where credit and extra words are the gold scorer's (tasks.credit, tasks.extra_words),
and an `exact_numbers` labeler gives numeric answers credit only when exact. The
defaults are the gold score itself, which every training labeler keeps (their only
quirk is length_bias). Held-out labelers are other people: `make_labelers` draws their
preferences from another distribution, so that agreeing with the training labelers is
something a reward model can fail at, not a tautology.

Rankings follow the Plackett-Luce model:
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

from instructjax.data.testbed import tasks, world
from instructjax.data.testbed.tasks import Example


@dataclasses.dataclass(frozen=True, kw_only=True)
class Labeler:
  """One simulated labeler. The defaults weigh a response as the gold score does."""
  id: int
  temperature: float  # Plackett-Luce noise; 0 ranks by utility exactly
  length_bias: float = 0.0  # utility per response word: > 0 likes long, < 0 short
  partial_credit_power: float = 1.0  # credit ** p: p > 1 is harsher on partial answers
  extra_word_penalty: float = tasks.EXTRA_WORD_PENALTY  # what each extra word costs
  remark_bonus: float = 0.0  # utility added for a polite remark (world.REMARKS)
  exact_numbers: bool = False  # numeric answers: credit only for the exact number
  held_out: bool = False  # held-out labelers judge evaluations only

  def __post_init__(self):
    if not self.temperature >= 0.0:
      raise ValueError(f"labeler {self.id}: temperature={self.temperature} must be >= 0")
    if not self.partial_credit_power > 0.0:
      raise ValueError(f"labeler {self.id}: partial_credit_power="
                       f"{self.partial_credit_power} must be > 0")
    if not self.extra_word_penalty >= 0.0:
      raise ValueError(f"labeler {self.id}: extra_word_penalty="
                       f"{self.extra_word_penalty} must be >= 0")

  def utility(self, example: Example, response: str) -> float:
    """The formula in the module docstring; tasks.score + length_bias * words when
    the preferences are the defaults."""
    credit = tasks.credit(example, response)
    if self.exact_numbers and tasks.numeric_answer(example.family):
      credit = float(credit == 1.0)  # 1 / (1 + |miss|) is 1 for the exact number only
    graded = max(0.0, credit ** self.partial_credit_power
                 - self.extra_word_penalty * tasks.extra_words(example, response))
    if any(remark in response for remark in world.REMARKS):
      graded += self.remark_bonus
    return graded + self.length_bias * len(response.split())

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeldOutPreferences:
  """The distribution held-out labelers' preferences are drawn from.

  InstructGPT's held-out labelers were other people than its training labelers, so
  they are not drawn like the training labelers (who all grade by the gold score, up
  to a small length bias). The ranges keep every held-out labeler a plausible grader
  of the same tasks: a perfect answer is worth 1 and nothing is worth 0 to all of
  them; they differ on how to order what lies between.
  """
  # How much a partial answer is worth: p = 3 makes 2/3 of the answer worth 0.30, a
  # reader who wants the answer, not most of it. p < 1 (more lenient than the gold
  # score) is left out: near misses already get generous credit.
  partial_credit_power_range: tuple[float, float] = (1.0, 3.0)
  # Chatter, around the gold 0.1 per word: from a reader who barely minds it (a
  # five-word remark costs 0.15) to one for whom it spoils a perfect answer (1.0).
  extra_word_penalty_range: tuple[float, float] = (0.03, 0.2)
  # The training labelers' quirk (+-0.03 per word), somewhat stronger.
  length_bias_range: tuple[float, float] = (-0.05, 0.05)
  # About a third like politeness. A remark is 4-5 extra words, so a bonus in
  # [0.1, 0.3] outweighs its cost only for those who mind chatter little.
  remark_liker_share: float = 1 / 3
  remark_bonus_range: tuple[float, float] = (0.1, 0.3)
  # About a third count a wrong number as wrong: no credit for 11 when 12 was asked.
  exact_numbers_share: float = 1 / 3

  def draw(self, rng: random.Random, *, id: int, temperature: float) -> Labeler:
    """One held-out labeler with preferences drawn from this distribution."""
    length_bias = rng.uniform(*self.length_bias_range)
    partial_credit_power = rng.uniform(*self.partial_credit_power_range)
    extra_word_penalty = rng.uniform(*self.extra_word_penalty_range)
    remark_bonus = (rng.uniform(*self.remark_bonus_range)
                    if rng.random() < self.remark_liker_share else 0.0)
    return Labeler(id=id, temperature=temperature, length_bias=length_bias,
                   partial_credit_power=partial_credit_power,
                   extra_word_penalty=extra_word_penalty, remark_bonus=remark_bonus,
                   exact_numbers=rng.random() < self.exact_numbers_share, held_out=True)


def make_labelers(rng: random.Random, *, n_train: int, n_held_out: int,
                  temperature_range: tuple[float, float] = (0.05, 0.2),
                  length_bias_range: tuple[float, float] = (-0.03, 0.03),
                  held_out_preferences: HeldOutPreferences = HeldOutPreferences(),
                  ) -> tuple[Labeler, ...]:
  """A pool of labelers; ids n_train.. are held out.

  Training labelers grade by the gold score with a length bias in length_bias_range.
  They are drawn first, so they do not depend on n_held_out or held_out_preferences.
  Held-out labelers have the same noise (temperature_range) but preferences drawn
  from held_out_preferences: other people, not more of the same.
  """
  if n_train < 1 or n_held_out < 0:
    raise ValueError(f"need n_train >= 1 and n_held_out >= 0, got {n_train}, {n_held_out}")
  train = tuple(
      Labeler(id=i, temperature=rng.uniform(*temperature_range),
              length_bias=rng.uniform(*length_bias_range))
      for i in range(n_train))
  held_out = tuple(
      held_out_preferences.draw(rng, id=i, temperature=rng.uniform(*temperature_range))
      for i in range(n_train, n_train + n_held_out))
  return train + held_out
