"""Input pipelines: records -> fixed-size, length-bucketed numpy batches.

Order. The stream of rows is the concatenation of per-epoch permutations, epoch e
shuffled by numpy's Generator seeded with (seed, e). Global batch s holds positions
[s * B, (s + 1) * B) of that stream, so the tail of an epoch wraps into the next one:
no row is dropped and every batch is full. The order depends only on the seed, the
number of rows and B, never on the number of hosts.

Hosts. Host h of H yields rows [h * B / H, (h + 1) * B / H) of each global batch. Every
host tokenizes the whole global batch to pick the same padded length, so the host-local
arrays assemble into one global array; tokenizing is cheap next to a train step.

Padding. The padded length is the smallest of a few `buckets` (e.g. (32, 64, 128)) that
fits the longest sequence of the global batch, so a jitted step compiles at most
len(buckets) times. The largest bucket is the length limit that truncation enforces.

Prefetch. `BatchIterator` makes its batches in a grain pipeline (`grain.MapDataset` over
the batch index, read by one worker thread `prefetch` batches ahead), so tokenizing and
padding overlap the train step instead of running between steps. One thread, not many:
a HF fast tokenizer is not safe to call from several threads at once. Host sharding stays
here rather than in grain because every host must see the whole global batch to agree on
its padded length.

Resuming. `BatchIterator.get_state()` is a small JSON-serialisable dict, counting only the
batches handed out (never the prefetched ones); a new iterator given it via `set_state`
yields exactly the batches the old one would have yielded next.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import numpy as np

from instructjax.data import tokenize
from instructjax.data.batches import PromptBatch, RankingBatch, TokenBatch
from instructjax.data.packing import PackedRow
from instructjax.data.records import (DataError, PromptRecord, RankingRecord, SftRecord,
                                      TextRecord)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length."""
  for bucket in buckets:
    if length <= bucket:
      return bucket
  raise ValueError(f"sequence length {length} exceeds the largest bucket {max(buckets)}")


def _check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
  buckets = tuple(buckets)
  if (not buckets or any(not isinstance(b, int) or b < 1 for b in buckets)
      or list(buckets) != sorted(set(buckets))):
    raise ValueError(f"buckets={buckets} must be strictly increasing positive ints")
  return buckets


def _check_types(batcher: str, rows: Sequence[Any], indices: np.ndarray, types: tuple) -> None:
  for row, index in zip(rows, indices):
    if row is not None and not isinstance(row, types):
      raise DataError(
          f"row {index}: {batcher} needs {' or '.join(t.__name__ for t in types)}, "
          f"got {type(row).__name__}")


def _pad_right(seqs: Sequence[np.ndarray | None], length: int, pad: int):
  """Right-pads sequences (None = a padding row) -> tokens [N, length], mask [N, length]."""
  tokens = np.full((len(seqs), length), pad, np.int32)
  mask = np.zeros((len(seqs), length), np.int32)
  for i, seq in enumerate(seqs):
    if seq is not None:
      tokens[i, :len(seq)] = seq
      mask[i, :len(seq)] = 1
  return tokens, mask


class _Batcher:
  """Shared state of the batch makers: tokenizer, buckets and truncation counters.

  A batcher is called with the rows of one global batch (None marks a padding row), their
  dataset indices (-1 for padding) and this host's slice of the batch.
  """

  def __init__(self, tokenizer: Any, *, buckets: Sequence[int], add_bos: bool = False):
    self.tokenizer = tokenizer
    self.buckets = _check_buckets(buckets)
    self.add_bos = add_bos
    self.pad_id = tokenize.pad_id(tokenizer)
    self.stats = tokenize.TruncationStats()

  @property
  def max_len(self) -> int:
    return self.buckets[-1]


class _PairBatcher(_Batcher):
  """Batchers of prompt + response sequences; the prompt is cut to `max_prompt_len`."""

  def __init__(self, tokenizer: Any, *, buckets: Sequence[int], max_prompt_len: int,
               add_bos: bool = False):
    super().__init__(tokenizer, buckets=buckets, add_bos=add_bos)
    if not 0 < max_prompt_len < self.max_len:
      raise ValueError(
          f"max_prompt_len={max_prompt_len} must be in [1, {self.max_len}) (the largest "
          "bucket), so every response keeps at least one token")
    self.max_prompt_len = max_prompt_len

  def _prompts(self, prompts: Sequence[str]) -> list[np.ndarray]:
    return tokenize.encode_prompts(self.tokenizer, prompts, max_prompt_len=self.max_prompt_len,
                                   stats=self.stats, add_bos=self.add_bos)

  def _responses(self, responses: Sequence[str], prompt_lens: Sequence[int]) -> list[np.ndarray]:
    return tokenize.encode_responses(self.tokenizer, responses, stats=self.stats,
                                     budgets=[self.max_len - n for n in prompt_lens])


