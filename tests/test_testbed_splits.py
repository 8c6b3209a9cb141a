"""The whole testbed: sizes, disjoint splits, labelers, determinism, files, pretraining."""

from __future__ import annotations

import dataclasses
import json
import random
import time

import pytest

from instructjax.data.testbed import pretraining, splits, tasks, world
from instructjax.data.testbed.splits import TestbedSizes

SMALL = TestbedSizes(pretrain=300, pretrain_heldout=50, sft=60, rm_train=60, rm_eval=20,
                     ppo=120, eval=40, val=40, train_labelers=3, heldout_labelers=2)


@pytest.fixture(scope="module")
def default_testbed():
  start = time.perf_counter()
  testbed = splits.build_testbed(seed=0)
  seconds = time.perf_counter() - start
  counts = {name: len(getattr(testbed, name)) for name in (
      "pretrain", "pretrain_heldout", "sft", "rm_train", "rm_eval", "ppo_prompts",
      "eval_prompts", "val_prompts")}
  print(f"\ndefault testbed generated in {seconds:.2f} s: {counts}")
  return testbed


def _prompt_sets(testbed):
  return {
      "sft": {e.prompt for e in testbed.sft},
      "rm_train": {r.example.prompt for r in testbed.rm_train},
      "rm_eval": {r.example.prompt for r in testbed.rm_eval},
      "ppo": {e.prompt for e in testbed.ppo_prompts},
      "eval": {e.prompt for e in testbed.eval_prompts},
      "val": {e.prompt for e in testbed.val_prompts},
  }


def test_default_sizes(default_testbed):
  sizes = TestbedSizes()
  tb = default_testbed
  assert len(tb.pretrain) == sizes.pretrain
  assert len(tb.pretrain_heldout) == sizes.pretrain_heldout
  assert len(tb.sft) == sizes.sft
  assert len(tb.rm_train) == sizes.rm_train
  assert len(tb.rm_eval) == 2 * sizes.rm_eval  # a training and a held-out labeler each
  assert len(tb.ppo_prompts) == sizes.ppo
  assert len(tb.eval_prompts) == sizes.eval
  assert len(tb.val_prompts) == sizes.val
  assert len(tb.sft) < len(tb.ppo_prompts)  # fewer demonstrations than RL prompts


def test_prompt_sets_are_disjoint_and_unique(default_testbed):
  sets = _prompt_sets(default_testbed)
  assert len(sets["sft"]) == len(default_testbed.sft)
  assert len(sets["ppo"]) == len(default_testbed.ppo_prompts)
  assert len(sets["eval"]) == len(default_testbed.eval_prompts)
  assert len(sets["val"]) == len(default_testbed.val_prompts)
  assert len(sets["rm_train"]) == len(default_testbed.rm_train)
  names = list(sets)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      assert not sets[a] & sets[b], f"{a} and {b} share prompts"


def test_pretraining_avoids_split_tasks(default_testbed):
  split_lines = {p.removesuffix("\nAnswer:") for s in _prompt_sets(default_testbed).values()
                 for p in s}
  doc_lines = {line for doc in default_testbed.pretrain + default_testbed.pretrain_heldout
               for line in doc.split("\n") if line.startswith("Instruction: ")}
  assert doc_lines  # exercise sheets exist
  assert not split_lines & doc_lines
  assert not set(default_testbed.pretrain) & set(default_testbed.pretrain_heldout)


def test_every_family_in_every_split(default_testbed):
  tb = default_testbed
  for name, examples in (("sft", tb.sft), ("ppo", tb.ppo_prompts),
                         ("eval", tb.eval_prompts),
                         ("rm_train", [r.example for r in tb.rm_train])):
    assert {e.family for e in examples} == set(tasks.FAMILIES), name


def test_rankings(default_testbed):
  tb = default_testbed
  held_out = {labeler.id for labeler in tb.labelers if labeler.held_out}
  assert held_out and [labeler.id for labeler in tb.labelers] == list(range(9))
  assert not {r.labeler for r in tb.rm_train} & held_out
  for first, second in zip(tb.rm_eval[::2], tb.rm_eval[1::2]):
    assert first.example == second.example and first.responses == second.responses
    assert first.labeler not in held_out and second.labeler in held_out
  for ranking in tb.rm_train + tb.rm_eval:
    k = len(ranking.responses)
    assert 4 <= k <= 9
    assert sorted(ranking.ranking) == list(range(k))
    assert len(set(ranking.responses)) == k
    assert all(r.strip() for r in ranking.responses)  # readers reject blank responses


def test_rankings_carry_the_gold_signal(default_testbed):
  """Labelers agree with the gold score on most pairs with different gold scores."""
  agree = total = 0
  for ranking in default_testbed.rm_train:
    gold = [tasks.score(ranking.example, ranking.responses[i]) for i in ranking.ranking]
    for i in range(len(gold)):
      for j in range(i + 1, len(gold)):
        if abs(gold[i] - gold[j]) > 0.05:
          total += 1
          agree += gold[i] > gold[j]
  print(f"\nrankings agree with gold on {agree / total:.1%} of {total} pairs")
  assert agree / total > 0.75


def test_example_lookup(default_testbed):
  tb = default_testbed
  for example in (tb.sft[3], tb.ppo_prompts[5], tb.eval_prompts[7], tb.rm_eval[1].example):
    assert tb.example(example.prompt) is example
  with pytest.raises(ValueError, match="not in the testbed"):
    tb.example("Instruction: fly\nAnswer:")


