"""Simulated labelers: exact ranking at zero noise, Plackett-Luce statistics, quirks,
and held-out labelers whose preferences differ from the training labelers'."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from instructjax.data.testbed import candidates, labelers, tasks
from instructjax.data.testbed.labelers import HeldOutPreferences, Labeler
from instructjax.data.testbed.tasks import Example

REVERSE = Example(family="reverse", prompt="Instruction: reverse the words: cat red apple"
                  "\nAnswer:", answer=" apple red cat", source=("cat", "red", "apple"))
# gold scores by hand: 1/3, 1, 0, 2/3, 1/3
RESPONSES = [" cat", " apple red cat", "", " apple cat", " red"]
COUNT = Example(family="count", prompt="Instruction: count the word cat in: cat dog cat"
                "\nAnswer:", answer=" 2", source=("cat", "dog", "cat"))


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
  with pytest.raises(ValueError, match="partial_credit_power=0"):
    Labeler(id=3, temperature=0.1, partial_credit_power=0.0)
  with pytest.raises(ValueError, match="extra_word_penalty=-0.1"):
    Labeler(id=3, temperature=0.1, extra_word_penalty=-0.1)
  with pytest.raises(ValueError, match="no responses"):
    Labeler(id=3, temperature=0.0).rank(REVERSE, [], random.Random(0))
  with pytest.raises(ValueError, match="n_train >= 1"):
    labelers.make_labelers(random.Random(0), n_train=0, n_held_out=1)


def test_default_utility_is_gold_score_plus_length_bias():
  """Training labelers keep the default preferences, so their rankings (the RM's
  training data) are what they were before labelers had preferences of their own."""
  labeler = Labeler(id=0, temperature=0.1, length_bias=-0.0217)
  rng = random.Random(5)
  n = 0
  for _ in range(400):
    example = tasks.sample_example(rng)
    for response in candidates.candidate_responses(example, rng, k=rng.randint(4, 9)):
      expected = tasks.score(example, response) - 0.0217 * len(response.split())
      assert labeler.utility(example, response) == expected, (example, response)
      n += 1
  assert n > 2000


def test_training_labelers_are_drawn_as_before():
  # The old draw, reimplemented: temperature then length bias, labeler by labeler.
  old = random.Random(0)
  expected = [(old.uniform(0.05, 0.2), old.uniform(-0.03, 0.03)) for _ in range(4)]
  assert expected[:2] == [(0.17666327772875723, 0.015477264176418148),
                          (0.11308573712462676, -0.0144649949824222)]
  for n_held_out in (0, 2, 5):
    pool = labelers.make_labelers(random.Random(0), n_train=4, n_held_out=n_held_out)
    assert pool[:4] == tuple(Labeler(id=i, temperature=t, length_bias=b)
                             for i, (t, b) in enumerate(expected))
  # The testbed's own stream (seed 0): the first training labeler as it always was.
  pool = labelers.make_labelers(random.Random("instructjax-testbed/0/labelers"),
                                n_train=6, n_held_out=3)
  assert (pool[0].temperature, pool[0].length_bias) == (0.1671730857666835,
                                                        -0.011210983166132598)


def test_held_out_labelers_are_drawn_from_their_own_distribution():
  pool = labelers.make_labelers(random.Random(6), n_train=3, n_held_out=600)
  train, held_out = pool[:3], pool[3:]
  assert [labeler.id for labeler in held_out] == list(range(3, 603))
  assert all(labeler.held_out for labeler in held_out)
  for labeler in train:
    assert (labeler.partial_credit_power, labeler.extra_word_penalty,
            labeler.remark_bonus, labeler.exact_numbers) == (1.0, 0.1, 0.0, False)
  for labeler in held_out:
    assert 0.05 <= labeler.temperature <= 0.2
    assert 1.0 <= labeler.partial_credit_power <= 3.0
    assert 0.03 <= labeler.extra_word_penalty <= 0.2
    assert -0.05 <= labeler.length_bias <= 0.05
    assert labeler.remark_bonus == 0.0 or 0.1 <= labeler.remark_bonus <= 0.3
  # About a third like remarks and about a third want exact numbers (200 of 600
  # expected, sd ~12), independently of each other.
  likers = sum(labeler.remark_bonus > 0 for labeler in held_out)
  exact = sum(labeler.exact_numbers for labeler in held_out)
  both = sum(labeler.remark_bonus > 0 and labeler.exact_numbers for labeler in held_out)
  assert 160 < likers < 240 and 160 < exact < 240 and 40 < both < 95
  assert max(labeler.extra_word_penalty for labeler in held_out) > 0.19
  assert min(labeler.partial_credit_power for labeler in held_out) < 1.05
  # A different distribution can be asked for; the training labelers stay the same.
  lenient = HeldOutPreferences(partial_credit_power_range=(1.0, 1.0),
                               remark_liker_share=0.0, exact_numbers_share=0.0)
  other = labelers.make_labelers(random.Random(6), n_train=3, n_held_out=600,
                                 held_out_preferences=lenient)
  assert other[:3] == train
  assert all(l.partial_credit_power == 1.0 and l.remark_bonus == 0.0
             and not l.exact_numbers for l in other[3:])


def test_remark_liker_prefers_a_polite_answer_by_hand():
  plain, polite = " apple red cat", " apple red cat i hope this helps."  # 4 extra words
  # bonus 0.3 > 4 * 0.05: 1 - 0.2 + 0.3 = 1.1 beats 1.
  liker = Labeler(id=0, temperature=0.0, extra_word_penalty=0.05, remark_bonus=0.3)
  assert liker.utility(REVERSE, polite) == pytest.approx(1.1)
  assert liker.utility(REVERSE, plain) == 1.0
  assert liker.rank(REVERSE, [plain, polite], random.Random(0)) == [1, 0]
  # bonus 0.3 < 4 * 0.1: 1 - 0.4 + 0.3 = 0.9 loses to 1.
  minder = Labeler(id=1, temperature=0.0, remark_bonus=0.3)
  assert minder.utility(REVERSE, polite) == pytest.approx(0.9)
  assert minder.rank(REVERSE, [polite, plain], random.Random(0)) == [1, 0]
  # Four words of other chatter earn no bonus: 1 - 0.2.
  assert liker.utility(REVERSE, " apple red cat dog bird cow pig") == pytest.approx(0.8)


def test_harsh_partial_credit_flips_an_order_by_hand():
  partial, chatty = " apple red", " apple red cat dog bird cow pig"
  # gold: 2/3 versus 1 - 4 * 0.1 = 0.6, so the partial answer wins.
  gold = Labeler(id=0, temperature=0.0)
  assert gold.rank(REVERSE, [chatty, partial], random.Random(0)) == [1, 0]
  # squared credit: (2/3)^2 = 4/9 versus 1 - 0.4 = 0.6, so the full answer wins.
  harsh = Labeler(id=1, temperature=0.0, partial_credit_power=2.0)
  assert harsh.utility(REVERSE, partial) == pytest.approx(4 / 9)
  assert harsh.utility(REVERSE, chatty) == pytest.approx(0.6)
  assert harsh.rank(REVERSE, [partial, chatty], random.Random(0)) == [1, 0]


def test_exact_numbers_gives_no_credit_to_a_near_miss_by_hand():
  exact = Labeler(id=0, temperature=0.0, exact_numbers=True)
  gold = Labeler(id=1, temperature=0.0)
  assert gold.utility(COUNT, " 3") == 0.5  # 1 / (1 + 1)
  assert exact.utility(COUNT, " 3") == 0.0
  assert exact.utility(COUNT, " 1") == 0.0
  assert exact.utility(COUNT, " 2") == 1.0
  assert exact.utility(COUNT, " 2 times") == pytest.approx(0.9)
  assert exact.utility(REVERSE, " apple cat") == pytest.approx(2 / 3)  # words: as gold
