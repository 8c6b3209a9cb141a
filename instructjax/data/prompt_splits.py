"""A run's split files derived from a preference dataset's TFDS builder, by config.

`config.data.source = "tfds"` prepares `config.data.dataset` (one of
`tfds_builders.DATASETS`) from the published files in `config.data.manual_dir`, then
writes the split files that the 'jsonl' source reads (`sources.SPLITS`):
  * the builder's train split -> sft (each comparison's best response), rm_train (the
    comparisons) and ppo_prompts (each prompt once), its distinct prompts divided by
    `config.data.split_fractions` (the paper's 13k : 33k : 31k SFT : RM : PPO prompts);
  * or, for TL;DR with `config.data.sft_manual_dir` set, sft <- the filtered TL;DR
    demonstrations (post -> reference summary, as Stiennon et al. fine-tune on), less any
    whose post another set holds; the sft fraction is then 0;
  * its test split -> rm_eval (the comparisons) and eval_prompts (each prompt once),
    leaving out comparisons whose prompt the train split also holds;
  * pretrain / pretrain_heldout <- the {"text": ...} lines of `config.data.pretrain_jsonl`
    / `config.data.heldout_jsonl`; where one is "", the demonstrations' text / the test
    comparisons' text (prompt + best response) stands in, and the card says so.

Disjoint by prompt: all comparisons with the same prompt text go to one set, so a prompt
one stage trained on never comes back in another stage's data or in evaluation. Which
set a prompt joins depends only on the set of distinct prompts, the fractions and
`config.data.split_seed` (a seeded permutation of the sorted prompts), not on file order.

Recorded in the run: the card `splits.json` holds the config fields that made the files,
per-split counts, skipped bad rows and the stand-ins. It is written before the files
(complete=false) and again after them (complete=true), every write atomic: a rerun of the
same config reuses complete files and remakes incomplete ones, a directory made by
another config is refused, and split files with no card are never overwritten.
"""

from __future__ import annotations

import dataclasses
import fractions
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections
import numpy as np

from instructjax.atomic_write import write_json
from instructjax.data import hh_rlhf, records, tfds_builders
from instructjax.data.records import (DataError, PromptRecord, RankingRecord, SftRecord,
                                      TextRecord)

TRAIN_SETS = ("sft", "rm_train", "ppo_prompts")  # in the order of split_fractions
PAPER_FRACTIONS = (13, 33, 31)  # InstructGPT's SFT : RM : PPO training prompts (thousands)
SPLIT_FILES = ("pretrain", "pretrain_heldout", "sft", "rm_train", "rm_eval", "ppo_prompts",
               "eval_prompts")  # the files written: every split of sources.SPLITS
CARD = "splits.json"
_FIELDS = {  # config.data field -> what it holds, for the error when it is absent
    "dataset": f"the builder, one of {tuple(tfds_builders.DATASETS)}",
    "subsets": f"HH-RLHF subsets, some of {hh_rlhf.SUBSETS} (() for other datasets)",
    "manual_dir": "the directory of published files",
    "split_fractions": "SFT : RM : PPO shares of the train split's prompts, e.g. (13, 33, 31)",
    "split_seed": "the seed of the prompt assignment",
    "pretrain_jsonl": "a JSONL file of {\"text\": ...} lines for pretrain, or \"\"",
    "heldout_jsonl": "a JSONL file of {\"text\": ...} lines for pretrain_heldout, or \"\"",
    "sft_manual_dir": "(tldr) the filtered TL;DR SFT files for the demonstrations, or \"\"",
    "skip_bad_rows": "True to skip and count malformed rows instead of failing",
}


@dataclasses.dataclass(frozen=True)
class SplitConfig:
  """The config fields that determine a run's split files (the card's "config")."""
  dataset: str
  subsets: tuple[str, ...]
  split_fractions: tuple[float, ...]
  split_seed: int
  pretrain_jsonl: str
  heldout_jsonl: str
  sft_manual_dir: str
  skip_bad_rows: bool

  def as_card(self) -> dict[str, Any]:
    """As JSON values (lists for tuples), so it compares equal to a card read back."""
    return json.loads(json.dumps(dataclasses.asdict(self)))


