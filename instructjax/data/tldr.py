"""OpenAI summarize-from-feedback TL;DR data -> common records.

Two published formats, both JSON lines:
  * comparisons (`comparisons/batch*.json`): {"info": {"id", "post", "title",
    "subreddit"}, "summaries": [{"text", "policy", "note"}, {...}], "choice": 0 or 1,
    "worker": str, "batch": str, "split": "train" | "valid1" | "valid2", "extra": {...}}
    -> RankingRecord with K=2, the chosen summary first;
  * the filtered TL;DR SFT set (`train.jsonl`, `valid.jsonl`, `test.jsonl`):
    {"id", "subreddit", "title", "post", "summary"} -> SftRecord.
The prompt is "SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:" and the
response " " + summary. Published summaries already start with a space, so the summary is
stripped first: every response starts with exactly one space, except that an empty (or
blank) summary is an empty response, whose target is EOS alone. Only malformed rows
are errors: not JSON, a missing or ill-typed field, a choice or split out of range.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from instructjax.data.records import (PathLike, RankingRecord, ReadResult, SftRecord,
                                      read_rows)

COMPARISON_SPLITS = ("train", "valid1", "valid2")


def format_prompt(*, subreddit: str, title: str, post: str) -> str:
  return f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"


def format_response(summary: str) -> str:
  """The stripped summary after one space; "" for a blank one (no lone space as target)."""
  summary = summary.strip()
  return " " + summary if summary else ""


def labeler_id(worker: str) -> int:
  """A stable non-negative int32 id for a worker string (the same in every file)."""
  return zlib.crc32(worker.encode("utf-8")) & 0x7FFFFFFF


def _field(obj: Any, name: str, kind: type, parent: str = "") -> Any:
  """obj[name], checked to be a `kind`; `parent` ("info.") locates obj in its line."""
  if not isinstance(obj, dict):
    where = f" at '{parent[:-1]}'" if parent else ""
    raise ValueError(f"expected a JSON object{where}, got {type(obj).__name__}")
  if name not in obj:
    raise ValueError(f"missing field '{parent}{name}'")
  value = obj[name]
  if isinstance(value, bool) or not isinstance(value, kind):
    raise ValueError(f"field '{parent}{name}' must be of type {kind.__name__}, "
                     f"got {type(value).__name__}")
  return value


def _prompt(obj: dict[str, Any], parent: str = "") -> str:
  return format_prompt(**{name: _field(obj, name, str, parent)
                          for name in ("subreddit", "title", "post")})


def comparison_to_ranking(obj: Any, *, split: str | None = None) -> RankingRecord | None:
  """One decoded comparison line -> RankingRecord, or None if it is not in `split`."""
  row_split = _field(obj, "split", str)
  if row_split not in COMPARISON_SPLITS:
    raise ValueError(f"field 'split'={row_split!r} is not one of {COMPARISON_SPLITS}")
  if split is not None and row_split != split:
    return None
  prompt = _prompt(_field(obj, "info", dict), "info.")
  summaries = _field(obj, "summaries", list)
  if len(summaries) != 2:
    raise ValueError(f"field 'summaries' must hold 2 summaries, got {len(summaries)}")
  texts = [format_response(_field(s, "text", str, f"summaries[{i}]."))
           for i, s in enumerate(summaries)]
  choice = _field(obj, "choice", int)
  if choice not in (0, 1):
    raise ValueError(f"field 'choice'={choice} must be 0 or 1")
  return RankingRecord(prompt, tuple(texts), (choice, 1 - choice),
                       labeler=labeler_id(_field(obj, "worker", str)))


def sft_row_to_record(obj: Any) -> SftRecord:
  """One decoded TL;DR SFT line -> SftRecord."""
  return SftRecord(_prompt(obj), format_response(_field(obj, "summary", str)))


def read_tldr_comparisons(paths: PathLike | Sequence[PathLike], *, split: str | None = None,
                          skip_bad_rows: bool = False) -> ReadResult:
  """Ranking records of comparison files, optionally only those of one `split`."""
  if split is not None and split not in COMPARISON_SPLITS:
    raise ValueError(f"split={split!r} is not one of {COMPARISON_SPLITS}")
  return read_rows(paths, lambda obj: comparison_to_ranking(obj, split=split),
                   skip_bad_rows=skip_bad_rows)


def read_tldr_sft(paths: PathLike | Sequence[PathLike], *,
                  skip_bad_rows: bool = False) -> ReadResult:
  """SFT records of TL;DR `train.jsonl` / `valid.jsonl` / `test.jsonl` files."""
  return read_rows(paths, sft_row_to_record, skip_bad_rows=skip_bad_rows)
