"""Inter-labeler agreement: by hand on tiny cases, and held-out labelers on a testbed."""

from __future__ import annotations

import json
import math

import pytest

from instructjax.data.testbed import splits
from instructjax.data.testbed.labelers import Labeler
from instructjax.data.testbed.splits import TestbedSizes
from instructjax.data.testbed.tasks import Example
from instructjax.evaluation.agreement import labeler_agreement

REVERSE = Example(family="reverse", prompt="Instruction: reverse the words: cat red apple"
                  "\nAnswer:", answer=" apple red cat", source=("cat", "red", "apple"))
COUNT = Example(family="count", prompt="Instruction: count the word cat in: cat dog cat"
                "\nAnswer:", answer=" 2", source=("cat", "dog", "cat"))
GOLD = Labeler(id=0, temperature=0.0)


def test_zero_noise_labelers_disagreeing_on_one_of_three_pairs_agree_two_thirds():
  # gold utilities 1, 0.5, 0.9; with 0.6 per extra word 1, 0.5, 0.4. They agree that
  # " 2" is best, and disagree on " 3" versus " 2 times".
  chatter_hater = Labeler(id=1, temperature=0.0, extra_word_penalty=0.6, held_out=True)
  result = labeler_agreement([(COUNT, [" 2", " 3", " 2 times"])], [GOLD, chatter_hater])
  assert result["train_heldout"] == {"mean": pytest.approx(2 / 3), "std": 0.0,
                                     "labeler_pairs": 1}


def test_pairs_both_labelers_see_as_ties_are_left_out():
  # COUNT, by hand: gold 1, 0.5, 0.9, 0.5; the other (0.6 per extra word, -0.1 per
  # word) 0.9, 0.4, 0.2, 0.4. " 3" versus " 1" is a tie to both: left out. They agree
  # on the three pairs with " 2", disagree on " 2 times" versus " 3" and versus " 1".
  # REVERSE: " cat red apple" and " cat" both score 1/3, a tie to gold (p = 0.5) only;
  # the other prefers the shorter one, so they agree with probability 0.5.
  other = Labeler(id=1, temperature=0.0, extra_word_penalty=0.6, length_bias=-0.1,
                  held_out=True)
  items = [(COUNT, [" 2", " 3", " 2 times", " 1"]), (REVERSE, [" cat red apple", " cat"])]
  result = labeler_agreement(items, [GOLD, other])
  assert result["train_heldout"]["mean"] == pytest.approx((3 + 0.5) / 6)


def test_finite_noise_agreement_by_the_formula():
  responses = [" apple red cat", " apple cat", " cat"]
  a = Labeler(id=0, temperature=0.25, length_bias=0.05)
  b = Labeler(id=1, temperature=0.5, partial_credit_power=2.0, held_out=True)
  utilities_a = [1 + 3 * 0.05, 2 / 3 + 2 * 0.05, 1 / 3 + 0.05]
  utilities_b = [1.0, (2 / 3) ** 2, (1 / 3) ** 2]
  agreements = []
  for i, j in ((0, 1), (0, 2), (1, 2)):
    p_a = 1 / (1 + math.exp(-(utilities_a[i] - utilities_a[j]) / 0.25))
    p_b = 1 / (1 + math.exp(-(utilities_b[i] - utilities_b[j]) / 0.5))
    agreements.append(p_a * p_b + (1 - p_a) * (1 - p_b))
  result = labeler_agreement([(REVERSE, responses)], [a, b])
  assert result["train_heldout"]["mean"] == pytest.approx(sum(agreements) / 3)
  assert 0.5 < result["train_heldout"]["mean"] < 0.8  # noisy labelers: far from 1


def test_labeler_pairs_are_grouped_and_the_result_is_json():
  # Zero noise, COUNT [" 2", " 3", " 2 times"]: gold and the length-liker (utilities
  # 1.05, 0.55, 1.0) agree on all three pairs; the chatter hater disagrees with each
  # on " 3" versus " 2 times".
  length_liker = Labeler(id=1, temperature=0.0, length_bias=0.05)
  chatter_hater = Labeler(id=2, temperature=0.0, extra_word_penalty=0.6, held_out=True)
  result = labeler_agreement([(COUNT, [" 2", " 3", " 2 times"])],
                             [GOLD, length_liker, chatter_hater])
  assert result == {
      "train_train": {"mean": 1.0, "std": 0.0, "labeler_pairs": 1},
      "train_heldout": {"mean": pytest.approx(2 / 3), "std": 0.0, "labeler_pairs": 2},
      "heldout_heldout": {"mean": None, "std": None, "labeler_pairs": 0}}
  assert json.loads(json.dumps(result)) == result


def test_bad_inputs_are_rejected():
  with pytest.raises(ValueError, match="no items"):
    labeler_agreement([], [GOLD, Labeler(id=1, temperature=0.0)])
  with pytest.raises(ValueError, match="distinct"):
    labeler_agreement([(COUNT, [" 2", " 3"])], [GOLD, Labeler(id=0, temperature=0.1)])


def test_held_out_labelers_agree_less_with_training_labelers_on_a_testbed():
  """The property that lets "the reward model generalises to held-out labelers" fail:
  held-out labelers want other things than the training labelers do."""
  sizes = TestbedSizes(pretrain=300, pretrain_heldout=50, sft=60, rm_train=60,
                       rm_eval=60, ppo=120, eval=40, train_labelers=6,
                       heldout_labelers=6)
  testbed = splits.build_testbed(seed=0, sizes=sizes)
  items = [(r.example, r.responses) for r in testbed.rm_eval[::2]]  # one per prompt
  result = labeler_agreement(items, testbed.labelers)
  print("\n" + json.dumps(result))
  assert [result[g]["labeler_pairs"] for g in result] == [15, 36, 15]
  assert result["train_heldout"]["mean"] < result["train_train"]["mean"] - 0.02
  # The same held-out labelers (same noise) with the training labelers' preferences
  # agree with the training labelers more: the gap comes from what they want.
  like_training = [labeler if not labeler.held_out else
                   Labeler(id=labeler.id, temperature=labeler.temperature,
                           held_out=True)
                   for labeler in testbed.labelers]
  control = labeler_agreement(items, like_training)
  assert control["train_heldout"]["mean"] > result["train_heldout"]["mean"] + 0.02
