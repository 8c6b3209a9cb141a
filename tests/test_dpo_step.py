"""The DPO-family step: response log-probs against a plain per-sequence loop, and the
loss at its start (policy = reference) against hand values."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import meta

from instructjax.data.batches import RankingBatch
from instructjax.models import CausalLM, ModelConfig
from instructjax.steps.dpo_step import dpo_step, ranked_logprobs
from instructjax.train_state import create_train_state

CFG = ModelConfig(arch="llama", vocab_size=64, d_model=32, n_layers=1, n_heads=4,
                  n_kv_heads=2, max_len=16)
B, K, T = 3, 4, 12
COUNTS = np.array([4, 3, 2])  # real responses per prompt


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, CFG.vocab_size, (B, K, T)).astype(np.int32)  # [B, K, T]
  lengths = rng.integers(6, T + 1, (B, K))  # [B, K]
  starts = rng.integers(2, 5, (B, K))  # [B, K]: each response's first token
  response_mask = (np.arange(K)[None] < COUNTS[:, None]).astype(np.int32)  # [B, K]
  positions = np.arange(T)
  token_mask = (positions < lengths[..., None]) * response_mask[..., None]  # [B, K, T]
  loss_mask = token_mask * (positions >= starts[..., None])  # [B, K, T]
  batch = RankingBatch(tokens=tokens, token_mask=token_mask.astype(np.int32),
                       loss_mask=loss_mask.astype(np.int32), response_mask=response_mask,
                       labeler=np.zeros(B, np.int32))
  model = CausalLM(CFG)
  params = meta.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
  return model, params, batch, lengths, starts


def test_ranked_logprobs_against_a_plain_loop(setup):
  model, params, batch, lengths, starts = setup
  got = np.asarray(ranked_logprobs(model.apply, params, batch))  # [B, K]
  for b in range(B):
    for k in range(COUNTS[b]):
      seq = batch.tokens[b, k, :lengths[b, k]]  # the sequence alone, unpadded
      logits = np.asarray(model.apply({"params": params}, seq[None]), np.float64)[0]
      logp = logits - logits.max(-1, keepdims=True)  # [L, V]: log softmax, in float64
      logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
      want = sum(logp[t - 1, seq[t]] for t in range(starts[b, k], lengths[b, k]))
      assert got[b, k] == pytest.approx(want, rel=1e-4, abs=1e-3), (b, k)


@pytest.mark.parametrize("loss, coef, want", [
    ("dpo", 0.1, math.log(2)),  # every pair at h_i - h_j = 0
    ("ipo", 0.25, (1 / (2 * 0.25)) ** 2),
    # a ranking of K equal rewards has likelihood 1 / K!
    ("plackett_luce", 0.1, np.mean([math.log(math.factorial(k)) for k in COUNTS])),
])
def test_the_loss_where_the_policy_is_its_reference(setup, loss, coef, want):
  model, params, batch, _, _ = setup
  state = create_train_state(apply_fn=model.apply, params=params, tx=optax.sgd(0.1),
                             rng=jax.random.PRNGKey(0))
  new, metrics = jax.jit(lambda s, b, r: dpo_step(s, b, r, loss=loss, coef=coef))(
      state, batch, params)
  assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)
  assert int(new.step) == 1 and int(metrics["update_skipped"]) == 0


def test_an_unknown_loss_is_refused(setup):
  model, params, batch, _, _ = setup
  state = create_train_state(apply_fn=model.apply, params=params, tx=optax.sgd(0.1),
                             rng=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="loss='kto' is not one of"):
    dpo_step(state, batch, params, loss="kto", coef=0.1)