class SftBatcher(_PairBatcher):
  """SftRecords -> TokenBatch: prompt + response + EOS, loss on the response tokens."""

  def __call__(self, rows: Sequence[SftRecord | None], indices: np.ndarray,
               local: slice) -> TokenBatch:
    _check_types("SftBatcher", rows, indices, (SftRecord,))
    real = [i for i, row in enumerate(rows) if row is not None]
    prompts = self._prompts([rows[i].prompt for i in real])
    responses = self._responses([rows[i].response for i in real], [len(p) for p in prompts])
    pairs: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(rows)
    for i, p, r in zip(real, prompts, responses):
      pairs[i] = (p, r)
    length = bucket_length(max(len(p) + len(r) for p, r in zip(prompts, responses)),
                           self.buckets)
    pairs = pairs[local]
    tokens, token_mask = _pad_right(
        [None if pr is None else np.concatenate(pr) for pr in pairs], length, self.pad_id)
    loss_mask = np.zeros_like(token_mask)  # [B, T]
    for b, pr in enumerate(pairs):
      if pr is not None:
        loss_mask[b, len(pr[0]):len(pr[0]) + len(pr[1])] = 1
    return TokenBatch(tokens=tokens, token_mask=token_mask, loss_mask=loss_mask)


class RankingBatcher(_PairBatcher):
  """RankingRecords -> RankingBatch: K prompt + response sequences per row, best first."""

  def __init__(self, tokenizer: Any, *, buckets: Sequence[int], max_prompt_len: int,
               k_max: int, add_bos: bool = False):
    super().__init__(tokenizer, buckets=buckets, max_prompt_len=max_prompt_len,
                     add_bos=add_bos)
    if k_max < 2:
      raise ValueError(f"k_max={k_max} must be >= 2")
    self.k_max = k_max

  def __call__(self, rows: Sequence[RankingRecord | None], indices: np.ndarray,
               local: slice) -> RankingBatch:
    _check_types("RankingBatcher", rows, indices, (RankingRecord,))
    real = [i for i, row in enumerate(rows) if row is not None]
    for i in real:
      if len(rows[i].responses) > self.k_max:
        raise DataError(f"row {indices[i]}: K={len(rows[i].responses)} responses > "
                        f"k_max={self.k_max}")
    prompts = self._prompts([rows[i].prompt for i in real])
    # Flattened over (row, rank): each row's responses, best first, after its prompt.
    owners, owner_prompts, texts = [], [], []
    for i, p in zip(real, prompts):
      for response in rows[i].ranked_responses:
        owners.append(i)
        owner_prompts.append(p)
        texts.append(response)
    responses = self._responses(texts, [len(p) for p in owner_prompts])
    seqs: list[list[np.ndarray]] = [[] for _ in rows]
    prompt_lens: list[list[int]] = [[] for _ in rows]
    for i, p, r in zip(owners, owner_prompts, responses):
      seqs[i].append(np.concatenate([p, r]))
      prompt_lens[i].append(len(p))
    length = bucket_length(max(len(s) for row in seqs for s in row), self.buckets)
    seqs, prompt_lens, local_rows = seqs[local], prompt_lens[local], list(rows[local])
    flat = [row[k] if k < len(row) else None for row in seqs for k in range(self.k_max)]
    tokens, token_mask = _pad_right(flat, length, self.pad_id)  # [B * K, T]
    starts = np.array([lens[k] if k < len(lens) else length for lens in prompt_lens
                       for k in range(self.k_max)])  # [B * K]: first response token
    loss_mask = token_mask * (np.arange(length)[None] >= starts[:, None])  # [B * K, T]
    shape = (len(seqs), self.k_max, length)
    response_mask = np.array(
        [[int(k < len(row)) for k in range(self.k_max)] for row in seqs], np.int32)
    labeler = np.array([-1 if row is None else row.labeler for row in local_rows], np.int32)
    return RankingBatch(tokens=tokens.reshape(shape), token_mask=token_mask.reshape(shape),
                        loss_mask=loss_mask.astype(np.int32).reshape(shape),
                        response_mask=response_mask.reshape(len(seqs), self.k_max),
                        labeler=labeler)


