"""Pretraining documents: the "web text" a vanilla LM of the testbed is trained on.

The documents share surface forms with the tasks (word lists, numbers, category words,
short contexts) and state task knowledge as plain facts ("7 plus 5 is 12."), so the
skills are latent in the vanilla LM. Instruction lines do occur, as in exercise sheets,
but each is followed by another instruction, by a blank "Answer:" line, or by unrelated
text, never by a compliant answer. A vanilla LM prompted with
"Instruction: ...\\nAnswer:" therefore continues the sheet instead of answering: the
misalignment InstructGPT starts from.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Collection

from instructjax.data.testbed import tasks, world
from instructjax.data.testbed.tasks import Example

# The first non-blank line after an instruction must score below this as a response to
# it (blank "Answer:" lines are skipped, as a reader of the sheet would).
MAX_FOLLOW_SCORE = 0.2
_BLANK_ANSWER = tasks.PROMPT_SUFFIX.strip()  # "Answer:"


@dataclasses.dataclass(frozen=True)
class Document:
  """A pretraining document and the task examples whose instructions it contains."""
  text: str
  instructions: tuple[Example, ...]


def _story(rng: random.Random) -> str:
  sentences = [world.sentence(rng) for _ in range(rng.randint(2, 4))]
  return " ".join(sentences)


def _word_list(rng: random.Random) -> str:
  lines = []
  for _ in range(rng.randint(1, 3)):
    category = rng.choice(tuple(world.CATEGORIES))
    members = rng.sample(world.CATEGORIES[category], rng.randint(2, 6))
    lines.append(f"{category}: {' '.join(members)}.")
  return "\n".join(lines)


def _number_sequence(rng: random.Random) -> str:
  step = rng.randint(1, 9)
  start = rng.randrange(100 - 4 * step)
  count = min(rng.randint(4, 10), (99 - start) // step + 1)
  return " ".join(str(start + i * step) for i in range(count))


class _Generator:
  """Draws documents whose task content avoids a set of reserved prompts."""

  def __init__(self, rng: random.Random, reserved: Collection[str]):
    self._rng = rng
    self._reserved = reserved

  def _fresh(self) -> tuple[Example, str]:
    """An example (and its fact) whose prompt is not reserved for a dataset split."""
    while True:
      example, fact = tasks.sample_with_fact(self._rng)
      if example.prompt not in self._reserved:
        return example, fact

  def _facts(self) -> str:
    return " ".join(self._fresh()[1] for _ in range(self._rng.randint(1, 3)))

  def _follow_line(self, example: Example) -> tuple[str, Example | None]:
    """A line that may follow `example`'s instruction: not an answer to it."""
    rng = self._rng
    while True:
      if rng.random() < 0.6:
        follower = self._fresh()[0]
        line = follower.instruction_line
      else:
        follower = None
        line = rng.choice((_story, _word_list, _number_sequence))(rng).split("\n")[0]
      if tasks.score(example, line) < MAX_FOLLOW_SCORE:
        return line, follower

  def _worksheet(self) -> Document:
    rng = self._rng
    if rng.random() < 0.3:
      lines = [rng.choice(("exercises.", "homework for today.", "practice sheet."))]
    else:
      lines = []
    current = self._fresh()[0]
    examples = [current]
    for _ in range(rng.randint(1, 2)):
      lines.append(current.instruction_line)
      if rng.random() < 0.5:
        lines.append(_BLANK_ANSWER)
      line, follower = self._follow_line(current)
      if follower is None:
        lines.append(line)
        break
      examples.append(follower)
      current = follower
    else:
      lines.append(current.instruction_line)  # the sheet ends on an unanswered line
    return Document("\n".join(lines), tuple(examples))

  def document(self) -> Document:
    draw = self._rng.random()
    if draw < 0.2:
      return self._worksheet()
    if draw < 0.5:
      return Document(self._facts(), ())
    if draw < 0.75:
      return Document(_story(self._rng), ())
    if draw < 0.9:
      return Document(_word_list(self._rng), ())
    return Document(_number_sequence(self._rng), ())


def documents(rng: random.Random, count: int, *, reserved: Collection[str] = (),
              exclude: Collection[str] = ()) -> list[Document]:
  """`count` distinct pretraining documents.

  Args:
    rng: the source of randomness.
    count: how many documents.
    reserved: prompts of dataset splits; their tasks never appear in the documents,
      neither as instructions nor as facts.
    exclude: texts not to produce (e.g. the training documents, for a held-out set).
  """
  if count < 0:
    raise ValueError(f"count={count} must be >= 0")
  generator = _Generator(rng, reserved)
  seen = set(exclude)
  out = []
  misses = 0
  while len(out) < count:
    document = generator.document()
    if document.text in seen:
      misses += 1
      if misses > 10_000:  # the generator has (almost) no new documents left
        raise ValueError(f"ran out of distinct documents after {len(seen)}; "
                         f"ask for fewer than {count}")
      continue
    misses = 0
    seen.add(document.text)
    out.append(document)
  return out
