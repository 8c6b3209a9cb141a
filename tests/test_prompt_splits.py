"""The 'tfds' data source: split files derived by config from manual dirs of published-schema
files (hand-made rows with repeated prompts), disjoint by prompt, recorded and reused."""

from __future__ import annotations

import gzip
import json
import os
import re

import ml_collections
import pytest
import tokenizers
import transformers

from instructjax.data import prompt_splits, sources
from instructjax.data.records import (DataError, PromptRecord, RankingRecord, SftRecord,
                                      TextRecord, read_jsonl)

SUBSETS = ("helpful-base", "harmless-base")


def _write(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  text = "".join(json.dumps(r) + "\n" for r in rows)
  if str(path).endswith(".gz"):
    with gzip.open(path, "wt", encoding="utf-8") as f:
      f.write(text)
  else:
    path.write_text(text)


def _prompt(question):
  return f"\n\nHuman: {question}\n\nAssistant:"


def _hh(question, chosen, rejected):
  return {"chosen": _prompt(question) + chosen, "rejected": _prompt(question) + rejected}


def _hh_manual(root):
  """20 distinct train prompts in 30 comparisons (q0-q4 three times, across subsets), and
  a test split of 8 comparisons: t0 twice, t1-t5, and q0, whose prompt train holds."""
  train = {"helpful-base": [], "harmless-base": []}
  for i in range(20):
    train["helpful-base"].append(_hh(f"q{i}", f" yes {i}", f" no {i}"))
    if i < 5:  # the repeats: once more in each subset, with other replies
      train["helpful-base"].append(_hh(f"q{i}", f" sure {i}", f" never {i}"))
      train["harmless-base"].append(_hh(f"q{i}", "", f" rude {i}"))  # empty chosen reply
  test = [_hh("t0", " a", ""), _hh("t0", " b", " c"), _hh("q0", " d", " e")]  # empty rejected
  test += [_hh(f"t{i}", f" good {i}", f" bad {i}") for i in range(1, 6)]
  for subset in SUBSETS:
    _write(root / subset / "train.jsonl.gz", train[subset])
  _write(root / "helpful-base" / "test.jsonl.gz", test[:4])
  _write(root / "harmless-base" / "test.jsonl.gz", test[4:])
  return root


@pytest.fixture
def hh_manual(tmp_path):
  return _hh_manual(tmp_path / "hh-rlhf")


def _data(manual_dir, **overrides):
  data = dict(source="tfds", dir="", tokenizer="", dataset="hh_rlhf", subsets=SUBSETS,
              manual_dir=str(manual_dir), split_fractions=(1, 2, 1), split_seed=0,
              pretrain_jsonl="", heldout_jsonl="", sft_manual_dir="", skip_bad_rows=False)
  data.update(overrides)
  return ml_collections.ConfigDict(data)


def _read_all(directory):
  return {split: read_jsonl(os.path.join(directory, f"{split}.jsonl"), kind).records
          for split, kind in sources.SPLITS.items()}


def _prompts(splits):
  """Each prompt-bearing split's set of prompts."""
  return {split: {r.prompt for r in rows} for split, rows in splits.items()
          if split not in ("pretrain", "pretrain_heldout")}


def test_split_files_are_the_jsonl_sources_splits():
  assert set(prompt_splits.SPLIT_FILES) == set(sources.SPLITS)


@pytest.mark.parametrize("num_prompts,shares,sizes", [
    (77, (13, 33, 31), (13, 33, 31)),
    (40, (13, 33, 31), (7, 17, 16)),  # 6.75, 17.14, 16.10: the one left over goes to sft
    (10, (1, 1, 1), (4, 3, 3)),  # equal remainders: the earlier set first
    (20, (0.25, 0.5, 0.25), (5, 10, 5)),
])
def test_set_sizes_largest_remainder(num_prompts, shares, sizes):
  assert prompt_splits.set_sizes(num_prompts, shares) == dict(zip(prompt_splits.TRAIN_SETS,
                                                                  sizes))


def test_splits_disjoint_by_prompt_with_exact_counts(tmp_path, hh_manual):
  directory = tmp_path / "run" / "data"
  card = prompt_splits.prepare_splits(_data(hh_manual), str(directory))
  splits = _read_all(directory)
  prompts = _prompts(splits)
  # 20 distinct train prompts by (1, 2, 1): 5 SFT, 10 RM, 5 PPO prompts.
  assert {s: len(prompts[s]) for s in prompt_splits.TRAIN_SETS} == {
      "sft": 5, "rm_train": 10, "ppo_prompts": 5}
  names = list(prompts)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      if {a, b} != {"rm_eval", "eval_prompts"}:  # the test split's two views
        assert not prompts[a] & prompts[b], (a, b)
  assert prompts["rm_eval"] == prompts["eval_prompts"] == {_prompt(f"t{i}") for i in range(6)}
  assert prompts["sft"] | prompts["rm_train"] | prompts["ppo_prompts"] == {
      _prompt(f"q{i}") for i in range(20)}
  # Every comparison of a prompt goes with it: q0-q4 bring three each.
  repeated = {_prompt(f"q{i}") for i in range(5)}
  comparisons = (len(splits["sft"]) + len(splits["rm_train"])
                 + 3 * len(prompts["ppo_prompts"] & repeated)
                 + len(prompts["ppo_prompts"] - repeated))
  assert comparisons == 30
  assert len(splits["sft"]) == 5 + 2 * len(prompts["sft"] & repeated)
  assert len(splits["rm_train"]) == 10 + 2 * len(prompts["rm_train"] & repeated)
  assert len(splits["ppo_prompts"]) == 5  # each prompt once
  assert len(splits["rm_eval"]) == 7 and len(splits["eval_prompts"]) == 6
  assert card["complete"] and card["test_comparisons_left_out"] == 1  # q0's
  assert card["counts"] == {s: len(rows) for s, rows in splits.items()}
  assert card["prompts"] == {"sft": 5, "rm_train": 10, "ppo_prompts": 5, "eval_prompts": 6}
  assert card["config"] == {
      "dataset": "hh_rlhf", "subsets": ["helpful-base", "harmless-base"],
      "split_fractions": [1, 2, 1], "split_seed": 0, "pretrain_jsonl": "",
      "heldout_jsonl": "", "sft_manual_dir": "", "skip_bad_rows": False}
  assert card["bad_rows"]["hh_rlhf/helpful-base/1.0.0"] == {"train": 0, "test": 0}
  # Empty replies build: the empty chosen replies of q0-q4 (harmless-base) are rankings and
  # demonstrations wherever their prompt went, and t0's empty rejected reply is evaluated.
  assert sum(d.response == "" for d in splits["sft"]) == len(prompts["sft"] & repeated)
  assert sum(r.responses[0] == "" for r in splits["rm_train"]) == len(
      prompts["rm_train"] & repeated)
  assert RankingRecord(_prompt("t0"), (" a", ""), (0, 1)) in splits["rm_eval"]


def test_pretrain_text_stands_in_and_is_recorded(tmp_path, hh_manual):
  directory = tmp_path / "data"
  card = prompt_splits.prepare_splits(_data(hh_manual), str(directory))
  splits = _read_all(directory)
  assert splits["pretrain"] == [TextRecord(d.prompt + d.response) for d in splits["sft"]]
  assert splits["pretrain_heldout"] == [TextRecord(r.prompt + r.ranked_responses[0])
                                        for r in splits["rm_eval"]]
  assert card["stand_ins"] == {
      "pretrain": "the sft demonstrations (prompt + response)",
      "pretrain_heldout": "the rm_eval comparisons (prompt + best response)"}
  # Given files are used as given, and the card says nothing stood in.
  docs = tmp_path / "docs.jsonl"
  _write(docs, [{"text": "a document."}, {"text": "another one."}])
  given = tmp_path / "given"
  card = prompt_splits.prepare_splits(
      _data(hh_manual, pretrain_jsonl=str(docs), heldout_jsonl=str(docs)), str(given))
  assert _read_all(given)["pretrain"] == [TextRecord("a document."), TextRecord("another one.")]
  assert card["stand_ins"] == {"pretrain": None, "pretrain_heldout": None}
  assert card["counts"]["pretrain_heldout"] == 2


def _files(directory):
  return {s: (directory / f"{s}.jsonl").read_bytes() for s in prompt_splits.SPLIT_FILES}


def test_deterministic_per_seed(tmp_path, hh_manual):
  for name, seed in (("a", 0), ("b", 0), ("c", 1)):
    prompt_splits.prepare_splits(_data(hh_manual, split_seed=seed), str(tmp_path / name))
  assert _files(tmp_path / "a") == _files(tmp_path / "b")
  a, c = _prompts(_read_all(tmp_path / "a")), _prompts(_read_all(tmp_path / "c"))
  assert a["sft"] != c["sft"] and a["eval_prompts"] == c["eval_prompts"]
  # The order the files list their rows in does not matter: only the prompts do.
  swapped = _hh_manual(tmp_path / "swapped")
  for split in ("train", "test"):
    paths = [swapped / s / f"{split}.jsonl.gz" for s in SUBSETS]
    rows = [gzip.open(p, "rt").read().splitlines()[::-1] for p in paths]
    for p, lines in zip(paths, rows):
      _write(p, [json.loads(line) for line in lines])
  prompt_splits.prepare_splits(_data(swapped), str(tmp_path / "d"))
  assert _prompts(_read_all(tmp_path / "d")) == a


def test_written_once_and_reused(tmp_path, hh_manual):
  directory = tmp_path / "data"
  card = prompt_splits.prepare_splits(_data(hh_manual), str(directory))
  before = _files(directory)
  # A rerun neither reads the published files nor rewrites the splits.
  for path in hh_manual.rglob("*.gz"):
    path.unlink()
  assert prompt_splits.prepare_splits(_data(hh_manual), str(directory)) == card
  assert _files(directory) == before
  # A reordered subsets tuple is the same data.
  assert prompt_splits.prepare_splits(_data(hh_manual, subsets=SUBSETS[::-1]),
                                      str(directory)) == card


def test_killed_run_is_remade(tmp_path, hh_manual):
  directory = tmp_path / "data"
  card = prompt_splits.prepare_splits(_data(hh_manual), str(directory))
  before = _files(directory)
  (directory / "sft.jsonl").write_text("half a li")
  with open(directory / prompt_splits.CARD, "w", encoding="utf-8") as f:
    json.dump({"config": card["config"], "complete": False}, f)
  assert prompt_splits.prepare_splits(_data(hh_manual), str(directory)) == card
  assert _files(directory) == before


def test_another_config_is_refused(tmp_path, hh_manual):
  directory = tmp_path / "data"
  prompt_splits.prepare_splits(_data(hh_manual), str(directory))
  before = _files(directory)
  with pytest.raises(DataError, match=re.escape(
      f"{directory} holds splits made by another config; changed fields data.split_fractions: "
      "[1, 2, 1] -> [1, 1, 1], data.split_seed: 0 -> 3. The models trained on them")):
    prompt_splits.prepare_splits(_data(hh_manual, split_seed=3, split_fractions=(1, 1, 1)),
                                 str(directory))
  with pytest.raises(DataError, match=r"changed fields data\.subsets: \['helpful-base', "
                     r"'harmless-base'\] -> \['helpful-base'\]\."):
    prompt_splits.prepare_splits(_data(hh_manual, subsets=("helpful-base",)), str(directory))
  assert _files(directory) == before


def test_split_files_without_a_card_are_not_overwritten(tmp_path, hh_manual):
  directory = tmp_path / "data"
  directory.mkdir()
  (directory / "sft.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
  with pytest.raises(DataError, match=re.escape(
      f"{directory} holds split files (sft) but no splits.json: they were not made by "
      "data.source='tfds'")):
    prompt_splits.prepare_splits(_data(hh_manual), str(directory))
  assert (directory / "sft.jsonl").read_text() == '{"prompt": "p", "response": "r"}\n'


def test_missing_file_prints_the_layout(tmp_path, hh_manual):
  (hh_manual / "harmless-base" / "test.jsonl.gz").unlink()
  with pytest.raises(DataError) as info:
    prompt_splits.prepare_splits(_data(hh_manual), str(tmp_path / "data"))
  assert str(info.value) == (
      f"config.data.manual_dir={str(hh_manual)!r} lacks harmless-base/test.jsonl.gz. "
      "Dataset 'hh_rlhf' expects:\n"
      f"  {hh_manual}/helpful-base/train.jsonl.gz\n"
      f"  {hh_manual}/helpful-base/test.jsonl.gz\n"
      f"  {hh_manual}/harmless-base/train.jsonl.gz\n"
      f"  {hh_manual}/harmless-base/test.jsonl.gz\n"
      "with the files from https://github.com/anthropics/hh-rlhf (keep the subset "
      "directories); set config.data.manual_dir to that directory")
  assert not (tmp_path / "data" / "sft.jsonl").exists()
  with pytest.raises(DataError, match=r"config\.data\.manual_dir='' is not set\. Dataset "
                     r"'hh_rlhf' expects:\n  <manual_dir>/helpful-base/train\.jsonl\.gz\n"):
    prompt_splits.prepare_splits(_data(""), str(tmp_path / "data"))
  with pytest.raises(DataError, match=r"manual_dir='/nonexistent' is not a directory\. "
                     r"Dataset 'jsonl_preferences' expects:\n  /nonexistent/train\.jsonl "
                     r"\(or train\.jsonl\.gz\)\n  /nonexistent/test\.jsonl \(or "):
    prompt_splits.prepare_splits(_data("/nonexistent", dataset="jsonl_preferences",
                                       subsets=()), str(tmp_path / "data"))


@pytest.mark.parametrize("overrides,message", [
    (dict(dataset="hh"), "config.data.dataset='hh' is not one of ('hh_rlhf', 'tldr', "
     "'jsonl_preferences')"),
    (dict(split_fractions=(13, 33, 0)), "config.data.split_fractions=(13, 33, 0): the "
     "fraction 0 for 'ppo_prompts' leaves that set empty; give it a positive share"),
    # 20 prompts: 1/81 of them rounds to none.
    (dict(split_fractions=(1, 40, 40)), "config.data.split_fractions=(1, 40, 40): the "
     "fraction 1 for 'sft' leaves that set empty with 20 distinct prompts in the train "
     "split; raise that fraction or use more data"),
    (dict(split_fractions=(1, 2)), "config.data.split_fractions=(1, 2) must be 3 "
     "non-negative numbers for ('sft', 'rm_train', 'ppo_prompts')"),
    (dict(split_seed=-1), "config.data.split_seed=-1 must be a non-negative int"),
    (dict(subsets=("helpful",)), "config.data.subsets=('helpful',) must name distinct "
     "HH-RLHF subsets"),
    (dict(subsets=()), "config.data.subsets=() must name distinct HH-RLHF subsets, at least "
     "one"),
    (dict(dataset="tldr"), "config.data.subsets=('helpful-base', 'harmless-base') applies to "
     "dataset 'hh_rlhf' only; set it to () for dataset 'tldr'"),
    (dict(pretrain_jsonl="/no/docs.jsonl"), "config.data.pretrain_jsonl='/no/docs.jsonl' is "
     "not a file"),
])
def test_bad_config_is_refused_before_anything_is_written(tmp_path, hh_manual, overrides,
                                                          message):
  with pytest.raises(DataError, match=re.escape(message)):
    prompt_splits.prepare_splits(_data(hh_manual, **overrides), str(tmp_path / "data"))
  assert not (tmp_path / "data" / prompt_splits.CARD).exists()


def test_absent_config_fields_are_named(tmp_path):
  data = ml_collections.ConfigDict(dict(source="tfds", dataset="tldr", skip_bad_rows=False))
  with pytest.raises(DataError, match=re.escape(
      "data.source='tfds' needs config.data.subsets (HH-RLHF subsets")) as info:
    prompt_splits.prepare_splits(data, str(tmp_path))
  assert "config.data.split_fractions (SFT : RM : PPO shares" in str(info.value)


def test_test_split_all_in_train_is_refused(tmp_path):
  manual = tmp_path / "manual"
  rows = [{"prompt": f"p{i}", "responses": ["a", "b"], "ranking": [1, 0]} for i in range(6)]
  _write(manual / "train.jsonl", rows)
  _write(manual / "test.jsonl", rows[:2])
  with pytest.raises(DataError, match=r"every prompt of the test split \(2 comparisons\) is "
                     "also in the train split"):
    prompt_splits.prepare_splits(_data(manual, dataset="jsonl_preferences", subsets=()),
                                 str(tmp_path / "data"))


def _comparison(post, split, choice=0, summary=" short."):
  return {"info": {"id": "t3_x", "post": post, "title": "T", "subreddit": "tifu"},
          "summaries": [{"text": summary, "policy": "ref", "note": None},
                        {"text": " long.", "policy": "sup2", "note": None}],
          "choice": choice, "worker": "w1", "batch": "batch3", "split": split,
          "extra": {"confidence": 7}}


def test_tldr_dataset_uses_valid2_for_evaluation(tmp_path):
  manual = tmp_path / "tldr"
  train = [_comparison(f"post {i % 6}", "train", choice=i % 2) for i in range(9)]
  _write(manual / "comparisons" / "batch3.json",
         train + [_comparison("post v1", "valid1"), _comparison("post v2", "valid2", 1, "")])
  directory = tmp_path / "data"
  card = prompt_splits.prepare_splits(
      _data(manual, dataset="tldr", subsets=(), split_fractions=(1, 1, 1)), str(directory))
  splits = _read_all(directory)
  assert card["prompts"] == {"sft": 2, "rm_train": 2, "ppo_prompts": 2, "eval_prompts": 1}
  prompt = "SUBREDDIT: r/tifu\nTITLE: T\nPOST: post v2\nTL;DR:"
  assert splits["eval_prompts"] == [PromptRecord(prompt)]
  # The empty summary (the preferred one) is an empty response.
  assert [(r.responses, r.ranking) for r in splits["rm_eval"]] == [(("", " long."), (1, 0))]
  assert card["bad_rows"] == {"tldr_comparisons/1.0.0": {"train": 0, "valid2": 0},
                              "pretrain_jsonl": 0, "heldout_jsonl": 0}


def test_tldr_demonstrations_from_the_sft_dir_leave_out_the_comparisons_posts(tmp_path):
  manual = tmp_path / "tldr"
  train = [_comparison(f"post {i % 6}", "train", choice=i % 2) for i in range(9)]
  _write(manual / "comparisons" / "batch3.json",
         train + [_comparison("post v1", "valid1"), _comparison("post v2", "valid2")])
  sft_dir = tmp_path / "tldr_sft"
  demos = [{"id": f"d{i}", "subreddit": "tifu", "title": "T", "post": post,
            "summary": f" s{i}"} for i, post in enumerate(["mine 0", "post 3", "mine 1",
                                                           "post v2", "mine 2"])]
  _write(sft_dir / "train.jsonl", demos)
  directory = tmp_path / "data"
  card = prompt_splits.prepare_splits(
      _data(manual, dataset="tldr", subsets=(), split_fractions=(0, 1, 1),
            sft_manual_dir=str(sft_dir)), str(directory))
  splits = _read_all(directory)
  prompt = "SUBREDDIT: r/tifu\nTITLE: T\nPOST: {}\nTL;DR:".format
  # "post 3" is an RM / PPO prompt and "post v2" an evaluation prompt: both left out.
  # (in the builder's order, not the file's)
  assert sorted(splits["sft"], key=lambda r: r.prompt) == [
      SftRecord(prompt(f"mine {i}"), f" s{2 * i}") for i in range(3)]
  assert card["demonstrations_left_out"] == 2
  assert card["prompts"] == {"sft": 3, "rm_train": 3, "ppo_prompts": 3, "eval_prompts": 1}
  assert card["bad_rows"]["sft_manual_dir"] == {"train": 0}


@pytest.mark.parametrize("overrides, message", [
    (dict(split_fractions=(1, 1, 1)), "config.data.split_fractions=(1, 1, 1): "
     "config.data.sft_manual_dir gives the demonstrations, so no comparison prompt goes to "
     "'sft'; set its fraction to 0, e.g. (0, 1, 1)"),
    (dict(dataset="hh_rlhf", subsets=SUBSETS), "holds TL;DR demonstrations, but "
     "config.data.dataset='hh_rlhf'"),
    (dict(sft_manual_dir="/no/such/dir"), "config.data.sft_manual_dir='/no/such/dir' lacks "
     "train.jsonl. Copy train.jsonl"),
])
def test_bad_sft_dir_settings_are_refused(tmp_path, overrides, message):
  sft_dir = tmp_path / "tldr_sft"
  _write(sft_dir / "train.jsonl", [])
  data = _data(tmp_path / "tldr", dataset="tldr", subsets=(), split_fractions=(0, 1, 1),
               sft_manual_dir=str(sft_dir))
  data.update(overrides)
  with pytest.raises(DataError, match=re.escape(message)):
    prompt_splits.prepare_splits(data, str(tmp_path / "data"))


def _tokenizer(directory):
  """A word-level tokenizer saved in HF format (unknown words are <unk>: only ids matter)."""
  vocab = {w: i for i, w in enumerate("<unk> <eos> Human Assistant : yes no".split())}
  model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  transformers.PreTrainedTokenizerFast(tokenizer_object=model, unk_token="<unk>",
                                       eos_token="<eos>").save_pretrained(directory)
  return str(directory)


def test_load_data_reads_tfds_splits_like_jsonl(tmp_path, hh_manual):
  tokenizer = _tokenizer(tmp_path / "tok")
  config = ml_collections.ConfigDict({"data": _data(hh_manual, tokenizer=tokenizer),
                                      "model": {"vocab_size": 8}})
  run_dir = tmp_path / "run"
  data = sources.load_data(config, str(run_dir))
  assert data.directory == str(run_dir / "data") and data.testbed is None
  assert (run_dir / "data" / "splits.json").exists() and (run_dir / "data" / "tfds").is_dir()
  sft = data.read("sft")
  assert all(isinstance(r, SftRecord) for r in sft) and len(data.read("eval_prompts")) == 6
  assert {split: len(data.read(split)) for split in sources.SPLITS} == json.loads(
      (run_dir / "data" / "splits.json").read_text())["counts"]
  config.data.dir = str(tmp_path / "shared")
  assert sources.load_data(config, str(run_dir)).directory == str(tmp_path / "shared")
