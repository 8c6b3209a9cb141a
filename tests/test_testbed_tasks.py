"""Gold scorers with hand-worked values, and task generators against plain re-derivations."""

from __future__ import annotations

import random
import re

import pytest

from instructjax.data.testbed import tasks, world
from instructjax.data.testbed.tasks import Example


def _example(family: str, answer: str) -> Example:
  return Example(family=family, prompt="Instruction: x\nAnswer:", answer=answer,
                 source=())


# (family, ideal answer, response, expected score worked out by hand)
# word answers: LCS / len(answer) - 0.1 per extra word; numbers: 1 / (1 + |diff|).
HAND_CASES = [
    # reverse: answer "apple red cat"
    ("reverse", " apple red cat", " apple red cat", 1.0),
    ("reverse", " apple red cat", " apple cat", 2 / 3),  # one word dropped
    ("reverse", " apple red cat", " cat red apple", 1 / 3),  # not reversed: LCS 1
    ("reverse", " apple red cat", " apple red cat dog bird", 0.8),  # 2 extra words
    ("reverse", " apple red cat", "", 0.0),
    # sort
    ("sort", " 3 5 12", " 3 5 12", 1.0),
    ("sort", " 3 5 12", " 3 12 5", 2 / 3),
    ("sort", " 3 5 12", " 3 5 12 and more", 0.8),
    ("sort", " 3 5 12", "   ", 0.0),
    # count
    ("count", " 2", " 2", 1.0),
    ("count", " 2", " 3", 0.5),
    ("count", " 2", " 5", 0.25),
    ("count", " 2", " two", 0.0),  # not a number
    ("count", " 2", " 2 times", 0.9),
    ("count", " 2", "", 0.0),
    # arithmetic
    ("arithmetic", " 12", " 12", 1.0),
    ("arithmetic", " 12", " 10", 1 / 3),
    ("arithmetic", " 12", " 12 is the answer", 0.7),
    ("arithmetic", " 12", " 20 a b c d e f g h i j k", 0.0),  # clipped at 0
    ("arithmetic", " 12", "", 0.0),
    # filter
    ("filter", " cat dog", " cat dog", 1.0),
    ("filter", " cat dog", " dog", 0.5),
    ("filter", " cat dog", " cat red dog", 0.9),  # kept one word too many
    ("filter", " cat dog", "", 0.0),
    # question
    ("question", " blue", " blue", 1.0),
    ("question", " blue", " the cup is blue", 0.7),
    ("question", " blue", " red", 0.0),
    ("question", " red ball", " ball", 0.5),
    ("question", " blue", "", 0.0),
    # repeat
    ("repeat", " red cat red cat", " red cat red cat", 1.0),
    ("repeat", " red cat red cat", " red cat", 0.5),
    ("repeat", " red cat red cat", " red cat red cat red cat", 0.8),
    ("repeat", " red cat red cat", "", 0.0),
    # shorten
    ("shorten", " big dog runs old house park", " big dog runs old house park", 1.0),
    ("shorten", " big dog runs old house park", " big dog old house", 4 / 6),
    # the whole passage back: all 6 key words, 5 extra words
    ("shorten", " big dog runs old house park",
     " the big dog runs to the old house in the park", 0.5),
    ("shorten", " big dog runs old house park", "", 0.0),
    # largest
    ("largest", " 19", " 19", 1.0),
    ("largest", " 19", " 17", 1 / 3),
    # a vanilla LM's continuation after the answer: 6 extra words
    ("largest", " 19", " 19\nInstruction: sort the numbers: 1 2", 0.4),
    ("largest", " 19", "", 0.0),
    # opposite
    ("opposite", " small cold", " small cold", 1.0),
    ("opposite", " small cold", " cold small", 0.5),
    ("opposite", " small cold", " small cold.", 0.5),  # "cold." is not "cold"
    ("opposite", " small cold", "", 0.0),
]


