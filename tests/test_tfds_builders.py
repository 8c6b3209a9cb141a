"""TFDS builders prepared from manual dirs of published-schema files, read without TF."""

from __future__ import annotations

import gzip
import json

import pytest
import tensorflow_datasets as tfds

from instructjax.data import tfds_builders
from instructjax.data.records import DataError, RankingRecord, SftRecord
from instructjax.data.tfds_builders import (HhRlhf, JsonlPreferences, RecordSource,
                                            TldrComparisons, TldrSft)


def _write(path, rows, raw_lines=()):
  path.parent.mkdir(parents=True, exist_ok=True)
  text = "".join(json.dumps(r) + "\n" for r in rows) + "".join(l + "\n" for l in raw_lines)
  if str(path).endswith(".gz"):
    with gzip.open(path, "wt", encoding="utf-8") as f:
      f.write(text)
  else:
    path.write_text(text)


def _prepare(builder, manual_dir):
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return {split: list(RecordSource(source))
          for split, source in builder.as_data_source().items()}


def _hh(question, chosen, rejected):
  prompt = f"\n\nHuman: {question}\n\nAssistant:"
  return {"chosen": prompt + chosen, "rejected": prompt + rejected}


@pytest.fixture
def hh_manual(tmp_path):
  manual = tmp_path / "manual"
  _write(manual / "helpful-base" / "train.jsonl.gz",
         [_hh("Hi", " Hello!", " Go away."), _hh("2+2?", " 4", " 5")])
  _write(manual / "helpful-base" / "test.jsonl.gz", [_hh("Name a color", " Red.", " No.")])
  return manual


def test_hh_rlhf_builder(tmp_path, hh_manual):
  builder = HhRlhf(config="helpful-base", data_dir=str(tmp_path / "data"))
  splits = _prepare(builder, hh_manual)
  assert splits["train"] == [
      RankingRecord("\n\nHuman: Hi\n\nAssistant:", (" Hello!", " Go away."), (0, 1)),
      RankingRecord("\n\nHuman: 2+2?\n\nAssistant:", (" 4", " 5"), (0, 1))]
  assert splits["test"] == [
      RankingRecord("\n\nHuman: Name a color\n\nAssistant:", (" Red.", " No."), (0, 1))]
  assert builder.info.metadata["bad_rows"] == {"train": 0, "test": 0}


def test_data_source_by_name(tmp_path, hh_manual):
  sources = tfds.data_source(
      "hh_rlhf/helpful-base", data_dir=str(tmp_path / "data"),
      download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(
          manual_dir=str(hh_manual))})
  train = RecordSource(sources["train"])
  assert len(train) == 2
  assert train[1] == RankingRecord("\n\nHuman: 2+2?\n\nAssistant:", (" 4", " 5"), (0, 1))
  assert train[:1] == [train[0]] and train[-1] == train[1]
  assert tfds_builders.read_all(sources["train"], chunk=1) == list(train)
  with pytest.raises(IndexError):
    train[2]  # pylint: disable=pointless-statement


def test_hh_rlhf_empty_replies_build(tmp_path, hh_manual):
  """harmless-base/test.jsonl.gz has pairs whose preferred reply is empty: they build."""
  _write(hh_manual / "helpful-base" / "test.jsonl.gz",
         [_hh("Insult me", "", " You fool."), _hh("Hi", " Hello!", "")])
  builder = HhRlhf(config="helpful-base", data_dir=str(tmp_path / "data"))
  splits = _prepare(builder, hh_manual)
  assert sorted(splits["test"], key=lambda r: r.prompt) == [
      RankingRecord("\n\nHuman: Hi\n\nAssistant:", (" Hello!", ""), (0, 1)),
      RankingRecord("\n\nHuman: Insult me\n\nAssistant:", ("", " You fool."), (0, 1))]
  assert builder.info.metadata["bad_rows"] == {"train": 0, "test": 0}


def test_hh_rlhf_bad_rows_strict_and_skipped(tmp_path, hh_manual):
  _write(hh_manual / "helpful-base" / "train.jsonl.gz", [_hh("Hi", " Hello!", " Go.")],
         raw_lines=["{not json", json.dumps({"chosen": "\n\nHuman: Hi\n\nAssistant: a"})])
  with pytest.raises(DataError, match=r"train\.jsonl\.gz:2: "):
    HhRlhf(config="helpful-base", data_dir=str(tmp_path / "strict")).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(hh_manual)))
  builder = HhRlhf(config="helpful-base", data_dir=str(tmp_path / "data"), skip_bad_rows=True)
  splits = _prepare(builder, hh_manual)
  assert len(splits["train"]) == 1
  assert builder.info.metadata["bad_rows"] == {"train": 2, "test": 0}
  # The counts are stored with the dataset, so a reloaded builder reports them too.
  reloaded = tfds.builder("hh_rlhf/helpful-base", data_dir=str(tmp_path / "data"))
  assert reloaded.info.metadata["bad_rows"] == {"train": 2, "test": 0}


def test_hh_rlhf_missing_file(tmp_path, hh_manual):
  (hh_manual / "helpful-base" / "test.jsonl.gz").unlink()
  with pytest.raises(DataError, match=r"missing .*helpful-base/test\.jsonl\.gz"):
    HhRlhf(config="helpful-base", data_dir=str(tmp_path / "data")).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(hh_manual)))


