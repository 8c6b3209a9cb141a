"""Simulated labelers: exact ranking at zero noise, Plackett-Luce statistics, quirks."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from instructjax.data.testbed import candidates, labelers, tasks
from instructjax.data.testbed.labelers import Labeler
from instructjax.data.testbed.tasks import Example

REVERSE = Example(family="reverse", prompt="Instruction: reverse the words: cat red apple"
                  "\nAnswer:", answer=" apple red cat", source=("cat", "red", "apple"))
# gold scores by hand: 1/3, 1, 0, 2/3, 1/3
RESPONSES = [" cat", " apple red cat", "", " apple cat", " red"]


def test_zero_noise_labeler_ranks_by_gold_score_by_hand():
  labeler = Labeler(id=0, temperature=0.0)
  # scores 1, 2/3, then the two 1/3s in listed order (tie), then 0
  assert labeler.rank(REVERSE, RESPONSES, random.Random(0)) == [1, 3, 0, 4, 2]


def test_zero_noise_labeler_ranks_generated_candidates_by_gold_score():
  labeler = Labeler(id=0, temperature=0.0)
  rng = random.Random(1)
  for _ in range(300):
    example = tasks.sample_example(rng)
    responses = candidates.candidate_responses(example, rng, k=rng.randint(4, 9))
    order = labeler.rank(example, responses, rng)
    assert sorted(order) == list(range(len(responses)))
    gold = [tasks.score(example, responses[i]) for i in order]
    for (i, a), (j, b) in itertools.pairwise(zip(order, gold)):
      assert a > b or (a == b and i < j)  # descending, ties in listed order


def test_plackett_luce_frequencies():
  temperature = 0.5
  labeler = Labeler(id=0, temperature=temperature)
  responses = [" apple red cat", " apple cat", " cat"]  # gold 1, 2/3, 1/3
  utilities = np.array([1.0, 2 / 3, 1 / 3]) / temperature
  first = np.exp(utilities) / np.exp(utilities).sum()
  # P(ranking [0, 1, 2]) = p0 * exp(u1) / (exp(u1) + exp(u2))
  p_identity = first[0] * np.exp(utilities[1]) / np.exp(utilities[1:]).sum()
  rng = random.Random(2)
  n = 20_000
  rankings = [tuple(labeler.rank(REVERSE, responses, rng)) for _ in range(n)]
  first_counts = np.bincount([r[0] for r in rankings], minlength=3) / n
  np.testing.assert_allclose(first_counts, first, atol=0.015)
  assert rankings.count((0, 1, 2)) / n == pytest.approx(p_identity, abs=0.015)


def test_length_bias_is_a_quirk_on_top_of_gold_score():
  # " cat" has gold 1/3 (1 word), " apple red cat dog" gold 0.9 (4 words). A strong
  # liking for short answers flips the gold order: 1/3 - 0.2 > 0.9 - 4 * 0.2.
  short_liker = Labeler(id=0, temperature=0.0, length_bias=-0.2)
  utilities = {r: short_liker.utility(REVERSE, r) for r in (" cat", " apple red cat dog")}
  assert utilities[" cat"] == pytest.approx(1 / 3 - 0.2)
  assert utilities[" apple red cat dog"] == pytest.approx(0.9 - 0.8)
  assert short_liker.rank(REVERSE, [" apple red cat dog", " cat"], random.Random(0)) == [
      1, 0]
  long_liker = Labeler(id=1, temperature=0.0, length_bias=0.2)
  assert long_liker.rank(REVERSE, [" cat", " apple red cat dog"], random.Random(0)) == [
      1, 0]


def test_prefer_matches_pairwise_probability():
  labeler = Labeler(id=0, temperature=0.25, length_bias=0.05)
  a, b = " apple cat", " cat"  # utilities 2/3 + 0.1 and 1/3 + 0.05
  expected = 1 / (1 + math.exp(-((2 / 3 + 0.1) - (1 / 3 + 0.05)) / 0.25))
  assert labeler.preference_probability(REVERSE, a, b) == pytest.approx(expected)
  rng = random.Random(3)
  wins = sum(labeler.prefer(REVERSE, a, b, rng) for _ in range(20_000))
  assert wins / 20_000 == pytest.approx(expected, abs=0.015)


def test_zero_noise_prefer_is_deterministic():
  labeler = Labeler(id=0, temperature=0.0)
  rng = random.Random(4)
  assert all(labeler.prefer(REVERSE, " apple red cat", " cat", rng) for _ in range(100))
  assert not any(labeler.prefer(REVERSE, " cat", " apple cat", rng) for _ in range(100))
  assert labeler.preference_probability(REVERSE, " cat", " red") == 0.5


def test_make_labelers_marks_held_out():
  pool = labelers.make_labelers(random.Random(0), n_train=4, n_held_out=2)
  assert [labeler.id for labeler in pool] == list(range(6))
  assert [labeler.held_out for labeler in pool] == [False] * 4 + [True] * 2
  assert all(labeler.temperature > 0 for labeler in pool)
  assert pool == labelers.make_labelers(random.Random(0), n_train=4, n_held_out=2)


def test_bad_labelers_are_rejected():
  with pytest.raises(ValueError, match="temperature=-1"):
    Labeler(id=3, temperature=-1.0)
  with pytest.raises(ValueError, match="no responses"):
    Labeler(id=3, temperature=0.0).rank(REVERSE, [], random.Random(0))
  with pytest.raises(ValueError, match="n_train >= 1"):
    labelers.make_labelers(random.Random(0), n_train=0, n_held_out=1)
