"""Generic JSONL records, HH-RLHF and TL;DR readers on hand-written fixture files."""

from __future__ import annotations

import gzip
import json
import re
import zlib

import pytest

from instructjax.data import hh_rlhf, tldr
from instructjax.data.records import (DataError, PromptRecord, RankingRecord, SftRecord,
                                      TextRecord, prompts_of, read_jsonl, sft_from_rankings,
                                      write_jsonl)


def _write_lines(path, lines):
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wt", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in lines))
  return path


# --- generic records ---------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_generic_records_round_trip(tmp_path, suffix):
  cases = {
      "sft": [SftRecord("Say hi.", " Hi!"), SftRecord("2+2?", " 4"),
              SftRecord("Say nothing.", "")],  # an empty response is a demonstration
      "ranking": [RankingRecord("Q", ("a", "b", "c"), (2, 0, 1), labeler=7),
                  RankingRecord("R", ["x", "y"], [1, 0]), RankingRecord("S", ("", " "), (0, 1))],
      "prompt": [PromptRecord("Tell me a joke.")],
      "text": [TextRecord("Once upon a time.")],
  }
  for kind, records in cases.items():
    path = tmp_path / f"{kind}{suffix}"
    write_jsonl(path, records)
    result = read_jsonl(path, kind)
    assert result.records == records
    assert result.num_bad_rows == 0
  # Written in the documented schema: labeler only when known.
  lines = gzip.open(tmp_path / f"ranking{suffix}", "rt").read() if suffix.endswith(".gz") \
      else (tmp_path / f"ranking{suffix}").read_text()
  rows = [json.loads(line) for line in lines.splitlines()]
  assert rows[0] == {"prompt": "Q", "responses": ["a", "b", "c"], "ranking": [2, 0, 1],
                     "labeler": 7}
  assert "labeler" not in rows[1]


def test_ranked_responses_best_first():
  record = RankingRecord("Q", ("a", "b", "c"), (2, 0, 1))
  assert record.ranked_responses == ("c", "a", "b")
  assert sft_from_rankings([record]) == [SftRecord("Q", "c")]
  assert prompts_of([record, SftRecord("P", "r")]) == [PromptRecord("Q"), PromptRecord("P")]


_GOOD = {"sft": '{"prompt": "p", "response": "r"}',
         "ranking": '{"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}',
         "text": '{"text": "t"}', "prompt": '{"prompt": "p"}'}

_BAD_ROWS = [
    ("sft", '{"prompt": "p", "response": "r"', "Expecting"),  # malformed JSON
    ("sft", '["p", "r"]', "expected a JSON object, got list"),
    ("sft", '{"prompt": "p"}', "missing field(s) ['response']"),
    ("sft", '{"prompt": "p", "response": 3}', "field 'response' must be a string, got int"),
    ("sft", '{"prompt": "", "response": "r"}', "field 'prompt' is empty"),
    ("sft", '{"prompt": "  \\n ", "response": ""}', "field 'prompt' is empty"),
    ("prompt", '{"prompt": null}', "field 'prompt' must be a string, got NoneType"),
    ("text", '{"txt": "t"}', "missing field(s) ['text']"),
    ("ranking", '{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}',
     "not a permutation of range(2)"),
    ("ranking", '{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1, 2]}',
     "not a permutation of range(2)"),
    ("ranking", '{"prompt": "p", "responses": ["a", "b"], "ranking": [0.0, 1]}',
     "must hold integers"),
    ("ranking", '{"prompt": "p", "responses": ["a"], "ranking": [0]}', "K >= 2"),
    ("ranking", '{"prompt": "p", "responses": "ab", "ranking": [0, 1]}',
     "field 'responses' must be a list, got str"),
    ("ranking", '{"prompt": " ", "responses": ["a", ""], "ranking": [0, 1]}',
     "field 'prompt' is empty"),
    ("ranking", '{"prompt": "p", "responses": ["a", null], "ranking": [0, 1]}',
     "field 'responses[1]' must be a string, got NoneType"),
    ("text", '{"text": ""}', "field 'text' is empty"),
    ("ranking", '{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1], "labeler": true}',
     "field 'labeler'"),
]


@pytest.mark.parametrize("kind,line,problem", _BAD_ROWS)
def test_bad_row_names_file_and_line(tmp_path, kind, line, problem):
  # Line 2 is blank (ignored), so the bad row is on line 3.
  path = _write_lines(tmp_path / "data.jsonl", [_GOOD[kind], "", line, _GOOD[kind]])
  with pytest.raises(DataError) as info:
    read_jsonl(path, kind)
  assert str(info.value).startswith(f"{path}:3: ")
  assert problem in str(info.value)