def _check_subsets(dataset: str, subsets: Any) -> tuple[str, ...]:
  """HH-RLHF subsets in their canonical order, so a reordered tuple is the same data."""
  subsets = tuple(subsets)
  if not tfds_builders.dataset_spec(dataset).has_subsets:
    if subsets:
      raise DataError(f"config.data.subsets={subsets} applies to dataset 'hh_rlhf' only; "
                      f"set it to () for dataset {dataset!r}")
    return ()
  unknown = [s for s in subsets if s not in hh_rlhf.SUBSETS]
  if unknown or not subsets or len(set(subsets)) != len(subsets):
    raise DataError(f"config.data.subsets={subsets} must name distinct HH-RLHF subsets, "
                    f"at least one, of {hh_rlhf.SUBSETS}")
  return tuple(s for s in hh_rlhf.SUBSETS if s in subsets)


def _check_fractions(value: Any, *, sft_given: bool) -> tuple[float, ...]:
  shares = tuple(value) if isinstance(value, (tuple, list)) else (value,)
  if (len(shares) != len(TRAIN_SETS)
      or any(isinstance(f, bool) or not isinstance(f, (int, float)) or f < 0 for f in shares)
      or sum(shares) <= 0):
    raise DataError(f"config.data.split_fractions={shares} must be {len(TRAIN_SETS)} "
                    f"non-negative numbers for {TRAIN_SETS}, e.g. (13, 33, 31)")
  if sft_given and shares[0] != 0:
    raise DataError(f"config.data.split_fractions={shares}: config.data.sft_manual_dir gives "
                    "the demonstrations, so no comparison prompt goes to 'sft'; set its "
                    f"fraction to 0, e.g. (0, {shares[1]}, {shares[2]})")
  for name, share in zip(TRAIN_SETS, shares):
    if share == 0 and not (sft_given and name == "sft"):
      raise DataError(f"config.data.split_fractions={shares}: the fraction 0 for "
                      f"{name!r} leaves that set empty; give it a positive share")
  return shares


def _check_text_file(field: str, path: Any) -> str:
  """A given text file must exist; "" (or None) means the stand-in text."""
  path = path or ""
  if path and not os.path.isfile(path):
    raise DataError(f"config.data.{field}={path!r} is not a file: give a JSONL file of "
                    "{\"text\": ...} lines, or \"\" to let the splits' own text stand in")
  return path


def _check_sft_dir(dataset: str, path: Any) -> str:
  """A given TL;DR SFT dir must hold train.jsonl; "" (or None) means none."""
  path = path or ""
  if path and dataset != "tldr":
    raise DataError(f"config.data.sft_manual_dir={path!r} holds TL;DR demonstrations, but "
                    f"config.data.dataset={dataset!r}; set it to \"\"")
  if path and not os.path.isfile(os.path.join(path, "train.jsonl")):
    raise DataError(f"config.data.sft_manual_dir={path!r} lacks train.jsonl. "
                    + tfds_builders.TldrSft.MANUAL_DOWNLOAD_INSTRUCTIONS)
  return path


def split_config(data: ml_collections.ConfigDict) -> SplitConfig:
  """The validated split fields of `config.data`; DataError names a bad or absent field."""
  absent = [name for name in _FIELDS if name not in data]
  if absent:
    raise DataError("data.source='tfds' needs " + "; ".join(
        f"config.data.{name} ({_FIELDS[name]})" for name in absent))
  tfds_builders.dataset_spec(data.dataset)  # a DataError naming the known datasets
  seed = data.split_seed
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise DataError(f"config.data.split_seed={seed!r} must be a non-negative int")
  sft_manual_dir = _check_sft_dir(data.dataset, data.sft_manual_dir)
  return SplitConfig(
      dataset=data.dataset,
      subsets=_check_subsets(data.dataset, data.subsets),
      split_fractions=_check_fractions(data.split_fractions, sft_given=bool(sft_manual_dir)),
      split_seed=seed,
      pretrain_jsonl=_check_text_file("pretrain_jsonl", data.pretrain_jsonl),
      heldout_jsonl=_check_text_file("heldout_jsonl", data.heldout_jsonl),
      sft_manual_dir=sft_manual_dir, skip_bad_rows=bool(data.skip_bad_rows))


