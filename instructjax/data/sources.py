"""Where a run's records and tokenizer come from: the embedded testbed, JSONL split files,
or a TFDS builder of published preference data.

`config.data.source`:
  "testbed": the embedded world, generated into config.data.dir or WORKDIR/testbed;
  "jsonl":   split files someone made, in config.data.dir;
  "tfds":    config.data.dataset built from config.data.manual_dir, its split files
             derived by config into config.data.dir or WORKDIR/data
             (`instructjax.data.prompt_splits`).
All end up as the same generic records (`instructjax.data.records`) in one file per split
(SPLITS), so the stage programs never care which source they read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections
import transformers

from instructjax import multihost
from instructjax.atomic_write import write_json
from instructjax.data import prompt_splits, records, tokenize
from instructjax.data import testbed as testbed_lib

SPLITS = {  # split -> record kind
    "pretrain": "text", "pretrain_heldout": "text", "sft": "sft", "rm_train": "ranking",
    "rm_eval": "ranking", "ppo_prompts": "prompt", "eval_prompts": "prompt",
}
_DONE = "testbed.json"


@dataclasses.dataclass
class DataSource:
  """A run's data: where the split files are, the tokenizer, and (for the testbed) the
  generated world, whose `Example`s give gold scores and whose labelers judge."""
  directory: str
  tokenizer: Any
  testbed: testbed_lib.Testbed | None
  bad_rows: dict[str, int] = dataclasses.field(default_factory=dict)

  def read(self, split: str, *, skip_bad_rows: bool = False) -> list[Any]:
    path = os.path.join(self.directory, f"{split}.jsonl")
    result = records.read_jsonl(path, SPLITS[split], skip_bad_rows=skip_bad_rows)
    self.bad_rows[split] = result.num_bad_rows
    return result.records


def testbed_sizes(config: ml_collections.ConfigDict) -> testbed_lib.TestbedSizes:
  return testbed_lib.TestbedSizes(**config.data.testbed.to_dict())


def prepare_testbed(config: ml_collections.ConfigDict, directory: str) -> testbed_lib.Testbed:
  """Builds the testbed (seconds, deterministic per seed); writes its files and trains its
  tokenizer once. The card is written last, so a killed run rebuilds the files."""
  bed = testbed_lib.build_testbed(seed=config.seed, sizes=testbed_sizes(config))
  card_path = os.path.join(directory, _DONE)
  card = {"seed": config.seed, "sizes": config.data.testbed.to_dict(),
          "tokenizer_vocab_size": config.data.tokenizer_vocab_size}
  if os.path.exists(card_path):
    with open(card_path, encoding="utf-8") as f:
      built = json.load(f)
    if built == card:
      return bed
    # Rebuilding would retrain the tokenizer and redraw the splits under the models
    # already trained on them: refuse rather than silently break them.
    old = _flat(built)
    changed = {k: (old.get(k), v) for k, v in _flat(card).items() if old.get(k) != v}
    raise records.DataError(
        f"{directory} holds a testbed built for another config; changed fields "
        + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        + ". Its tokenizer and splits would change under the models trained on it: use "
        "a new --workdir (or config.data.dir), or delete that directory to rebuild it")
  os.makedirs(directory, exist_ok=True)
  testbed_lib.write_testbed(bed, directory)
  testbed_lib.train_tokenizer(bed, os.path.join(directory, "tokenizer"),
                              vocab_size=config.data.tokenizer_vocab_size)
  write_json(card_path, card)
  return bed


def _flat(card: dict, prefix: str = "") -> dict:
  """{"sizes": {"sft": 1}} -> {"sizes.sft": 1}, so a mismatch names the field."""
  out = {}
  for key, value in card.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def text_sources(config: ml_collections.ConfigDict, run_dir: str) -> dict[str, str]:
  """{split: the text that stood in} for pretrain / pretrain_heldout where the config named
  no file (the tfds source records it in its splits card); {} where files were given."""
  if config.data.source != "tfds":
    return {}
  directory = config.data.dir or os.path.join(run_dir, "data")
  with open(os.path.join(directory, prompt_splits.CARD), encoding="utf-8") as f:
    card = json.load(f)
  return {split: what for split, what in card.get("stand_ins", {}).items() if what}


def _once(prepare):
  """prepare() on process 0 first, which writes the files; then, once they are there, on
  the others, which find and read them. -> what prepare returns."""
  if multihost.is_writer():
    out = prepare()
    multihost.barrier("data_prepared")
    return out
  multihost.barrier("data_prepared")
  return prepare()


def load_data(config: ml_collections.ConfigDict, run_dir: str) -> DataSource:
  """The data of a run rooted at run_dir, checked against the model's vocabulary."""
  bed = None
  if config.data.source == "testbed":
    directory = config.data.dir or os.path.join(run_dir, "testbed")
    bed = _once(lambda: prepare_testbed(config, directory))
    tokenizer_dir = config.data.tokenizer or os.path.join(directory, "tokenizer")
  elif config.data.source == "jsonl":
    directory = config.data.dir
    if not directory or not os.path.isdir(directory):
      raise ValueError(f"config.data.dir={directory!r}: a directory of split files "
                       f"({', '.join(s + '.jsonl' for s in SPLITS)}) is needed when "
                       "data.source='jsonl'")
    tokenizer_dir = config.data.tokenizer
  elif config.data.source == "tfds":
    directory = config.data.dir or os.path.join(run_dir, "data")
    _once(lambda: prompt_splits.prepare_splits(config.data, directory))
    tokenizer_dir = config.data.tokenizer
  else:
    raise ValueError(f"config.data.source={config.data.source!r} is not 'testbed' or 'jsonl' "
                     "or 'tfds'")
  if not tokenizer_dir:
    raise ValueError("config.data.tokenizer: a tokenizer directory is needed")
  tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
  tokenize.check_tokenizer_matches(tokenizer, config.model.vocab_size)
  return DataSource(directory=directory, tokenizer=tokenizer, testbed=bed)
