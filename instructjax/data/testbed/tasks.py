"""Instruction-following task families of the testbed, and their gold scorers.

Every prompt has the one format `"Instruction: <task text>\\nAnswer:"` and the ideal
response is `" <answer words>"` (a leading space, no EOS: the tokenizer pipeline adds
EOS). `score(example, response)` grades any response string in [0, 1]:

  score = max(0, credit - EXTRA_WORD_PENALTY * (number of words beyond the answer's))

where credit is, for word answers, LCS(response words, answer words) / len(answer
words) (partial credit for dropped, swapped or wrong words), and for number answers
1 / (1 + |first response word - answer|) (0 if the first word is not a number).
An empty response scores 0.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable

from instructjax.data.testbed import world

PROMPT_PREFIX = "Instruction: "
PROMPT_SUFFIX = "\nAnswer:"
# What each word beyond the answer's length costs: trailing chatter is penalised.
EXTRA_WORD_PENALTY = 0.1


@dataclasses.dataclass(frozen=True)
class Example:
  """One prompt with everything its gold scorer needs."""
  family: str  # one of FAMILIES
  prompt: str  # "Instruction: <task text>\nAnswer:"
  answer: str  # the ideal response: " <answer words>"
  source: tuple[str, ...]  # the words the task operates on (list, passage, operands)

  @property
  def instruction_line(self) -> str:
    """The prompt without its trailing "\\nAnswer:" line."""
    return self.prompt[:-len(PROMPT_SUFFIX)]


@dataclasses.dataclass(frozen=True)
class _Draw:
  """What a family generator returns: the task, its answer and a pretraining fact."""
  task: str
  answer: tuple[str, ...]
  source: tuple[str, ...]
  # The same knowledge written as a plain sentence (never as instruction + answer):
  # pretraining text carries it so the skill is latent in the vanilla LM.
  fact: str


def _join(words) -> str:
  return " ".join(words)


def _distinct_numbers(rng: random.Random) -> list[str]:
  return [str(n) for n in rng.sample(range(100), rng.randint(3, 6))]


def _reverse(rng: random.Random) -> _Draw:
  words = rng.sample(world.CONTENT_WORDS, rng.randint(3, 6))
  answer = words[::-1]
  return _Draw(f"reverse the words: {_join(words)}", tuple(answer), tuple(words),
               f"{_join(words)} backwards is {_join(answer)}.")


def _sort(rng: random.Random) -> _Draw:
  numbers = _distinct_numbers(rng)
  answer = sorted(numbers, key=int)
  if numbers == answer:  # an already sorted list would make copying the input right
    numbers = answer[::-1]
  return _Draw(f"sort the numbers: {_join(numbers)}", tuple(answer), tuple(numbers),
               f"in order, {_join(numbers)} becomes {_join(answer)}.")


def _count(rng: random.Random) -> _Draw:
  pool = rng.sample(world.ANIMALS + world.FRUITS + world.OBJECTS, 3)
  target = pool[0]
  words = [rng.choice(pool) for _ in range(rng.randint(4, 8))]
  if target not in words:
    words[rng.randrange(len(words))] = target
  count = str(words.count(target))
  return _Draw(f"count the word {target} in: {_join(words)}", (count,), tuple(words),
               f"the word {target} is in {_join(words)} {count} times.")


def _arithmetic(rng: random.Random) -> _Draw:
  if rng.random() < 0.5:
    a, b, op = rng.randrange(50), rng.randrange(50), "plus"
    result = a + b
  else:
    a = rng.randrange(100)
    b, op = rng.randint(0, a), "minus"
    result = a - b
  operands = (str(a), op, str(b))
  return _Draw(f"what is {_join(operands)}", (str(result),), operands,
               f"{_join(operands)} is {result}.")


def _filter(rng: random.Random) -> _Draw:
  category = rng.choice(tuple(world.CATEGORIES))
  n = rng.randint(4, 7)
  n_keep = rng.randint(1, n - 1)
  others = [w for c, members in world.CATEGORIES.items() if c != category
            for w in members]
  keep = rng.sample(world.CATEGORIES[category], n_keep)
  words = keep + rng.sample(others, n - n_keep)
  rng.shuffle(words)
  answer = tuple(w for w in words if w in keep)
  return _Draw(f"keep only the {category}: {_join(words)}", answer, tuple(words),
               f"the {category} in {_join(words)} are {_join(answer)}.")


def _question(rng: random.Random) -> _Draw:
  n = rng.randint(2, 3)
  names = rng.sample(world.NAMES, n)
  things = rng.sample(world.OBJECTS, n)  # distinct things make every question unique
  colours = [rng.choice(world.COLOURS) for _ in range(n)]
  context = " ".join(f"{p} has a {c} {t}." for p, c, t in zip(names, colours, things))
  i = rng.randrange(n)
  kind = rng.randrange(3)
  if kind == 0:
    question, answer = f"what colour is the {things[i]} of {names[i]}?", (colours[i],)
    fact = f"the {things[i]} of {names[i]} is {colours[i]}."
  elif kind == 1:
    question, answer = f"who has the {colours[i]} {things[i]}?", (names[i],)
    fact = f"the {colours[i]} {things[i]} is with {names[i]}."
  else:
    question, answer = f"what does {names[i]} have?", (colours[i], things[i])
    fact = f"so {names[i]} has the {colours[i]} {things[i]}."
  return _Draw(f"{context} {question}", answer, tuple(context.split()),
               f"{context} {fact}")


def _repeat(rng: random.Random) -> _Draw:
  phrase = rng.sample(world.CONTENT_WORDS, rng.randint(1, 3))
  times, how = rng.choice(((2, "twice"), (3, "three times")))
  answer = tuple(phrase * times)
  return _Draw(f"repeat {how}: {_join(phrase)}", answer, tuple(phrase),
               f"{_join(phrase)} said {how} is {_join(answer)}.")


def _shorten(rng: random.Random) -> _Draw:
  adjective = lambda: rng.choice(world.ADJECTIVES)
  if rng.random() < 0.5:
    passage = (f"the {adjective()} {rng.choice(world.ANIMALS)} {rng.choice(world.MOTIONS)}"
               f" to the {adjective()} {rng.choice(world.OBJECTS)} in the"
               f" {rng.choice(world.PLACES)}")
  else:
    size = adjective()
    passage = (f"{rng.choice(world.NAMES)} {rng.choice(world.VERBS)}"
               f" {world.article(size)} {size} {rng.choice(world.COLOURS)}"
               f" {world.noun(rng)} at the {rng.choice(world.PLACES)}")
  words = passage.split()
  answer = tuple(w for w in words if w not in world.STOPWORDS)
  return _Draw(f"shorten to the key words: {passage}", answer, tuple(words),
               f"{passage}. in short: {_join(answer)}.")


def _largest(rng: random.Random) -> _Draw:
  numbers = _distinct_numbers(rng)
  largest = max(numbers, key=int)
  return _Draw(f"find the largest number: {_join(numbers)}", (largest,), tuple(numbers),
               f"the largest of {_join(numbers)} is {largest}.")


def _opposite(rng: random.Random) -> _Draw:
  words = rng.sample(tuple(world.OPPOSITE), rng.randint(1, 4))
  answer = tuple(world.OPPOSITE[w] for w in words)
  if len(words) == 1:
    fact = f"the opposite of {words[0]} is {answer[0]}."
  else:
    fact = f"the opposites of {_join(words)} are {_join(answer)}."
  return _Draw(f"give the opposite of each word: {_join(words)}", answer, tuple(words),
               fact)


# family -> (generator, whether the answer is one number)
_FAMILIES: dict[str, tuple[Callable[[random.Random], _Draw], bool]] = {
    "reverse": (_reverse, False),
    "sort": (_sort, False),
    "count": (_count, True),
    "arithmetic": (_arithmetic, True),
    "filter": (_filter, False),
    "question": (_question, False),
    "repeat": (_repeat, False),
    "shorten": (_shorten, False),
    "largest": (_largest, True),
    "opposite": (_opposite, False),
}
FAMILIES = tuple(_FAMILIES)


def numeric_answer(family: str) -> bool:
  """Whether the family's answer is a single number (graded by distance)."""
  _check_family(family)
  return _FAMILIES[family][1]


