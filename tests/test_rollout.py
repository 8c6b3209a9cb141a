"""The rollout (sampling.generate, then score_rollout) on a tiny policy whose reference is
itself, checked field by field against plain numpy forwards and Python loops over the
rollout's masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from instructjax import sampling
from instructjax.models import CausalLM, ModelConfig, ScalarModel
from instructjax.rollout import score_rollout

CFG = ModelConfig(arch="llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4,
                  n_kv_heads=2, max_len=32, tie_embeddings=False)
B, P, N = 16, 5, 8  # prompts, prompt length (left-padded), max new tokens
TEMPERATURE = 0.7  # not 1, so a recomputation that forgets it is caught
GAMMA, LAM = 0.9, 0.8  # not 1, so the loop below checks where they enter
KL_COEF = 0.5  # large: any KL left in the rewards would show
REWARD_BIAS = 0.3
NO_EOS_PENALTY = -2.5
PAD_ID = 0
TOL = dict(rtol=1e-5, atol=1e-5)


def _init(model, key):
  return meta.unbox(model.init(key, jnp.zeros((1, 8), jnp.int32))["params"])


def _with_random_head(params, key):
  # The scalar head starts at zero; a random one makes values and scores informative.
  kernel = params["scalar_head"]["kernel"]
  return {**params, "scalar_head": {"kernel": jax.random.normal(key, kernel.shape)}}


def _prompts(rng):
  lengths = rng.integers(2, P + 1, B)
  mask = (np.arange(P)[None] >= P - lengths[:, None]).astype(np.int32)  # [B, P] left-padded
  tokens = rng.integers(1, CFG.vocab_size, (B, P)).astype(np.int32) * mask  # [B, P]
  return tokens, mask


def _eos_that_half_the_rows_sample(policy, params, prompt_tokens, prompt_mask, rng):
  """Samples without EOS and picks the token found in the response of about half the
  rows: with it as EOS the rollout holds both finished and unfinished responses."""
  config = sampling.SamplingConfig(max_new_tokens=N, temperature=TEMPERATURE, pad_id=PAD_ID)
  sample = sampling.generate(policy, params, prompt_tokens, prompt_mask, rng, config=config)
  rows_with = [len({b for b, row in enumerate(np.asarray(sample.response_tokens)) if t in row})
               for t in range(CFG.vocab_size)]
  rows_with[PAD_ID] = -B  # never pad
  return int(np.argmin(np.abs(np.asarray(rows_with) - B / 2)))


@pytest.fixture(scope="module")
def setup():
  keys = jax.random.split(jax.random.PRNGKey(0), 6)
  policy, scalar = CausalLM(CFG), ScalarModel(CFG)
  policy_params = _init(policy, keys[0])
  value_params = _with_random_head(_init(scalar, keys[1]), keys[2])
  reward_params = _with_random_head(_init(scalar, keys[3]), keys[4])
  prompt_tokens, prompt_mask = _prompts(np.random.default_rng(0))
  eos_id = _eos_that_half_the_rows_sample(policy, policy_params, prompt_tokens, prompt_mask,
                                          keys[5])
  config = sampling.SamplingConfig(max_new_tokens=N, temperature=TEMPERATURE, eos_id=eos_id,
                                   pad_id=PAD_ID)
  # The policy is its own reference: same parameters under both names.
  params = {"policy": policy_params, "ref": policy_params, "value": value_params,
            "reward": reward_params}
  sample = sampling.generate(policy, params["policy"], prompt_tokens, prompt_mask, keys[5],
                             config=config)
  rollout = score_rollout(
      params, sample, jnp.asarray(prompt_mask), np.arange(B, dtype=np.int32),
      jnp.float32(KL_COEF), policy=policy, value_model=scalar, reward_model=scalar,
      temperature=config.temperature, reward_bias=REWARD_BIAS, gamma=GAMMA, lam=LAM,
      whiten_rewards=False, no_eos_penalty=NO_EOS_PENALTY)
  rollout = jax.tree.map(np.asarray, rollout)
  # Response lengths from the tokens alone: up to and including the first EOS.
  lengths, finished = [], []
  for row in rollout.tokens[:, P:]:
    hits = np.flatnonzero(row == eos_id)
    lengths.append(int(hits[0]) + 1 if hits.size else N)
    finished.append(bool(hits.size))
  return dict(rollout=rollout, params=params, policy=policy, scalar=scalar,
              prompt_mask=prompt_mask, lengths=lengths, finished=finished)


def _log_softmax(logits):  # float64 numpy
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_masks_follow_eos(setup):
  r, lengths = setup["rollout"], setup["lengths"]
  finished = setup["finished"]
  assert 0 < sum(finished) < B, "the test needs finished and unfinished responses"
  np.testing.assert_array_equal(r.finished, finished)
  for b, n in enumerate(lengths):
    np.testing.assert_array_equal(r.response_mask[b], [1] * n + [0] * (N - n))
    np.testing.assert_array_equal(r.token_mask[b], np.concatenate(
        [setup["prompt_mask"][b], r.response_mask[b]]))
    assert (r.tokens[b, P + n:] == PAD_ID).all()


def test_reference_equal_to_policy_gives_equal_logprobs(setup):
  r = setup["rollout"]
  np.testing.assert_allclose(r.ref_logprobs, r.logprobs, rtol=0, atol=1e-6)


def test_logprobs_are_a_plain_recomputation(setup):
  r = setup["rollout"]
  logits = setup["policy"].apply({"params": setup["params"]["policy"]}, r.tokens,
                                 token_mask=r.token_mask)  # [B, S, V]
  logp = _log_softmax(np.asarray(logits) / TEMPERATURE)  # [B, S, V]
  for b, n in enumerate(setup["lengths"]):
    for t in range(n):
      # The logits at position P - 1 + t predict response token t.
      want = logp[b, P - 1 + t, r.tokens[b, P + t]]
      np.testing.assert_allclose(r.logprobs[b, t], want, **TOL)


def test_scores_normalised_with_no_eos_penalty(setup):
  r = setup["rollout"]
  rewards = setup["scalar"].apply({"params": setup["params"]["reward"]}, r.tokens,
                                  token_mask=r.token_mask)  # [B, S]
  for b, n in enumerate(setup["lengths"]):
    raw = rewards[b, P + n - 1]  # the last response token is the last real token
    np.testing.assert_allclose(r.raw_scores[b], raw, **TOL)
    want = raw - REWARD_BIAS if setup["finished"][b] else NO_EOS_PENALTY
    np.testing.assert_allclose(r.scores[b], want, **TOL)


def test_values_read_before_each_response_token(setup):
  r = setup["rollout"]
  values = setup["scalar"].apply({"params": setup["params"]["value"]}, r.tokens,
                                 token_mask=r.token_mask)  # [B, S]
  for b in range(B):
    for t in range(N):
      np.testing.assert_allclose(r.values[b, t], values[b, P - 1 + t], **TOL)


def test_rewards_are_the_score_at_the_last_token_only(setup):
  """With no KL, the per-token reward is the score at the last response token; GAE over
  it (a backward loop) must give the rollout's returns and, whitened, its advantages."""
  r = setup["rollout"]
  advantages = np.zeros((B, N))
  for b, n in enumerate(setup["lengths"]):
    rewards = np.zeros(n)
    rewards[n - 1] = r.scores[b]
    next_value = next_advantage = 0.0
    for t in reversed(range(n)):
      delta = rewards[t] + GAMMA * next_value - r.values[b, t]
      next_advantage = delta + GAMMA * LAM * next_advantage
      next_value = r.values[b, t]
      advantages[b, t] = next_advantage
  mask = r.response_mask > 0
  np.testing.assert_allclose(r.returns, np.where(mask, advantages + r.values, 0.0), **TOL)
  real = advantages[mask]
  whitened = (advantages - real.mean()) / np.sqrt(real.var() + 1e-8)
  np.testing.assert_allclose(r.advantages, np.where(mask, whitened, 0.0), **TOL)


