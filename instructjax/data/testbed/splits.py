"""The whole testbed: pretraining text, demonstrations, rankings, RL and eval prompts.

As in the paper, the demonstrations (SFT) are fewer than the RL prompts, and the SFT,
RM, PPO, validation and test prompt sets are disjoint: each split draws from its own
random stream, in a fixed order (eval, val, sft, rm_train, rm_eval, ppo), skipping
prompts taken by earlier splits, so the test prompts depend only on the seed and their
count. Every choice a run makes (the SFT checkpoint, beta, gamma) is made on the
validation prompts; the test prompts (eval) are seen only by the final evaluation.
Pretraining documents contain none of the splits' tasks. Held-out labelers rank only
the RM evaluation prompts.

Files written by `write_testbed` use the project's generic JSON-lines schemas:
  pretrain.jsonl, pretrain_heldout.jsonl  {"text": str}
  sft.jsonl                               {"prompt": str, "response": str}
  rm_train.jsonl, rm_eval.jsonl           {"prompt": str, "responses": [str, ...],
                                           "ranking": [int, ...] (best first),
                                           "labeler": int}
  ppo_prompts.jsonl, val_prompts.jsonl,   {"prompt": str}
  eval_prompts.jsonl
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import random

from instructjax.data.testbed import candidates, labelers, pretraining, tasks
from instructjax.data.testbed.labelers import Labeler
from instructjax.data.testbed.tasks import Example


@dataclasses.dataclass(frozen=True, kw_only=True)
class TestbedSizes:
  """How much of everything the testbed holds. Defaults generate in a few seconds."""
  __test__ = False  # not a pytest test class, despite its name
  pretrain: int = 30_000  # pretraining documents
  pretrain_heldout: int = 1_000  # held-out documents: the alignment tax is their loss
  sft: int = 1_200  # demonstrations (prompt -> ideal response)
  rm_train: int = 1_200  # prompts ranked by one training labeler each
  rm_eval: int = 200  # prompts ranked by a training AND a held-out labeler
  ppo: int = 2_400  # RL prompts: more than the demonstrations, as in the paper
  eval: int = 300  # test prompts: the final evaluation's only
  val: int = 300  # validation prompts: every choice of a run is made on these
  train_labelers: int = 6
  heldout_labelers: int = 3
  min_responses: int = 4  # K, responses ranked per prompt, is drawn from
  max_responses: int = 9  # [min_responses, max_responses] (the paper's 4..9)
  # Share of demonstrations whose writer added a polite remark after the answer (the
  # gold score counts it as extra words): the habit SFT learns and RLHF should unlearn.
  remark_fraction: float = 0.0

  def __post_init__(self):
    problems = [f"{f.name}={getattr(self, f.name)} must be >= 1"
                for f in dataclasses.fields(self)
                if f.name != "remark_fraction" and getattr(self, f.name) < 1]
    if not 0.0 <= self.remark_fraction <= 1.0:
      problems.append(f"remark_fraction={self.remark_fraction} must be in [0, 1]")
    if not 2 <= self.min_responses <= self.max_responses:
      problems.append(f"need 2 <= min_responses={self.min_responses} <= "
                      f"max_responses={self.max_responses}")
    if problems:
      raise ValueError("invalid testbed sizes: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class Ranking:
  """One labeler's ranking of K responses to one prompt."""
  example: Example
  responses: tuple[str, ...]
  ranking: tuple[int, ...]  # indices into responses, best first
  labeler: int

  def record(self) -> dict:
    return {"prompt": self.example.prompt, "responses": list(self.responses),
            "ranking": list(self.ranking), "labeler": self.labeler}


@dataclasses.dataclass(frozen=True)
class Testbed:
  """Everything generated for one seed. Rows are in the order written to the files."""
  __test__ = False  # not a pytest test class, despite its name
  seed: int
  sizes: TestbedSizes
  labelers: tuple[Labeler, ...]
  pretrain: tuple[str, ...]
  pretrain_heldout: tuple[str, ...]
  sft: tuple[Example, ...]
  sft_responses: tuple[str, ...]  # the demonstrations as written, remarks included
  rm_train: tuple[Ranking, ...]
  rm_eval: tuple[Ranking, ...]
  ppo_prompts: tuple[Example, ...]
  eval_prompts: tuple[Example, ...]  # test
  val_prompts: tuple[Example, ...]  # validation

  @functools.cached_property
  def _by_prompt(self) -> dict[str, Example]:
    examples = self.sft + self.ppo_prompts + self.eval_prompts + self.val_prompts
    examples += tuple(r.example for r in self.rm_train + self.rm_eval)
    return {e.prompt: e for e in examples}

  def example(self, prompt: str) -> Example:
    """The example behind any prompt of the testbed's splits (for gold scoring)."""
    try:
      return self._by_prompt[prompt]
    except KeyError:
      raise ValueError(f"prompt is not in the testbed: {prompt!r}") from None

  def texts(self) -> list[str]:
    """Every training text of the testbed (held-out documents aside), for a tokenizer."""
    out = list(self.pretrain)
    out += [e.prompt + r for e, r in zip(self.sft, self.sft_responses)]
    out += [e.prompt for e in self.ppo_prompts + self.eval_prompts]
    for ranking in self.rm_train + self.rm_eval:
      out += [ranking.example.prompt + r for r in ranking.responses]
    return out