class PromptBatcher(_Batcher):
  """Prompts of PromptRecords (or SFT/ranking records) -> left-padded PromptBatch.

  The largest bucket is the prompt length limit; longer prompts are cut from the left.
  """

  def __call__(self, rows: Sequence[Any], indices: np.ndarray, local: slice) -> PromptBatch:
    _check_types("PromptBatcher", rows, indices, (PromptRecord, SftRecord, RankingRecord))
    real = [i for i, row in enumerate(rows) if row is not None]
    prompts = tokenize.encode_prompts(self.tokenizer, [rows[i].prompt for i in real],
                                      max_prompt_len=self.max_len, stats=self.stats,
                                      add_bos=self.add_bos)
    length = bucket_length(max(len(p) for p in prompts), self.buckets)
    seqs: list[np.ndarray | None] = [None] * len(rows)
    for i, p in zip(real, prompts):
      seqs[i] = p
    seqs = seqs[local]
    # Left padding: pad reversed sequences on the right, then flip back.
    tokens, mask = _pad_right([None if s is None else s[::-1] for s in seqs], length,
                              self.pad_id)
    return PromptBatch(prompt_tokens=tokens[:, ::-1].copy(), prompt_mask=mask[:, ::-1].copy(),
                       example_index=np.asarray(indices[local], np.int32))


class PretrainBatcher(_Batcher):
  """TextRecords -> TokenBatch: document + EOS, loss on every real token after the first."""

  def __call__(self, rows: Sequence[TextRecord | None], indices: np.ndarray,
               local: slice) -> TokenBatch:
    _check_types("PretrainBatcher", rows, indices, (TextRecord,))
    real = [i for i, row in enumerate(rows) if row is not None]
    texts = tokenize.encode_texts(self.tokenizer, [rows[i].text for i in real],
                                  max_len=self.max_len, stats=self.stats, add_bos=self.add_bos)
    length = bucket_length(max(len(t) for t in texts), self.buckets)
    seqs: list[np.ndarray | None] = [None] * len(rows)
    for i, t in zip(real, texts):
      seqs[i] = t
    tokens, token_mask = _pad_right(seqs[local], length, self.pad_id)
    loss_mask = token_mask.copy()
    loss_mask[:, 0] = 0  # the first token has no context to be predicted from
    return TokenBatch(tokens=tokens, token_mask=token_mask, loss_mask=loss_mask)


class PackedBatcher(_Batcher):
  """PackedRows (`packing.pack_documents`) -> TokenBatch [B, length]: loss on every real
  token after a row's first (it has no context in its row); a short last row is padded."""

  def __init__(self, tokenizer: Any, *, length: int):
    super().__init__(tokenizer, buckets=(length,))

  def __call__(self, rows: Sequence[PackedRow | None], indices: np.ndarray,
               local: slice) -> TokenBatch:
    _check_types("PackedBatcher", rows, indices, (PackedRow,))
    for row, index in zip(rows, indices):
      if row is not None and len(row.tokens) > self.max_len:
        raise DataError(f"row {index}: PackedBatcher needs a PackedRow of at most "
                        f"{self.max_len} tokens, got {len(row.tokens)}")
    tokens, token_mask = _pad_right([None if r is None else r.tokens for r in rows[local]],
                                    self.max_len, self.pad_id)
    loss_mask = token_mask.copy()
    loss_mask[:, 0] = 0
    return TokenBatch(tokens=tokens, token_mask=token_mask, loss_mask=loss_mask)


def _host_slice(batch_size: int, process_index: int | None,
                process_count: int | None) -> slice:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if batch_size < 1 or count < 1 or batch_size % count:
    raise ValueError(f"batch_size={batch_size} must be a positive multiple of "
                     f"process_count={count}")
  if not 0 <= index < count:
    raise ValueError(f"process_index={index} is not in [0, {count})")
  per_host = batch_size // count
  return slice(index * per_host, (index + 1) * per_host)


_ENDLESS = 2**62  # batch indices of an endless stream (grain datasets are sized)


