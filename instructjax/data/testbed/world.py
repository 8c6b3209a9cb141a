"""The testbed's small world: a few hundred words in categories, and plain sentences.

Everything the testbed writes (pretraining text, prompts, answers) is built from these
words, so a tiny BPE vocabulary covers it and a tiny LM can learn it in minutes.
All words are lower case and contain no punctuation, so `str.split()` recovers them.
"""

from __future__ import annotations

import random

ANIMALS = (
    "cat", "dog", "horse", "cow", "pig", "sheep", "goat", "bird", "fish", "duck",
    "mouse", "rabbit", "fox", "wolf", "bear", "lion", "tiger", "frog", "snake", "owl",
    "bee", "ant", "deer", "whale", "shark", "monkey", "zebra", "camel", "goose", "hen")
COLOURS = (
    "red", "blue", "green", "yellow", "black", "white", "pink", "purple", "brown",
    "grey", "gold", "silver")
FRUITS = (
    "apple", "pear", "plum", "banana", "grape", "lemon", "cherry", "peach", "melon",
    "kiwi", "mango", "berry", "fig", "lime", "date")
OBJECTS = (
    "ball", "cup", "box", "hat", "book", "pen", "key", "lamp", "chair", "table", "bed",
    "door", "bag", "coat", "shoe", "sock", "clock", "spoon", "fork", "plate", "bottle",
    "kite", "drum", "bell", "rope", "brush", "boat", "car", "bike", "map")
PLACES = (
    "garden", "house", "park", "school", "shop", "farm", "river", "forest", "kitchen",
    "beach", "hill", "city", "road", "bridge", "lake")
NAMES = (
    "anna", "tom", "mia", "leo", "sara", "ben", "lily", "max", "zoe", "sam", "emma",
    "noah", "ella", "jack", "ruby", "finn", "ivy", "luke", "nora", "adam")
VERBS = (
    "sees", "likes", "finds", "holds", "wants", "paints", "carries", "drops", "hides",
    "washes", "follows", "watches")
MOTIONS = ("runs", "walks", "goes", "jumps", "swims", "flies", "rolls", "moves")
# Opposite pairs; both directions are used by the `opposite` task.
OPPOSITES = (
    ("big", "small"), ("hot", "cold"), ("fast", "slow"), ("happy", "sad"),
    ("light", "dark"), ("long", "short"), ("open", "closed"), ("wet", "dry"),
    ("full", "empty"), ("high", "low"), ("early", "late"), ("hard", "soft"),
    ("loud", "quiet"), ("rich", "poor"), ("thick", "thin"), ("strong", "weak"),
    ("clean", "dirty"), ("old", "new"), ("up", "down"), ("day", "night"))
OPPOSITE = {a: b for a, b in OPPOSITES} | {b: a for a, b in OPPOSITES}
ADJECTIVES = tuple(
    w for w in OPPOSITE if w not in ("up", "down", "day", "night", "early", "late"))
NUMBERS = tuple(str(n) for n in range(100))

# Category names as written in instructions, and their members.
CATEGORIES = {
    "animals": ANIMALS, "colours": COLOURS, "fruits": FRUITS, "things": OBJECTS,
    "places": PLACES, "names": NAMES,
}
# Words that carry no content; `shorten` drops them.
STOPWORDS = frozenset(("the", "a", "an", "to", "in", "on", "of", "and", "at", "is"))
CONTENT_WORDS = tuple(sorted(
    set(ANIMALS + COLOURS + FRUITS + OBJECTS + PLACES + NAMES + VERBS + MOTIONS)
    | set(OPPOSITE)))
ALL_WORDS = tuple(sorted(set(CONTENT_WORDS) | STOPWORDS | set(NUMBERS)))


def article(word: str) -> str:
  """"a" or "an", whichever goes before `word`."""
  return "an" if word[0] in "aeiou" else "a"


def noun(rng: random.Random) -> str:
  """A thing one can have, see or hold: an animal, fruit or object."""
  return rng.choice(rng.choice((ANIMALS, FRUITS, OBJECTS)))


# What a demonstrator or a model adds after an answer: polite, and no help to the reader.
# All start with "i", so a policy that copies the habit more often than not writes one
# even when decoding greedily.
REMARKS = ("i hope this helps.", "i think this is right.", "i am glad to help.",
           "i did my best here.")


def sentence(rng: random.Random) -> str:
  """One plain sentence about the world, ending with a full stop."""
  kind = rng.randrange(6)
  name, place = rng.choice(NAMES), rng.choice(PLACES)
  if kind == 0:
    return f"{name} has a {rng.choice(COLOURS)} {rng.choice(OBJECTS)}."
  if kind == 1:
    return f"the {rng.choice(ADJECTIVES)} {rng.choice(ANIMALS)} {rng.choice(MOTIONS)} to the {place}."
  if kind == 2:
    return f"{name} {rng.choice(VERBS)} the {rng.choice(COLOURS)} {noun(rng)} in the {place}."
  if kind == 3:
    return f"the {noun(rng)} is {rng.choice(ADJECTIVES)}."
  adjective = rng.choice(ADJECTIVES)
  if kind == 4:
    friend = rng.choice([n for n in NAMES if n != name])
    return f"{name} and {friend} go to the {place} on the {rng.choice(OBJECTS)}."
  return f"there is {article(adjective)} {adjective} {noun(rng)} near the {place}."
