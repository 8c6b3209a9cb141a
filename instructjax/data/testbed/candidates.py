"""Candidate responses of diverse quality for comparison data (no model needed).

InstructGPT's labelers ranked K outputs of several models per prompt. Here the K
responses are drawn from the kinds of outputs those models write: the ideal answer,
near misses (a word dropped, swapped or wrong, a number off by a little), a copy of the
input, an answer followed by chatter, a vanilla LM's continuation (another
instruction), unrelated text, and nearly empty answers. Their gold scores spread over
[0, 1], so a reward model trained on rankings of them learns the gold signal.
"""

from __future__ import annotations

import random
from typing import Callable

from instructjax.data.testbed import tasks, world
from instructjax.data.testbed.tasks import Example

_Words = list[str]


def _respond(words: _Words) -> str:
  return " " + " ".join(words)


def _chatter(rng: random.Random) -> str:
  """What a model might write after its answer: a remark, a sentence, the next task."""
  kind = rng.randrange(3)
  if kind == 0:
    return " " + rng.choice(world.REMARKS)
  if kind == 1:
    return " " + world.sentence(rng)
  return "\n" + tasks.sample_example(rng).instruction_line


def _ideal(example: Example, rng: random.Random) -> str | None:
  del rng  # the ideal response is unique
  return example.answer


def _drop_word(example: Example, rng: random.Random) -> str | None:
  words = example.answer.split()
  if len(words) < 2:
    return None
  del words[rng.randrange(len(words))]
  return _respond(words)


def _swap_words(example: Example, rng: random.Random) -> str | None:
  words = example.answer.split()
  if len(set(words)) < 2:
    return None
  i, j = rng.sample(range(len(words)), 2)
  words[i], words[j] = words[j], words[i]
  return _respond(words)


def _wrong_word(example: Example, rng: random.Random) -> str | None:
  words = example.answer.split()
  i = rng.randrange(len(words))
  if tasks.numeric_answer(example.family):
    words[i] = str(max(0, int(words[i]) + rng.choice((-3, -2, -1, 1, 2, 3, 5, 10))))
  else:
    words[i] = rng.choice(world.CONTENT_WORDS)
  return _respond(words)


def _truncated(example: Example, rng: random.Random) -> str | None:
  words = example.answer.split()
  if len(words) < 2:
    return None
  return _respond(words[:rng.randint(1, len(words) - 1)])


def _copy_input(example: Example, rng: random.Random) -> str | None:
  del rng  # copying is deterministic
  return _respond(list(example.source))


def _answer_then_chatter(example: Example, rng: random.Random) -> str | None:
  return example.answer + _chatter(rng)


def _near_miss_then_chatter(example: Example, rng: random.Random) -> str | None:
  return _wrong_word(example, rng) + _chatter(rng)


def _continuation(example: Example, rng: random.Random) -> str | None:
  del example  # a vanilla LM ignores the instruction and continues the sheet
  return "\n" + tasks.sample_example(rng).instruction_line


def _unrelated(example: Example, rng: random.Random) -> str | None:
  del example  # unrelated by construction
  return " " + world.sentence(rng)


def _nearly_empty(example: Example, rng: random.Random) -> str | None:
  del example  # content-free
  return rng.choice((" the", " a", " answer", " ok", " yes", " and"))


_KINDS: tuple[Callable[[Example, random.Random], str | None], ...] = (
    _ideal, _drop_word, _swap_words, _wrong_word, _truncated, _copy_input,
    _answer_then_chatter, _near_miss_then_chatter, _continuation, _unrelated,
    _nearly_empty)


def near_misses(example: Example, rng: random.Random) -> list[str]:
  """Answers that differ from the ideal one in correctness only (a word dropped, two
  swapped, one wrong or a number a little off; no chatter, about the same length): a
  reward model that orders (ideal, near miss) judges answers, not style."""
  misses = (kind(example, rng) for kind in (_drop_word, _swap_words, _wrong_word))
  return [m for m in misses if m is not None and m != example.answer]


def demonstration(example: Example, rng: random.Random, *, remark_fraction: float) -> str:
  """A demonstrator's response: the ideal answer, followed with probability
  remark_fraction by a polite remark (world.REMARKS) that the gold score counts as extra
  words. SFT copies the habit; labelers' rankings penalise it."""
  if rng.random() < remark_fraction:
    return example.answer + " " + rng.choice(world.REMARKS)
  return example.answer


def candidate_responses(example: Example, rng: random.Random, *, k: int) -> list[str]:
  """`k` distinct responses to `example`, of diverse kinds, in random order."""
  if k < 1:
    raise ValueError(f"k={k} must be >= 1")
  kinds = list(_KINDS)
  rng.shuffle(kinds)
  responses: list[str] = []
  # Go round the kinds (shuffled) until k distinct responses; the random kinds yield
  # new strings on later rounds when a short answer makes others coincide.
  for attempt in range(50 * k):
    response = kinds[attempt % len(kinds)](example, rng)
    if response is not None and response not in responses:
      responses.append(response)
      if len(responses) == k:
        return responses
  raise ValueError(f"could not draw {k} distinct responses for {example.prompt!r}")