def test_bad_utf8_names_file_and_line(tmp_path):
  path = tmp_path / "data.jsonl"
  path.write_bytes(_GOOD["text"].encode() + b'\n{"text": "\xff"}\n')
  with pytest.raises(DataError, match=re.escape(f"{path}:2: ")):
    read_jsonl(path, "text")


def test_skip_bad_rows_counts_them(tmp_path):
  lines = [_GOOD["sft"], "{broken", '{"prompt": "p"}', _GOOD["sft"],
           '{"prompt": " ", "response": "r"}']
  path = _write_lines(tmp_path / "data.jsonl.gz", lines)
  result = read_jsonl(path, "sft", skip_bad_rows=True)
  assert result.records == [SftRecord("p", "r")] * 2
  assert result.num_bad_rows == 3
  assert [m.split(": ")[0] for m in result.bad_rows] == [f"{path}:{n}" for n in (2, 3, 5)]


def test_empty_dataset(tmp_path):
  empty = _write_lines(tmp_path / "empty.jsonl", [])
  with pytest.raises(DataError, match=re.escape(f"{empty}: empty dataset")):
    read_jsonl(empty, "sft")
  blank = _write_lines(tmp_path / "blank.jsonl.gz", ["", "  "])
  with pytest.raises(DataError, match=re.escape(f"{blank}: empty dataset")):
    read_jsonl(blank, "sft")
  all_bad = _write_lines(tmp_path / "bad.jsonl", ["{", "{"])
  with pytest.raises(DataError, match=r"empty dataset, no records \(2 bad rows skipped\)"):
    read_jsonl(all_bad, "sft", skip_bad_rows=True)


def test_truncated_gz_names_file_and_line(tmp_path):
  path = tmp_path / "data.jsonl.gz"
  write_jsonl(path, [SftRecord(f"prompt {i} " * 5, f"response {i} " * 5) for i in range(300)])
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  for skip in (False, True):  # a truncated file is never a skippable row
    with pytest.raises(DataError) as info:
      read_jsonl(path, "sft", skip_bad_rows=skip)
    match = re.match(rf"{re.escape(str(path))}:(\d+): file is truncated or corrupt",
                     str(info.value))
    assert match and 1 < int(match.group(1)) < 300


def test_not_gzip_names_file(tmp_path):
  path = tmp_path / "data.jsonl.gz"
  path.write_text(_GOOD["sft"] + "\n")
  with pytest.raises(DataError, match=re.escape(f"{path}:1: file is truncated or corrupt")):
    read_jsonl(path, "sft")


def test_unknown_kind():
  with pytest.raises(ValueError, match="kind='pairs' is not one of"):
    read_jsonl("unused.jsonl", "pairs")


# --- HH-RLHF -------------------------------------------------------------------------

_HH_PROMPT = ("\n\nHuman: What is a good name for a cat?\n\nAssistant: How about Whiskers?"
              "\n\nHuman: Something shorter.\n\nAssistant:")


def test_hh_rlhf_shared_prefix(tmp_path):
  rows = [
      # Multi-turn; responses share their first words, which stay in the responses.
      {"chosen": _HH_PROMPT + " Try Tom.", "rejected": _HH_PROMPT + " Try nothing, cats are bad."},
      # Single turn.
      {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?",
       "rejected": "\n\nHuman: Hi\n\nAssistant: What."},
  ]
  path = _write_lines(tmp_path / "train.jsonl.gz", [json.dumps(r) for r in rows])
  result = hh_rlhf.read_hh_rlhf(path)
  assert result.records == [
      RankingRecord(_HH_PROMPT, (" Try Tom.", " Try nothing, cats are bad."), (0, 1)),
      RankingRecord("\n\nHuman: Hi\n\nAssistant:", (" Hello! How can I help?", " What."), (0, 1)),
  ]
  assert sft_from_rankings(result.records)[0] == SftRecord(_HH_PROMPT, " Try Tom.")


