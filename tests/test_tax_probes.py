"""The alignment tax's benchmarks: probe items right by construction and absent from every
testbed text, likelihood scoring that matches a one-sequence-at-a-time loop, accuracy
that follows the scores, and the loss on the distinct documents."""

from __future__ import annotations

import collections
import functools
import random
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from instructjax import sharding
from instructjax.data.testbed import probes, splits, tokenizer, world
from instructjax.data.testbed.probes import ProbeItem
from instructjax.evaluation import tax
from instructjax.models import CausalLM, ModelConfig

PER_BENCHMARK = 200
# Phrases of the probe templates and the distinct documents that no testbed text may hold.
_ADJECTIVES = "|".join(world.OPPOSITE)
_CATEGORIES = "|".join(world.CATEGORIES)
_NAMES = "|".join(world.NAMES)
FORBIDDEN = {
    "opposites": rf"\b({_ADJECTIVES}) and\b",
    "categories": rf"\bthe ({_CATEGORIES}) are\b",
    "arithmetic": r"\b\d+ and \d+ is\b",
    "largest": r"\bthe largest is\b",
    "reading": r"\bso the\b",
    "dialogue": rf"(^|\n)({_NAMES}): ",
    "diary": r"\bon day \d+ ",
}


@pytest.fixture(scope="module")
def bed():
  return splits.build_testbed(seed=0)  # default sizes: 30,000 pretraining documents


@pytest.fixture(scope="module")
def hf_tokenizer(bed, tmp_path_factory):
  directory = tokenizer.train_tokenizer(bed, tmp_path_factory.mktemp("tok"), vocab_size=1024)
  return transformers.AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def items():
  return probes.probe_items(random.Random(0), per_benchmark=PER_BENCHMARK)


@pytest.fixture(scope="module")
def docs():
  return probes.distinct_documents(random.Random(0), 300)


@pytest.fixture(scope="module")
def model_and_params(hf_tokenizer):
  model = CausalLM(ModelConfig(vocab_size=1024, d_model=32, n_layers=2, n_heads=4,
                               max_len=64))
  assert len(hf_tokenizer) <= 1024
  params = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 8), jnp.int32))["params"]
  return model, params


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh(data=-1, fsdp=1, tensor=1)  # 8 fake CPU devices


def _words(text: str) -> list[str]:
  return re.findall(r"[a-z0-9]+", text)


# --- items ---------------------------------------------------------------------------


def _right_answers(item: ProbeItem) -> set[str]:
  """The words that answer the context, worked out from the context alone."""
  words = _words(item.context)
  if item.benchmark == "opposites":
    return {world.OPPOSITE[words[-2]]}
  if item.benchmark == "categories":
    return set(world.CATEGORIES[words[1]]) - set(words)  # the members not yet listed
  if item.benchmark == "arithmetic":
    return {str(int(words[-4]) + int(words[-2]))}
  if item.benchmark == "largest":
    return {str(max(int(w) for w in words if w.isdigit()))}
  colour_of = {thing: colour for colour, thing in re.findall(r"has a (\w+) (\w+)", item.context)}
  return {colour_of[words[-2]]}


def test_items_are_right_by_construction(items):
  assert list(items) == list(probes.BENCHMARKS)
  for name, group in items.items():
    assert len(group) == PER_BENCHMARK
    assert len({item.context for item in group}) == PER_BENCHMARK
    for item in group:
      assert item.benchmark == name
      words = [c.strip() for c in item.candidates]
      assert len(set(words)) == 4 and all(c == " " + w for c, w in zip(item.candidates, words))
      right = [w in _right_answers(item) for w in words]
      assert right.count(True) == 1 and right[item.answer], item


def test_distractors_are_of_the_right_kind(items):
  """Every candidate is the kind of word the answer is, so frequency cannot pick it."""
  for item in items["opposites"]:
    assert all(c.strip() in world.OPPOSITE for c in item.candidates)
  for item in items["categories"]:
    category = _words(item.context)[1]
    homes = [next(c for c, members in world.CATEGORIES.items() if w.strip() in members)
             for w in item.candidates]
    assert homes.count(category) == 1 and len(set(homes)) == 4, item
  for item in items["arithmetic"]:
    numbers = [int(c) for c in item.candidates]
    assert max(numbers) - min(numbers) <= 6 and all(0 <= n < 100 for n in numbers)
    for a, b, total in re.findall(r"(\d+) and (\d+) is (\d+)\.", item.context):
      assert int(a) + int(b) == int(total)  # the shown sums are right
  for item in items["largest"]:
    assert sorted(c.strip() for c in item.candidates) == sorted(
        w for w in _words(item.context) if w.isdigit())
  for item in items["reading"]:
    assert all(c.strip() in world.COLOURS for c in item.candidates)
    in_passage = [c.strip() in _words(item.context) for c in item.candidates]
    assert in_passage.count(True) == 3  # the colours read, and one not in the passage