class BatchIterator:
  """Endless shuffled batches (wrapping across epochs) of this host's rows; resumable.

  Args:
    records: random-access rows (a list of records, or a `tfds_builders.RecordSource`).
    batcher: turns rows into a batch (SftBatcher, RankingBatcher, ...).
    batch_size: GLOBAL batch size B; each host yields B / process_count rows.
    seed: seeds the per-epoch permutations.
    prefetch: batches made ahead on grain's worker thread; 0 makes each batch on the
      caller's thread when it is asked for.
  """

  def __init__(self, records: Sequence[Any], batcher: Any, *, batch_size: int, seed: int,
               prefetch: int = 2, process_index: int | None = None,
               process_count: int | None = None):
    if len(records) == 0:
      raise DataError("empty dataset: no records to batch")
    if not isinstance(seed, int) or seed < 0:
      raise ValueError(f"seed={seed!r} must be a non-negative int")
    if not isinstance(prefetch, int) or prefetch < 0:
      raise ValueError(f"prefetch={prefetch!r} must be a non-negative int")
    self.records, self.batcher = records, batcher
    self.batch_size, self.seed, self.prefetch = batch_size, seed, prefetch
    self.local = _host_slice(batch_size, process_index, process_count)
    self.step = 0  # global batches handed out so far
    self._permutations: dict[int, np.ndarray] = {}
    self._stream: Iterator[tuple[Any, tokenize.TruncationStats]] | None = None

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._permutations:
      # Only the epochs of the current batch are kept (a batch spans at most a few).
      self._permutations = {e: p for e, p in self._permutations.items() if e > epoch - 2}
      rng = np.random.default_rng([self.seed, epoch])
      self._permutations[epoch] = rng.permutation(len(self.records))
    return self._permutations[epoch]

  def global_indices(self, step: int) -> np.ndarray:
    """Dataset rows of global batch `step`."""
    positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)  # [B]
    epochs, offsets = np.divmod(positions, len(self.records))  # [B], [B]
    indices = np.empty(self.batch_size, np.int64)  # [B]
    for epoch in np.unique(epochs):  # ascending, so the permutation cache stays valid
      in_epoch = epochs == epoch
      indices[in_epoch] = self._permutation(int(epoch))[offsets[in_epoch]]
    return indices

  def _make(self, step: int) -> tuple[Any, tokenize.TruncationStats]:
    """Global batch `step` (this host's rows) and the truncations it caused. A shallow copy
    of the batcher counts them, so a prefetched batch is counted when it is handed out."""
    indices = self.global_indices(step)  # [B]
    batcher = copy.copy(self.batcher)
    batcher.stats = tokenize.TruncationStats()
    batch = batcher([self.records[int(i)] for i in indices], indices, self.local)
    return batch, batcher.stats

  def _open(self) -> Iterator[tuple[Any, tokenize.TruncationStats]]:
    steps = grain.MapDataset.range(self.step, _ENDLESS).map(self._make)
    return iter(steps.to_iter_dataset(grain.ReadOptions(
        num_threads=min(self.prefetch, 1), prefetch_buffer_size=self.prefetch)))

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self):
    if self._stream is None:
      self._stream = self._open()
    batch, stats = next(self._stream)
    self.batcher.stats = self.batcher.stats.plus(stats)
    self.step += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"step": self.step, "seed": self.seed, "num_rows": len(self.records),
            "batch_size": self.batch_size, "stats": self.batcher.stats.as_dict()}

  def set_state(self, state: dict[str, Any]) -> None:
    expected = {"seed": self.seed, "num_rows": len(self.records), "batch_size": self.batch_size}
    missing = sorted({"step", "stats", *expected} - set(state))
    if missing:
      raise ValueError(f"iterator state lacks {missing}")
    for name, value in expected.items():
      if state[name] != value:
        raise ValueError(f"iterator state has {name}={state[name]} but this iterator has "
                         f"{name}={value}; it was saved for other data or settings")
    self.step = int(state["step"])
    self.batcher.stats = tokenize.TruncationStats(**state["stats"])
    self.close()  # batches made ahead from the old position are dropped

  def close(self) -> None:
    """Stops the worker and drops the batches it made ahead; a later `next` restarts it
    at the current position."""
    if self._stream is not None:
      self._stream.close()
      self._stream = None


def iterate_once(records: Sequence[Any], batcher: Any, *, batch_size: int,
                 process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[Any]:
  """Every row once, in dataset order (for evaluation); the last batch is padded.

  Padding rows have all-zero masks (token_mask, loss_mask, response_mask, prompt_mask)
  and example_index -1.
  """
  if len(records) == 0:
    raise DataError("empty dataset: no records to batch")
  local = _host_slice(batch_size, process_index, process_count)
  for start in range(0, len(records), batch_size):
    indices = np.arange(start, start + batch_size)  # [B]
    indices[indices >= len(records)] = -1
    rows = [None if i < 0 else records[int(i)] for i in indices]
    yield batcher(rows, indices, local)