def set_sizes(num_prompts: int, shares: Sequence[float]) -> dict[str, int]:
  """Prompts per train set: shares normalised, rounded by largest remainder (ties to the
  earlier set), so they sum to num_prompts. A set left empty is an error, unless its
  share is 0 (sft, when its demonstrations come from elsewhere)."""
  # Exact rationals: float error must not decide which set gets a leftover prompt.
  total = sum(fractions.Fraction(s) for s in shares)
  exact = [num_prompts * fractions.Fraction(s) / total for s in shares]
  sizes = [int(e) for e in exact]  # floors
  by_remainder = sorted(range(len(shares)), key=lambda i: (-(exact[i] - sizes[i]), i))
  for i in by_remainder[:num_prompts - sum(sizes)]:
    sizes[i] += 1
  for name, share, size in zip(TRAIN_SETS, shares, sizes):
    if size == 0 and share > 0:
      raise DataError(
          f"config.data.split_fractions={tuple(shares)}: the fraction {share} for {name!r} "
          f"leaves that set empty with {num_prompts} distinct prompts in the train split; "
          "raise that fraction or use more data")
  return dict(zip(TRAIN_SETS, sizes))


def group_by_prompt(rankings: Iterable[RankingRecord]) -> dict[str, list[RankingRecord]]:
  """prompt -> its comparisons, in the order read."""
  groups: dict[str, list[RankingRecord]] = {}
  for record in rankings:
    groups.setdefault(record.prompt, []).append(record)
  return groups


def assign_prompts(prompts: Iterable[str], *, shares: Sequence[float],
                   rng: np.random.Generator) -> dict[str, list[str]]:
  """Distinct prompts -> TRAIN_SETS by shares: a permutation of the sorted prompts, cut."""
  ordered = sorted(set(prompts))
  sizes = set_sizes(len(ordered), shares)
  order = rng.permutation(len(ordered))  # [num_prompts]
  assigned, start = {}, 0
  for name in TRAIN_SETS:
    assigned[name] = [ordered[i] for i in order[start:start + sizes[name]]]
    start += sizes[name]
  return assigned


@dataclasses.dataclass
class DerivedSplits:
  """The prompt-derived split files' records, distinct prompts per set, the test
  comparisons left out because the train split holds their prompt, and the given
  demonstrations left out because another set holds theirs."""
  records: dict[str, list[Any]]
  prompts: dict[str, int]
  test_left_out: int
  demonstrations_left_out: int = 0


def derive_splits(train: Sequence[RankingRecord], test: Sequence[RankingRecord], *,
                  shares: Sequence[float], seed: int,
                  demonstrations: Sequence[SftRecord] | None = None) -> DerivedSplits:
  """sft, rm_train, ppo_prompts from `train` and rm_eval, eval_prompts from `test`,
  disjoint by prompt and deterministic in (the records, shares, seed). Given
  `demonstrations`, sft is those whose prompt no comparison of `train` or `test` has."""
  rng = np.random.default_rng(seed)
  groups = group_by_prompt(train)
  assigned = assign_prompts(groups, shares=shares, rng=rng)
  test_groups = {p: rs for p, rs in group_by_prompt(test).items() if p not in groups}
  if not test_groups:
    raise DataError(f"every prompt of the test split ({len(test)} comparisons) is also in "
                    "the train split, so no evaluation prompt would be unseen")
  ordered = sorted(test_groups)
  eval_prompts = [ordered[i] for i in rng.permutation(len(ordered))]  # [num_eval]
  sft = records.sft_from_rankings(r for p in assigned["sft"] for r in groups[p])
  left_out = 0
  if demonstrations is not None:
    taken = set(groups) | {r.prompt for r in test}
    sft = [d for d in demonstrations if d.prompt not in taken]
    left_out = len(demonstrations) - len(sft)
  split_records = {
      "sft": sft,
      "rm_train": [r for p in assigned["rm_train"] for r in groups[p]],
      "ppo_prompts": [PromptRecord(p) for p in assigned["ppo_prompts"]],
      "rm_eval": [r for p in eval_prompts for r in test_groups[p]],
      "eval_prompts": [PromptRecord(p) for p in eval_prompts],
  }
  return DerivedSplits(
      records=split_records,
      prompts={**{name: len(assigned[name]) for name in TRAIN_SETS},
               "sft": len({r.prompt for r in sft}), "eval_prompts": len(eval_prompts)},
      test_left_out=len(test) - len(split_records["rm_eval"]),
      demonstrations_left_out=left_out)