def test_items_are_deterministic_with_uniform_answer_positions(items):
  assert probes.probe_items(random.Random(0), per_benchmark=PER_BENCHMARK) == items
  other = probes.probe_items(random.Random(1), per_benchmark=PER_BENCHMARK)
  assert all(other[name] != items[name] for name in items)
  positions = collections.Counter(item.answer for group in items.values() for item in group)
  total = len(items) * PER_BENCHMARK
  assert set(positions) == {0, 1, 2, 3}
  for count in positions.values():  # expected total / 4, standard deviation ~ 15
    assert abs(count - total / 4) < 60, positions
  with pytest.raises(ValueError, match="per_benchmark"):
    probes.probe_items(random.Random(0), per_benchmark=0)


def test_distinct_documents(docs):
  assert len(docs) == len(set(docs)) == 300
  assert probes.distinct_documents(random.Random(0), 300) == docs
  dialogues = [d for d in docs if re.match(rf"({_NAMES}): ", d)]
  diaries = [d for d in docs if d.startswith("on day ")]
  assert len(dialogues) + len(diaries) == len(docs)
  assert 100 < len(dialogues) < 200


def test_nothing_occurs_in_any_testbed_text(bed, items, docs):
  """No probe context (nor context + answer) and no distinct document is part of any text
  the testbed trains or evaluates on, no template phrase occurs there, and every word is
  one that the text uses (so the tokenizer and LM know it)."""
  texts = bed.texts() + list(bed.pretrain_heldout)
  assert len(bed.pretrain) == 30_000
  corpus = "\x00".join(texts)
  probe_texts = [t for group in items.values() for item in group
                 for t in (item.context, item.context + item.candidates[item.answer])]
  for text in probe_texts + docs:
    assert text not in corpus, text
  for name, pattern in FORBIDDEN.items():
    found = re.search(pattern, corpus)
    assert found is None, (name, corpus[max(0, found.start() - 40):found.end() + 40])
  for name, group in items.items():  # each template holds its phrase: the check bites
    assert all(re.search(FORBIDDEN[name], item.context) for item in group), name
  for doc in docs:
    assert re.search(FORBIDDEN["dialogue"], doc) or re.search(FORBIDDEN["diary"], doc)
  known = set(_words(corpus))
  used = {w for t in probe_texts + docs for w in _words(t)}
  used |= {c.strip() for group in items.values() for item in group for c in item.candidates}
  assert used <= known, used - known


# --- scoring -------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, tokens):
  """Logits of one unpadded sequence: tokens [1, L] -> [1, L, V]."""
  return model.apply({"params": params}, tokens)


def _log_softmax(model, params, ids: list[int]) -> np.ndarray:
  """Next-token log-probabilities after each of `ids`, in numpy: [L, V] float64."""
  logits = np.asarray(_forward(model, params, jnp.asarray([ids])), np.float64)[0]  # [L, V]
  logits -= logits.max(axis=-1, keepdims=True)
  return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def _loop_scores(model, params, item: ProbeItem, tok) -> np.ndarray:
  """Each candidate's mean log-probability per token, one unpadded sequence at a time."""
  context = tok.encode(item.context, add_special_tokens=False)
  scores = []
  for candidate in item.candidates:
    ids = context + tok.encode(candidate, add_special_tokens=False)
    logprobs = _log_softmax(model, params, ids)  # [L, V]
    picked = [logprobs[t - 1, ids[t]] for t in range(len(context), len(ids))]
    scores.append(np.mean(picked))
  return np.asarray(scores)


