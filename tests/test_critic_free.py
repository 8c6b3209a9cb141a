"""Critic-free RL through the PPO machinery: score_rollout with RLOO and GRPO advantages
checked against plain loops over each prompt's group, ppo_step without a value model
(its loss checked against numpy, GRPO's KL term included, and sharded like PPO's), the
estimator's config checks, the prompt repetition that forms the groups, and the memory
a critic-free state saves."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import meta

from instructjax import ppo, sampling, sharding
from instructjax.configs.instructgpt_tiny import get_config
from instructjax.config import ConfigError, model_config, validate
from instructjax.data.batches import PromptBatch
from instructjax.models import CausalLM, ModelConfig, ScalarModel
from instructjax.rollout import check_estimator, score_rollout
from instructjax.steps.ppo_step import PPOState, ppo_step

CFG = ModelConfig(arch="llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4,
                  n_kv_heads=2, max_len=32, tie_embeddings=False)
G = 4  # samples per prompt
B, P, N = 16, 5, 8  # rollout rows (4 prompts x G), prompt length, max new tokens
TEMPERATURE = 0.7
KL_COEF = 0.5  # large, so a KL left out of (or put twice into) the reward would show
REWARD_BIAS = 0.3
KL_LOSS_COEF = 0.3
POLICY, SCALAR = CausalLM(CFG), ScalarModel(CFG)
EXAMPLE = np.zeros((1, 8), np.int32)
TX = optax.sgd(0.1)  # one object: the state's static fields must compare equal
POLICY_KEY = jax.random.split(jax.random.PRNGKey(3), 5)[0]  # the sampling policy's init


def _init(model, key):
  return meta.unbox(model.init(key, EXAMPLE)["params"])


@pytest.fixture(scope="module")
def sampled():
  """(params, sample, prompt_mask): G samples of each of B / G prompts from a policy
  whose reference is another network, so every response has a nonzero KL."""
  keys = jax.random.split(jax.random.PRNGKey(3), 5)
  assert (keys[0] == POLICY_KEY).all()
  reward = _init(SCALAR, keys[2])
  reward["scalar_head"]["kernel"] = jax.random.normal(keys[3], (CFG.d_model, 1))
  params = {"policy": _init(POLICY, keys[0]), "ref": _init(POLICY, keys[1]), "reward": reward}
  rng = np.random.default_rng(0)
  lengths = rng.integers(2, P + 1, B // G)
  mask = (np.arange(P)[None] >= P - lengths[:, None]).astype(np.int32)  # [B / G, P]
  tokens = rng.integers(1, CFG.vocab_size, (B // G, P)).astype(np.int32) * mask
  prompts = ppo.repeat_prompts(
      PromptBatch(prompt_tokens=tokens, prompt_mask=mask,
                  example_index=np.arange(B // G, dtype=np.int32)), G)
  # EOS = 7 ends some responses early, so responses differ in length within a group.
  config = sampling.SamplingConfig(max_new_tokens=N, temperature=TEMPERATURE, eos_id=7)
  sample = sampling.generate(POLICY, params["policy"], prompts.prompt_tokens,
                             prompts.prompt_mask, keys[4], config=config)
  return params, sample, prompts


def _score(sampled, advantage):
  params, sample, prompts = sampled
  rollout = score_rollout(
      params, sample, jnp.asarray(prompts.prompt_mask), prompts.example_index,
      jnp.float32(KL_COEF), policy=POLICY, value_model=None, reward_model=SCALAR,
      temperature=TEMPERATURE, reward_bias=REWARD_BIAS, gamma=1.0, lam=0.95,
      whiten_rewards=False, no_eos_penalty=-1.0, advantage=advantage, group_size=G)
  return jax.tree.map(np.asarray, rollout)


def _sample_rewards(rollout) -> list[float]:
  """score - beta * (summed log pi - log pi_ref over the response), row by row."""
  out = []
  for b in range(B):
    kl = sum(float(rollout.logprobs[b, t]) - float(rollout.ref_logprobs[b, t])
             for t in range(N) if rollout.response_mask[b, t])
    out.append(float(rollout.scores[b]) - KL_COEF * kl)
  return out


def _assert_broadcast(rollout, expected: list[float]) -> None:
  for b in range(B):
    for t in range(N):
      want = expected[b] if rollout.response_mask[b, t] else 0.0
      assert rollout.advantages[b, t] == pytest.approx(want, rel=1e-4, abs=1e-5), (b, t)


def test_prompts_repeat_in_groups():
  batch = PromptBatch(prompt_tokens=np.array([[1, 2], [3, 4]]),
                      prompt_mask=np.ones((2, 2), np.int32), example_index=np.array([5, 9]))
  out = ppo.repeat_prompts(batch, 3)
  assert out.prompt_tokens.tolist() == [[1, 2]] * 3 + [[3, 4]] * 3
  assert out.example_index.tolist() == [5, 5, 5, 9, 9, 9]


def test_rloo_baseline_is_the_mean_of_the_other_samples(sampled):
  rollout = _score(sampled, "rloo")
  assert np.any(np.abs(rollout.logprobs - rollout.ref_logprobs)[rollout.response_mask > 0]
                > 1e-3)  # the KL term is exercised
  rewards = _sample_rewards(rollout)
  expected = []
  for b in range(B):
    group = range(b // G * G, b // G * G + G)
    others = [rewards[j] for j in group if j != b]
    expected.append(rewards[b] - sum(others) / len(others))
  _assert_broadcast(rollout, expected)
  # No critic: no values, no value targets.
  assert not rollout.values.any() and not rollout.returns.any()


def test_grpo_normalises_within_each_group(sampled):
  rollout = _score(sampled, "grpo")
  rewards = _sample_rewards(rollout)
  expected = []
  for b in range(B):
    group = [rewards[j] for j in range(b // G * G, b // G * G + G)]
    mean = sum(group) / G
    std = (sum((r - mean) ** 2 for r in group) / G) ** 0.5
    expected.append((rewards[b] - mean) / (std + 1e-6))
  _assert_broadcast(rollout, expected)


@pytest.mark.parametrize("advantage, group_size, message", [
    ("gae", 2, "GAE draws one sample per prompt"),
    ("rloo", 1, "rloo baselines each sample .* group_size >= 2"),
    ("grpo", 1, "grpo baselines"),
    ("reinforce", 2, "'reinforce' is not one of"),
])
def test_estimator_and_group_size_must_agree(advantage, group_size, message):
  with pytest.raises(ValueError, match=message):
    check_estimator(advantage, group_size, where="config.rloo")
  config = get_config("test")
  config.rloo.update(advantage=advantage, group_size=group_size)
  with pytest.raises(ConfigError, match="rloo.group_size|rloo.advantage"):
    validate(config)


def test_rollout_must_hold_whole_groups():
  config = get_config("test")
  config.rloo.update(group_size=3)  # 16 samples are not groups of 3
  with pytest.raises(ConfigError, match="group_size=3 does not divide "
                                        "rollout_batch_size=16"):
    validate(config)


def _critic_free_state(rng):
  """The sampling policy's state, params boxed with their logical axes (for sharding)."""
  del rng  # the params are the rollout's policy, so the first ratio is 1
  return PPOState.create(apply_fn=None, params={"policy": POLICY.init(POLICY_KEY,
                                                                      EXAMPLE)["params"]},
                         tx=TX, rng=jax.random.PRNGKey(0),
                         skipped_updates=jnp.zeros((), jnp.int32), ema_policy={},
                         kl_coef=jnp.float32(KL_COEF))


