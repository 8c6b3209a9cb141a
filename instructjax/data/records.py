"""The common record schema (generic JSON lines) and a strict reader for it.

One JSON object per line, in one of four kinds:
  "sft":     {"prompt": str, "response": str}
  "ranking": {"prompt": str, "responses": [str, ...], "ranking": [int, ...],
              "labeler": int (optional)}
             K = len(responses) >= 2; `ranking` is a permutation of range(K) listing
             response indices BEST FIRST.
  "prompt":  {"prompt": str}                      (RL prompts)
  "text":    {"text": str}                        (pretraining documents)
Unknown extra fields are ignored. Files may be plain or gzip-compressed (`.gz`).
Prompts and texts must hold more than whitespace; responses may be empty, since an empty
reply can be the preferred one (HH-RLHF has such comparisons: the harmless answer is to
say nothing) and a demonstration of it then teaches the model to stop at once.

Bad input never passes silently: every problem raises `DataError` naming the file and
line, unless `skip_bad_rows=True`, which drops the row and counts it in the result.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Union

from instructjax.atomic_write import write_atomic

PathLike = Union[str, os.PathLike]


class DataError(ValueError):
  """Input data that does not match its documented format."""


def _check_text(name: str, value: Any, *, may_be_empty: bool = False) -> None:
  """A string, and unless `may_be_empty` one with more than whitespace."""
  if not isinstance(value, str):
    raise ValueError(f"field '{name}' must be a string, got {type(value).__name__}")
  if not may_be_empty and not value.strip():
    raise ValueError(f"field '{name}' is empty")


@dataclasses.dataclass(frozen=True)
class SftRecord:
  """A demonstration: the response (possibly empty) + EOS is the training target."""
  prompt: str
  response: str

  def __post_init__(self):
    _check_text("prompt", self.prompt)
    _check_text("response", self.response, may_be_empty=True)


@dataclasses.dataclass(frozen=True)
class RankingRecord:
  """K >= 2 responses (each possibly empty) to one prompt; `ranking` lists response
  indices best first."""
  prompt: str
  responses: tuple[str, ...]
  ranking: tuple[int, ...]
  labeler: int = -1  # -1: unknown

  def __post_init__(self):
    _check_text("prompt", self.prompt)
    if not isinstance(self.responses, (list, tuple)):
      raise ValueError(
          f"field 'responses' must be a list, got {type(self.responses).__name__}")
    if len(self.responses) < 2:
      raise ValueError(f"field 'responses' needs K >= 2 responses, got K={len(self.responses)}")
    for i, response in enumerate(self.responses):
      _check_text(f"responses[{i}]", response, may_be_empty=True)
    if not isinstance(self.ranking, (list, tuple)):
      raise ValueError(f"field 'ranking' must be a list, got {type(self.ranking).__name__}")
    if any(isinstance(r, bool) or not isinstance(r, int) for r in self.ranking):
      raise ValueError(f"field 'ranking' must hold integers, got {list(self.ranking)!r}")
    if sorted(self.ranking) != list(range(len(self.responses))):
      raise ValueError(
          f"field 'ranking'={list(self.ranking)} is not a permutation of "
          f"range({len(self.responses)})")
    if isinstance(self.labeler, bool) or not isinstance(self.labeler, int) or self.labeler < -1:
      raise ValueError(f"field 'labeler' must be an int >= 0 (or -1), got {self.labeler!r}")
    # Stored as tuples so records are hashable and compare equal however they were built.
    object.__setattr__(self, "responses", tuple(self.responses))
    object.__setattr__(self, "ranking", tuple(self.ranking))

  @property
  def ranked_responses(self) -> tuple[str, ...]:
    """The responses reordered best first."""
    return tuple(self.responses[i] for i in self.ranking)


@dataclasses.dataclass(frozen=True)
class PromptRecord:
  """A prompt for RL rollouts or evaluation."""
  prompt: str

  def __post_init__(self):
    _check_text("prompt", self.prompt)


@dataclasses.dataclass(frozen=True)
class TextRecord:
  """A pretraining document."""
  text: str

  def __post_init__(self):
    _check_text("text", self.text)


Record = Union[SftRecord, RankingRecord, PromptRecord, TextRecord]
RECORD_TYPES: dict[str, type] = {
    "sft": SftRecord, "ranking": RankingRecord, "prompt": PromptRecord, "text": TextRecord}
_REQUIRED = {"sft": ("prompt", "response"), "ranking": ("prompt", "responses", "ranking"),
             "prompt": ("prompt",), "text": ("text",)}


def _check_kind(kind: str) -> None:
  if kind not in RECORD_TYPES:
    raise ValueError(f"kind={kind!r} is not one of {tuple(RECORD_TYPES)}")


def parse_record(obj: Any, kind: str) -> Record:
  """Turns one decoded JSON value into a record of `kind`; ValueError names the field."""
  _check_kind(kind)
  if not isinstance(obj, dict):
    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
  missing = [name for name in _REQUIRED[kind] if name not in obj]
  if missing:
    raise ValueError(f"missing field(s) {missing} for a {kind!r} record")
  fields = {name: obj[name] for name in _REQUIRED[kind]}
  if kind == "ranking" and obj.get("labeler") is not None:
    fields["labeler"] = obj["labeler"]
  return RECORD_TYPES[kind](**fields)


def record_to_json(record: Record) -> dict[str, Any]:
  """The JSON object of a record, the inverse of `parse_record`."""
  obj = dataclasses.asdict(record)
  if isinstance(record, RankingRecord):
    obj["responses"], obj["ranking"] = list(record.responses), list(record.ranking)
    if record.labeler == -1:
      del obj["labeler"]
  return obj


@dataclasses.dataclass
class ReadResult:
  """Records read from one or more files, and the rows dropped by `skip_bad_rows`."""
  records: list[Any]
  bad_rows: list[str]  # one "file:line: problem" message per skipped row

  @property
  def num_bad_rows(self) -> int:
    return len(self.bad_rows)


def _open_binary(path: PathLike):
  return gzip.open(path, "rb") if os.fspath(path).endswith(".gz") else open(path, "rb")


def read_rows(paths: PathLike | Sequence[PathLike], convert: Callable[[Any], Any], *,
              skip_bad_rows: bool = False) -> ReadResult:
  """Reads JSON-lines files, turning each decoded line into a record with `convert`.

  `convert` raises ValueError for a bad row, or returns None to leave a row out on
  purpose (e.g. one that belongs to another split). Blank lines are ignored. Bad rows
  (malformed JSON, bad UTF-8, whatever `convert` rejects) raise DataError naming the
  file and line, or with `skip_bad_rows=True` are dropped and listed in the result. A
  truncated or corrupt compressed file always raises. So does reading no records at all.
  """
  paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
  if not paths:
    raise DataError("no input files given")
  records, bad_rows = [], []
  for path in paths:
    lineno = 0
    try:
      with _open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
          if not raw.strip():
            continue
          try:
            record = convert(json.loads(raw.decode("utf-8")))
          except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            message = f"{os.fspath(path)}:{lineno}: {e}"
            if not skip_bad_rows:
              raise DataError(message) from e
            bad_rows.append(message)
            continue
          if record is not None:
            records.append(record)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
      raise DataError(
          f"{os.fspath(path)}:{lineno + 1}: file is truncated or corrupt ({e})") from e
  if not records:
    skipped = f" ({len(bad_rows)} bad rows skipped)" if bad_rows else ""
    raise DataError(f"{', '.join(map(os.fspath, paths))}: empty dataset, no records{skipped}")
  return ReadResult(records=records, bad_rows=bad_rows)


def read_jsonl(paths: PathLike | Sequence[PathLike], kind: str, *,
               skip_bad_rows: bool = False) -> ReadResult:
  """Reads generic JSON-lines records of `kind` ("sft", "ranking", "prompt", "text")."""
  _check_kind(kind)
  return read_rows(paths, lambda obj: parse_record(obj, kind), skip_bad_rows=skip_bad_rows)


def write_jsonl(path: PathLike, records: Iterable[Record]) -> None:
  """Writes records as generic JSON lines (gzip-compressed when `path` ends in .gz), all
  at once: a reader never finds half a file."""
  text = "".join(json.dumps(record_to_json(r), ensure_ascii=False) + "\n" for r in records)
  data = text.encode("utf-8")
  write_atomic(path, gzip.compress(data) if os.fspath(path).endswith(".gz") else data)


def sft_from_rankings(records: Iterable[RankingRecord]) -> list[SftRecord]:
  """Demonstrations from rankings: each prompt with its best response."""
  return [SftRecord(r.prompt, r.responses[r.ranking[0]]) for r in records]


def prompts_of(records: Iterable[Record]) -> list[PromptRecord]:
  """The prompts of SFT, ranking or prompt records (e.g. RL prompts from demonstrations)."""
  prompts = []
  for i, r in enumerate(records):
    if not hasattr(r, "prompt"):
      raise DataError(f"record {i} ({type(r).__name__}) has no prompt")
    prompts.append(PromptRecord(r.prompt))
  return prompts