def test_deterministic_per_seed():
  a = splits.build_testbed(seed=3, sizes=SMALL)
  assert a == splits.build_testbed(seed=3, sizes=SMALL)
  b = splits.build_testbed(seed=4, sizes=SMALL)
  assert a.eval_prompts != b.eval_prompts and a.pretrain != b.pretrain


def test_eval_prompts_depend_only_on_seed_and_their_count():
  bigger = TestbedSizes(**{**SMALL.__dict__, "sft": 90, "ppo": 150})
  assert (splits.build_testbed(seed=3, sizes=SMALL).eval_prompts ==
          splits.build_testbed(seed=3, sizes=bigger).eval_prompts)


def test_write_testbed(tmp_path):
  tb = splits.build_testbed(seed=5, sizes=SMALL)
  paths = splits.write_testbed(tb, tmp_path / "out")
  expected_files = {"pretrain", "pretrain_heldout", "sft", "rm_train", "rm_eval",
                    "ppo_prompts", "eval_prompts", "val_prompts"}
  assert set(paths) == expected_files
  rows = {}
  for name, path in paths.items():
    assert path.name == f"{name}.jsonl"
    rows[name] = [json.loads(line) for line in path.read_text().splitlines()]
  assert rows["pretrain"] == [{"text": t} for t in tb.pretrain]
  assert rows["pretrain_heldout"] == [{"text": t} for t in tb.pretrain_heldout]
  assert rows["sft"] == [{"prompt": e.prompt, "response": e.answer} for e in tb.sft]
  assert rows["ppo_prompts"] == [{"prompt": e.prompt} for e in tb.ppo_prompts]
  assert rows["eval_prompts"] == [{"prompt": e.prompt} for e in tb.eval_prompts]
  assert rows["val_prompts"] == [{"prompt": e.prompt} for e in tb.val_prompts]
  for name in ("rm_train", "rm_eval"):
    assert len(rows[name]) == len(getattr(tb, name))
    for row, ranking in zip(rows[name], getattr(tb, name)):
      assert set(row) == {"prompt", "responses", "ranking", "labeler"}
      assert row["prompt"] == ranking.example.prompt
      assert row["responses"] == list(ranking.responses)
      assert row["ranking"] == list(ranking.ranking)
      assert row["labeler"] == ranking.labeler
  for row in rows["sft"]:
    assert row["response"].startswith(" ") and "<|endoftext|>" not in row["response"]


def test_demonstrations_carry_remarks_at_the_asked_rate(tmp_path):
  sizes = TestbedSizes(**{**SMALL.__dict__, "sft": 400, "remark_fraction": 0.6})
  tb = splits.build_testbed(seed=2, sizes=sizes)
  with_remark = 0
  for example, response in zip(tb.sft, tb.sft_responses):
    assert response.startswith(example.answer)
    remark = response[len(example.answer):]
    if remark:
      with_remark += 1
      assert remark[1:] in world.REMARKS
      # The gold score charges the remark's words as extra words.
      assert tasks.score(example, response) == pytest.approx(
          1.0 - tasks.EXTRA_WORD_PENALTY * len(remark.split()))
  assert 0.5 < with_remark / len(tb.sft) < 0.7  # 240 expected of 400; sd ~10
  rows = [json.loads(line) for line in
          splits.write_testbed(tb, tmp_path)["sft"].read_text().splitlines()]
  assert [r["response"] for r in rows] == list(tb.sft_responses)
  # Remarks change the demonstrations only: the prompts are those drawn without them.
  assert tb.sft == splits.build_testbed(seed=2, sizes=dataclasses.replace(
      sizes, remark_fraction=0.0)).sft


def test_bad_sizes_are_rejected():
  with pytest.raises(ValueError, match="sft=0 must be >= 1"):
    TestbedSizes(sft=0)
  with pytest.raises(ValueError, match=r"remark_fraction=1\.5 must be in \[0, 1\]"):
    TestbedSizes(remark_fraction=1.5)
  with pytest.raises(ValueError, match="min_responses=5 <= max_responses=4"):
    TestbedSizes(min_responses=5, max_responses=4)


def _continuation(text: str, instruction_line: str) -> str | None:
  """What follows an instruction line: the next non-blank line, read past a bare
  "Answer:" line (what a vanilla LM learns to write after "...\\nAnswer:")."""
  lines = text.split("\n")
  rest = lines[lines.index(instruction_line) + 1:]
  if rest and rest[0].startswith("Answer:"):
    after = rest[0].removeprefix("Answer:")
    if after.strip():
      return after
    rest = rest[1:]
  return rest[0] if rest else None


def test_pretraining_never_answers_its_instructions():
  documents = pretraining.documents(random.Random(11), 4000)
  scores = []
  for document in documents:
    for line in document.text.split("\n"):
      assert not line.startswith("Answer:") or line == "Answer:"  # blank answers only
    for example in document.instructions:
      assert example.prompt + example.answer not in document.text
      follow = _continuation(document.text, example.instruction_line)
      if follow is not None:
        scores.append(tasks.score(example, follow))
  assert len(scores) > 500
  print(f"\nmean gold score of what follows {len(scores)} instructions: "
        f"{sum(scores) / len(scores):.3f}")
  assert max(scores) < 0.2
  assert sum(scores) / len(scores) < 0.05


def test_pretraining_shares_surface_forms_with_tasks():
  text = "\n".join(d.text for d in pretraining.documents(random.Random(12), 3000))
  for phrase in ("backwards is", "in order,", " plus ", " minus ", "the largest of",
                 "the opposite", "in short:", "said twice", " times.", "animals:",
                 " has a ", "Instruction: ", "\nAnswer:"):
    assert phrase in text, phrase
