"""Text -> token ids with an exact prompt/response boundary and a stated truncation policy.

Prompts and responses are tokenized separately, so the boundary between them is exact
(no merge across it), and the tokenizer's EOS id is appended to every response and
document. Truncation policy:
  * prompts are cut from the LEFT to `max_prompt_len` (the end of a prompt, nearest the
    response, matters most);
  * responses are cut from the RIGHT to what is left of `max_len` after the prompt; a cut
    response loses its EOS, so the model is not taught to stop where the text did not;
  * documents (pretraining) are cut from the RIGHT to `max_len`.
Every cut is counted in a `TruncationStats`, which goes into the metrics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass
class TruncationStats:
  """How many sequences were encoded and how many of them were cut."""
  prompts: int = 0
  prompts_truncated: int = 0
  responses: int = 0
  responses_truncated: int = 0
  texts: int = 0
  texts_truncated: int = 0

  def as_dict(self) -> dict[str, int]:
    return dataclasses.asdict(self)

  def plus(self, other: TruncationStats) -> TruncationStats:
    return TruncationStats(**{k: v + getattr(other, k) for k, v in self.as_dict().items()})


def check_tokenizer_matches(tokenizer: Any, vocab_size: int) -> None:
  """Raises ValueError if the tokenizer can emit ids the model cannot embed, or has no EOS."""
  num_tokens = len(tokenizer)  # includes added special tokens, unlike .vocab_size
  if num_tokens > vocab_size:
    raise ValueError(
        f"tokenizer has {num_tokens} tokens (including added tokens) but the model's "
        f"vocab_size is {vocab_size}: ids >= {vocab_size} would index past the embedding")
  eos_id(tokenizer)


def eos_id(tokenizer: Any) -> int:
  if tokenizer.eos_token_id is None:
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has no EOS token; set eos_token")
  return int(tokenizer.eos_token_id)


def pad_id(tokenizer: Any) -> int:
  """The id written into padding; masks say what is padding, so EOS serves if unset."""
  return eos_id(tokenizer) if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id)


def _bos(tokenizer: Any) -> list[int]:
  if tokenizer.bos_token_id is None:
    raise ValueError(f"add_bos=True but tokenizer {type(tokenizer).__name__} has no BOS token")
  return [int(tokenizer.bos_token_id)]


def _token_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
  if not texts:
    return []
  # No special tokens: BOS/EOS are placed explicitly below.
  return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def encode_prompts(tokenizer: Any, prompts: Sequence[str], *, max_prompt_len: int,
                   stats: TruncationStats, add_bos: bool = False) -> list[np.ndarray]:
  """Prompt ids, cut from the left to `max_prompt_len` (a BOS, if added, is kept)."""
  bos = _bos(tokenizer) if add_bos else []
  limit = max_prompt_len - len(bos)
  if limit < 1:
    raise ValueError(f"max_prompt_len={max_prompt_len} leaves no room for prompt tokens")
  out = []
  for ids in _token_ids(tokenizer, prompts):
    stats.prompts += 1
    if len(ids) > limit:
      stats.prompts_truncated += 1
      ids = ids[len(ids) - limit:]
    out.append(np.asarray(bos + list(ids), np.int32))
  return out


def encode_responses(tokenizer: Any, responses: Sequence[str], *,
                     budgets: Sequence[int], stats: TruncationStats) -> list[np.ndarray]:
  """Response ids + EOS, each cut from the right to its budget (max_len - prompt length)."""
  if len(budgets) != len(responses):
    raise ValueError(f"{len(responses)} responses but {len(budgets)} budgets")
  eos = eos_id(tokenizer)
  out = []
  for ids, budget in zip(_token_ids(tokenizer, responses), budgets):
    if budget < 1:
      raise ValueError(f"response budget {budget} < 1: the prompt fills max_len")
    stats.responses += 1
    ids = list(ids) + [eos]
    if len(ids) > budget:
      stats.responses_truncated += 1
      ids = ids[:budget]
    out.append(np.asarray(ids, np.int32))
  return out


def encode_texts(tokenizer: Any, texts: Sequence[str], *, max_len: int,
                 stats: TruncationStats, add_bos: bool = False) -> list[np.ndarray]:
  """Document ids (+ EOS), cut from the right to `max_len` (a BOS, if added, is kept)."""
  bos = _bos(tokenizer) if add_bos else []
  if max_len - len(bos) < 2:
    raise ValueError(f"max_len={max_len} is too short for a document (need 2 tokens)")
  eos = eos_id(tokenizer)
  out = []
  for ids in _token_ids(tokenizer, texts):
    stats.texts += 1
    ids = bos + list(ids) + [eos]
    if len(ids) > max_len:
      stats.texts_truncated += 1
      ids = ids[:max_len]
    out.append(np.asarray(ids, np.int32))
  return out
