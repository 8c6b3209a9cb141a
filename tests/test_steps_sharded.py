"""SFT, reward and DPO steps: the same update on one device, on three 8-device meshes, and
under pmap; parameters really laid out as the rule table says."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core import meta
import pytest

from instructjax import sharding
from instructjax.data.batches import RankingBatch, TokenBatch
from instructjax.models import CausalLM, ModelConfig, ScalarModel
from instructjax.optimizers import make_optimizer
from instructjax.steps.dpo_step import dpo_step
from instructjax.steps.reward_step import reward_step
from instructjax.steps.sft_step import sft_step
from instructjax.train_state import create_train_state

CFG = ModelConfig(arch="llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4,
                  n_kv_heads=2, max_len=16, tie_embeddings=False)
# fp32 reductions reorder across shardings. The equivalence tests use SGD, because Adam
# scales every update to ~lr whatever the gradient size, which would blow rounding noise
# in near-zero gradients up to visible differences.
TOL = dict(rtol=2e-5, atol=2e-6)


def _state_factory(model, example, *, adam=False):
  tx = (make_optimizer(peak_lr=1e-2, warmup_steps=0, total_steps=10, weight_decay=0.1)
        if adam else optax.sgd(0.5, momentum=0.9))

  def init(rng):
    params = model.init(rng, example)["params"]
    return create_train_state(apply_fn=model.apply, params=params, tx=tx, rng=rng)
  return init


def _token_batch(rng, b=16, t=12):
  tokens = rng.integers(0, CFG.vocab_size, (b, t)).astype(np.int32)
  lengths = rng.integers(4, t + 1, b)
  token_mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
  loss_mask = token_mask * (np.arange(t)[None] >= 3)
  return TokenBatch(tokens=tokens, token_mask=token_mask, loss_mask=loss_mask.astype(np.int32))


def _ranking_batch(rng, b=8, k=4, t=10):
  tokens = rng.integers(0, CFG.vocab_size, (b, k, t)).astype(np.int32)
  lengths = rng.integers(3, t + 1, (b, k))
  token_mask = (np.arange(t) < lengths[..., None]).astype(np.int32)
  response_mask = np.ones((b, k), np.int32)
  response_mask[::3, 3] = 0  # some prompts have K = 3
  token_mask = token_mask * response_mask[..., None]
  loss_mask = token_mask * (np.arange(t) >= 2)  # a 2-token prompt
  return RankingBatch(tokens=tokens, token_mask=token_mask, loss_mask=loss_mask,
                      response_mask=response_mask, labeler=np.zeros(b, np.int32))


def _run(mesh, init, step, batches):
  state, shardings = sharding.create_sharded(init, mesh, jax.random.PRNGKey(0))
  fn = jax.jit(step, out_shardings=(shardings, None), donate_argnums=0)
  for batch in batches:
    state, metrics = fn(state, sharding.shard_batch(batch, mesh))
  return state, metrics


# DPO's frozen reference: another init of the policy, so the loss is not at its start.
_REFERENCE = meta.unbox(CausalLM(CFG).init(jax.random.PRNGKey(1), jnp.zeros((1, 8), jnp.int32))
                        ["params"])
CASES = {
    "sft": (CausalLM(CFG), sft_step, _token_batch),
    "rm": (ScalarModel(CFG), reward_step, _ranking_batch),
    "dpo": (CausalLM(CFG), functools.partial(dpo_step, ref_params=_REFERENCE,
                                             loss="plackett_luce", coef=0.5), _ranking_batch),
}


@pytest.mark.parametrize("stage", sorted(CASES))
def test_sharded_step_matches_one_device(stage):
  model, step, make_batch = CASES[stage]
  rng = np.random.default_rng(0)
  batches = [make_batch(rng) for _ in range(2)]
  init = _state_factory(model, jnp.zeros((1, 8), jnp.int32))
  one = sharding.make_mesh(data=1, devices=jax.devices()[:1])
  ref_state, ref_metrics = _run(one, init, step, batches)
  assert np.isfinite(float(ref_metrics["loss"]))
  for shape in [(8, 1, 1), (2, 4, 1), (2, 2, 2)]:
    mesh = sharding.make_mesh(data=shape[0], fsdp=shape[1], tensor=shape[2])
    state, metrics = _run(mesh, init, step, batches)
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL),
                 state.params, ref_state.params)


def test_parameters_sharded_as_the_rule_table_says():
  init = _state_factory(CausalLM(CFG), jnp.zeros((1, 8), jnp.int32), adam=True)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  state, _ = sharding.create_sharded(init, mesh, jax.random.PRNGKey(0))
  params = state.params["transformer"]
  q = params["block_0"]["attn"]["q_proj"]["kernel"]  # [embed, heads, head_dim]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  # Each device holds a quarter of the rows (fsdp=2) and half the heads (tensor=2).
  assert q.addressable_shards[0].data.shape == (16, 2, 8)
  lm_head = state.params["lm_head"]["kernel"]  # [embed, vocab]
  assert lm_head.addressable_shards[0].data.shape == (16, 32)
  mu = state.opt_state[1][0].mu["transformer"]["block_0"]["mlp"]["down_proj"]["kernel"]
  assert mu.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")


def test_accumulated_gradients_match_one_big_batch():
  init = _state_factory(CausalLM(CFG), jnp.zeros((1, 8), jnp.int32))
  one = sharding.make_mesh(data=1, devices=jax.devices()[:1])
  batch = _token_batch(np.random.default_rng(1))
  full, _ = _run(one, init, sft_step, [batch])
  accum, _ = _run(one, init, functools.partial(sft_step, accum_steps=4), [batch])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL),
               accum.params, full.params)


@pytest.mark.parametrize("stage", sorted(CASES))
def test_pmap_form_agrees(stage):
  model, step, make_batch = CASES[stage]
  batch = make_batch(np.random.default_rng(2))
  init = _state_factory(model, jnp.zeros((1, 8), jnp.int32))
  one = sharding.make_mesh(data=1, devices=jax.devices()[:1])
  ref_state, _ = _run(one, init, step, [batch])
  state, _ = sharding.create_sharded(init, one, jax.random.PRNGKey(0))
  n = 4
  replicated = jax.tree.map(lambda x: np.stack([np.asarray(x)] * n), state)
  split = jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)
  pstep = jax.pmap(functools.partial(step, axis_name="dp"), axis_name="dp",
                   devices=jax.devices()[:n])
  new, _ = pstep(replicated, split)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b), **TOL),
               new.params, ref_state.params)


def test_mesh_that_does_not_fit_the_devices_is_refused():
  with pytest.raises(sharding.ShardingError, match="needs 6 devices but there are 8"):
    sharding.make_mesh(data=3, fsdp=2, tensor=1)
  with pytest.raises(sharding.ShardingError, match="does not divide the 8 devices"):
    sharding.make_mesh(data=-1, fsdp=3)


def test_parameter_that_cannot_split_over_the_mesh_is_named():
  cfg = CFG.replace(n_kv_heads=1, n_heads=2, d_model=32)  # 1 kv head over tensor=2
  init = _state_factory(CausalLM(cfg), jnp.zeros((1, 8), jnp.int32))
  mesh = sharding.make_mesh(data=4, fsdp=1, tensor=2)
  with pytest.raises(sharding.ShardingError, match=r"k_proj/kernel.*'kv_heads'=1"):
    sharding.create_sharded(init, mesh, jax.random.PRNGKey(0))


def test_nan_loss_skips_the_update_and_counts_it():
  init = _state_factory(CausalLM(CFG), jnp.zeros((1, 8), jnp.int32))
  one = sharding.make_mesh(data=1, devices=jax.devices()[:1])
  state, shardings = sharding.create_sharded(init, one, jax.random.PRNGKey(0))
  before = jax.tree.map(np.asarray, state.params)

  def poisoned(state, batch):  # a step whose loss is NaN
    bad = state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
    new, metrics = sft_step(bad, batch)
    return new.replace(params=jax.tree.map(lambda n, p: jnp.where(
        metrics["update_skipped"] > 0, p, n), new.params, state.params)), metrics
  new, metrics = jax.jit(poisoned)(state, _token_batch(np.random.default_rng(0)))
  assert int(metrics["update_skipped"]) == 1 and int(metrics["consecutive_skips"]) == 1
  assert int(new.step) == 1
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), new.params, before)
