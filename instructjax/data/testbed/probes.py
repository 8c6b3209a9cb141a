"""The testbed's public NLP benchmarks: probes of what pretraining taught, in new formats.

The paper's alignment tax is a drop on public benchmarks (SQuAD, DROP, HellaSwag, ...)
that are NOT its PPO-ptx pretraining mix. Loss on held-out pretraining text is not such
a measure: PPO-ptx trains on that very distribution, so it would win by construction.
The testbed's analogue lives here instead, in two parts:

  * `probe_items`: multiple-choice benchmarks scored HellaSwag style (the candidate the
    LM finds likeliest is its answer), so any causal LM is scored without having to
    follow instructions. Each asks for knowledge the pretraining text states (opposites,
    categories, sums, largest numbers, who has what) in a template that no testbed text
    uses. Every item has K = 4 candidates of one kind (all adjectives, all numbers, ...),
    so word frequency alone does not pick the answer; chance is 1/4.

      opposites   "hot and cold. wet and dry. big and"            -> " small"
      categories  "the fruits are plum fig"                       -> " lemon"
      arithmetic  "4 and 3 is 7. 20 and 5 is 25. 12 and 9 is"     -> " 21"
      largest     "of 12 40 7 33 the largest is"                  -> " 40"
      reading     "anna has a red ball. tom has a blue cup. ... so the cup is" -> " blue"

    No testbed text contains an adjective followed by "and" (names are the only words
    "and" joins), "the <category> are", "<number> and <number> is", "the largest is" or
    "so the". Lists and sentences are punctuated as the pretraining text punctuates
    them: a small LM is at chance on a list written with commas (a comma there only ever
    precedes numbers), which would hide what it knows.
  * `distinct_documents`: LM-loss text of kinds the pretraining documents have none of:
    dialogues ("anna: the red ball is in the park.") and diaries ("on day 3 anna ...").

Only words that testbed text uses appear, so the tokenizer and the LM know them all.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable

from instructjax.data.testbed import world

K = 4  # candidates per item


@dataclasses.dataclass(frozen=True)
class ProbeItem:
  """A multiple-choice question: which continuation of `context` is right."""
  benchmark: str
  context: str
  candidates: tuple[str, ...]  # K continuations, each with its leading space
  answer: int  # index of the right one in `candidates`


def _shuffled(rng: random.Random, right: str, wrong: list[str]) -> tuple[tuple[str, ...], int]:
  """(the K candidates " <word>" in random order, the index of `right`)."""
  words = [right] + wrong
  rng.shuffle(words)
  return tuple(" " + w for w in words), words.index(right)


def _opposites(rng: random.Random) -> tuple[str, str, list[str]]:
  """Two opposite pairs shown, the third asked for; wrong answers are other such words."""
  pairs = [rng.sample(pair, 2) for pair in rng.sample(world.OPPOSITES, 3)]
  (a1, b1), (a2, b2), (word, right) = pairs
  wrong = rng.sample([w for w in world.OPPOSITE if w not in (word, right)], K - 1)
  return f"{a1} and {b1}. {a2} and {b2}. {word} and", right, wrong


def _categories(rng: random.Random) -> tuple[str, str, list[str]]:
  """Members of a category listed, one more asked for; wrong answers come one each from
  other categories."""
  category, *others = rng.sample(tuple(world.CATEGORIES), K)
  *listed, right = rng.sample(world.CATEGORIES[category], rng.randint(3, 4))
  wrong = [rng.choice(world.CATEGORIES[other]) for other in others]
  return f"the {category} are {' '.join(listed)}", right, wrong


def _arithmetic(rng: random.Random) -> tuple[str, str, list[str]]:
  """Sums written "a and b is c", two shown and one asked for; wrong answers are off by
  1 to 3."""
  sums = [(rng.randrange(50), rng.randrange(50)) for _ in range(3)]
  shown = " ".join(f"{a} and {b} is {a + b}." for a, b in sums[:2])
  a, b = sums[2]
  near = [n for n in range(a + b - 3, a + b + 4) if n != a + b and 0 <= n < 100]
  wrong = [str(n) for n in rng.sample(near, K - 1)]
  return f"{shown} {a} and {b} is", str(a + b), wrong


def _largest(rng: random.Random) -> tuple[str, str, list[str]]:
  """K numbers listed, the largest asked for; the wrong answers are the others."""
  numbers = [str(n) for n in rng.sample(range(100), K)]
  right = max(numbers, key=int)
  wrong = [n for n in numbers if n != right]
  return f"of {' '.join(numbers)} the largest is", right, wrong


def _reading(rng: random.Random) -> tuple[str, str, list[str]]:
  """Three people with things of three colours; the colour of one thing is asked for.
  Wrong answers: the other two colours read, and one not in the passage."""
  names = rng.sample(world.NAMES, 3)
  things = rng.sample(world.OBJECTS, 3)
  colours = rng.sample(world.COLOURS, 4)
  passage = " ".join(f"{n} has a {c} {t}." for n, c, t in zip(names, colours, things))
  i = rng.randrange(3)
  wrong = [c for c in colours if c != colours[i]]
  return f"{passage} so the {things[i]} is", colours[i], wrong


BENCHMARKS: dict[str, Callable[[random.Random], tuple[str, str, list[str]]]] = {
    "opposites": _opposites,
    "categories": _categories,
    "arithmetic": _arithmetic,
    "largest": _largest,
    "reading": _reading,
}


def probe_items(rng: random.Random, *, per_benchmark: int) -> dict[str, list[ProbeItem]]:
  """{benchmark: `per_benchmark` items with distinct contexts}, the same for the same rng
  state. The right answer's position is uniform over the K candidates."""
  if per_benchmark < 1:
    raise ValueError(f"per_benchmark={per_benchmark} must be >= 1")
  out = {}
  for name, draw in BENCHMARKS.items():
    items, seen = [], set()
    while len(items) < per_benchmark:
      context, right, wrong = draw(rng)
      if context in seen:
        continue
      seen.add(context)
      candidates, answer = _shuffled(rng, right, wrong)
      items.append(ProbeItem(benchmark=name, context=context, candidates=candidates,
                             answer=answer))
    out[name] = items
  return out


