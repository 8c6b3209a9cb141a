"""The pipeline's evaluation: every model against the SFT policy, as the paper does.

For the vanilla LMs (small and large, zero-shot and few-shot prompted), SFT, PPO and
PPO-ptx: greedy answers to the test prompts, their gold score (overall, per task family,
and its paired gain over SFT), their win rate against the SFT policy's answers as judged
by the simulated labelers (training and held-out labelers separately), the alignment
tax off the ptx data (accuracy on held-out task formats, loss on distinct text), the
loss on held-out documents of the ptx distribution,
and on one temperature-1 sample per prompt: the KL to SFT, the RM's normalised score
and the gold score (each method's point on the reward-KL frontier). The methods beyond
InstructGPT (DPO, RLOO, GRPO) are contestants when the run trains them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from instructjax import (hf_import, losses, multihost, rollout, sampling, sharding,
                         stage_export, stage_table)
from instructjax.data import batching, records, sources, testbed, tokenize
from instructjax.data.testbed import probes
from instructjax.evaluation import measures, tax
from instructjax.evaluation.contestants import (BASELINE, CHAMPION, LABELER_GROUPS, RIVALS,
                                               Contestant, contestant, contestants_for)
from instructjax.models import CausalLM
from instructjax.reward import load_reward_model, model_config_of

N_SAMPLES = 4  # prompts whose answers the report shows for every model


def few_shot_prompt(demos: Sequence[testbed.Example], example: testbed.Example) -> str:
  shots = "".join(f"{d.prompt}{d.answer}\n\n" for d in demos)
  return shots + example.prompt


def win_rate(examples, responses: Sequence[str], baseline: Sequence[str], labelers) -> dict:
  """Expected fraction of comparisons the responses win against the baseline's, with a
  95% normal-approximation interval over prompts."""
  return measures.mean_with_ci([
      np.mean([l.preference_probability(e, a, b) for l in labelers])
      for e, a, b in zip(examples, responses, baseline)])


def paired_gain(measure, examples, responses: Sequence[str],
                baseline: Sequence[str]) -> dict:
  """Mean paired difference of measure(example, response) (responses minus baseline,
  prompt by prompt) with its 95% normal-approximation interval."""
  return measures.mean_with_ci([measure(e, a) - measure(e, b)
                                for e, a, b in zip(examples, responses, baseline)])


@functools.partial(jax.jit, static_argnames=("policy", "reference", "prompt_len"))
def _kl_sums(params, ref_params, tokens, token_mask, response_mask, *, policy, reference,
             prompt_len):
  """Per-sequence sum of log pi(y_t) - log pi_ref(y_t) over response tokens. -> [B]"""
  def logprobs(model, p):
    logits = model.apply({"params": p}, tokens, token_mask=token_mask)[:, prompt_len - 1:-1]
    return losses.token_logprobs(logits, tokens[:, prompt_len:])  # [B, N]
  diff = logprobs(policy, params) - logprobs(reference, ref_params)
  return jnp.sum(jnp.where(response_mask > 0, diff, 0.0), axis=-1)


_rm_scores = jax.jit(rollout.response_reward, static_argnames="apply_fn")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardModel:
  """The RM the policies were trained against, to score their samples."""
  model: Any  # a ScalarModel
  params: Any
  bias: float  # reward_bias: subtracted, so demonstrations score 0 on average


def sampled_measures(policy, params, reference, ref_params, prompts: Sequence[str], tokenizer,
                     *, prompt_len: int, max_new_tokens: int, mesh, rng,
                     reward: RewardModel | None = None) -> dict:
  """On one temperature-1 sample per prompt: the Monte-Carlo KL(pi || pi_ref) in nats
  per response, the RM's mean normalised score (with `reward`), and the responses.
  -> {"kl": float, "rm_score": float | None, "responses": [str]}"""
  config = sampling.SamplingConfig(max_new_tokens=max_new_tokens,
                                   eos_id=tokenize.eos_id(tokenizer),
                                   pad_id=tokenize.pad_id(tokenizer))
  batcher = batching.PromptBatcher(tokenizer, buckets=(prompt_len,))
  rows = [records.PromptRecord(p) for p in prompts]
  kls, scores, responses = [], [], []
  for i, batch in enumerate(batching.iterate_once(rows, batcher, batch_size=32)):
    batch = sharding.shard_batch(measures.fill_padding_rows(batch), mesh)
    out = sampling.generate(policy, params, batch.prompt_tokens, batch.prompt_mask,
                            jax.random.fold_in(rng, i), config=config)
    token_mask = jnp.concatenate([batch.prompt_mask, out.response_mask], axis=1)
    kl = _kl_sums(params, ref_params, out.tokens, token_mask, out.response_mask,
                  policy=policy, reference=reference, prompt_len=prompt_len)
    # Every row on every process (a multi-host run), in the prompts' order.
    real, kl, tokens, response_mask = multihost.to_host(
        (batch.example_index >= 0, kl, out.tokens, out.response_mask))
    kls.extend(kl[real])
    if reward is not None:
      raw = multihost.to_host(_rm_scores(reward.model.apply, reward.params, out.tokens,
                                         token_mask, out.response_mask))
      scores.extend(raw[real] - reward.bias)
    texts = measures.decode_responses(tokenizer, tokens[:, prompt_len:], response_mask,
                                      eos_id=tokenize.eos_id(tokenizer))
    responses.extend(t for t, keep in zip(texts, real) if keep)
  return {"kl": float(np.mean(kls)),
          "rm_score": float(np.mean(scores)) if reward is not None else None,
          "responses": responses}


class Models:
  """Each stage's exported policy (or its EMA), loaded once, with its architecture."""

  def __init__(self, config, run_dir: str, mesh):
    self._config, self._run_dir, self._mesh = config, run_dir, mesh
    self._loaded: dict[tuple[str, bool], tuple[Any, Any]] = {}

  def __call__(self, stage: str, *, ema: bool = False):
    if (stage, ema) not in self._loaded:
      section = stage_table.stage(stage).model_section
      model = CausalLM(hf_import.resolve_model(self._config, self._run_dir, section))
      where = os.path.join(self._run_dir, stage, "ema" if ema else "")
      params, card = stage_export.load_export(
          where, sharding.abstract_params(model, self._mesh), expected_stages=(stage,))
      if card.ema != ema:
        raise ValueError(f"{where}: export card says ema={card.ema}, expected {ema}")
      self._loaded[stage, ema] = (model, params)
    return self._loaded[stage, ema]


