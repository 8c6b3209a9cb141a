"""Pretraining documents packed into full rows, GPT-style.

The testbed's documents average about 25 tokens, so one document per row padded to its
bucket (64) leaves most of every pretraining step padding. Packing joins the documents,
each ending in EOS, into one stream and cuts it into rows of `length` tokens, as GPT-2/3
pretraining did: every position of a row is a real token (the last row alone may be
short), a document may continue into the next row, and attention crosses the EOS
between documents, which the model learns to treat as a fresh start.

The rows are made once per run, before shuffling, so `batching.BatchIterator` shuffles,
shards over hosts and resumes them like any other records (`batching.PackedBatcher`
makes their batches).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from instructjax.data import tokenize
from instructjax.data.records import DataError, TextRecord


@dataclasses.dataclass(frozen=True)
class PackedRow:
  """One row of the packed stream: `length` token ids, the last row possibly fewer."""
  tokens: np.ndarray  # [n] int32


def pack_documents(tokenizer: Any, records: Sequence[TextRecord], *, length: int,
                   add_bos: bool = False) -> list[PackedRow]:
  """Documents (+ EOS each, after a BOS if asked) joined in order and cut into rows of
  `length` tokens; a document longer than a row spans rows instead of being cut."""
  if length < 2:
    raise ValueError(f"pack length={length} must be >= 2 (a row needs a next token)")
  bad = [i for i, r in enumerate(records) if not isinstance(r, TextRecord)]
  if bad:
    got = type(records[bad[0]]).__name__
    raise DataError(f"row {bad[0]}: packing needs TextRecord, got {got}")
  # No length limit: a long document spans rows rather than being cut.
  docs = tokenize.encode_texts(tokenizer, [r.text for r in records], max_len=2**31 - 1,
                               stats=tokenize.TruncationStats(), add_bos=add_bos)
  stream = np.concatenate(docs) if docs else np.zeros((0,), np.int32)  # [N]
  return [PackedRow(stream[start:start + length]) for start in range(0, len(stream), length)]