@pytest.mark.parametrize("family,answer,response,expected", HAND_CASES)
def test_score_hand_worked(family, answer, response, expected):
  assert tasks.score(_example(family, answer), response) == pytest.approx(expected)


def test_every_family_has_hand_cases():
  assert {case[0] for case in HAND_CASES} == set(tasks.FAMILIES)
  assert len(tasks.FAMILIES) >= 8


def test_score_rejects_bad_input():
  with pytest.raises(ValueError, match="unknown task family 'poetry'"):
    tasks.score(_example("poetry", " x"), " x")
  with pytest.raises(ValueError, match="response must be a str"):
    tasks.score(_example("count", " 2"), 2)


def _words_after(task: str, marker: str) -> list[str]:
  return task.split(marker, 1)[1].split()


def _expected_answer(prompt: str) -> list[str]:
  """Solves a prompt from its text alone, written independently of the generators."""
  task = prompt.removeprefix("Instruction: ").removesuffix("\nAnswer:")
  if task.startswith("reverse the words: "):
    return _words_after(task, ": ")[::-1]
  if task.startswith("sort the numbers: "):
    return [str(n) for n in sorted(int(w) for w in _words_after(task, ": "))]
  if task.startswith("count the word "):
    target = task.split()[3]
    return [str(_words_after(task, " in: ").count(target))]
  if task.startswith("what is "):
    a, op, b = task.split()[2:]
    return [str(int(a) + int(b) if op == "plus" else int(a) - int(b))]
  if task.startswith("keep only the "):
    members = world.CATEGORIES[task.split()[3].rstrip(":")]
    return [w for w in _words_after(task, ": ") if w in members]
  if task.startswith("repeat "):
    times = 2 if task.startswith("repeat twice") else 3
    return _words_after(task, ": ") * times
  if task.startswith("shorten to the key words: "):
    return [w for w in _words_after(task, ": ") if w not in world.STOPWORDS]
  if task.startswith("find the largest number: "):
    return [str(max(int(w) for w in _words_after(task, ": ")))]
  if task.startswith("give the opposite of each word: "):
    pairs = dict(world.OPPOSITES)
    pairs.update({b: a for a, b in world.OPPOSITES})
    return [pairs[w] for w in _words_after(task, ": ")]
  # question: "<name> has a <colour> <thing>. ... <question>?"
  owners = re.findall(r"(\w+) has a (\w+) (\w+)\.", task)
  if m := re.search(r"what colour is the (\w+) of (\w+)\?$", task):
    return [c for n, c, t in owners if (t, n) == m.groups()]
  if m := re.search(r"who has the (\w+) (\w+)\?$", task):
    return [n for n, c, t in owners if (c, t) == m.groups()]
  m = re.search(r"what does (\w+) have\?$", task)
  return [w for n, c, t in owners if n == m.group(1) for w in (c, t)]


@pytest.mark.parametrize("family", tasks.FAMILIES)
def test_generated_answers_are_correct(family):
  rng = random.Random(family)
  for _ in range(100):
    example = tasks.sample_example(rng, family)
    assert example.family == family
    assert example.prompt.startswith("Instruction: ")
    assert example.prompt.endswith("\nAnswer:")
    assert example.prompt.count("\n") == 1
    assert example.answer.startswith(" ") and example.answer.strip()
    assert example.answer.split() == _expected_answer(example.prompt), example.prompt
    assert tasks.score(example, example.answer) == 1.0
    assert 5 <= len(example.prompt.split()) <= 30  # short prompts for tiny models
    assert len(example.answer.split()) <= 12


def test_sample_example_is_deterministic_and_rejects_unknown_family():
  a = [tasks.sample_example(random.Random(7)) for _ in range(3)]
  b = [tasks.sample_example(random.Random(7)) for _ in range(3)]
  assert a == b
  with pytest.raises(ValueError, match="unknown task family"):
    tasks.sample_example(random.Random(0), "poetry")