@pytest.mark.parametrize("drawn", [dict(top_k=3), dict(top_p=0.5), dict(greedy=True),
                                   dict(temperature=1.0)])
def test_samples_from_another_distribution_are_refused(setup, drawn):
  """PPO's ratio and KL use the full softmax at the rollout temperature; a sample drawn
  from a filtered or differently tempered distribution would be scored as if it were not."""
  policy, scalar, params = setup["policy"], setup["scalar"], setup["params"]
  prompt_mask = jnp.asarray(setup["prompt_mask"])
  config = sampling.SamplingConfig(max_new_tokens=N, pad_id=PAD_ID,
                                   **{"temperature": TEMPERATURE, **drawn})
  sample = sampling.generate(policy, params["policy"], jnp.ones((B, P), jnp.int32),
                             prompt_mask, jax.random.PRNGKey(1), config=config)
  with pytest.raises(ValueError, match="full softmax at temperature=0.7"):
    score_rollout(params, sample, prompt_mask, np.arange(B, dtype=np.int32),
                  jnp.float32(KL_COEF), policy=policy, value_model=scalar,
                  reward_model=scalar, temperature=TEMPERATURE, reward_bias=REWARD_BIAS,
                  gamma=GAMMA, lam=LAM, whiten_rewards=False, no_eos_penalty=NO_EOS_PENALTY)
