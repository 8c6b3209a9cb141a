"""Tests of instructjax.losses against hand-computed numbers and plain numpy loops."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax import losses

LN2 = math.log(2.0)


def _softplus(x):
  return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def _np_logprob(logit_row, target):
  """log softmax(logit_row)[target] in float64, written out."""
  row = np.asarray(logit_row, np.float64)
  top = row.max()
  return row[target] - (top + math.log(np.exp(row - top).sum()))


# --- masked reductions -------------------------------------------------------------


def test_masked_reductions_by_hand():
  x = jnp.array([[1.0, 2.0, jnp.nan], [4.0, jnp.inf, 6.0]])
  mask = jnp.array([[1, 1, 0], [1, 0, 1]])
  # 1 + 2 + 4 + 6 = 13 over 4 entries; NaN and inf sit under a zero mask.
  assert float(losses.masked_sum(x, mask)) == 13.0
  assert float(losses.masked_count(mask)) == 4.0
  assert float(losses.masked_mean(x, mask)) == 3.25
  np.testing.assert_allclose(losses.masked_mean(x, mask, axis=1), [1.5, 5.0])
  assert float(losses.masked_mean(x, jnp.zeros_like(mask))) == 0.0


def test_masked_sum_axis_name_in_shard_map():
  mesh = jax.make_mesh((8,), ("data",))
  x = jnp.arange(16.0).reshape(8, 2)
  mask = jnp.tile(jnp.array([1, 0]), (8, 1))  # [8, 2]: column 0 counts

  def per_shard(x, mask):
    return losses.masked_mean(x, mask, axis_name="data")

  x, mask = jax.device_put((x, mask), jax.NamedSharding(mesh, jax.P("data")))
  out = jax.shard_map(per_shard, mesh=mesh, in_specs=(jax.P("data"), jax.P("data")),
                      out_specs=jax.P())(x, mask)
  # Column 0 is 0, 2, ..., 14: mean 7.
  assert float(out) == 7.0


# --- token_logprobs / token_entropy -------------------------------------------------


def test_token_logprobs_by_hand():
  logits = jnp.array([[[0.0, 0.0], [math.log(1.0), math.log(3.0)], [1000.0, 0.0]]])
  targets = jnp.array([[0, 1, 1]])
  # uniform: log 1/2; [1, 3] weights: log 3/4; 1000 vs 0: log sigmoid(-1000) = -1000.
  np.testing.assert_allclose(
      losses.token_logprobs(logits, targets), [[-LN2, math.log(0.75), -1000.0]],
      rtol=1e-6)


def test_token_logprobs_matches_loop_and_is_float32():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 7)) * 4
  targets = rng.integers(0, 7, size=(3, 5))
  got = losses.token_logprobs(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32),
                              jnp.asarray(targets))
  want = [[_np_logprob(np.asarray(jnp.asarray(logits[b, t], jnp.bfloat16), np.float64),
                       targets[b, t]) for t in range(5)] for b in range(3)]
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, atol=1e-5)
  # bfloat16 logits are upcast before the softmax.
  got_bf16 = losses.token_logprobs(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(targets))
  assert got_bf16.dtype == jnp.float32
  np.testing.assert_allclose(got_bf16, want, atol=1e-5)


def test_token_entropy_by_hand_and_loop():
  logits = jnp.array([[[0.0] * 4, [math.log(1.0), math.log(3.0), -jnp.inf, -jnp.inf]]])
  # uniform over 4: log 4; p = (1/4, 3/4): -(1/4 log 1/4 + 3/4 log 3/4) = 0.5623351.
  np.testing.assert_allclose(losses.token_entropy(logits), [[math.log(4.0), 0.5623351]],
                             rtol=1e-6)
  assert float(losses.token_entropy(jnp.array([[[1e4, 0.0, 0.0]]]))[0, 0]) == 0.0

  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 3, 6)) * 3
  want = np.zeros((2, 3))
  for b in range(2):
    for t in range(3):
      p = np.exp(logits[b, t] - logits[b, t].max())
      p /= p.sum()
      want[b, t] = -sum(pi * math.log(pi) for pi in p)
  np.testing.assert_allclose(losses.token_entropy(jnp.asarray(logits)), want, atol=1e-5)


def test_token_logprobs_bad_input():
  with pytest.raises(ValueError, match=r"targets has shape \(2, 4\), expected \(2, 3\)"):
    losses.token_logprobs(jnp.zeros((2, 3, 5)), jnp.zeros((2, 4), jnp.int32))
  with pytest.raises(ValueError, match="targets must be integers"):
    losses.token_logprobs(jnp.zeros((2, 3, 5)), jnp.zeros((2, 3)))


# --- next_token_loss ----------------------------------------------------------------


def test_next_token_loss_by_hand():
  # logits[:, 0] is uniform and predicts tokens[:, 1] = 1: NLL log 2, argmax 0 (wrong).
  # logits[:, 1] has weights (3, 1) and predicts tokens[:, 2] = 0: NLL log 4/3, right.
  # logits[:, 2] predicts nothing (no position 3), so its values are irrelevant.
  logits = jnp.array([[[0.0, 0.0], [math.log(3.0), 0.0], [jnp.nan, 5.0]]])
  tokens = jnp.array([[0, 1, 0]])
  loss, metrics = losses.next_token_loss(
      logits=logits, tokens=tokens, loss_mask=jnp.array([[0, 1, 1]]))
  # (log 2 + log 4/3) / 2 = log(8/3) / 2 = 0.4904146.
  np.testing.assert_allclose(loss, 0.4904146, rtol=1e-6)
  np.testing.assert_allclose(metrics["loss_sum"], math.log(8 / 3), rtol=1e-6)
  assert float(metrics["token_count"]) == 2.0
  assert float(metrics["accuracy_sum"]) == 1.0

  # Masking out the first target leaves log 4/3 alone.
  loss, metrics = losses.next_token_loss(
      logits=logits, tokens=tokens, loss_mask=jnp.array([[1, 0, 1]]))
  np.testing.assert_allclose(loss, math.log(4 / 3), rtol=1e-6)
  assert float(metrics["token_count"]) == 1.0


def test_next_token_loss_empty_mask_is_zero():
  loss, metrics = losses.next_token_loss(
      logits=jnp.zeros((2, 3, 4)), tokens=jnp.zeros((2, 3), jnp.int32),
      loss_mask=jnp.zeros((2, 3), jnp.int32))
  assert float(loss) == 0.0 and float(metrics["token_count"]) == 0.0


def _loop_next_token(logits, tokens, mask):
  total, count, correct = 0.0, 0, 0
  for b in range(tokens.shape[0]):
    for t in range(1, tokens.shape[1]):
      if mask[b, t]:
        total -= _np_logprob(logits[b, t - 1], tokens[b, t])
        correct += int(np.argmax(logits[b, t - 1]) == tokens[b, t])
        count += 1
  return total, count, correct


def test_next_token_loss_matches_loop():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(4, 6, 5)) * 2
  tokens = rng.integers(0, 5, size=(4, 6))
  mask = rng.integers(0, 2, size=(4, 6))
  loss, metrics = losses.next_token_loss(
      logits=jnp.asarray(logits), tokens=jnp.asarray(tokens), loss_mask=jnp.asarray(mask))
  total, count, correct = _loop_next_token(logits, tokens, mask)
  np.testing.assert_allclose(metrics["loss_sum"], total, rtol=1e-5)
  assert float(metrics["token_count"]) == count
  assert float(metrics["accuracy_sum"]) == correct
  np.testing.assert_allclose(loss, total / count, rtol=1e-5)

  # Logits that predict masked-out targets, and masked-out tokens, change nothing.
  logits2, tokens2 = logits.copy(), tokens.copy()
  unused = np.concatenate([mask[:, 1:] == 0, np.ones((4, 1), bool)], axis=1)  # [B, T]
  logits2[unused] = 1e3 * rng.normal(size=(unused.sum(), 5))
  tokens2[mask == 0] = 4 - tokens2[mask == 0]
  loss2, _ = losses.next_token_loss(
      logits=jnp.asarray(logits2), tokens=jnp.asarray(tokens2), loss_mask=jnp.asarray(mask))
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)


def test_next_token_loss_gradient_by_hand():
  # One target (token 1) from uniform logits over 2: d(-log p_1)/dlogits = p - onehot.
  def loss_fn(logits):
    return losses.next_token_loss(logits=logits, tokens=jnp.array([[0, 1]]),
                                  loss_mask=jnp.array([[0, 1]]))[0]
  grad = jax.grad(loss_fn)(jnp.zeros((1, 2, 2)))
  np.testing.assert_allclose(grad, [[[0.5, -0.5], [0.0, 0.0]]], atol=1e-7)


def test_next_token_loss_bad_shapes():
  with pytest.raises(ValueError, match=r"next_token_loss: loss_mask has shape \(2, 2\)"):
    losses.next_token_loss(logits=jnp.zeros((2, 3, 4)), tokens=jnp.zeros((2, 3), jnp.int32),
                           loss_mask=jnp.zeros((2, 2)))


# --- ranking_loss -------------------------------------------------------------------


def test_ranking_loss_by_hand():
  rewards = jnp.array([[2.0, 1.0, 0.0], [0.0, 1.0, 99.0], [5.0, -3.0, 7.0]])
  mask = jnp.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
  loss, metrics = losses.ranking_loss(rewards=rewards, response_mask=mask)
  # Element 0, pairs (0,1), (0,2), (1,2) with differences 1, 2, 1:
  #   -log sigmoid(1) = 0.3132617, -log sigmoid(2) = 0.1269280,
  #   (2 * 0.3132617 + 0.1269280) / 3 = 0.2511505.
  # Element 1, one pair with difference -1: -log sigmoid(-1) = 1.3132617.
  # Element 2 has one real response: no pairs, not counted.
  np.testing.assert_allclose(loss, (0.2511505 + 1.3132617) / 2, rtol=1e-6)
  np.testing.assert_allclose(metrics["loss_sum"], 0.2511505 + 1.3132617, rtol=1e-6)
  assert float(metrics["element_count"]) == 2.0
  assert float(metrics["pair_correct_sum"]) == 3.0  # all of element 0, none of 1
  assert float(metrics["pair_count"]) == 4.0
  assert float(metrics["best_reward_sum"]) == 2.0 + 0.0
  assert float(metrics["worst_reward_sum"]) == 0.0 + 1.0
  # Real responses: 2 + 1 + 0 + 0 + 1 + 5 = 9; squares 4 + 1 + 1 + 25 = 31.
  assert float(metrics["reward_sum"]) == 9.0
  assert float(metrics["reward_sq_sum"]) == 31.0
  assert float(metrics["response_count"]) == 6.0


def _loop_ranking(rewards, mask):
  element_losses, correct, pairs = [], 0, 0
  for b in range(rewards.shape[0]):
    real = [r for r, m in zip(rewards[b], mask[b]) if m]
    pair_losses = []
    for i in range(len(real)):
      for j in range(i + 1, len(real)):
        pair_losses.append(_softplus(-(real[i] - real[j])))
        correct += int(real[i] > real[j])
    pairs += len(pair_losses)
    if pair_losses:
      element_losses.append(sum(pair_losses) / len(pair_losses))
  return element_losses, correct, pairs


def test_ranking_loss_matches_loop_with_variable_k():
  rng = np.random.default_rng(3)
  rewards = rng.normal(size=(6, 5)) * 2
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0],
                   [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 0, 1, 1, 0]])
  loss, metrics = losses.ranking_loss(rewards=jnp.asarray(rewards),
                                      response_mask=jnp.asarray(mask))
  element_losses, correct, pairs = _loop_ranking(rewards, mask)
  assert len(element_losses) == 4
  np.testing.assert_allclose(loss, np.mean(element_losses), rtol=1e-5)
  np.testing.assert_allclose(metrics["loss_sum"], sum(element_losses), rtol=1e-5)
  assert float(metrics["element_count"]) == 4.0
  assert float(metrics["pair_correct_sum"]) == correct
  assert float(metrics["pair_count"]) == pairs == 10 + 3 + 1 + 3


def test_ranking_loss_k2_is_pairwise_logistic():
  rewards = np.array([[0.5, -0.25], [1.0, 3.0], [0.0, 0.0]])
  loss, _ = losses.ranking_loss(rewards=jnp.asarray(rewards),
                                response_mask=jnp.ones((3, 2), jnp.int32))
  want = np.mean([_softplus(-(w - l)) for w, l in rewards])
  np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_ranking_loss_ignores_padded_responses_even_nan():
  rewards = jnp.array([[1.0, 0.5, -2.0, 0.0], [0.3, -0.7, 0.0, 0.0]])
  mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]])
  garbage = rewards.at[0, 3].set(jnp.nan).at[1, 2].set(1e30).at[1, 3].set(-jnp.inf)

  def loss_fn(r):
    return losses.ranking_loss(rewards=r, response_mask=mask)

  (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(rewards)
  (loss_g, metrics_g), grad_g = jax.value_and_grad(loss_fn, has_aux=True)(garbage)
  assert float(loss_g) == float(loss)
  for key in metrics:
    assert float(metrics_g[key]) == float(metrics[key]), key
  np.testing.assert_array_equal(grad_g, grad)
  np.testing.assert_array_equal(grad[mask == 0], 0.0)


def test_ranking_loss_gradient_by_hand():
  # K = 2, one element: d softplus(-(r0 - r1)) / dr0 = -sigmoid(r1 - r0) = -sigmoid(-1).
  grad = jax.grad(lambda r: losses.ranking_loss(
      rewards=r, response_mask=jnp.ones((1, 2)))[0])(jnp.array([[1.0, 0.0]]))
  s = 1 / (1 + math.exp(1.0))  # sigmoid(-1) = 0.2689414
  np.testing.assert_allclose(grad, [[-s, s]], rtol=1e-6)


def test_ranking_loss_bad_shapes():
  with pytest.raises(ValueError, match=r"ranking_loss: response_mask has shape \(2, 3\)"):
    losses.ranking_loss(rewards=jnp.zeros((2, 4)), response_mask=jnp.ones((2, 3)))
  with pytest.raises(ValueError, match=r"ranking_loss: rewards has shape \(4,\)"):
    losses.ranking_loss(rewards=jnp.zeros((4,)), response_mask=jnp.ones((4,)))


# --- jit / vmap / shard_map ---------------------------------------------------------


def test_losses_under_jit_and_vmap():
  rng = np.random.default_rng(4)
  logits = jnp.asarray(rng.normal(size=(3, 2, 4, 5)), jnp.float32)  # [M, B, T, V]
  tokens = jnp.asarray(rng.integers(0, 5, size=(3, 2, 4)))
  mask = jnp.asarray(rng.integers(0, 2, size=(3, 2, 4)))
  rewards = jnp.asarray(rng.normal(size=(3, 2, 4)), jnp.float32)  # [M, B, K]

  def both(logits, tokens, mask, rewards):
    return (losses.next_token_loss(logits=logits, tokens=tokens, loss_mask=mask),
            losses.ranking_loss(rewards=rewards, response_mask=mask))

  batched = jax.jit(jax.vmap(both))(logits, tokens, mask, rewards)
  for m in range(3):
    single = both(logits[m], tokens[m], mask[m], rewards[m])
    jax.tree.map(lambda a, b, m=m: np.testing.assert_allclose(a[m], b, rtol=1e-6),
                 batched, single)


def test_loss_sums_aggregate_over_shards():
  mesh = jax.make_mesh((8,), ("data",))
  rng = np.random.default_rng(5)
  logits = jnp.asarray(rng.normal(size=(8, 3, 4)), jnp.float32)
  tokens = jnp.asarray(rng.integers(0, 4, size=(8, 3)))
  mask = jnp.asarray(rng.integers(0, 2, size=(8, 3)))

  def per_shard(logits, tokens, mask):
    _, metrics = losses.next_token_loss(logits=logits, tokens=tokens, loss_mask=mask)
    return jax.lax.psum(metrics, "data")

  spec = jax.P("data")
  sharded = jax.shard_map(per_shard, mesh=mesh, in_specs=(spec, spec, spec),
                          out_specs=jax.P())(
                              *jax.device_put((logits, tokens, mask),
                                              jax.NamedSharding(mesh, spec)))
  _, whole = losses.next_token_loss(logits=logits, tokens=tokens, loss_mask=mask)
  for key in whole:
    np.testing.assert_allclose(sharded[key], whole[key], rtol=1e-6)