def test_hh_rlhf_empty_replies_build(tmp_path):
  """Like harmless-base/test.jsonl.gz line 87: the preferred reply is to say nothing."""
  single = "\n\nHuman: How do I pick a lock?\n\nAssistant:"
  rows = [{"chosen": single, "rejected": single + " Use a tension wrench."},
          {"chosen": _HH_PROMPT + " Tom.", "rejected": _HH_PROMPT},
          {"chosen": single + " ", "rejected": single + " Sure."}]  # a lone space
  path = _write_lines(tmp_path / "test.jsonl.gz", [json.dumps(r) for r in rows])
  result = hh_rlhf.read_hh_rlhf(path)
  assert result.records == [
      RankingRecord(single, ("", " Use a tension wrench."), (0, 1)),
      RankingRecord(_HH_PROMPT, (" Tom.", ""), (0, 1)),
      RankingRecord(single, (" ", " Sure."), (0, 1)),
  ]
  assert result.num_bad_rows == 0
  assert sft_from_rankings(result.records) == [
      SftRecord(single, ""), SftRecord(_HH_PROMPT, " Tom."), SftRecord(single, " ")]


def test_hh_rlhf_pairs_differing_before_the_last_turn_build(tmp_path):
  """Each response is the rest of its conversation: prompt + response is the published
  conversation, and the preference between the two whole conversations is kept."""
  chosen = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d"
  rejected = "\n\nHuman: a\n\nAssistant: x\n\nHuman: y\n\nAssistant:"
  path = _write_lines(tmp_path / "train.jsonl.gz", [json.dumps({"chosen": chosen,
                                                                "rejected": rejected})])
  (record,) = hh_rlhf.read_hh_rlhf(path).records
  assert record == RankingRecord("\n\nHuman: a\n\nAssistant:", (
      " b\n\nHuman: c\n\nAssistant: d", " x\n\nHuman: y\n\nAssistant:"), (0, 1))
  assert [record.prompt + r for r in record.responses] == [chosen, rejected]


@pytest.mark.parametrize("line,problem", [
    ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": ', "Expecting value"),
    ('["\\n\\nHuman: a"]', "expected a JSON object, got list"),
    # They differ in the first human turn: no prompt the two answer.
    ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", '
     '"rejected": "\\n\\nHuman: z\\n\\nAssistant: b"}', "share no '\\n\\nAssistant:' turn"),
    ('{"chosen": "Human: a", "rejected": "Human: b"}', "share no '\\n\\nAssistant:' turn"),
    ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b"}', "missing field 'rejected'"),
    ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": ["x"]}',
     "field 'rejected' must be a string, got list"),
    ('{"chosen": null, "rejected": "\\n\\nHuman: a\\n\\nAssistant: b"}',
     "field 'chosen' must be a string, got NoneType"),
])
def test_hh_rlhf_bad_rows(tmp_path, line, problem):
  good = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}
  path = _write_lines(tmp_path / "test.jsonl.gz", [json.dumps(good), line])
  with pytest.raises(DataError) as info:
    hh_rlhf.read_hh_rlhf(path)
  assert str(info.value).startswith(f"{path}:2: ") and problem in str(info.value)
  assert hh_rlhf.read_hh_rlhf(path, skip_bad_rows=True).num_bad_rows == 1


def test_hh_rlhf_every_good_row_builds_and_bad_ones_are_counted(tmp_path):
  """A published-size file: 90 pairs, an empty chosen reply on line 87 (where the old
  reader stopped on harmless-base/test.jsonl.gz), and two malformed lines."""
  rows = [{"chosen": f"\n\nHuman: q{i}\n\nAssistant: yes", "rejected":
           f"\n\nHuman: q{i}\n\nAssistant: no"} for i in range(90)]
  rows[86]["chosen"] = "\n\nHuman: q86\n\nAssistant:"
  lines = [json.dumps(r) for r in rows]
  lines[40], lines[60] = "{cut sho", json.dumps({"chosen": "\n\nHuman: q60"})
  path = _write_lines(tmp_path / "test.jsonl.gz", lines)
  with pytest.raises(DataError, match=re.escape(f"{path}:41: ")):
    hh_rlhf.read_hh_rlhf(path)
  result = hh_rlhf.read_hh_rlhf(path, skip_bad_rows=True)
  assert len(result.records) == 88
  assert [m.split(": ")[0] for m in result.bad_rows] == [f"{path}:41", f"{path}:61"]
  assert result.records[-4] == RankingRecord("\n\nHuman: q86\n\nAssistant:", ("", " no"),
                                             (0, 1))


# --- TL;DR ---------------------------------------------------------------------------

def _comparison(choice, split="train", worker="ikNmucwunMnYJCQpnq6ZYb57OW7NiD", post="My car."):
  """A line in the published comparisons schema (README of summarize-from-feedback)."""
  return {
      "info": {"id": "t3_2vwp1w", "post": post, "title": "Car accident?",
               "subreddit": "legaladvice"},
      "summaries": [{"text": " car hit me.", "policy": "sup4_ppo_rm3_kl10", "note": None},
                    {"text": " other driver was speeding.", "policy": "ref", "note": "ok"}],
      "choice": choice, "worker": worker, "batch": "batch9", "split": split,
      "extra": {"confidence": 8},
  }