# Consecutive duplicate draws after which a family counts as exhausted.
_MAX_MISSES = 10_000


def _draw_examples(rng: random.Random, count: int, taken: set[str]) -> tuple[Example, ...]:
  """`count` examples with prompts not in `taken` (which grows), families balanced."""
  out = []
  misses = 0
  while len(out) < count:
    family = tasks.FAMILIES[len(out) % len(tasks.FAMILIES)]
    example = tasks.sample_example(rng, family)
    if example.prompt in taken:
      misses += 1
      if misses > _MAX_MISSES:  # the family has (almost) no unused prompts left
        raise ValueError(f"ran out of distinct {family!r} prompts after {len(taken)} "
                         "prompts in all; ask for smaller splits")
      continue
    misses = 0
    taken.add(example.prompt)
    out.append(example)
  rng.shuffle(out)
  return tuple(out)


def _rank(example: Example, labeler_pool: tuple[Labeler, ...], rng: random.Random,
          sizes: TestbedSizes) -> tuple[Ranking, ...]:
  """Candidates for `example`, ranked by one labeler drawn from each pool."""
  k = rng.randint(sizes.min_responses, sizes.max_responses)
  responses = tuple(candidates.candidate_responses(example, rng, k=k))
  return tuple(
      Ranking(example, responses, tuple(labeler.rank(example, responses, rng)),
              labeler.id)
      for labeler in labeler_pool)


def build_testbed(*, seed: int, sizes: TestbedSizes = TestbedSizes()) -> Testbed:
  """Generates the testbed; the same seed and sizes give the same testbed."""
  stream = lambda name: random.Random(f"instructjax-testbed/{seed}/{name}")
  pool = labelers.make_labelers(stream("labelers"), n_train=sizes.train_labelers,
                                n_held_out=sizes.heldout_labelers)
  train_pool = [labeler for labeler in pool if not labeler.held_out]
  heldout_pool = [labeler for labeler in pool if labeler.held_out]

  taken: set[str] = set()
  eval_prompts = _draw_examples(stream("eval"), sizes.eval, taken)
  val_prompts = _draw_examples(stream("val"), sizes.val, taken)
  sft = _draw_examples(stream("sft"), sizes.sft, taken)
  rm_train_examples = _draw_examples(stream("rm_train"), sizes.rm_train, taken)
  rm_eval_examples = _draw_examples(stream("rm_eval"), sizes.rm_eval, taken)
  ppo_prompts = _draw_examples(stream("ppo"), sizes.ppo, taken)

  demo_rng = stream("demonstrations")
  sft_responses = tuple(
      candidates.demonstration(e, demo_rng, remark_fraction=sizes.remark_fraction)
      for e in sft)

  rng = stream("rankings")
  rm_train = tuple(r for e in rm_train_examples
                   for r in _rank(e, (rng.choice(train_pool),), rng, sizes))
  rm_eval = tuple(
      r for e in rm_eval_examples
      for r in _rank(e, (rng.choice(train_pool), rng.choice(heldout_pool)), rng, sizes))

  pretrain = pretraining.documents(stream("pretrain"), sizes.pretrain, reserved=taken)
  pretrain_texts = tuple(d.text for d in pretrain)
  heldout = pretraining.documents(stream("pretrain_heldout"), sizes.pretrain_heldout,
                                  reserved=taken, exclude=set(pretrain_texts))
  return Testbed(seed=seed, sizes=sizes, labelers=pool, pretrain=pretrain_texts,
                 pretrain_heldout=tuple(d.text for d in heldout), sft=sft,
                 sft_responses=sft_responses,
                 rm_train=rm_train, rm_eval=rm_eval, ppo_prompts=ppo_prompts,
                 eval_prompts=eval_prompts, val_prompts=val_prompts)


def _write_jsonl(path: pathlib.Path, records) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")


def write_testbed(testbed: Testbed, directory: str | os.PathLike) -> dict[str, pathlib.Path]:
  """Writes the testbed as JSON-lines files; returns {split name: path}."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  splits = {
      "pretrain": [{"text": t} for t in testbed.pretrain],
      "pretrain_heldout": [{"text": t} for t in testbed.pretrain_heldout],
      "sft": [{"prompt": e.prompt, "response": r}
              for e, r in zip(testbed.sft, testbed.sft_responses)],
      "rm_train": [r.record() for r in testbed.rm_train],
      "rm_eval": [r.record() for r in testbed.rm_eval],
      "ppo_prompts": [{"prompt": e.prompt} for e in testbed.ppo_prompts],
      "eval_prompts": [{"prompt": e.prompt} for e in testbed.eval_prompts],
      "val_prompts": [{"prompt": e.prompt} for e in testbed.val_prompts],
  }
  paths = {}
  for name, records in splits.items():
    paths[name] = directory / f"{name}.jsonl"
    _write_jsonl(paths[name], records)
  return paths
