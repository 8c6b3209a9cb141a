"""ppo_step on a fresh rollout of a tiny policy: ratio 1 at the first step, the same
update on one device, on three 8-device meshes and under pmap, the PPO-ptx term, the
NaN guard and the EMA of the policy."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import meta

from instructjax import sampling, sharding
from instructjax.data.batches import TokenBatch
from instructjax.models import CausalLM, ModelConfig, ScalarModel
from instructjax.rollout import score_rollout
from instructjax.steps.ppo_step import PPOState, ppo_step

CFG = ModelConfig(arch="llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4,
                  n_kv_heads=2, max_len=32, tie_embeddings=False)
B, P, N = 8, 4, 6  # rollout rows, prompt length, response length
TEMPERATURE = 0.7
HPARAMS = dict(prompt_len=P, temperature=TEMPERATURE, clip_eps=0.2, value_clip=0.2,
               vf_coef=0.5)
EMA_DECAY = 0.9  # on in every test: the sharded tests then cover the EMA too
POLICY, SCALAR = CausalLM(CFG), ScalarModel(CFG)
EXAMPLE = np.zeros((1, 8), np.int32)
STATE_KEY = jax.random.PRNGKey(0)  # the state's params; the rollout samples from them
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]  # (data, fsdp, tensor)
# fp32 sums reorder across shardings. The tests use SGD, because Adam scales every update
# to ~lr whatever the gradient's size, which would blow rounding noise in near-zero
# gradients (e.g. of the value trunk under a zero-initialised head) up to visible
# differences; and SGD's first step is exactly -LR * grad, which the PPO-ptx test uses.
LR = 0.5
TX = optax.sgd(LR, momentum=0.9)
TOL = dict(rtol=2e-5, atol=2e-6)


def _init_state(rng):
  params = {"policy": POLICY.init(rng, EXAMPLE)["params"],
            "value": SCALAR.init(rng, EXAMPLE)["params"]}
  # An EMA that differs from the policy, so the test can tell which one is averaged.
  ema = jax.tree.map(lambda p: 0.5 * p, params["policy"])
  return PPOState.create(apply_fn=None, params=params, tx=TX, rng=rng,
                         skipped_updates=jnp.zeros((), jnp.int32), ema_policy=ema,
                         kl_coef=jnp.float32(0.1))


def _step(*, ptx_coef: float = 0.0, axis_name=None):
  return functools.partial(ppo_step, policy=POLICY, value_model=SCALAR, ptx_coef=ptx_coef,
                           ema_decay=EMA_DECAY, axis_name=axis_name, **HPARAMS)


@functools.lru_cache(maxsize=None)
def _compiled(mesh_shape=(1, 1, 1), ptx_coef: float = 0.0):
  """(mesh, initial state, jitted step), built once per mesh and ptx_coef: compiling
  dominates these tests' time."""
  if mesh_shape == (1, 1, 1):
    mesh = sharding.make_mesh(data=1, devices=jax.devices()[:1])
  else:
    mesh = sharding.make_mesh(data=mesh_shape[0], fsdp=mesh_shape[1], tensor=mesh_shape[2])
  state, shardings = sharding.create_sharded(_init_state, mesh, STATE_KEY)
  step = jax.jit(_step(ptx_coef=ptx_coef), out_shardings=(shardings, None))
  return mesh, state, step


def _run(rollout, ptx_batch=None, *, mesh_shape=(1, 1, 1), ptx_coef: float = 0.0, steps=1):
  """-> (initial state, final state, last metrics), as numpy."""
  mesh, state, step = _compiled(mesh_shape, ptx_coef)
  initial = jax.tree.map(np.asarray, state)
  rollout = sharding.shard_batch(rollout, mesh)
  if ptx_batch is not None:
    ptx_batch = sharding.shard_batch(ptx_batch, mesh)
  for _ in range(steps):
    state, metrics = step(state, rollout, ptx_batch)
  return initial, jax.tree.map(np.asarray, state), jax.tree.map(np.asarray, metrics)