def evaluate_all(config: ml_collections.ConfigDict, run_dir: str) -> dict:
  """-> the 'models' and 'head_to_head' sections of results.json:
  models[name] = {label, stage, params, gold_score, gold_by_family, credit, remark_rate,
  extra_words, pretrain_loss, probe_accuracy, distinct_text_loss, samples,
  win_rate_vs_sft[labeler group], gold_gain_vs_sft, credit_gain_vs_sft, kl_to_sft,
  rm_score_sampled, gold_score_sampled}; head_to_head[rival][labeler group] = CHAMPION's
  win rate against the rival's answers."""
  data = sources.load_data(config, run_dir)
  bed = data.testbed
  if bed is None:
    raise ValueError("the pipeline's evaluation needs the embedded testbed "
                     "(config.data.source='testbed'): its labelers and gold scores")
  mesh = sharding.make_mesh(**config.mesh)
  examples = bed.eval_prompts[:config.eval.prompts]
  train_group, heldout_group = LABELER_GROUPS
  judges = {train_group: [l for l in bed.labelers if not l.held_out],
            heldout_group: [l for l in bed.labelers if l.held_out]}
  models = Models(config, run_dir, mesh)
  reward = _reward_model(config, run_dir, mesh)
  rng = jax.random.PRNGKey(config.seed + 7)
  heldout_docs = data.read("pretrain_heldout")
  answers, results = {}, {}
  lm_measured = {}  # (stage, ema) -> what depends on the params only, not the prompts
  for c in contestants_for(config):
    model, params = models(c.stage, ema=c.ema)
    answers[c.name], results[c.name] = _answer(config, data, c, model, params, examples,
                                               mesh=mesh, rng=rng)
    if (c.stage, c.ema) not in lm_measured:  # a few-shot contestant shares its stage's
      lm_measured[c.stage, c.ema] = _lm_measures(config, data.tokenizer, model, params,
                                                 heldout_docs, mesh=mesh)
    results[c.name].update(lm_measured[c.stage, c.ema])
  baseline_model, baseline_params = models(contestant(BASELINE).stage)
  for c in contestants_for(config):
    results[c.name]["win_rate_vs_sft"] = {
        group: win_rate(examples, answers[c.name], answers[BASELINE], labelers)
        for group, labelers in judges.items()}
    results[c.name]["gold_gain_vs_sft"] = paired_gain(testbed.score, examples,
                                                      answers[c.name], answers[BASELINE])
    results[c.name]["credit_gain_vs_sft"] = paired_gain(testbed.credit, examples,
                                                        answers[c.name], answers[BASELINE])
    if c.few_shot:  # its prompts differ from SFT's
      results[c.name].update(kl_to_sft=None, rm_score_sampled=None, gold_score_sampled=None)
      continue
    model, params = models(c.stage, ema=c.ema)
    sampled = sampled_measures(
        model, params, baseline_model, baseline_params, [e.prompt for e in examples],
        data.tokenizer, prompt_len=config.data.max_prompt_len,
        max_new_tokens=config.eval.max_new_tokens, mesh=mesh, rng=rng, reward=reward)
    results[c.name].update(
        kl_to_sft=sampled["kl"], rm_score_sampled=sampled["rm_score"],
        gold_score_sampled=measures.mean_gold_score(examples, sampled["responses"]))
  head_to_head = {rival: {group: win_rate(examples, answers[CHAMPION], answers[rival], labelers)
                          for group, labelers in judges.items()}
                  for rival in RIVALS}
  return {"models": results, "head_to_head": head_to_head}


