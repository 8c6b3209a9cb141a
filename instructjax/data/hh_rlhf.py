"""Anthropic HH-RLHF (github.com/anthropics/hh-rlhf) -> ranking records.

The published files (`helpful-base/train.jsonl.gz`, `harmless-base/test.jsonl.gz`, ...)
hold one {"chosen": str, "rejected": str} per line, each a whole conversation of
"\\n\\nHuman: ..." and "\\n\\nAssistant: ..." turns. The prompt is their shared prefix up
to and including its last "\\n\\nAssistant:"; the two responses are the rest (they keep
their leading space, so the prompt/response boundary falls before a word, as in TL;DR).
A response may be empty: in some pairs the preferred reply is to say nothing (4 of the
2,312 in harmless-base/test.jsonl.gz), and those are real comparisons. Each line becomes
a K=2 ranking record with chosen first; `records.sft_from_rankings` gives SFT records
from the chosen responses.

Pairs whose conversations differ before the final assistant turn are not malformed, and
build the same way: each response is the rest of its conversation, later human turns
included, so prompt + response is each published conversation exactly and the label keeps
its meaning, a preference between two whole conversations (what Anthropic's preference
model compared). Errors are rows that are not two conversations sharing an assistant
turn: not JSON, a missing or non-string field, no shared "\\n\\nAssistant:".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from instructjax.data.records import PathLike, RankingRecord, ReadResult, read_rows

ASSISTANT = "\n\nAssistant:"
SUBSETS = ("helpful-base", "helpful-online", "helpful-rejection-sampled", "harmless-base")


def split_conversations(chosen: str, rejected: str) -> tuple[str, str, str]:
  """(prompt, chosen response, rejected response) of one HH-RLHF pair; either response
  may be empty, and holds later turns where the pair differs before the last one."""
  shared = os.path.commonprefix([chosen, rejected])
  end = shared.rfind(ASSISTANT)
  if end < 0:
    raise ValueError("'chosen' and 'rejected' share no '\\n\\nAssistant:' turn")
  prompt = shared[:end + len(ASSISTANT)]
  return prompt, chosen[len(prompt):], rejected[len(prompt):]


def hh_row_to_ranking(obj: Any) -> RankingRecord:
  """One decoded HH-RLHF line -> RankingRecord(ranking=(0, 1)), chosen first."""
  if not isinstance(obj, dict):
    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
  for name in ("chosen", "rejected"):
    if name not in obj:
      raise ValueError(f"missing field '{name}'")
    if not isinstance(obj[name], str):
      raise ValueError(f"field '{name}' must be a string, got {type(obj[name]).__name__}")
  prompt, chosen, rejected = split_conversations(obj["chosen"], obj["rejected"])
  return RankingRecord(prompt, (chosen, rejected), (0, 1))


def read_hh_rlhf(paths: PathLike | Sequence[PathLike], *,
                 skip_bad_rows: bool = False) -> ReadResult:
  """Ranking records from HH-RLHF `*.jsonl.gz` files (DataError names file and line)."""
  return read_rows(paths, hh_row_to_ranking, skip_bad_rows=skip_bad_rows)
