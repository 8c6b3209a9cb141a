"""The RM is normalised on the demonstrations (mean 0, std 1, as lm-human-preferences
does) and PPO's value model starts at that normalised reward, not at the raw one. The
stage tests read the session's `test_run` (conftest.py), never write it."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from instructjax import ppo, reward, sharding
from instructjax.data import sources


def test_normalised_head_divides_by_the_std_and_reports_the_mean_in_new_units():
  params = {"transformer": {"w": np.ones(2)}, "scalar_head": {"kernel": np.array([[2.0]])}}
  rewards = np.array([0.0, 4.0])  # mean 2, std 2 (population)
  scaled, bias, std = reward.normalised_head(params, rewards)
  assert std == pytest.approx(2.0)
  assert bias == pytest.approx(1.0)
  np.testing.assert_allclose(scaled["scalar_head"]["kernel"], [[1.0]])
  np.testing.assert_array_equal(scaled["transformer"]["w"], np.ones(2))  # the trunk stays
  same, bias, std = reward.normalised_head(params, np.array([0.5, 0.5]))  # no spread
  np.testing.assert_allclose(same["scalar_head"]["kernel"], [[2.0]])
  assert (bias, std) == (pytest.approx(0.5), 0.0)


def _demonstration_sequences(config, run_dir, n: int):
  """The first n demonstrations as (prompt + response + EOS ids, prompt length), encoded
  plainly: the prompt cut from the left, the response from the right (the stages'
  policy)."""
  data = sources.load_data(config, str(run_dir))
  tok, limit = data.tokenizer, config.data.max_prompt_len
  seqs = []
  for row in data.read("sft")[:n]:
    prompt = tok(row.prompt, add_special_tokens=False)["input_ids"][-limit:]
    response = tok(row.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    seqs.append((np.asarray(prompt + response[:config.data.max_len - len(prompt)], np.int32),
                 len(prompt)))
  return seqs


def _padded(seqs):
  """Right-padded tokens and response masks (response and EOS): [N, T] each."""
  tokens = np.zeros((len(seqs), max(len(s) for s, _ in seqs)), np.int32)
  response_mask = np.zeros_like(tokens)
  for i, (seq, prompt_len) in enumerate(seqs):
    tokens[i, :len(seq)] = seq
    response_mask[i, prompt_len:len(seq)] = 1
  return tokens, response_mask


def _load_rm(config, run_dir):
  mesh = sharding.make_mesh(**config.mesh)
  model, params, card = reward.load_reward_model(reward.model_config_of(config, str(run_dir)),
                                                 os.path.join(run_dir, "rm"), mesh)
  return model, jax.device_get(params), card


def test_the_exported_rm_scores_demonstrations_with_mean_0_and_std_1(test_run):
  config, run_dir = test_run
  model, params, card = _load_rm(config, run_dir)
  assert model.likelihood_feature == config.rm.likelihood_feature
  seqs = _demonstration_sequences(config, run_dir, 10**6)
  # Right-padded into one batch: causal attention leaves each sequence's values alone.
  tokens, response_mask = _padded(seqs)  # [N, T]
  values = np.asarray(jax.jit(model.apply)({"params": params}, tokens,
                                           response_mask=response_mask))  # [N, T]
  scores = np.array([values[i, len(seq) - 1] for i, (seq, _) in enumerate(seqs)])  # [N]
  normalised = scores - card.reward_bias
  assert card.reward_std > 0
  assert abs(normalised.mean()) < 1e-4
  assert normalised.std() == pytest.approx(1.0, rel=1e-3)


def test_value_model_starts_at_the_normalised_reward(test_run):
  config, run_dir = test_run
  reward_model, rm_params, card = _load_rm(config, run_dir)
  assert abs(card.reward_bias) > 1e-3  # else the test could not tell raw from normalised
  program = ppo._program(config, str(run_dir), "ppo")  # pylint: disable=protected-access
  state, _ = sharding.create_sharded(program.init_state, program.mesh, jax.random.PRNGKey(0))
  value_params = jax.device_get(program.begin(state).params["value"])
  _, value_model, _ = ppo.make_models(reward_model.config,
                                      likelihood_feature=card.likelihood_feature)
  tokens, response_mask = _padded(_demonstration_sequences(config, run_dir, 4))
  values = value_model.apply({"params": value_params}, tokens,
                             response_mask=response_mask)  # [N, T]
  raw = reward_model.apply({"params": rm_params}, tokens,
                           response_mask=response_mask)  # [N, T]
  np.testing.assert_allclose(values, raw - card.reward_bias, atol=1e-5)