def _reward_model(config, run_dir: str, mesh) -> RewardModel:
  """The RM the RL stages were trained against, from WORKDIR/rm."""
  model, params, card = load_reward_model(model_config_of(config, run_dir),
                                          os.path.join(run_dir, "rm"), mesh)
  return RewardModel(model=model, params=params, bias=card.reward_bias)


def tax_measures(config, tokenizer, model, params, *, split: str, mesh) -> dict:
  """The alignment tax off the ptx data: accuracy on the held-out task formats
  (`probes.probe_items`) and LM loss on text of kinds the pretraining text lacks, each
  drawn for `split` ("val" for choices, "test" for the final evaluation)."""
  items = probes.probe_items(random.Random(f"instructjax-probes/{split}/{config.seed}"),
                             per_benchmark=config.eval.probes_per_benchmark)
  documents = probes.distinct_documents(
      random.Random(f"instructjax-distinct/{split}/{config.seed}"),
      config.eval.distinct_documents)
  return {
      "probe_accuracy": tax.probe_accuracy(model, params, items, tokenizer, mesh=mesh),
      "distinct_text_loss": tax.distinct_text_loss(
          model, params, documents, tokenizer, mesh=mesh, buckets=tuple(config.data.buckets)),
  }


def _lm_measures(config, tokenizer, model, params, heldout_docs, *, mesh) -> dict:
  """The alignment tax off the ptx data (test split) and the loss on heldout_docs."""
  doc_batcher = batching.PretrainBatcher(tokenizer, buckets=tuple(config.data.buckets))
  return {
      **tax_measures(config, tokenizer, model, params, split="test", mesh=mesh),
      "pretrain_loss": measures.lm_loss(model.apply, params, heldout_docs, doc_batcher,
                                        batch_size=32, mesh=mesh),
  }


def _answer(config, data, c: Contestant, model, params, examples, *, mesh, rng):
  """-> (c's greedy answers to examples, its results entry so far: gold score and its
  parts, samples)."""
  tok = data.tokenizer
  if c.few_shot:
    demos = data.testbed.sft[:config.eval.few_shot]
    prompts = [few_shot_prompt(demos, e) for e in examples]
    prompt_len = model.config.max_len - config.eval.max_new_tokens
  else:
    prompts = [e.prompt for e in examples]
    prompt_len = config.data.max_prompt_len
  answers = measures.greedy_answers(model, params, prompts, tok,
                                    max_new_tokens=config.eval.max_new_tokens,
                                    prompt_len=prompt_len, mesh=mesh, rng=rng)
  return answers, {
      "label": c.label, "stage": c.stage, "params": model.config.num_params(),
      "gold_score": measures.mean_gold_score(examples, answers),
      "gold_by_family": measures.gold_by_family(examples, answers),
      **measures.correctness_and_habit(examples, answers),
      "samples": [{"prompt": e.prompt, "response": r, "gold": testbed.score(e, r)}
                  for e, r in zip(examples[:N_SAMPLES], answers)],
  }
