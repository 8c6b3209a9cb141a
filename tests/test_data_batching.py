"""Tokenisation, truncation, masks, bucketing, resumable order and host sharding."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import tokenizers
import transformers

from instructjax.data.batching import (BatchIterator, PackedBatcher, PretrainBatcher,
                                       PromptBatcher, RankingBatcher, SftBatcher,
                                       bucket_length, iterate_once)
from instructjax.data.packing import PackedRow, pack_documents
from instructjax.data.records import (DataError, PromptRecord, RankingRecord, SftRecord,
                                      TextRecord)
from instructjax.data.tokenize import (TruncationStats, check_tokenizer_matches,
                                       encode_prompts, encode_responses, encode_texts)

EOS, PAD = 0, 1
NUM_WORDS = 40


def W(i: int) -> int:
  """Token id of the word f"w{i}" in the test tokenizer."""
  return i + 3


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  """A word-level tokenizer (one token per word wN), saved and loaded like a real one."""
  vocab = {"<|endoftext|>": EOS, "<|pad|>": PAD, "<unk>": 2}
  vocab.update({f"w{i}": W(i) for i in range(NUM_WORDS)})
  model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=model, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
      pad_token="<|pad|>", unk_token="<unk>")
  path = tmp_path_factory.mktemp("tokenizer")
  fast.save_pretrained(path)
  return transformers.AutoTokenizer.from_pretrained(path)


def _words(*ids: int) -> str:
  return " ".join(f"w{i}" for i in ids)


def _only_batch(records, batcher):
  (batch,) = list(iterate_once(records, batcher, batch_size=len(records), process_count=1,
                               process_index=0))
  return batch


# --- tokenisation --------------------------------------------------------------------

def test_check_tokenizer_matches(tok):
  assert len(tok) == NUM_WORDS + 3
  check_tokenizer_matches(tok, NUM_WORDS + 3)
  check_tokenizer_matches(tok, 512)
  with pytest.raises(ValueError, match=r"43 tokens .* vocab_size is 42"):
    check_tokenizer_matches(tok, 42)


def test_truncation_policy(tok):
  stats = TruncationStats()
  prompts = encode_prompts(tok, [_words(1, 2, 3, 4, 5), _words(6)], max_prompt_len=3,
                           stats=stats)
  assert [p.tolist() for p in prompts] == [[W(3), W(4), W(5)], [W(6)]]  # cut from the left
  responses = encode_responses(tok, [_words(1, 2), _words(1, 2), _words(7, 8, 9)],
                               budgets=[3, 2, 10], stats=stats)
  # EOS appended; cut from the right, so a cut response loses its EOS.
  assert [r.tolist() for r in responses] == [[W(1), W(2), EOS], [W(1), W(2)],
                                             [W(7), W(8), W(9), EOS]]
  texts = encode_texts(tok, [_words(1, 2, 3), _words(1)], max_len=3, stats=stats)
  assert [t.tolist() for t in texts] == [[W(1), W(2), W(3)], [W(1), EOS]]
  assert stats.as_dict() == {"prompts": 2, "prompts_truncated": 1, "responses": 3,
                             "responses_truncated": 1, "texts": 2, "texts_truncated": 1}
  with_bos = encode_prompts(tok, [_words(1, 2, 3, 4, 5)], max_prompt_len=3, stats=stats,
                            add_bos=True)
  assert with_bos[0].tolist() == [EOS, W(4), W(5)]  # BOS kept, the body cut from the left
  with pytest.raises(ValueError, match="budget 0 < 1"):
    encode_responses(tok, ["w1"], budgets=[0], stats=stats)


# --- batches and masks ---------------------------------------------------------------

def test_sft_batch_masks(tok):
  records = [SftRecord(_words(1, 2), _words(3)), SftRecord(_words(4), _words(5, 6, 7)),
             # Prompt cut from the left to 3, response cut from the right to 8 - 3 = 5.
             SftRecord(_words(1, 2, 3, 4, 5), _words(6, 7, 8, 9, 10, 11, 12))]
  batch = _only_batch(records, SftBatcher(tok, buckets=(4, 8), max_prompt_len=3))
  P = PAD
  np.testing.assert_array_equal(batch.tokens, [
      [W(1), W(2), W(3), EOS, P, P, P, P],
      [W(4), W(5), W(6), W(7), EOS, P, P, P],
      [W(3), W(4), W(5), W(6), W(7), W(8), W(9), W(10)]])
  np.testing.assert_array_equal(batch.token_mask, [
      [1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(batch.loss_mask, [  # response tokens, EOS included
      [0, 0, 1, 1, 0, 0, 0, 0], [0, 1, 1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1, 1]])
  assert batch.tokens.dtype == np.int32


def test_empty_responses_train_eos_alone(tok):
  """An empty (or blank) reply, e.g. HH-RLHF's preferred silence: the target is EOS, and a
  prompt that fills max_prompt_len still leaves it room."""
  records = [SftRecord(_words(1, 2), ""), SftRecord(_words(1, 2, 3, 4, 5), "  "),
             SftRecord(_words(4), _words(5))]
  batch = _only_batch(records, SftBatcher(tok, buckets=(4,), max_prompt_len=3))
  P = PAD
  np.testing.assert_array_equal(batch.tokens, [
      [W(1), W(2), EOS, P], [W(3), W(4), W(5), EOS], [W(4), W(5), EOS, P]])
  np.testing.assert_array_equal(batch.token_mask, [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]])
  np.testing.assert_array_equal(batch.loss_mask, [[0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 1, 0]])
  ranked = _only_batch([RankingRecord(_words(6), (_words(7), ""), (1, 0))],
                       RankingBatcher(tok, buckets=(4,), max_prompt_len=2, k_max=2))
  np.testing.assert_array_equal(ranked.tokens, [[[W(6), EOS, P, P], [W(6), W(7), EOS, P]]])
  np.testing.assert_array_equal(ranked.token_mask, [[[1, 1, 0, 0], [1, 1, 1, 0]]])


def test_pretrain_batch_masks(tok):
  batch = _only_batch([TextRecord(_words(1, 2)), TextRecord(_words(3))],
                      PretrainBatcher(tok, buckets=(4,)))
  np.testing.assert_array_equal(batch.tokens, [[W(1), W(2), EOS, PAD], [W(3), EOS, PAD, PAD]])
  np.testing.assert_array_equal(batch.token_mask, [[1, 1, 1, 0], [1, 1, 0, 0]])
  np.testing.assert_array_equal(batch.loss_mask, [[0, 1, 1, 0], [0, 1, 0, 0]])


def test_packed_rows_join_documents_and_span_rows(tok):
  docs = [TextRecord(_words(1, 2)), TextRecord(_words(3)), TextRecord(_words(4, 5, 6))]
  rows = pack_documents(tok, docs, length=4)
  # The stream w1 w2 EOS w3 EOS w4 w5 w6 EOS, cut every 4 tokens; the third document
  # spans two rows and the last row is short.
  assert [r.tokens.tolist() for r in rows] == [
      [W(1), W(2), EOS, W(3)], [EOS, W(4), W(5), W(6)], [EOS]]
  (batch,) = list(iterate_once(rows, PackedBatcher(tok, length=4), batch_size=4,
                               process_count=1, process_index=0))
  P = PAD
  np.testing.assert_array_equal(batch.tokens, [
      [W(1), W(2), EOS, W(3)], [EOS, W(4), W(5), W(6)], [EOS, P, P, P], [P, P, P, P]])
  np.testing.assert_array_equal(batch.token_mask, [
      [1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
  # Every token but a row's first is a target, EOS and the next document's first
  # word included.
  np.testing.assert_array_equal(batch.loss_mask, [
      [0, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]])


def test_packing_checks_its_inputs(tok):
  with pytest.raises(ValueError, match="pack length=1 must be >= 2"):
    pack_documents(tok, [TextRecord(_words(1))], length=1)
  with pytest.raises(DataError, match="row 1: packing needs TextRecord, got SftRecord"):
    pack_documents(tok, [TextRecord(_words(1)), SftRecord(_words(1), _words(2))], length=4)
  with pytest.raises(DataError, match="row 0: PackedBatcher needs a PackedRow of at most 2"):
    _only_batch([PackedRow(np.array([W(1), W(2), W(3)], np.int32))],
                PackedBatcher(tok, length=2))


def test_ranking_batch_best_first_and_padded_k(tok):
  records = [RankingRecord(_words(1), (_words(2), _words(3, 4), _words(5)), (2, 0, 1), labeler=5),
             RankingRecord(_words(6, 7), (_words(8), _words(9)), (1, 0))]
  batch = _only_batch(records, RankingBatcher(tok, buckets=(4, 8), max_prompt_len=2, k_max=3))
  P = PAD
  np.testing.assert_array_equal(batch.tokens, [
      [[W(1), W(5), EOS, P], [W(1), W(2), EOS, P], [W(1), W(3), W(4), EOS]],
      [[W(6), W(7), W(9), EOS], [W(6), W(7), W(8), EOS], [P, P, P, P]]])
  np.testing.assert_array_equal(batch.token_mask, [
      [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]],
      [[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]]])
  np.testing.assert_array_equal(batch.loss_mask, [  # the response tokens and EOS (DPO)
      [[0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 1]],
      [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]]])
  np.testing.assert_array_equal(batch.response_mask, [[1, 1, 1], [1, 1, 0]])
  np.testing.assert_array_equal(batch.labeler, [5, -1])
  with pytest.raises(DataError, match="row 0: K=3 responses > k_max=2"):
    _only_batch(records, RankingBatcher(tok, buckets=(4, 8), max_prompt_len=2, k_max=2))


def test_prompt_batch_left_padded(tok):
  records = [PromptRecord(_words(1, 2, 3)), SftRecord(_words(4), "w0"),
             PromptRecord(_words(1, 2, 3, 4, 5))]
  batch = _only_batch(records, PromptBatcher(tok, buckets=(2, 4)))
  np.testing.assert_array_equal(batch.prompt_tokens, [
      [PAD, W(1), W(2), W(3)], [PAD, PAD, PAD, W(4)], [W(2), W(3), W(4), W(5)]])
  np.testing.assert_array_equal(batch.prompt_mask, [[0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]])
  np.testing.assert_array_equal(batch.example_index, [0, 1, 2])


def test_batcher_checks_inputs(tok):
  with pytest.raises(DataError, match="row 0: SftBatcher needs SftRecord, got RankingRecord"):
    _only_batch([RankingRecord("w1", ("w2", "w3"), (0, 1))],
                SftBatcher(tok, buckets=(8,), max_prompt_len=4))
  with pytest.raises(ValueError, match=r"max_prompt_len=8 must be in \[1, 8\)"):
    SftBatcher(tok, buckets=(4, 8), max_prompt_len=8)
  for buckets in [(8, 4), (4, 4), (0, 4), ()]:
    with pytest.raises(ValueError, match="strictly increasing"):
      PromptBatcher(tok, buckets=buckets)


def test_bucketing(tok):
  assert [bucket_length(n, (4, 8, 16)) for n in (1, 4, 5, 8, 9, 16)] == [4, 4, 8, 8, 16, 16]
  with pytest.raises(ValueError, match="length 17 exceeds the largest bucket 16"):
    bucket_length(17, (4, 8, 16))
  batcher = SftBatcher(tok, buckets=(4, 8, 16), max_prompt_len=6)
  # Batches (in dataset order) whose longest sequence is 4, 7 and 16 (after truncation).
  records = [SftRecord("w1", "w2"), SftRecord("w1 w2", "w3"),
             SftRecord("w1", "w2"), SftRecord("w1 w2 w3", "w4 w5 w6"),
             SftRecord(_words(*range(9)), _words(*range(30))), SftRecord("w1", "w2")]
  shapes = [b.tokens.shape for b in iterate_once(records, batcher, batch_size=2,
                                                  process_index=0, process_count=1)]
  assert shapes == [(2, 4), (2, 8), (2, 16)]
  # Over shuffled batches the length is always the smallest bucket that fits.
  rng = np.random.default_rng(0)
  records = [SftRecord(_words(*rng.integers(0, NUM_WORDS, rng.integers(1, 8))),
                       _words(*rng.integers(0, NUM_WORDS, rng.integers(1, 12))))
             for _ in range(40)]
  iterator = BatchIterator(records, batcher, batch_size=2, seed=0, process_count=1,
                           process_index=0)
  for _ in range(30):
    batch = next(iterator)
    longest = batch.token_mask.sum(-1).max()
    assert batch.tokens.shape[1] == min(b for b in (4, 8, 16) if b >= longest)


# --- order, resume, hosts ------------------------------------------------------------

def _prompt_iterator(tok, n, *, seed, batch_size=2, **host):
  host = host or {"process_index": 0, "process_count": 1}
  records = [PromptRecord(_words(i % NUM_WORDS)) for i in range(n)]
  return BatchIterator(records, PromptBatcher(tok, buckets=(2,)), batch_size=batch_size,
                       seed=seed, **host)


def _stream(iterator, steps):
  return np.concatenate([next(iterator).example_index for _ in range(steps)])


def test_epochs_wrap_around_with_fresh_shuffles(tok):
  n = 5
  stream = _stream(_prompt_iterator(tok, n, seed=3), 10)  # 20 rows = 4 epochs
  epochs = stream.reshape(4, n)
  for epoch in epochs:  # every epoch sees every row once, batches straddle epochs
    assert sorted(epoch.tolist()) == list(range(n))
  assert len({tuple(e) for e in epochs.tolist()}) > 1  # reshuffled per epoch
  np.testing.assert_array_equal(stream, _stream(_prompt_iterator(tok, n, seed=3), 10))
  assert not np.array_equal(stream, _stream(_prompt_iterator(tok, n, seed=4), 10))


def _sft_records(n):
  return [SftRecord(_words(*range(i % 5 + 1)), _words(*range(1, i % 7 + 2))) for i in range(n)]


def _sft_iterator(tok, records, *, prefetch=2, **host):
  host = host or {"process_index": 0, "process_count": 1}
  return BatchIterator(records, SftBatcher(tok, buckets=(4, 8, 16), max_prompt_len=3),
                       batch_size=4, seed=11, prefetch=prefetch, **host)


def _assert_batches_equal(a, b):
  for name in ("tokens", "token_mask", "loss_mask"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("prefetch", [0, 1, 5])
def test_resume_is_exact(tok, prefetch):
  records = _sft_records(7)
  uninterrupted = _sft_iterator(tok, records, prefetch=0)
  expected = [next(uninterrupted) for _ in range(8)]
  first = _sft_iterator(tok, records, prefetch=prefetch)
  for _ in range(3):
    next(first)
  time.sleep(0.2)  # let the worker run ahead: what it made early must not count
  state = json.loads(json.dumps(first.get_state()))  # as a checkpoint would store it
  want = _sft_iterator(tok, records, prefetch=0)
  for _ in range(3):
    next(want)
  assert state == want.get_state()
  resumed = _sft_iterator(tok, records, prefetch=prefetch)
  resumed.set_state(state)
  for want in expected[3:]:
    _assert_batches_equal(next(resumed), want)
  assert resumed.get_state() == uninterrupted.get_state()
  assert resumed.get_state()["stats"]["prompts_truncated"] > 0

  other_seed = BatchIterator(records, SftBatcher(tok, buckets=(16,), max_prompt_len=3),
                             batch_size=4, seed=12, process_count=1, process_index=0)
  with pytest.raises(ValueError, match="seed=11 but this iterator has seed=12"):
    other_seed.set_state(state)
  with pytest.raises(ValueError, match=r"lacks \['step'\]"):
    resumed.set_state({k: v for k, v in state.items() if k != "step"})


class _RecordingBatcher(PromptBatcher):
  """Notes the thread of each call (in a list its copies share); fails on row `bad`."""

  def __init__(self, tok, *, bad):
    super().__init__(tok, buckets=(2,))
    self.bad, self.threads = bad, []

  def __call__(self, rows, indices, local):
    self.threads.append(threading.current_thread())
    if self.bad in indices:
      raise DataError(f"row {self.bad}: malformed")
    return super().__call__(rows, indices, local)


def test_prefetch_tokenizes_off_the_caller_thread_and_fails_in_order(tok):
  records = [PromptRecord(_words(i % NUM_WORDS)) for i in range(6)]
  # the third batch of two rows (still in the first epoch of six) holds the bad row
  bad = int(BatchIterator(records, PromptBatcher(tok, buckets=(2,)), batch_size=2, seed=0,
                          process_count=1, process_index=0).global_indices(2)[0])
  batcher = _RecordingBatcher(tok, bad=bad)
  iterator = BatchIterator(records, batcher, batch_size=2, seed=0, prefetch=3,
                           process_count=1, process_index=0)
  next(iterator)
  next(iterator)  # the failing batch is already made ahead, but not raised early
  with pytest.raises(DataError, match=f"row {bad}: malformed"):
    next(iterator)
  assert threading.current_thread() not in batcher.threads
  healthy = _RecordingBatcher(tok, bad=-2)
  iterator = BatchIterator(records, healthy, batch_size=2, seed=0, prefetch=2,
                           process_count=1, process_index=0)
  next(iterator)
  workers = lambda: [t for t in set(healthy.threads) if t.is_alive()]
  assert workers()
  iterator.close()  # the worker thread ends
  time.sleep(0.2)
  assert not workers()
  inline = _RecordingBatcher(tok, bad=-2)
  next(BatchIterator(records, inline, batch_size=2, seed=0, prefetch=0, process_count=1,
                     process_index=0))
  assert inline.threads == [threading.current_thread()]


def test_hosts_split_each_global_batch(tok):
  records = _sft_records(9)
  single = _sft_iterator(tok, records)
  hosts = [_sft_iterator(tok, records, process_index=h, process_count=2) for h in range(2)]
  for _ in range(5):
    want = next(single)
    parts = [next(h) for h in hosts]
    for name in ("tokens", "token_mask", "loss_mask"):
      np.testing.assert_array_equal(
          np.concatenate([getattr(p, name) for p in parts]), getattr(want, name))
  # Disjoint halves whose union is the global batch, seen through example indices.
  single = _prompt_iterator(tok, 9, seed=5, batch_size=4)
  hosts = [_prompt_iterator(tok, 9, seed=5, batch_size=4, process_index=h, process_count=2)
           for h in range(2)]
  for _ in range(5):
    want = next(single).example_index
    halves = [next(h).example_index for h in hosts]
    assert not set(halves[0]) & set(halves[1])
    np.testing.assert_array_equal(np.concatenate(halves), want)
  with pytest.raises(ValueError,
                     match="batch_size=3 must be a positive multiple of process_count=2"):
    _prompt_iterator(tok, 9, seed=5, batch_size=3, process_index=0, process_count=2)
  with pytest.raises(ValueError, match=r"process_index=2 is not in \[0, 2\)"):
    _prompt_iterator(tok, 9, seed=5, batch_size=4, process_index=2, process_count=2)


def test_iterate_once_pads_the_last_batch(tok):
  records = [PromptRecord(_words(i)) for i in range(5)]
  batches = list(iterate_once(records, PromptBatcher(tok, buckets=(2,)), batch_size=2,
                              process_index=0, process_count=1))
  np.testing.assert_array_equal(np.concatenate([b.example_index for b in batches]),
                                [0, 1, 2, 3, 4, -1])
  np.testing.assert_array_equal(batches[-1].prompt_mask, [[0, 1], [0, 0]])
  per_host = [[b.example_index.tolist() for b in iterate_once(
      records, PromptBatcher(tok, buckets=(2,)), batch_size=2, process_index=h,
      process_count=2)] for h in range(2)]
  assert per_host == [[[0], [2], [4]], [[1], [3], [-1]]]
  sft = list(iterate_once(_sft_records(3), SftBatcher(tok, buckets=(16,), max_prompt_len=3),
                          batch_size=2, process_index=0, process_count=1))
  assert sft[-1].token_mask[1].sum() == 0 and sft[-1].loss_mask[1].sum() == 0
  with pytest.raises(DataError, match="empty dataset"):
    list(iterate_once([], PromptBatcher(tok, buckets=(2,)), batch_size=2))
