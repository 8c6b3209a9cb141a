"""The pipeline's evaluation: every model against the SFT policy, as the paper does.

For the vanilla LMs (small and large, zero-shot and few-shot prompted), SFT, PPO and
PPO-ptx: greedy answers to held-out prompts, their gold score, their win rate against
the SFT policy's answers as judged by the simulated labelers (training and held-out
labelers separately), the KL to SFT on the model's own samples, and the loss on
held-out pretraining documents (the alignment tax).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from instructjax import evaluation, losses, sampling, sharding, stage_export
from instructjax.config import model_config
from instructjax.data import pipeline, records, sources, testbed, tokenize
from instructjax.models import CausalLM

N_SAMPLES = 4  # prompts whose answers the report shows for every model


@dataclasses.dataclass(frozen=True)
class Contestant:
  name: str
  label: str
  stage: str  # whose export holds its params
  model_section: str  # config section of its architecture
  few_shot: bool = False


CONTESTANTS = (
    Contestant("vanilla", "Vanilla LM (zero-shot)", "pretrain", "model"),
    Contestant("vanilla_fewshot", "Vanilla LM (few-shot prompted)", "pretrain", "model", True),
    Contestant("vanilla_big", "Large vanilla LM (zero-shot)", "pretrain_big", "big_model"),
    Contestant("vanilla_big_fewshot", "Large vanilla LM (few-shot prompted)", "pretrain_big",
               "big_model", True),
    Contestant("sft", "SFT", "sft", "model"),
    Contestant("ppo", "PPO", "ppo", "model"),
    Contestant("ppo_ptx", "PPO-ptx", "ppo_ptx", "model"),
)


def few_shot_prompt(demos: Sequence[testbed.Example], example: testbed.Example) -> str:
  shots = "".join(f"{d.prompt}{d.answer}\n\n" for d in demos)
  return shots + example.prompt


def win_rate(examples, responses: Sequence[str], baseline: Sequence[str], labelers) -> dict:
  """Expected fraction of comparisons the responses win against the baseline's, with a
  95% normal-approximation interval over prompts."""
  per_prompt = np.array([
      np.mean([l.preference_probability(e, a, b) for l in labelers])
      for e, a, b in zip(examples, responses, baseline)])  # [N]
  rate = float(per_prompt.mean())
  half = 1.96 * float(per_prompt.std(ddof=1)) / np.sqrt(len(per_prompt))
  return {"rate": rate, "ci_low": float(rate - half), "ci_high": float(rate + half),
          "n": len(per_prompt)}


@functools.partial(jax.jit, static_argnames=("policy", "reference", "prompt_len"))
def _kl_sums(params, ref_params, tokens, token_mask, response_mask, *, policy, reference,
             prompt_len):
  """Per-sequence sum of log pi(y_t) - log pi_ref(y_t) over response tokens. -> [B]"""
  def logprobs(model, p):
    logits = model.apply({"params": p}, tokens, token_mask=token_mask)[:, prompt_len - 1:-1]
    return losses.token_logprobs(logits, tokens[:, prompt_len:])  # [B, N]
  diff = logprobs(policy, params) - logprobs(reference, ref_params)
  return jnp.sum(jnp.where(response_mask > 0, diff, 0.0), axis=-1)


def kl_to_reference(policy, params, reference, ref_params, prompts: Sequence[str], tokenizer,
                    *, prompt_len: int, max_new_tokens: int, mesh, rng) -> float:
  """Monte-Carlo KL(pi || pi_ref) in nats per response, on temperature-1 samples."""
  config = sampling.SamplingConfig(max_new_tokens=max_new_tokens,
                                   eos_id=tokenize.eos_id(tokenizer),
                                   pad_id=tokenize.pad_id(tokenizer))
  batcher = pipeline.PromptBatcher(tokenizer, buckets=(prompt_len,))
  rows = [records.PromptRecord(p) for p in prompts]
  kls = []
  for i, batch in enumerate(pipeline.iterate_once(rows, batcher, batch_size=32)):
    real = np.asarray(batch.example_index) >= 0
    batch = sharding.shard_batch(evaluation.fill_padding_rows(batch), mesh)
    out = sampling.generate(policy, params, batch.prompt_tokens, batch.prompt_mask,
                            jax.random.fold_in(rng, i), config=config)
    token_mask = jnp.concatenate([batch.prompt_mask, out.response_mask], axis=1)
    kl = _kl_sums(params, ref_params, out.tokens, token_mask, out.response_mask,
                  policy=policy, reference=reference, prompt_len=prompt_len)
    kls.extend(np.asarray(kl)[real])
  return float(np.mean(kls))


def evaluate_all(config: ml_collections.ConfigDict, run_dir: str) -> dict:
  """-> the 'models' and 'head_to_head' sections of results.json."""
  data = sources.load_data(config, run_dir)
  bed = data.testbed
  if bed is None:
    raise ValueError("the pipeline's evaluation needs the embedded testbed "
                     "(config.data.source='testbed'): its labelers and gold scores")
  mesh = sharding.make_mesh(**config.mesh)
  tok = data.tokenizer
  examples = bed.eval_prompts[:config.eval.prompts]
  demos = bed.sft[:config.eval.few_shot]
  heldout_docs = data.read("pretrain_heldout")
  doc_batcher = pipeline.PretrainBatcher(tok, buckets=tuple(config.data.buckets))
  train_labelers = [l for l in bed.labelers if not l.held_out]
  heldout_labelers = [l for l in bed.labelers if l.held_out]
  greedy = evaluation.greedy_config(tok, max_new_tokens=config.eval.max_new_tokens)
  rng = jax.random.PRNGKey(config.seed + 7)

  loaded: dict[str, tuple[Any, Any]] = {}

  def load(c: Contestant):
    if c.stage not in loaded:
      model = CausalLM(model_config(config[c.model_section], field=f"config.{c.model_section}"))
      params, _ = stage_export.load_export(
          os.path.join(run_dir, c.stage), sharding.abstract_params(model, mesh),
          expected_stages=(c.stage,))
      loaded[c.stage] = (model, params)
    return loaded[c.stage]

  answers, results = {}, {}
  for c in CONTESTANTS:
    model, params = load(c)
    if c.few_shot:
      prompts = [few_shot_prompt(demos, e) for e in examples]
      prompt_len = model.config.max_len - config.eval.max_new_tokens
    else:
      prompts = [e.prompt for e in examples]
      prompt_len = config.data.max_prompt_len
    answers[c.name] = evaluation.sample_responses(
        model, params, prompts, tok, sampling_config=greedy, batch_size=32,
        buckets=(prompt_len,), mesh=mesh, rng=rng)
    results[c.name] = {
        "label": c.label, "params": model.config.num_params(),
        "gold_score": evaluation.mean_gold_score(examples, answers[c.name]),
        "pretrain_loss": evaluation.lm_loss(model.apply, params, heldout_docs, doc_batcher,
                                            batch_size=32, mesh=mesh),
        "samples": [{"prompt": e.prompt, "response": r, "gold": testbed.score(e, r)}
                    for e, r in zip(examples[:N_SAMPLES], answers[c.name])],
    }
  sft_model, sft_params = load(CONTESTANTS[4])
  for c in CONTESTANTS:
    results[c.name]["win_rate_vs_sft"] = {
        "train_labelers": win_rate(examples, answers[c.name], answers["sft"], train_labelers),
        "heldout_labelers": win_rate(examples, answers[c.name], answers["sft"],
                                     heldout_labelers)}
    if c.few_shot:
      results[c.name]["kl_to_sft"] = None  # its prompts differ from SFT's
      continue
    model, params = load(c)
    results[c.name]["kl_to_sft"] = kl_to_reference(
        model, params, sft_model, sft_params, [e.prompt for e in examples], tok,
        prompt_len=config.data.max_prompt_len, max_new_tokens=config.eval.max_new_tokens,
        mesh=mesh, rng=rng)
  head_to_head = {}
  for rival in ("vanilla_big", "vanilla_big_fewshot"):
    for group, labelers in (("train_labelers", train_labelers),
                            ("heldout_labelers", heldout_labelers)):
      head_to_head[f"ppo_ptx_vs_{rival}_{group}"] = win_rate(
          examples, answers["ppo_ptx"], answers[rival], labelers)
  return {"models": results, "head_to_head": head_to_head}