def _text_split(path: str, stand_in: list[TextRecord], *,
                skip_bad_rows: bool) -> tuple[list[TextRecord], int]:
  """The documents of `path`, or `stand_in` where no path is given; and bad rows skipped."""
  if not path:
    return stand_in, 0
  result = records.read_jsonl(path, "text", skip_bad_rows=skip_bad_rows)
  return result.records, result.num_bad_rows


def _read_card(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _check_card(made: dict[str, Any] | None, wanted: dict[str, Any], directory: str) -> None:
  """Refuses a directory whose splits another config made, or split files no card names."""
  if made is None:
    present = [s for s in SPLIT_FILES if os.path.exists(os.path.join(directory, f"{s}.jsonl"))]
    if present:
      raise DataError(
          f"{directory} holds split files ({', '.join(present)}) but no {CARD}: they were "
          "not made by data.source='tfds' and are left as they are; use a new --workdir, "
          "or move them away")
    return
  if made["config"] != wanted:
    changed = {k: (made["config"].get(k), v) for k, v in wanted.items()
               if made["config"].get(k) != v}
    raise DataError(
        f"{directory} holds splits made by another config; changed fields "
        + ", ".join(f"data.{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        + ". The models trained on them would see other prompts: use a new --workdir, or "
        "delete that directory to remake the splits")


def prepare_splits(data: ml_collections.ConfigDict, directory: str) -> dict[str, Any]:
  """Makes (once) the split files and card in `directory` from `config.data`; returns the
  card. Prepared TFDS data goes to `directory`/tfds."""
  spec = split_config(data)
  card_path = os.path.join(directory, CARD)
  made = _read_card(card_path)
  _check_card(made, spec.as_card(), directory)
  if made is not None and made["complete"]:
    return made
  built = tfds_builders.read_manual_dataset(
      spec.dataset, manual_dir=data.manual_dir, data_dir=os.path.join(directory, "tfds"),
      subsets=spec.subsets, skip_bad_rows=spec.skip_bad_rows)
  demonstrations = None
  bad_rows = dict(built.bad_rows)
  if spec.sft_manual_dir:
    demonstrations, bad_rows["sft_manual_dir"] = tfds_builders.read_tldr_sft_dir(
        spec.sft_manual_dir, data_dir=os.path.join(directory, "tfds"),
        skip_bad_rows=spec.skip_bad_rows)
  derived = derive_splits(built.train, built.test, shares=spec.split_fractions,
                          seed=spec.split_seed, demonstrations=demonstrations)
  split_records = dict(derived.records)
  stand_ins = {}  # split -> the text that stood in for an absent file (None: none did)
  for split, field, path, what, stand_in in (
      ("pretrain", "pretrain_jsonl", spec.pretrain_jsonl,
       "the sft demonstrations (prompt + response)",
       [TextRecord(r.prompt + r.response) for r in split_records["sft"]]),
      ("pretrain_heldout", "heldout_jsonl", spec.heldout_jsonl,
       "the rm_eval comparisons (prompt + best response)",
       [TextRecord(r.prompt + r.ranked_responses[0]) for r in split_records["rm_eval"]])):
    split_records[split], bad_rows[field] = _text_split(path, stand_in,
                                                        skip_bad_rows=spec.skip_bad_rows)
    stand_ins[split] = None if path else what
  card = {"config": spec.as_card(), "complete": False, "manual_dir": data.manual_dir}
  write_json(card_path, card)  # first: the files below are ours to remake if killed
  for split in SPLIT_FILES:
    records.write_jsonl(os.path.join(directory, f"{split}.jsonl"), split_records[split])
  card.update(
      complete=True, counts={s: len(split_records[s]) for s in SPLIT_FILES},
      prompts=derived.prompts, test_comparisons_left_out=derived.test_left_out,
      demonstrations_left_out=derived.demonstrations_left_out,
      bad_rows=bad_rows, stand_ins=stand_ins)
  write_json(card_path, card)
  return card