STEP = functools.partial(ppo_step, policy=POLICY, value_model=None, prompt_len=P,
                         temperature=TEMPERATURE, clip_eps=0.2, value_clip=0.2, vf_coef=0.5,
                         ptx_coef=0.0, kl_loss_coef=KL_LOSS_COEF)


def test_step_without_a_critic_is_policy_loss_plus_grpo_kl(sampled):
  """On its own rollout the ratio is 1, so the loss is -mean(A) + c * mean(k3) over the
  response tokens, with k3 = exp(ref - logp) - (ref - logp) - 1."""
  rollout = _score(sampled, "grpo")
  state = meta.unbox(_critic_free_state(None))
  new_state, metrics = jax.jit(STEP)(state, rollout, None)
  keep = rollout.response_mask > 0
  d = (rollout.ref_logprobs - rollout.logprobs).astype(np.float64)[keep]
  k3 = np.mean(np.exp(d) - d - 1.0)
  assert float(metrics["kl_loss"]) == pytest.approx(k3, rel=1e-4)
  assert float(metrics["loss"]) == pytest.approx(
      -np.mean(rollout.advantages[keep]) + KL_LOSS_COEF * k3, rel=1e-4, abs=1e-6)
  assert "value_loss" not in metrics
  assert set(new_state.params) == {"policy"}
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         state.params, new_state.params)
  assert all(jax.tree.leaves(changed))


def test_sharded_step_without_a_critic_matches_one_device(sampled):
  rollout = _score(sampled, "rloo")
  one = jax.device_get(jax.jit(STEP)(meta.unbox(_critic_free_state(None)), rollout, None))
  mesh = sharding.make_mesh(data=4, fsdp=2)
  state, shardings = sharding.create_sharded(_critic_free_state, mesh, jax.random.PRNGKey(0))
  step = jax.jit(STEP, out_shardings=(shardings, None))
  eight = jax.device_get(step(state, sharding.shard_batch(rollout, mesh), None))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
               one[0].params, eight[0].params)
  assert float(one[1]["loss"]) == pytest.approx(float(eight[1]["loss"]), rel=1e-5)


def _state_bytes(section) -> int:
  cfg = model_config(get_config().model, field="config.model")
  policy, value_model, _ = ppo.make_models(cfg, critic=ppo.has_critic(section))
  shapes = jax.eval_shape(ppo.make_init_state(section, policy, value_model),
                          jax.random.PRNGKey(0))
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(meta.unbox(shapes)))


def test_no_critic_saves_the_value_trunk_and_its_adam_moments():
  config = get_config()
  n_value = ScalarModel(model_config(config.model, field="config.model"), head_bias=True)
  value_bytes = sum(x.size * 4 for x in jax.tree.leaves(meta.unbox(
      jax.eval_shape(n_value.init, jax.random.PRNGKey(0), EXAMPLE)["params"])))
  # params + Adam's two moments of the value trunk
  assert _state_bytes(config.ppo) - _state_bytes(config.rloo) == 3 * value_bytes