@pytest.fixture(scope="module")
def fresh_rollout():
  """A rollout sampled from the state's own policy (so nothing has changed since)."""
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  reward = meta.unbox(SCALAR.init(keys[0], EXAMPLE)["params"])
  reward["scalar_head"]["kernel"] = jax.random.normal(keys[1], (CFG.d_model, 1))
  _, state, _ = _compiled()
  params = {**state.params, "ref": meta.unbox(POLICY.init(keys[0], EXAMPLE)["params"]),
            "reward": reward}
  rng = np.random.default_rng(0)
  prompt_mask = (np.arange(P)[None] >= rng.integers(0, P, B)[:, None]).astype(np.int32)
  prompt_tokens = rng.integers(1, CFG.vocab_size, (B, P)).astype(np.int32) * prompt_mask
  config = sampling.SamplingConfig(max_new_tokens=N, temperature=TEMPERATURE)
  sample = sampling.generate(POLICY, params["policy"], prompt_tokens, prompt_mask, keys[2],
                             config=config)
  rollout = score_rollout(
      params, sample, jnp.asarray(prompt_mask), np.arange(B, dtype=np.int32),
      jnp.float32(0.1), policy=POLICY, value_model=SCALAR, reward_model=SCALAR,
      temperature=config.temperature, reward_bias=0.0, gamma=1.0, lam=0.95, whiten_rewards=False,
      no_eos_penalty=-1.0)
  return jax.tree.map(np.asarray, rollout)


@pytest.fixture(scope="module")
def rollout(fresh_rollout):
  """The fresh rollout with responses cut at uneven lengths (as EOS would), so devices
  hold different token counts and only global means give the one-device update.
  Causal attention keeps the log-probs of the kept tokens valid."""
  lengths = np.array([6, 1, 3, 5, 2, 6, 4, 1])  # [B]
  response_mask = (np.arange(N)[None] < lengths[:, None]).astype(np.int32)  # [B, N]
  keep = response_mask > 0
  return fresh_rollout.replace(
      response_mask=response_mask,
      token_mask=np.concatenate([fresh_rollout.token_mask[:, :P], response_mask], axis=1),
      logprobs=np.where(keep, fresh_rollout.logprobs, 0.0),
      ref_logprobs=np.where(keep, fresh_rollout.ref_logprobs, 0.0),
      advantages=np.where(keep, fresh_rollout.advantages, 0.0),
      returns=np.where(keep, fresh_rollout.returns, 0.0))


def _ptx_batch(rng, b=8, t=10):
  tokens = rng.integers(0, CFG.vocab_size, (b, t)).astype(np.int32)
  lengths = rng.integers(3, t + 1, b)
  token_mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)  # [b, t]
  loss_mask = token_mask * (np.arange(t)[None] >= 1)  # every real token but the first
  return TokenBatch(tokens=tokens, token_mask=token_mask, loss_mask=loss_mask.astype(np.int32))


def _assert_trees_close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol),
               a, b)


def test_first_step_on_a_fresh_rollout_has_ratio_one(fresh_rollout):
  # The update recomputes the log-probs at the sampling temperature: nothing has changed.
  _, _, metrics = _run(fresh_rollout)
  assert abs(float(metrics["ratio"]) - 1.0) < 1e-6
  assert float(metrics["clipfrac"]) == 0.0
  assert abs(float(metrics["approx_kl"])) < 1e-6
  assert int(metrics["update_skipped"]) == 0


def test_sharded_step_matches_one_device(rollout):
  _, ref_state, ref_metrics = _run(rollout, steps=2)
  assert float(ref_metrics["ratio"]) != pytest.approx(1.0, abs=1e-4)  # step 2 moved
  for shape in MESHES:
    _, state, metrics = _run(rollout, mesh_shape=shape, steps=2)
    for key in ("loss", "policy_loss", "value_loss", "ratio", "entropy"):
      np.testing.assert_allclose(metrics[key], ref_metrics[key], **TOL, err_msg=key)
    _assert_trees_close(state.params, ref_state.params, **TOL)
    _assert_trees_close(state.ema_policy, ref_state.ema_policy, **TOL)


