"""Stage 3's experience: score sampled responses and turn the scores into advantages.

The environment is a bandit: a prompt, a sampled response (step 1, `sampling.generate`),
the reward model's score at the end. Numbered steps follow the InstructGPT / Ziegler et
al. recipe; every function here is pure and jit-compiled.

The advantage estimator is a config choice (`advantage_estimators`): GAE with a value
model (PPO), or a critic-free group baseline over the G samples drawn for each prompt,
which needs no value model (RLOO, GRPO).
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp

from instructjax import advantage_estimators, losses, rl, sampling
from instructjax.models import last_token_value


def check_estimator(advantage: str, group_size: int, *, where: str) -> None:
  """ValueError naming the field when the estimator and its group size disagree."""
  wrong = advantage_estimators.problem(advantage, group_size)
  if wrong:
    raise ValueError(f"{where}.{wrong[0]}={wrong[1]}")


@flax.struct.dataclass
class Rollout:
  """One batch of experience. S = P + N: prompt (left-padded) then response."""
  tokens: jax.Array  # [B, S] int32
  token_mask: jax.Array  # [B, S] int32: prompt and response tokens up to EOS
  response_mask: jax.Array  # [B, N] int32
  logprobs: jax.Array  # [B, N] policy log-probs at sampling time (temperature-scaled)
  ref_logprobs: jax.Array  # [B, N] the frozen SFT policy's log-probs
  values: jax.Array  # [B, N] value of the state before each response token (0: no critic)
  advantages: jax.Array  # [B, N] whitened GAE advantages, or the group baseline's
  returns: jax.Array  # [B, N] GAE returns (value targets; 0: no critic)
  scores: jax.Array  # [B] normalised RM score, with the no-EOS penalty applied
  raw_scores: jax.Array  # [B] RM score before normalisation
  finished: jax.Array  # [B] bool: the response ended with EOS
  example_index: jax.Array  # [B] int32: prompt's row in its dataset


def response_logprobs(apply_fn, params, tokens, token_mask, *, prompt_len: int,
                      temperature: float):
  """Log-probs of the response tokens tokens[:, P:] under temperature-scaled logits,
  the same distribution the sampler drew them from. -> ([B, N], logits [B, N, V])"""
  logits = apply_fn({"params": params}, tokens, token_mask=token_mask)  # [B, S, V]
  logits = logits[:, prompt_len - 1:-1] / temperature  # [B, N, V]: position t predicts t+1
  return losses.token_logprobs(logits, tokens[:, prompt_len:]), logits


def response_values(apply_fn, params, tokens, token_mask, response_mask, *, prompt_len: int):
  """V(state before response token t) for every t; tokens, token_mask: [B, S],
  response_mask: [B, N]. -> [B, N]"""
  values = apply_fn({"params": params}, tokens, token_mask=token_mask,
                    response_mask=_over_sequence(response_mask, prompt_len))  # [B, S]
  return values[:, prompt_len - 1:-1]


def response_reward(apply_fn, params, tokens, token_mask, response_mask):
  """The RM's raw score of each prompt + response, at its last token; tokens, token_mask:
  [B, P + N], response_mask: [B, N]. -> [B]"""
  prompt_len = tokens.shape[1] - response_mask.shape[1]
  values = apply_fn({"params": params}, tokens, token_mask=token_mask,
                    response_mask=_over_sequence(response_mask, prompt_len))  # [B, S]
  return last_token_value(values, token_mask)


def _over_sequence(response_mask, prompt_len: int):
  """[B, N] response mask -> [B, P + N], 0 over the prompt."""
  return jnp.pad(response_mask, ((0, 0), (prompt_len, 0)))


@functools.partial(jax.jit, static_argnames=(
    "policy", "value_model", "reward_model", "temperature", "gamma", "lam",
    "whiten_rewards", "no_eos_penalty", "advantage", "group_size"))
def score_rollout(params, sample: sampling.SampleOutput, prompt_mask, example_index, kl_coef,
                  *, policy, value_model, reward_model, temperature: float, reward_bias,
                  gamma: float, lam: float, whiten_rewards: bool, no_eos_penalty: float,
                  advantage: str = "gae", group_size: int = 1):
  """Steps 2-6 of the rollout on responses that `sampling.generate` sampled (step 1).
  params: {'policy', 'ref', 'reward'} and, for GAE, 'value'; prompt_mask: [B, P].
  For rloo / grpo, rows come in groups of `group_size` samples of one prompt (rows
  g*G .. g*G+G-1), and value_model is None."""
  check_estimator(advantage, group_size, where="score_rollout")
  if sample.softmax_temperature != temperature:
    raise ValueError(
        "the rollout's log-probs and PPO's ratio are those of the full softmax at "
        f"temperature={temperature}, but the responses were drawn "
        + ("with top_k / top_p / greedy filtering" if sample.softmax_temperature is None
           else f"at temperature={sample.softmax_temperature}")
        + ": sample with top_k=0, top_p=1.0, greedy=False at the same temperature")
  prompt_len = prompt_mask.shape[1]
  tokens = sample.tokens  # [B, S]
  response_mask = sample.response_mask  # [B, N]
  token_mask = jnp.concatenate([prompt_mask, response_mask], axis=1)  # [B, S]
  # 2. Log-probs of the responses, recomputed by a full forward with the sampling
  #    temperature, so the first PPO update sees a ratio of exactly 1.
  logprobs, _ = response_logprobs(policy.apply, params["policy"], tokens, token_mask,
                                  prompt_len=prompt_len, temperature=temperature)
  ref_logprobs, _ = response_logprobs(policy.apply, params["ref"], tokens, token_mask,
                                      prompt_len=prompt_len, temperature=temperature)
  # 3. The reward model scores prompt + response at its last token; normalise it so
  #    demonstrations score 0 on average; a response without EOS gets a fixed penalty.
  raw_scores = response_reward(reward_model.apply, params["reward"], tokens, token_mask,
                               response_mask)  # [B]
  scores = jnp.where(sample.finished, raw_scores - reward_bias, no_eos_penalty)
  if advantage != "gae":
    advantages = _group_advantages(scores, logprobs, ref_logprobs, response_mask, kl_coef,
                                   advantage=advantage, group_size=group_size)
    zeros = jnp.zeros_like(advantages)  # [B, N]: no critic, no value targets
    return Rollout(tokens=tokens, token_mask=token_mask, response_mask=response_mask,
                   logprobs=logprobs, ref_logprobs=ref_logprobs, values=zeros,
                   advantages=advantages, returns=zeros, scores=scores,
                   raw_scores=raw_scores, finished=sample.finished,
                   example_index=example_index)
  # 4. Values of each state from the value model (a separate trunk, initialised from RM).
  values = response_values(value_model.apply, params["value"], tokens, token_mask,
                           response_mask, prompt_len=prompt_len)  # [B, N]
  # 5. Per-token rewards: -beta * (logp - ref_logp) everywhere, plus the score at the end.
  rewards, _ = rl.kl_penalized_rewards(
      scores=scores, logprobs=logprobs, ref_logprobs=ref_logprobs,
      response_mask=response_mask, kl_coef=kl_coef)  # [B, N]
  if whiten_rewards:
    rewards = rl.whiten(rewards, response_mask, shift_mean=False)
  # 6. GAE over response tokens, then whitened advantages.
  advantages, returns = rl.gae(rewards=rewards, values=values, response_mask=response_mask,
                               gamma=gamma, lam=lam)
  advantages = rl.whiten(advantages, response_mask)
  return Rollout(tokens=tokens, token_mask=token_mask, response_mask=response_mask,
                 logprobs=logprobs, ref_logprobs=ref_logprobs, values=values,
                 advantages=advantages, returns=returns, scores=scores,
                 raw_scores=raw_scores, finished=sample.finished,
                 example_index=example_index)


def _group_advantages(scores, logprobs, ref_logprobs, response_mask, kl_coef, *,
                      advantage: str, group_size: int):
  """Critic-free advantages, one per sample, given to each of its response tokens.
  A sample's reward is its score less beta * its KL to the reference, as Ahmadian et al.
  do for RLOO; GRPO's configs set beta = 0 and put the KL in the loss instead
  (`ppo_step`'s kl_loss_coef), as Shao et al. do. -> [B, N]"""
  in_response = response_mask != 0  # [B, N]
  kl = jnp.sum(jnp.where(in_response, logprobs - ref_logprobs, 0.0), axis=1)  # [B]
  rewards = (scores - kl_coef * kl).reshape(-1, group_size)  # [B / G, G]
  per_sample = (rl.rloo_advantages(rewards) if advantage == "rloo"
                else rl.grpo_advantages(rewards))  # [B / G, G]
  return jnp.where(in_response, per_sample.reshape(-1)[:, None], 0.0)


def rollout_stats(rollout: Rollout) -> dict:
  """Per-iteration diagnostics of a rollout (host floats)."""
  mask = rollout.response_mask
  kl_per_seq = jnp.sum(jnp.where(mask > 0, rollout.logprobs - rollout.ref_logprobs, 0), -1)
  return {
      "rm_score": jnp.mean(rollout.raw_scores),
      "rm_score_normalised": jnp.mean(rollout.scores),
      "kl_to_ref": jnp.mean(kl_per_seq),
      "response_length": jnp.mean(jnp.sum(mask, -1)),
      "eos_fraction": jnp.mean(rollout.finished.astype(jnp.float32)),
      "explained_variance": rl.explained_variance(values=rollout.values,
                                                  returns=rollout.returns, mask=mask),
  }
