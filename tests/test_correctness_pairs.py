"""Pairs that differ in correctness only, the RM's `accuracy_correctness`: each near miss
scores below the ideal answer, keeps about its length and adds no chatter."""

from __future__ import annotations

import random

import pytest

from instructjax import reward
from instructjax.evaluation import measures
from instructjax.data.records import PromptRecord
from instructjax.data.testbed import candidates, splits, tasks, world


def test_near_misses_are_worse_same_length_and_chatter_free():
  rng = random.Random(0)
  kinds_seen = 0
  for _ in range(500):
    example = tasks.sample_example(rng)
    misses = candidates.near_misses(example, rng)
    assert misses  # a wrong word (or number) is always possible
    kinds_seen = max(kinds_seen, len(misses))
    n = len(example.answer.split())
    for miss in misses:
      assert tasks.score(example, miss) < 1.0 == tasks.score(example, example.answer)
      assert len(miss.split()) in (n - 1, n)
      assert not any(remark in miss for remark in world.REMARKS)
  assert kinds_seen == 3  # dropped, swapped and wrong words all occur


def test_correctness_rows_rank_the_ideal_answer_first_once_per_prompt():
  bed = splits.build_testbed(seed=1, sizes=splits.TestbedSizes(
      pretrain=20, pretrain_heldout=2, sft=10, rm_train=10, rm_eval=10, ppo=10, eval=10,
      val=10))
  prompts = [e.prompt for e in bed.val_prompts]
  rows = reward.correctness_rows(bed, [PromptRecord(p) for p in prompts + prompts], seed=0)
  assert {r.prompt for r in rows} == set(prompts)
  assert len(rows) < 4 * len(prompts)  # a repeated prompt is paired once
  for row in rows:
    example = bed.example(row.prompt)
    assert row.responses[0] == example.answer and row.ranking == (0, 1)
    assert tasks.score(example, row.responses[1]) < 1.0


def test_correctness_and_habit_by_hand():
  example = tasks.Example(family="reverse", prompt="Instruction: reverse the words: cat red "
                          "apple\nAnswer:", answer=" apple red cat", source=("cat", "red", "apple"))
  measured = measures.correctness_and_habit(
      [example, example], [" apple red cat i hope this helps.", " apple cat"])
  # credit (1 + 2/3) / 2; one remark in two answers; extra words (4 + 0) / 2
  assert measured == {"credit": pytest.approx(5 / 6), "remark_rate": 0.5, "extra_words": 2.0}