def sample_with_fact(rng: random.Random, family: str | None = None) -> tuple[Example, str]:
  """A random example (of `family`, or of a uniformly drawn one) and its plain fact."""
  if family is None:
    family = rng.choice(FAMILIES)
  _check_family(family)
  draw = _FAMILIES[family][0](rng)
  example = Example(family=family, prompt=PROMPT_PREFIX + draw.task + PROMPT_SUFFIX,
                    answer=" " + _join(draw.answer), source=draw.source)
  return example, draw.fact


def sample_example(rng: random.Random, family: str | None = None) -> Example:
  """A random example of `family` (or of a uniformly drawn family)."""
  return sample_with_fact(rng, family)[0]


def _lcs_length(a: list[str], b: list[str]) -> int:
  """Length of the longest common subsequence of two word lists."""
  previous = [0] * (len(b) + 1)
  for x in a:
    current = [0]
    for j, y in enumerate(b):
      current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
    previous = current
  return previous[-1]


def _as_number(word: str) -> int | None:
  return int(word) if word.isascii() and word.isdigit() else None


def credit(example: Example, response: str) -> float:
  """How much of the answer `response` gets right, in [0, 1], before any charge for
  extra words (see the module docstring). Public so labelers can weigh it their way."""
  _check_response(example, response)
  words = response.split()
  answer = example.answer.split()
  if not words:
    return 0.0
  if numeric_answer(example.family):
    guess = _as_number(words[0])
    return 0.0 if guess is None else 1.0 / (1.0 + abs(guess - int(answer[0])))
  return _lcs_length(words, answer) / len(answer)


def extra_words(example: Example, response: str) -> int:
  """How many words `response` has beyond the answer's (the chatter score charges)."""
  _check_response(example, response)
  return max(0, len(response.split()) - len(example.answer.split()))


def score(example: Example, response: str) -> float:
  """Gold score of `response` to `example` in [0, 1] (see the module docstring)."""
  return max(0.0, credit(example, response)
             - EXTRA_WORD_PENALTY * extra_words(example, response))


def _check_response(example: Example, response: str) -> None:
  if not isinstance(response, str):
    raise ValueError(f"response must be a str, got {type(response).__name__}")
  _check_family(example.family)


def _check_family(family: str) -> None:
  if family not in _FAMILIES:
    raise ValueError(f"unknown task family {family!r}; expected one of {FAMILIES}")