def test_pmap_form_agrees(rollout):
  initial, ref_state, ref_metrics = _run(rollout)
  n = 4
  replicated = jax.tree.map(lambda x: np.stack([x] * n), initial)
  split = jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), rollout)
  pstep = jax.pmap(_step(axis_name="dp"), axis_name="dp", devices=jax.devices()[:n])
  new, metrics = pstep(replicated, split, None)
  np.testing.assert_allclose(np.asarray(metrics["loss"])[0], ref_metrics["loss"], **TOL)
  _assert_trees_close(jax.tree.map(lambda x: np.asarray(x)[0], new.params),
                      ref_state.params, **TOL)


@jax.jit
def _logits(policy_params, batch):
  return POLICY.apply({"params": policy_params}, batch.tokens,
                      token_mask=batch.token_mask)  # [b, t, V]


@jax.jit
@jax.grad
def _nll_grad(policy_params, batch):
  """Mean next-token NLL over the batch's targets, written out independently."""
  logits = _logits(policy_params, batch)  # [b, t, V]
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)  # [b, t-1, V]
  picked = jnp.take_along_axis(logp, batch.tokens[:, 1:, None], axis=-1)[..., 0]
  mask = batch.loss_mask[:, 1:]  # [b, t-1]
  return -jnp.sum(picked * mask) / jnp.sum(mask)


def test_ptx_adds_coef_times_pretraining_nll(rollout):
  ptx_coef = 2.0
  batch = _ptx_batch(np.random.default_rng(3))
  initial, plain, plain_metrics = _run(rollout)
  _, ptx, ptx_metrics = _run(rollout, batch, ptx_coef=ptx_coef)

  # The metric against a float64 numpy NLL of the same logits.
  before = initial.params["policy"]
  logits = np.asarray(_logits(before, batch), np.float64)  # [b, t, V]
  nll, count = 0.0, 0
  for row in range(batch.tokens.shape[0]):
    for t in range(1, batch.tokens.shape[1]):
      if batch.loss_mask[row, t]:
        z = logits[row, t - 1]
        nll -= z[batch.tokens[row, t]] - z.max() - np.log(np.exp(z - z.max()).sum())
        count += 1
  np.testing.assert_allclose(ptx_metrics["ptx_loss"], nll / count, rtol=1e-5)
  np.testing.assert_allclose(ptx_metrics["loss"],
                             plain_metrics["loss"] + ptx_coef * nll / count, rtol=1e-5)
  assert "ptx_loss" not in plain_metrics

  # SGD's first step is -LR * grad, so the updates differ by -LR * ptx_coef * grad(NLL),
  # on the policy only.
  grad = _nll_grad(before, batch)
  want = jax.tree.map(lambda p, g: p - LR * ptx_coef * g, plain.params["policy"], grad)
  _assert_trees_close(ptx.params["policy"], want, rtol=1e-4, atol=1e-6)
  assert max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grad)) > 1e-3
  _assert_trees_close(ptx.params["value"], plain.params["value"], rtol=0, atol=0)


def test_zero_ptx_coef_ignores_the_ptx_batch(rollout):
  _, plain, _ = _run(rollout)
  _, ignored, metrics = _run(rollout, _ptx_batch(np.random.default_rng(4)))
  assert "ptx_loss" not in metrics
  _assert_trees_close(ignored.params, plain.params, rtol=0, atol=0)


def test_nan_advantage_skips_the_update(rollout):
  advantages = rollout.advantages.copy()
  advantages[2, 0] = np.nan  # a response token
  initial, state, metrics = _run(rollout.replace(advantages=advantages))
  assert int(metrics["update_skipped"]) == 1 and int(metrics["consecutive_skips"]) == 1
  assert int(state.step) == 1
  _assert_trees_close(state.params, initial.params, rtol=0, atol=0)


def test_ema_of_the_policy(rollout):
  initial, state, _ = _run(rollout)
  want = jax.tree.map(lambda e, p: EMA_DECAY * e + (1 - EMA_DECAY) * p, initial.ema_policy,
                      state.params["policy"])
  _assert_trees_close(state.ema_policy, want, rtol=1e-6, atol=1e-7)
