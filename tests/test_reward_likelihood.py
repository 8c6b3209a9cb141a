"""The reward model's likelihood feature (ScalarModel(likelihood_feature=True)): the value
at each position adds likelihood_scale x the mean log-probability of the response tokens
so far, under the trunk's own unembedding. Checked against log-probs from the CausalLM
with the same trunk, averaged by a plain loop; and the RM stage's helpers that start,
normalise and export such a model."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax.core import meta

from instructjax import reward
from instructjax.models import CausalLM, ModelConfig, ScalarModel
from instructjax.models.hf_interop import HFCheckpointError, to_hf

TIED = ModelConfig(arch="gpt2", vocab_size=48, d_model=16, n_layers=2, n_heads=2, max_len=24)
UNTIED = ModelConfig(arch="llama", vocab_size=48, d_model=16, n_layers=2, n_heads=2,
                     n_kv_heads=1, max_len=24, tie_embeddings=False)
B, T = 3, 10


def _inputs(seed=0):
  """Tokens [B, T]; rows right-padded at 10, 8 and 6 tokens; responses from 4, 5, 3."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, TIED.vocab_size, size=(B, T)).astype(np.int32)
  token_mask = np.zeros((B, T), np.int32)
  response_mask = np.zeros((B, T), np.int32)
  for b, (length, start) in enumerate(((10, 4), (8, 5), (6, 3))):
    token_mask[b, :length] = 1
    response_mask[b, start:length] = 1
  return tokens, token_mask, response_mask


def _params(cfg, seed=1):
  """Random trunk (and lm_head), a random scalar head, likelihood_scale 0.7."""
  model = ScalarModel(cfg, likelihood_feature=True)
  tokens = np.zeros((1, 4), np.int32)
  params = dict(jax.tree.map(np.asarray, meta.unbox(
      model.init(jax.random.PRNGKey(seed), tokens)["params"])))
  params["scalar_head"] = {"kernel": np.random.default_rng(seed).normal(
      size=(cfg.d_model, 1)).astype(np.float32)}
  params["likelihood_scale"] = np.float32(0.7)
  if not cfg.tie_embeddings:
    lm = meta.unbox(CausalLM(cfg).init(jax.random.PRNGKey(seed + 1), tokens)["params"])
    params["lm_head"] = jax.tree.map(np.asarray, lm["lm_head"])
  return params


def _loop_reference(cfg, params, tokens, token_mask, response_mask):
  """[B, T]: the plain ScalarModel's value plus 0.7 x the running mean, by a loop, of the
  CausalLM's log p(token t | tokens < t) over the response positions seen so far."""
  lm_params = {k: v for k, v in params.items() if k in ("transformer", "lm_head")}
  logits = np.asarray(CausalLM(cfg).apply({"params": lm_params}, tokens,
                                          token_mask=token_mask), np.float64)  # [B, T, V]
  plain = np.asarray(ScalarModel(cfg).apply(
      {"params": {"transformer": params["transformer"], "scalar_head": params["scalar_head"]}},
      tokens, token_mask=token_mask))  # [B, T]
  expected = np.zeros((B, T))
  for b in range(B):
    seen = []
    for t in range(T):
      if response_mask[b, t] and t > 0:
        row = logits[b, t - 1]
        seen.append(row[tokens[b, t]] - np.log(np.sum(np.exp(row - row.max()))) - row.max())
      expected[b, t] = plain[b, t] + 0.7 * (np.mean(seen) if seen else 0.0)
  return expected


@pytest.mark.parametrize("cfg", [TIED, UNTIED], ids=["tied", "untied"])
def test_value_adds_the_scaled_running_mean_log_likelihood(cfg):
  tokens, token_mask, response_mask = _inputs()
  params = _params(cfg)
  values = ScalarModel(cfg, likelihood_feature=True).apply(
      {"params": params}, tokens, token_mask=token_mask, response_mask=response_mask)
  expected = _loop_reference(cfg, params, tokens, token_mask, response_mask)
  real = token_mask > 0  # padding positions are never read
  np.testing.assert_allclose(np.asarray(values)[real], expected[real], rtol=1e-5, atol=1e-5)


def test_the_likelihood_term_ranks_a_likelier_response_higher():
  # With a zero head the reward is the scaled mean log-likelihood alone: the response the
  # LM finds likelier (its own greedy tokens) must score higher than a random one.
  cfg = TIED
  params = _params(cfg)
  params["scalar_head"] = {"kernel": np.zeros((cfg.d_model, 1), np.float32)}
  tokens, token_mask, response_mask = _inputs()
  greedy = tokens.copy()
  lm_params = {"transformer": params["transformer"]}
  for t in range(4, T):  # row 0's response, one greedy token at a time
    logits = CausalLM(cfg).apply({"params": lm_params}, greedy[:1, :t])
    greedy[0, t] = int(np.argmax(logits[0, -1]))
  model = ScalarModel(cfg, likelihood_feature=True)
  both = np.stack([greedy[0], tokens[0]])
  values = model.apply({"params": params}, both, token_mask=token_mask[[0, 0]],
                       response_mask=response_mask[[0, 0]])
  assert float(values[0, -1]) > float(values[1, -1])


def test_a_call_without_the_response_mask_is_refused():
  tokens, token_mask, _ = _inputs()
  with pytest.raises(ValueError, match="needs response_mask"):
    ScalarModel(TIED, likelihood_feature=True).apply({"params": _params(TIED)}, tokens,
                                                     token_mask=token_mask)


def test_normalised_head_also_divides_the_likelihood_scale():
  params = {"transformer": {"w": np.ones(2)}, "scalar_head": {"kernel": np.array([[2.0]])},
            "likelihood_scale": np.float32(0.9)}
  scaled, bias, std = reward.normalised_head(params, np.array([1.0, 7.0]))  # std 3, mean 4
  assert std == pytest.approx(3.0) and bias == pytest.approx(4.0 / 3.0)
  np.testing.assert_allclose(scaled["scalar_head"]["kernel"], [[2.0 / 3.0]])
  assert float(scaled["likelihood_scale"]) == pytest.approx(0.3)


def test_start_from_sft_copies_the_unembedding_and_keeps_the_scale_at_one():
  class State:  # what start_from_sft reads and replaces
    def __init__(self, params):
      self.params = params

    def replace(self, params):
      return State(params)

  fresh = meta.unbox(ScalarModel(UNTIED, likelihood_feature=True).init(
      jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))["params"])  # jax arrays
  sft = meta.unbox(CausalLM(UNTIED).init(jax.random.PRNGKey(5),
                                         np.zeros((1, 4), np.int32))["params"])
  started = reward.start_from_sft(State(fresh), sft).params
  assert sorted(started) == ["likelihood_scale", "lm_head", "scalar_head", "transformer"]
  assert float(started["likelihood_scale"]) == 1.0
  np.testing.assert_array_equal(started["lm_head"]["kernel"], sft["lm_head"]["kernel"])
  np.testing.assert_array_equal(started["scalar_head"]["kernel"], 0.0)


def test_an_rm_with_the_likelihood_feature_is_not_exported_to_hf(tmp_path):
  with pytest.raises(HFCheckpointError, match="likelihood_feature has no HF equivalent"):
    to_hf(ScalarModel(TIED, likelihood_feature=True), _params(TIED), tmp_path / "rm")
  assert not (tmp_path / "rm").exists()
