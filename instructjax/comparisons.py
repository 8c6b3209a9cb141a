"""Comparison data as InstructGPT collected it: labelers rank the SFT policy's outputs.

The testbed ships rankings of synthetic candidates. Before the RM is trained, part of
each prompt's K responses are replaced by samples from the SFT policy and the same
(simulated) labeler ranks the new set, so the RM sees the distribution PPO will
optimise against.
"""

from __future__ import annotations

import os
import random

import jax

from instructjax import sampling
from instructjax.data import records, tokenize
from instructjax.evaluation import measures


def with_policy_samples(rankings, labelers, policy, params, tokenizer, *, fraction: float,
                        temperature: float, max_new_tokens: int, prompt_len: int, mesh,
                        seed: int) -> list[records.RankingRecord]:
  """rankings: testbed Rankings; -> RankingRecords with round(K * fraction) responses per
  prompt sampled from the policy. Empty samples keep the synthetic response, and so do
  samples cut at max_new_tokens: the ranking batcher ends every response with EOS, so a
  cut sample would reach the RM as a finished one."""
  by_id = {l.id: l for l in labelers}
  wanted = [(i, slot) for i, r in enumerate(rankings)
            for slot in range(round(len(r.responses) * fraction))]
  config = sampling.SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                   eos_id=tokenize.eos_id(tokenizer),
                                   pad_id=tokenize.pad_id(tokenizer))
  samples, ended = measures.sample_responses_and_ends(
      policy, params, [rankings[i].example.prompt for i, _ in wanted], tokenizer,
      sampling_config=config, batch_size=64, buckets=(prompt_len,), mesh=mesh,
      rng=jax.random.PRNGKey(seed))
  responses = [list(r.responses) for r in rankings]
  for (i, slot), sample, end in zip(wanted, samples, ended):
    if end and sample.strip():
      responses[i][slot] = sample
  rng = random.Random(seed)
  out = []
  for ranking, texts in zip(rankings, responses):
    labeler = by_id[ranking.labeler]
    order = labeler.rank(ranking.example, texts, rng)
    out.append(records.RankingRecord(ranking.example.prompt, tuple(texts), tuple(order),
                                     ranking.labeler))
  return out


def cached(path: str, build) -> list[records.RankingRecord]:
  """Reads path if it exists, else builds the records and writes them atomically."""
  if os.path.exists(path):
    return records.read_jsonl(path, "ranking").records
  rows = build()
  records.write_jsonl(path, rows)
  return rows