def _dialogue(rng: random.Random) -> str:
  """Two people talk about one thing, a line each turn: "name: words"."""
  speakers = rng.sample(world.NAMES, 2)
  colour, thing = rng.choice(world.COLOURS), rng.choice(world.OBJECTS)
  places = rng.sample(world.PLACES, 2)
  turns = [
      f"the {colour} {thing} is in the {places[0]}.",
      f"the {thing} is at the {places[1]}.",
      f"the {thing} is {rng.choice(world.ADJECTIVES)}.",
      f"{rng.choice(world.NAMES)} {rng.choice(world.VERBS)} the {thing} at the {places[1]}.",
  ][:rng.randint(2, 4)]
  return "\n".join(f"{speakers[i % 2]}: {turn}" for i, turn in enumerate(turns))


def _diary(rng: random.Random) -> str:
  """What one person did on consecutive days: "on day 3 anna ..."."""
  name, first = rng.choice(world.NAMES), rng.randint(1, 20)
  entries = []
  for day in range(first, first + rng.randint(2, 4)):
    if rng.random() < 0.5:
      entries.append(f"on day {day} {name} {rng.choice(world.MOTIONS)} to the "
                     f"{rng.choice(world.PLACES)}.")
    else:
      entries.append(f"on day {day} {name} {rng.choice(world.VERBS)} the "
                     f"{rng.choice(world.COLOURS)} {world.noun(rng)}.")
  return " ".join(entries)


def distinct_documents(rng: random.Random, count: int) -> list[str]:
  """`count` distinct documents, dialogues and diaries in equal shares on average: text
  of the world in forms the pretraining documents never take."""
  if count < 0:
    raise ValueError(f"count={count} must be >= 0")
  out, seen = [], set()
  while len(out) < count:
    document = rng.choice((_dialogue, _diary))(rng)
    if document not in seen:
      seen.add(document)
      out.append(document)
  return out