def test_scores_match_a_plain_loop(items, hf_tokenizer, model_and_params, mesh):
  model, params = model_and_params
  sample = {name: group[:3] for name, group in items.items()}
  # Candidates of several tokens, where the mean per token differs from the sum.
  spelled = ProbeItem("spelled", "the animals are", (" zebra", " Zebra!", " zzz", " cat"), 0)
  assert len(hf_tokenizer.encode(" Zebra!", add_special_tokens=False)) > 1
  flat = [item for group in sample.values() for item in group] + [spelled]
  # 64 sequences in batches of 24: a padded last batch, and both buckets (the reading
  # items are longer than 16 tokens, the others are not).
  got = tax.candidate_scores(model, params, flat, hf_tokenizer, mesh=mesh, batch_size=24,
                             buckets=(16, 32))
  want = [_loop_scores(model, params, item, hf_tokenizer) for item in flat]
  assert len(got) == len(flat)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=0, atol=2e-4)
  accuracy = tax.probe_accuracy(model, params, sample, hf_tokenizer, mesh=mesh,
                                batch_size=24, buckets=(16, 32))
  picks = iter(int(np.argmax(w)) for w in want)  # the sample's items come first in flat
  for name, group in sample.items():
    right = [next(picks) == item.answer for item in group]
    assert accuracy[name] == {"accuracy": np.mean(right), "n": 3, "chance": 0.25}


def _favouring_apply(variables, tokens, *, token_mask, favourite: int):
  """A stand-in LM whose every next token is `favourite` by a wide margin (or, with -1,
  uniform over the vocabulary)."""
  del variables, token_mask
  logits = jnp.zeros(tokens.shape + (1024,))  # [B, T, V]
  return logits if favourite < 0 else logits.at[..., favourite].set(30.0)


def _fake_model(favourite: int):
  return types.SimpleNamespace(apply=functools.partial(_favouring_apply, favourite=favourite))


def test_accuracy_follows_the_likeliest_candidate(hf_tokenizer, mesh):
  fruit = " lemon"
  (lemon,) = hf_tokenizer.encode(fruit, add_special_tokens=False)
  (cat,) = hf_tokenizer.encode(" cat", add_special_tokens=False)
  # The lemon is right in 2 of 4 "food" items (at positions 0 and 2), wrong in the rest;
  # in the "pets" items the cat is always right, at positions 1 and 0.
  food = [ProbeItem("food", "anna has a", c, a) for c, a in (
      ((fruit, " cat", " red", " box"), 0), ((" cat", " red", fruit, " box"), 2),
      ((fruit, " cat", " red", " box"), 1), ((" red", fruit, " cat", " box"), 3))]
  pets = [ProbeItem("pets", "tom has a", c, a) for c, a in (
      ((" box", " cat", fruit, " red"), 1), ((" cat", " box", " red", fruit), 0))]
  items = {"food": food, "pets": pets}
  scores = functools.partial(tax.probe_accuracy, params={}, items=items,
                             tokenizer=hf_tokenizer, mesh=mesh, batch_size=8)
  lemons = scores(_fake_model(lemon))
  assert lemons["food"] == {"accuracy": 0.5, "n": 4, "chance": 0.25}
  assert lemons["pets"]["accuracy"] == 0.0
  assert lemons["average"] == {"accuracy": 0.25, "n": 6, "chance": 0.25}
  cats = scores(_fake_model(cat))  # the cat is right in the third food item
  assert (cats["food"]["accuracy"], cats["pets"]["accuracy"]) == (0.25, 1.0)
  # Every candidate equally likely: ties go to the first candidate.
  uniform = scores(_fake_model(-1))
  assert (uniform["food"]["accuracy"], uniform["pets"]["accuracy"]) == (0.25, 0.5)


def test_distinct_text_loss_matches_a_plain_loop(docs, hf_tokenizer, model_and_params, mesh):
  model, params = model_and_params
  sample = docs[:10]
  got = tax.distinct_text_loss(model, params, sample, hf_tokenizer, mesh=mesh,
                               buckets=(32, 64), batch_size=8)
  total, count = 0.0, 0
  for doc in sample:
    ids = hf_tokenizer.encode(doc, add_special_tokens=False) + [hf_tokenizer.eos_token_id]
    logprobs = _log_softmax(model, params, ids)  # [L, V]
    total -= sum(logprobs[t - 1, ids[t]] for t in range(1, len(ids)))
    count += len(ids) - 1
  np.testing.assert_allclose(got, total / count, rtol=1e-5)
