"""The alignment tax measured on data that is not the PPO-ptx mix.

The paper measured its alignment tax on public NLP benchmarks, none of which is its
pretraining mix; measured as the loss on held-out pretraining text instead, PPO-ptx
would win by construction, since it trains on that very distribution. Here the tax is
accuracy on the testbed's probe benchmarks (`testbed.probes`: multiple choice, scored
HellaSwag style by the LM's likelihood of each candidate) and LM loss on documents of
forms the pretraining text never takes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from instructjax import losses, multihost, sharding
from instructjax.data import batching, records, tokenize
from instructjax.data.batches import TokenBatch
from instructjax.data.testbed.probes import ProbeItem
from instructjax.evaluation import measures


@functools.partial(jax.jit, static_argnames="apply_fn")
def _target_logprob_sums(params, batch: TokenBatch, *, apply_fn):
  """Per row, the summed log-probability of the tokens `loss_mask` marks: [B] float32."""
  logits = apply_fn({"params": params}, batch.tokens, token_mask=batch.token_mask)  # [B, T, V]
  logprobs = losses.token_logprobs(logits[:, :-1], batch.tokens[:, 1:])  # [B, T - 1]
  return losses.masked_sum(logprobs, batch.loss_mask[:, 1:], axis=1)  # [B]


def _token_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
  return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def candidate_scores(model, params, items: Sequence[ProbeItem], tokenizer, *, mesh,
                     batch_size: int = 32,
                     buckets: Sequence[int] = (32, 64)) -> list[np.ndarray]:
  """Per item, the mean per-token log-probability of each candidate given the context:
  [K] float64 each.

  Per token, not summed, so a candidate is not penalised for taking more tokens (a
  number or rare word split in two); within an item the candidates are of one kind, so
  the normalisation rarely decides. The context and candidate are tokenized apart (an
  exact boundary, as the pipelines tokenize prompt and response) and the sequence starts
  with the context's first token, without BOS, as every pipeline's sequences do.
  Sequences are right-padded to the smallest of `buckets` that fits their batch, and
  every batch has `batch_size` rows, so the forward pass compiles at most len(buckets)
  times.
  """
  sharding.check_batch_divides(batch_size, mesh, field="batch_size")
  contexts = _token_ids(tokenizer, [item.context for item in items])
  candidates = _token_ids(tokenizer, [c for item in items for c in item.candidates])
  # Flattened over (item, candidate): the sequence and where its candidate starts.
  seqs, starts = [], []
  flat = iter(candidates)
  for item, context in zip(items, contexts):
    for candidate, ids in zip(item.candidates, flat):
      if not ids:
        raise ValueError(f"candidate {candidate!r} of {item.context!r} has no tokens")
      seqs.append(np.asarray(context + ids, np.int32))
      starts.append(len(context))
  sums = []
  pad = tokenize.pad_id(tokenizer)
  for begin in range(0, len(seqs), batch_size):
    chunk = seqs[begin:begin + batch_size]
    length = batching.bucket_length(max(len(s) for s in chunk), buckets)
    tokens = np.full((batch_size, length), pad, np.int32)  # [B, T]
    token_mask = np.zeros((batch_size, length), np.int32)  # [B, T]
    target_mask = np.zeros((batch_size, length), np.int32)  # [B, T]: candidate tokens
    for row, (seq, start) in enumerate(zip(chunk, starts[begin:])):
      tokens[row, :len(seq)] = seq
      token_mask[row, :len(seq)] = 1
      target_mask[row, start:len(seq)] = 1
    batch = sharding.shard_global_batch(
        TokenBatch(tokens=tokens, token_mask=token_mask, loss_mask=target_mask), mesh)
    row_sums = multihost.to_host(_target_logprob_sums(params, batch, apply_fn=model.apply))
    sums.extend(row_sums[:len(chunk)])
  per_token = np.asarray(sums, np.float64) / [len(s) - b for s, b in zip(seqs, starts)]
  out, begin = [], 0
  for item in items:
    out.append(per_token[begin:begin + len(item.candidates)])  # [K]
    begin += len(item.candidates)
  return out


def probe_accuracy(model, params, items: Mapping[str, Sequence[ProbeItem]], tokenizer, *,
                   mesh, batch_size: int = 32,
                   buckets: Sequence[int] = (32, 64)) -> dict[str, dict]:
  """{benchmark: {"accuracy", "n", "chance"}} plus "average", the unweighted mean over
  the benchmarks (n: all items). An item counts as right when its right candidate has
  the highest `candidate_scores` (ties go to the first candidate)."""
  if not items or not all(items.values()):
    raise ValueError("probe_accuracy needs at least one item in every benchmark")
  flat = [item for group in items.values() for item in group]
  scores = iter(candidate_scores(model, params, flat, tokenizer, mesh=mesh,
                                 batch_size=batch_size, buckets=buckets))
  out = {}
  for name, group in items.items():
    right = [int(np.argmax(next(scores))) == item.answer for item in group]
    out[name] = {"accuracy": float(np.mean(right)), "n": len(group),
                 "chance": float(np.mean([1 / len(item.candidates) for item in group]))}
  out["average"] = {
      "accuracy": float(np.mean([r["accuracy"] for r in out.values()])),
      "n": len(flat),
      "chance": float(np.mean([r["chance"] for r in out.values()]))}
  return out


def distinct_text_loss(model, params, documents: Sequence[str], tokenizer, *, mesh,
                       buckets: Sequence[int], batch_size: int = 32) -> float:
  """Mean next-token loss on `documents` (`probes.distinct_documents`), each batched as
  a pretraining document is: text + EOS, every token after the first predicted."""
  rows = [records.TextRecord(d) for d in documents]
  batcher = batching.PretrainBatcher(tokenizer, buckets=buckets)
  return measures.lm_loss(model.apply, params, rows, batcher, batch_size=batch_size,
                          mesh=mesh)