def _comparison(choice, split, post):
  return {"info": {"id": "t3_x", "post": post, "title": "T", "subreddit": "tifu"},
          "summaries": [{"text": " first.", "policy": "ref", "note": None},
                        {"text": " second.", "policy": "sup2", "note": None}],
          "choice": choice, "worker": "w1", "batch": "batch3", "split": split,
          "extra": {"confidence": 7}}


def test_tldr_comparisons_builder(tmp_path):
  manual = tmp_path / "manual"
  _write(manual / "comparisons" / "batch3.json",
         [_comparison(1, "train", "a"), _comparison(0, "valid1", "b")])
  _write(manual / "comparisons" / "batch10.json",
         [_comparison(0, "train", "c"), _comparison(1, "valid2", "d")])
  _write(manual / "comparisons" / "cnndm1.json", [{"not": "read"}])
  splits = _prepare(TldrComparisons(data_dir=str(tmp_path / "data")), manual)
  assert {s: len(r) for s, r in splits.items()} == {"train": 2, "valid1": 1, "valid2": 1}
  record = splits["valid2"][0]
  assert record.prompt == "SUBREDDIT: r/tifu\nTITLE: T\nPOST: d\nTL;DR:"
  assert record.responses == (" first.", " second.") and record.ranking == (1, 0)
  assert record.labeler >= 0


def test_tldr_sft_builder(tmp_path):
  manual = tmp_path / "manual"
  row = {"id": "t3_1", "subreddit": "tifu", "title": "T", "post": "P", "summary": " S"}
  _write(manual / "train.jsonl", [row, row])
  _write(manual / "valid.jsonl", [{**row, "summary": "V"}])
  splits = _prepare(TldrSft(data_dir=str(tmp_path / "data")), manual)
  assert set(splits) == {"train", "validation"}
  prompt = "SUBREDDIT: r/tifu\nTITLE: T\nPOST: P\nTL;DR:"
  assert splits["train"] == [SftRecord(prompt, " S")] * 2
  assert splits["validation"] == [SftRecord(prompt, " V")]


def test_jsonl_preferences_builder(tmp_path):
  manual = tmp_path / "manual"
  train = [{"prompt": "p1", "responses": ["a", "b", "c", "d"], "ranking": [3, 1, 0, 2],
            "labeler": 4},
           {"prompt": "p2", "responses": ["x", "y"], "ranking": [1, 0]}]
  _write(manual / "train.jsonl", train)
  _write(manual / "test.jsonl.gz", train[1:])
  splits = _prepare(JsonlPreferences(data_dir=str(tmp_path / "data")), manual)
  assert splits["train"] == [RankingRecord("p1", ("a", "b", "c", "d"), (3, 1, 0, 2), labeler=4),
                             RankingRecord("p2", ("x", "y"), (1, 0))]
  assert splits["test"] == splits["train"][1:]
  assert "validation" not in splits


def test_jsonl_preferences_needs_train(tmp_path):
  manual = tmp_path / "manual"
  _write(manual / "test.jsonl", [{"prompt": "p", "responses": ["x", "y"], "ranking": [1, 0]}])
  with pytest.raises(DataError, match=r"missing .*train\.jsonl"):
    JsonlPreferences(data_dir=str(tmp_path / "data")).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))


def test_manual_instructions_name_the_files():
  assert "train.jsonl.gz" in HhRlhf.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert "comparisons/batch*.json" in TldrComparisons.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert "tldr_3_filtered" in TldrSft.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert tfds_builders.record_from_example(
      {"prompt": b"p", "response": b"r"}) == SftRecord("p", "r")


def test_read_manual_dataset_counts_bad_rows(tmp_path, hh_manual):
  _write(hh_manual / "harmless-base" / "train.jsonl.gz", [_hh("Go", "", " No.")],
         raw_lines=["[1, 2]"])
  _write(hh_manual / "harmless-base" / "test.jsonl.gz", [_hh("Stop", " Ok.", " No.")])
  splits = tfds_builders.read_manual_dataset(
      "hh_rlhf", manual_dir=str(hh_manual), data_dir=str(tmp_path / "data"),
      subsets=("helpful-base", "harmless-base"), skip_bad_rows=True)
  assert len(splits.train) == 3 and len(splits.test) == 2
  assert RankingRecord("\n\nHuman: Go\n\nAssistant:", ("", " No."), (0, 1)) in splits.train
  assert splits.bad_rows == {"hh_rlhf/helpful-base/1.0.0": {"train": 0, "test": 0},
                             "hh_rlhf/harmless-base/1.0.0": {"train": 1, "test": 0}}


def test_check_manual_dir_accepts_either_name(tmp_path):
  manual = tmp_path / "manual"
  _write(manual / "train.jsonl.gz", [{"prompt": "p", "responses": ["x", "y"], "ranking": [1, 0]}])
  with pytest.raises(DataError, match=r"lacks test\.jsonl\. Dataset 'jsonl_preferences'"):
    tfds_builders.check_manual_dir("jsonl_preferences", str(manual))
  _write(manual / "test.jsonl", [{"prompt": "q", "responses": ["x", "y"], "ranking": [1, 0]}])
  tfds_builders.check_manual_dir("jsonl_preferences", str(manual))
  with pytest.raises(DataError, match=r"lacks comparisons/batch\*\.json\. Dataset 'tldr'"):
    tfds_builders.check_manual_dir("tldr", str(manual))