_TLDR_PROMPT = "SUBREDDIT: r/legaladvice\nTITLE: Car accident?\nPOST: My car.\nTL;DR:"


def test_tldr_comparisons(tmp_path):
  lines = [_comparison(1), _comparison(0, worker="qo6WIyEh27cwAjWpA3Q60J7NaDxzQJ"),
           _comparison(0, split="valid2")]
  path = _write_lines(tmp_path / "batch9.json", [json.dumps(c) for c in lines])
  result = tldr.read_tldr_comparisons(path)
  responses = (" car hit me.", " other driver was speeding.")
  first, second, third = result.records
  assert first == RankingRecord(_TLDR_PROMPT, responses, (1, 0), labeler=first.labeler)
  assert first.ranked_responses[0] == " other driver was speeding."
  assert second.ranking == (0, 1) and third.ranking == (0, 1)
  # Labeler ids: stable per worker (crc32), distinct for different workers.
  assert first.labeler == zlib.crc32(b"ikNmucwunMnYJCQpnq6ZYb57OW7NiD") & 0x7FFFFFFF
  assert first.labeler == third.labeler != second.labeler
  assert len(tldr.read_tldr_comparisons(path, split="train").records) == 2
  assert tldr.read_tldr_comparisons(path, split="valid2").records == [third]
  with pytest.raises(DataError, match="empty dataset"):
    tldr.read_tldr_comparisons(path, split="valid1")


@pytest.mark.parametrize("change,problem", [
    (lambda c: c.update(choice=2), "field 'choice'=2 must be 0 or 1"),
    (lambda c: c.update(choice=True), "field 'choice' must be of type int, got bool"),
    (lambda c: c["info"].pop("post"), "missing field 'info.post'"),
    (lambda c: c.update(info=[]), "field 'info' must be of type dict, got list"),
    (lambda c: c["summaries"].pop(), "must hold 2 summaries, got 1"),
    (lambda c: c["summaries"][1].update(text=7),
     "field 'summaries[1].text' must be of type str, got int"),
    (lambda c: c["summaries"][0].pop("text"), "missing field 'summaries[0].text'"),
    (lambda c: c.update(split="test"), "field 'split'='test' is not one of"),
    (lambda c: c.pop("worker"), "missing field 'worker'"),
])
def test_tldr_comparison_bad_rows(tmp_path, change, problem):
  bad = _comparison(0)
  change(bad)
  path = _write_lines(tmp_path / "batch3.json", [json.dumps(_comparison(1)), json.dumps(bad)])
  with pytest.raises(DataError) as info:
    tldr.read_tldr_comparisons(path)
  assert str(info.value).startswith(f"{path}:2: ") and problem in str(info.value)


def test_tldr_empty_summaries_build(tmp_path):
  """A blank summary is an empty response (its target EOS alone), in either position."""
  chosen_blank, rejected_blank = _comparison(0), _comparison(0)
  chosen_blank["summaries"][0]["text"] = " "
  rejected_blank["summaries"][1]["text"] = ""
  path = _write_lines(tmp_path / "batch5.json",
                      [json.dumps(chosen_blank), json.dumps(rejected_blank)])
  first, second = tldr.read_tldr_comparisons(path).records
  assert (first.responses, first.ranking) == (("", " other driver was speeding."), (0, 1))
  assert (second.responses, second.ranking) == ((" car hit me.", ""), (0, 1))
  assert sft_from_rankings([first]) == [SftRecord(_TLDR_PROMPT, "")]


def test_tldr_sft(tmp_path):
  row = {"id": "t3_1", "subreddit": "legaladvice", "title": "Car accident?", "post": "My car.",
         "summary": " I crashed. "}
  lines = [json.dumps(row), json.dumps({**row, "summary": ""}),
           json.dumps({k: v for k, v in row.items() if k != "summary"})]
  path = _write_lines(tmp_path / "train.jsonl", lines)
  with pytest.raises(DataError, match=re.escape(f"{path}:3: missing field 'summary'")):
    tldr.read_tldr_sft(path)
  result = tldr.read_tldr_sft(path, skip_bad_rows=True)
  assert result.records == [SftRecord(_TLDR_PROMPT, " I crashed."), SftRecord(_TLDR_PROMPT, "")]
  assert result.num_bad_rows == 1
