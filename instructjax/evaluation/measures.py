"""Evaluations shared by the stages and the final report: held-out LM loss, sampled
responses to prompts, and their gold scores on the testbed."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import numpy as np

from instructjax import losses, multihost, sampling, sharding
from instructjax.data import batching, records, testbed, tokenize
from instructjax.data.testbed import world
from instructjax.data.batches import PromptBatch


@functools.partial(jax.jit, static_argnames="apply_fn")
def _loss_sums(params, batch, *, apply_fn):
  logits = apply_fn({"params": params}, batch.tokens, token_mask=batch.token_mask)
  _, metrics = losses.next_token_loss(logits=logits, tokens=batch.tokens,
                                      loss_mask=batch.loss_mask)
  return metrics["loss_sum"], metrics["token_count"]


def lm_loss(apply_fn, params, rows: Sequence[Any], batcher, *, batch_size: int,
            mesh, max_batches: int = 0) -> float:
  """Mean next-token loss over rows' masked tokens (every row once, or max_batches)."""
  total, count = 0.0, 0.0
  for i, batch in enumerate(batching.iterate_once(rows, batcher, batch_size=batch_size)):
    if max_batches and i >= max_batches:
      break
    loss_sum, n = _loss_sums(params, sharding.shard_batch(batch, mesh), apply_fn=apply_fn)
    total, count = total + float(loss_sum), count + float(n)
  return total / max(count, 1.0)


def fill_padding_rows(batch: PromptBatch) -> PromptBatch:
  """iterate_once pads its last batch with empty rows; the sampler needs a real token in
  every row, so those get one pad token (their answers are discarded)."""
  mask = np.array(batch.prompt_mask)
  mask[mask.sum(axis=1) == 0, -1] = 1
  return batch.replace(prompt_mask=mask)


def sample_responses(model, params, prompts: Sequence[str], tokenizer, *,
                     sampling_config: sampling.SamplingConfig, batch_size: int,
                     buckets: Sequence[int], mesh, rng: jax.Array) -> list[str]:
  """Decoded responses (up to EOS) to each prompt, batched and left-padded."""
  texts, _ = sample_responses_and_ends(
      model, params, prompts, tokenizer, sampling_config=sampling_config,
      batch_size=batch_size, buckets=buckets, mesh=mesh, rng=rng)
  return texts


def greedy_answers(model, params, prompts: Sequence[str], tokenizer, *, max_new_tokens: int,
                   prompt_len: int, mesh, rng: jax.Array) -> list[str]:
  """Greedy responses to prompts (left-padded to prompt_len), as every evaluation takes
  them."""
  return sample_responses(
      model, params, prompts, tokenizer,
      sampling_config=greedy_config(tokenizer, max_new_tokens=max_new_tokens),
      batch_size=32, buckets=(prompt_len,), mesh=mesh, rng=rng)


def sample_responses_and_ends(model, params, prompts: Sequence[str], tokenizer, *,
                              sampling_config: sampling.SamplingConfig, batch_size: int,
                              buckets: Sequence[int], mesh,
                              rng: jax.Array) -> tuple[list[str], list[bool]]:
  """-> (decoded responses as `sample_responses` gives them, whether each ended with EOS
  rather than at max_new_tokens)."""
  batcher = batching.PromptBatcher(tokenizer, buckets=buckets)
  rows = [records.PromptRecord(p) for p in prompts]
  texts: list[str] = []
  ends: list[bool] = []
  for i, batch in enumerate(batching.iterate_once(rows, batcher, batch_size=batch_size)):
    batch = sharding.shard_batch(fill_padding_rows(batch), mesh)
    result = multihost.to_host(sampling.generate(
        model, params, batch.prompt_tokens, batch.prompt_mask, jax.random.fold_in(rng, i),
        config=sampling_config))  # every process decodes every row
    texts.extend(decode_responses(tokenizer, result.response_tokens, result.response_mask,
                                  eos_id=sampling_config.eos_id))
    ends.extend(bool(f) for f in result.finished)
  return texts[:len(prompts)], ends[:len(prompts)]


def decode_responses(tokenizer, response_tokens, response_mask, *, eos_id) -> list[str]:
  """[B, N] token ids -> texts, without padding and EOS."""
  tokens = np.asarray(response_tokens)
  mask = np.asarray(response_mask) > 0
  texts = []
  for row, keep in zip(tokens, mask):
    ids = [int(t) for t, k in zip(row, keep) if k and int(t) != eos_id]
    texts.append(tokenizer.decode(ids, skip_special_tokens=False))
  return texts


def greedy_config(tokenizer, *, max_new_tokens: int) -> sampling.SamplingConfig:
  return sampling.SamplingConfig(max_new_tokens=max_new_tokens, greedy=True,
                                 eos_id=tokenize.eos_id(tokenizer),
                                 pad_id=tokenize.pad_id(tokenizer))


def mean_with_ci(per_prompt) -> dict:
  """The mean of per-prompt values [N] with a 95% normal-approximation interval."""
  per_prompt = np.asarray(per_prompt, np.float64)  # [N]
  rate = float(per_prompt.mean())
  half = 1.96 * float(per_prompt.std(ddof=1) / np.sqrt(len(per_prompt)))
  return {"rate": rate, "ci_low": rate - half, "ci_high": rate + half, "n": len(per_prompt)}


def mean_gold_score(examples, responses: Sequence[str]) -> float:
  return float(np.mean([testbed.score(e, r) for e, r in zip(examples, responses)]))


def correctness_and_habit(examples, responses: Sequence[str]) -> dict[str, float]:
  """What the gold score is made of: mean credit (how much of the answer is right,
  before the charge for extra words), the share of answers with a polite remark, and
  mean extra words. Tells answers that got more right from answers that only lost
  the remark."""
  return {
      "credit": float(np.mean([testbed.credit(e, r) for e, r in zip(examples, responses)])),
      "remark_rate": float(np.mean([any(m in r for m in world.REMARKS) for r in responses])),
      "extra_words": float(np.mean([testbed.extra_words(e, r)
                                    for e, r in zip(examples, responses)])),
  }


def gold_by_family(examples, responses: Sequence[str]) -> dict[str, float]:
  """Mean gold score per task family, in testbed.FAMILIES order (families present)."""
  scores: dict[str, list[float]] = {}
  for e, r in zip(examples, responses):
    scores.setdefault(e.family, []).append(testbed.score(e, r))
  return {f: float(np.mean(scores[f])) for f in testbed.FAMILIES if f in scores}


