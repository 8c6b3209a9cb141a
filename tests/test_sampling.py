"""Tests for instructjax.sampling: KV-cache decoding, filtering, EOS handling, sharding."""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from instructjax import models, sampling
from instructjax.models import CausalLM, ModelConfig
from instructjax.models.transformer import default_positions

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "hf"
VOCAB = 97
ARCHS = ["gpt2", "llama"]


# Most tests share these shapes and configs, so the jitted sampler compiles few times.
LENGTHS, WIDTH, N = (6, 3, 5, 1), 6, 8
SAMPLED = sampling.SamplingConfig(max_new_tokens=N, temperature=0.7)
GREEDY = sampling.SamplingConfig(max_new_tokens=N, greedy=True)


@functools.cache
def _model(arch: str):
  config = ModelConfig(arch=arch, vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4,
                       n_kv_heads=2 if arch == "llama" else 0,
                       tie_embeddings=arch == "gpt2", max_len=64)
  model = CausalLM(config)
  # Random weights filled in from the parameter shapes (compiling model.init costs
  # seconds), larger than the default init: logits are peaked (std ~1.7), so argmax
  # decisions are far from ties that float noise could flip.
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      return jnp.asarray(1.0 + 0.2 * noise)
    return jnp.asarray((0.3 if "embedding" in name or "lm_head" in name else 0.15) * noise)

  return model, jax.tree_util.tree_map_with_path(fill, meta.unbox(shapes["params"]))


def _prompts(lengths=LENGTHS, width=WIDTH, seed=1):
  """Left-padded random prompts: row b has lengths[b] real tokens."""
  tokens = np.asarray(jax.random.randint(jax.random.key(seed), (len(lengths), width), 1, VOCAB))
  mask = np.array([[0] * (width - n) + [1] * n for n in lengths], np.int32)
  return np.where(mask > 0, tokens, 0).astype(np.int32), mask


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, tokens, token_mask):
  """One full forward pass without a cache: logits [B, T, V]."""
  return model.apply({"params": params}, tokens, token_mask=token_mask)


@functools.partial(jax.jit, static_argnums=0)
def _cached_forward(model, params, cache, tokens, positions, token_mask):
  return model.apply({"params": params, "cache": cache}, tokens, positions=positions,
                     token_mask=token_mask, decode=True, mutable=["cache"])


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("changes, field", [
    (dict(temperature=0.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(eos_id=-2), "eos_id"),
    (dict(pad_id=-1), "pad_id")])
def test_config_rejects_bad_values(changes, field):
  kwargs = dict(max_new_tokens=4) | changes
  with pytest.raises(ValueError, match=field):
    sampling.SamplingConfig(**kwargs)


def test_generate_rejects_bad_prompts():
  model, params = _model("gpt2")
  config = sampling.SamplingConfig(max_new_tokens=4)
  key = jax.random.key(0)
  tokens = np.ones((2, 5), np.int32)
  right_padded = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)
  with pytest.raises(ValueError, match=r"rows \[1\] are not left-padded.*left_pad"):
    sampling.generate(model, params, tokens, right_padded, key, config=config)
  empty = np.array([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], np.int32)
  with pytest.raises(ValueError, match=r"rows \[1\] have no real token"):
    sampling.generate(model, params, tokens, empty, key, config=config)
  with pytest.raises(ValueError, match=r"prompt_mask shape \(2, 4\)"):
    sampling.generate(model, params, tokens, np.ones((2, 4), np.int32), key, config=config)
  with pytest.raises(ValueError, match="max_len=64"):
    sampling.generate(model, params, tokens, np.ones_like(tokens), key,
                      config=sampling.SamplingConfig(max_new_tokens=60))
  with pytest.raises(ValueError, match="eos_id=97 is outside the vocabulary"):
    sampling.generate(model, params, tokens, np.ones_like(tokens), key,
                      config=sampling.SamplingConfig(max_new_tokens=4, eos_id=97))


def test_left_pad_moves_padding_left_keeping_order():
  tokens = np.array([[5, 6, 7, 0, 0], [1, 2, 3, 4, 9], [8, 0, 0, 0, 0]])
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
  new_tokens, new_mask = sampling.left_pad(tokens, mask)
  np.testing.assert_array_equal(new_mask, [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
  np.testing.assert_array_equal(np.where(new_mask > 0, new_tokens, -1),
                                [[-1, -1, 5, 6, 7], [1, 2, 3, 4, 9], [-1, -1, -1, -1, 8]])


# -------------------------------------------------------------------------- filtering

# Token probabilities in a deliberately unsorted order: sorted, the ids are 1, 3, 4, 0, 2.
_PROBS = np.array([0.1, 0.5, 0.05, 0.2, 0.15])


def _kept(logits, **kwargs):
  filtered = np.asarray(sampling.filter_logits(jnp.asarray(logits, jnp.float32), **kwargs))
  return [set(np.flatnonzero(np.isfinite(row)).tolist()) for row in filtered]


@pytest.mark.parametrize("kwargs, expected", [
    (dict(), {0, 1, 2, 3, 4}),
    (dict(top_k=1), {1}),
    (dict(top_k=2), {1, 3}),
    (dict(top_k=10), {0, 1, 2, 3, 4}),
    (dict(top_p=0.45), {1}),  # 0.5 already reaches 0.45
    (dict(top_p=0.55), {1, 3}),  # 0.5 + 0.2
    (dict(top_p=0.8), {1, 3, 4}),  # 0.85
    (dict(top_p=0.9), {0, 1, 3, 4}),  # 0.95
    # After top-3 the renormalised mass is 0.5/0.85 + 0.2/0.85 = 0.82 >= 0.8.
    (dict(top_k=3, top_p=0.8), {1, 3}),
])
def test_filter_logits_keeps_the_expected_set(kwargs, expected):
  logits = np.log(np.stack([_PROBS, _PROBS[::-1]]))  # row 1 has the ids reversed
  reversed_expected = {4 - i for i in expected}
  assert _kept(logits, **kwargs) == [expected, reversed_expected]


def test_filter_logits_with_ties_keeps_the_smallest_set():
  assert _kept([[2.0, 1.0, 2.0, 2.0]], top_k=2) == [{0, 2}]
  # Four exact quarters: two tokens reach a mass of exactly 0.5, so a third is not kept.
  assert _kept([[0.0, 0.0, 0.0, 0.0]], top_p=0.5) == [{0, 1}]


def test_sample_token_stays_in_the_filtered_set_and_renormalises():
  draws = 4000
  logits = jnp.tile(jnp.log(jnp.asarray(_PROBS, jnp.float32)), (draws, 1))  # [draws, V]
  config = sampling.SamplingConfig(max_new_tokens=1, top_p=0.55)  # keeps {1: 0.5, 3: 0.2}
  token, logprob = sampling.sample_token(logits, jax.random.key(3), config=config)
  token, logprob = np.asarray(token), np.asarray(logprob)
  assert set(token.tolist()) == {1, 3}
  assert abs(np.mean(token == 1) - 0.5 / 0.7) < 0.03  # binomial std is 0.007
  np.testing.assert_allclose(logprob[token == 1], math.log(0.5 / 0.7), atol=1e-6)
  np.testing.assert_allclose(logprob[token == 3], math.log(0.2 / 0.7), atol=1e-6)


def test_first_max_index_is_numpys_argmax_with_ties():
  rng = np.random.default_rng(0)
  values = rng.integers(0, 4, size=(64, 700)).astype(np.float32)  # many tied maxima
  values[3] = -np.inf
  values[4, :] = -np.inf
  values[4, 699] = 0.0
  values = jnp.asarray(values)
  top = jnp.max(values, axis=-1, keepdims=True)
  np.testing.assert_array_equal(sampling.first_max_index(values, top),
                                np.argmax(np.asarray(values), axis=-1))


def test_inverse_cdf_sample_has_the_weights_distribution_across_blocks():
  # V = 600 is not a multiple of the block (256): the padded tail must never be drawn.
  weights = np.zeros(600, np.float32)
  mass = {0: 0.1, 255: 0.2, 256: 0.3, 511: 0.15, 599: 0.25}
  for token_id, p in mass.items():
    weights[token_id] = 7.0 * p  # unnormalised on purpose
  draws = 40_000
  rows = jnp.tile(jnp.asarray(weights), (draws, 1))  # [draws, V]
  tokens = np.asarray(sampling.inverse_cdf_sample(rows, jax.random.key(0)))
  assert set(tokens.tolist()) == set(mass)
  for token_id, p in mass.items():
    std = math.sqrt(p * (1 - p) / draws)  # binomial, at most 0.0025
    assert abs(np.mean(tokens == token_id) - p) < 4 * std, token_id


def test_inverse_cdf_sample_never_draws_a_zero_weight():
  rng = np.random.default_rng(1)
  # Half the ids have weight 0, the rest span 30 orders of magnitude, so block totals
  # summed in two orders round differently; whole leading blocks are empty in some rows.
  weights = np.exp(rng.uniform(-70.0, 0.0, size=(4000, 700))).astype(np.float32)
  weights[rng.random(weights.shape) < 0.5] = 0.0
  weights[:100, :512] = 0.0
  weights[100:200, :] = 0.0
  weights[100:200, 0] = 1.0  # all mass on the very first id
  tokens = np.asarray(sampling.inverse_cdf_sample(jnp.asarray(weights), jax.random.key(2)))
  assert np.all(weights[np.arange(len(tokens)), tokens] > 0)
  np.testing.assert_array_equal(tokens[100:200], 0)

def test_inverse_cdf_sample_at_the_top_of_the_range_lands_on_the_last_weight(monkeypatch):
  # u = 1 puts the target exactly at the total, where the two summation orders disagree
  # by a rounding: the draw must still be the last id of nonzero weight, never past it.
  monkeypatch.setattr(jax.random, "uniform", lambda rng, shape: jnp.zeros(shape))
  rng = np.random.default_rng(3)
  # Weights of one size: each id's mass stays above the total's rounding, so the last
  # one is reachable.
  weights = rng.uniform(0.5, 1.0, size=(500, 700)).astype(np.float32)
  last = rng.integers(1, 700, size=500)
  weights[np.arange(700)[None, :] > last[:, None]] = 0.0  # [B, V]: zero after `last`
  tokens = np.asarray(sampling.inverse_cdf_sample(jnp.asarray(weights), jax.random.key(0)))
  np.testing.assert_array_equal(tokens, last)


def test_sample_token_matches_the_softmax_over_a_real_vocabulary():
  # A GPT-2-sized vocabulary with a few likely tokens and a long tail of small ones.
  vocab, draws = 50257, 2000
  logits = np.full(vocab, -6.0, np.float32)
  logits[[7, 20000, 50256]] = [2.0, 1.0, 0.5]
  probs = np.exp(logits / 0.7) / np.exp(logits / 0.7).sum()
  config = sampling.SamplingConfig(max_new_tokens=1, temperature=0.7)
  token, logprob = sampling.sample_token(jnp.tile(jnp.asarray(logits), (draws, 1)),
                                         jax.random.key(4), config=config)
  token, logprob = np.asarray(token), np.asarray(logprob)
  np.testing.assert_allclose(logprob, np.log(probs[token]), rtol=1e-5)
  for token_id in (7, 20000, 50256):
    std = math.sqrt(probs[token_id] * (1 - probs[token_id]) / draws)
    assert abs(np.mean(token == token_id) - probs[token_id]) < 4 * std
  tail = 1 - probs[[7, 20000, 50256]].sum()  # ~0.34 of the mass on the other 50254
  assert abs(np.mean(~np.isin(token, [7, 20000, 50256])) - tail) < 4 * math.sqrt(
      tail * (1 - tail) / draws)


# ------------------------------------------------------------------- cache and decoding


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_decoding_matches_full_forward(arch):
  model, params = _model(arch)
  prompt, prompt_mask = _prompts()
  batch, extra = prompt.shape[0], 5
  continuation = np.asarray(jax.random.randint(jax.random.key(7), (batch, extra), 1, VOCAB))
  tokens = np.concatenate([prompt, continuation], axis=1)  # [B, P + E]
  mask = np.concatenate([prompt_mask, np.ones_like(continuation)], axis=1)
  full = np.asarray(_forward(model, params, tokens, mask))  # [B, P + E, V]

  cache = sampling.init_cache(model, batch, WIDTH + extra)
  logits, variables = _cached_forward(model, params, cache, prompt,
                                      default_positions(prompt_mask), prompt_mask)
  real = prompt_mask > 0  # padding rows attend to nothing; only real tokens must agree
  np.testing.assert_allclose(np.asarray(logits)[real], full[:, :WIDTH][real],
                             atol=1e-4, rtol=1e-4)
  positions = prompt_mask.sum(axis=1)  # [B]
  for i in range(extra):
    logits, variables = _cached_forward(
        model, params, variables["cache"], continuation[:, i:i + 1], positions[:, None] + i,
        np.ones((batch, 1), np.int32))
    np.testing.assert_allclose(logits[:, 0], full[:, WIDTH + i], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_logprobs_match_full_forward(arch):
  model, params = _model(arch)
  prompt, prompt_mask = _prompts()
  out = sampling.generate(model, params, prompt, prompt_mask, jax.random.key(4), config=SAMPLED)
  np.testing.assert_array_equal(out.tokens[:, :WIDTH], prompt)
  np.testing.assert_array_equal(out.tokens[:, WIDTH:], out.response_tokens)
  logits = _forward(model, params, out.tokens, out.token_mask)[:, WIDTH - 1:-1]  # [B, N, V]
  logp = jax.nn.log_softmax(logits / SAMPLED.temperature, axis=-1)
  expected = jnp.take_along_axis(logp, out.response_tokens[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(out.logprobs, expected, atol=1e-5)
  assert np.all(np.asarray(out.response_mask) == 1)


def test_filtered_sampling_stays_in_the_allowed_set():
  model, params = _model("gpt2")
  prompt, prompt_mask = _prompts()
  temperature, top_k, top_p = 1.5, 6, 0.6
  config = sampling.SamplingConfig(max_new_tokens=N, temperature=temperature, top_k=top_k,
                                   top_p=top_p)
  out = sampling.generate(model, params, prompt, prompt_mask, jax.random.key(5), config=config)
  logits = _forward(model, params, out.tokens, out.token_mask)[:, WIDTH - 1:-1]
  probs = np.asarray(jax.nn.softmax(logits / temperature, axis=-1), np.float64)  # [B, N, V]
  tokens, logprobs = np.asarray(out.response_tokens), np.asarray(out.logprobs)
  for b in range(tokens.shape[0]):
    for t in range(N):
      # The allowed set, written out: the top_k most likely, renormalised, then the most
      # likely of those until their mass reaches top_p.
      order = np.argsort(-probs[b, t])[:top_k]
      kept_probs = probs[b, t, order] / probs[b, t, order].sum()
      allowed, mass = [], 0.0
      for token_id, p in zip(order, kept_probs):
        allowed.append(token_id)
        mass += p
        if mass >= top_p:
          break
      assert tokens[b, t] in allowed
      kept_mass = probs[b, t, allowed].sum()
      np.testing.assert_allclose(logprobs[b, t], np.log(probs[b, t, tokens[b, t]] / kept_mass),
                                 atol=1e-5)


def test_top_k_1_sampling_equals_greedy():
  model, params = _model("gpt2")
  prompt, prompt_mask = _prompts()
  greedy = sampling.generate(model, params, prompt, prompt_mask, jax.random.key(0),
                             config=GREEDY)
  top1 = sampling.SamplingConfig(max_new_tokens=N, top_k=1)
  for seed in range(4):
    out = sampling.generate(model, params, prompt, prompt_mask, jax.random.key(seed),
                            config=top1)
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
    np.testing.assert_allclose(out.logprobs, 0.0, atol=1e-6)  # a one-token distribution


def test_each_step_and_row_draws_fresh_randomness():
  model, params = _model("gpt2")
  # Zero weights give uniform logits at every step: with a key reused across steps or
  # rows, the same token would come out each time.
  params = jax.tree.map(jnp.zeros_like, params)
  prompt, prompt_mask = _prompts()
  out = sampling.generate(model, params, prompt, prompt_mask, jax.random.key(6), config=SAMPLED)
  tokens = np.asarray(out.response_tokens)
  assert all(len(set(row)) > 1 for row in tokens.tolist())
  assert len(set(tokens[:, 0].tolist())) > 1
  np.testing.assert_allclose(out.logprobs, -math.log(VOCAB), atol=1e-5)


# -------------------------------------------------------------------------------- EOS


def _first_index(row, value):
  hits = np.flatnonzero(row == value)
  return int(hits[0]) if hits.size else None


def test_eos_stops_each_sequence_and_masks_the_rest():
  model, params = _model("gpt2")
  prompt, prompt_mask = _prompts()
  key = jax.random.key(8)
  free = sampling.generate(model, params, prompt, prompt_mask, key, config=SAMPLED)
  free_tokens, free_logprobs = np.asarray(free.response_tokens), np.asarray(free.logprobs)
  eos = int(free_tokens[0, 3])  # row 0 stops by step 3; others wherever eos shows up
  config = dataclasses.replace(SAMPLED, eos_id=eos, pad_id=VOCAB - 1)
  out = sampling.generate(model, params, prompt, prompt_mask, key, config=config)
  stops = [_first_index(row, eos) for row in free_tokens]
  assert stops[0] is not None and stops[0] <= 3
  for b, stop in enumerate(stops):
    length = N if stop is None else stop + 1  # the EOS token itself counts
    expected_mask = np.arange(N) < length
    # Same key, same state before EOS: the same tokens are drawn up to it.
    np.testing.assert_array_equal(out.response_tokens[b],
                                  np.where(expected_mask, free_tokens[b], VOCAB - 1))
    np.testing.assert_array_equal(out.response_mask[b], expected_mask.astype(np.int32))
    np.testing.assert_allclose(out.logprobs[b], np.where(expected_mask, free_logprobs[b], 0.0),
                               atol=1e-6)
    assert bool(out.finished[b]) == (stop is not None)
  np.testing.assert_array_equal(out.token_mask[:, WIDTH:], out.response_mask)
  assert int(out.num_steps) == max(N if s is None else s + 1 for s in stops)


def test_decode_loop_exits_when_every_sequence_finished():
  model, params = _model("gpt2")
  prompt, prompt_mask = _prompts(lengths=(3,) * len(LENGTHS), seed=3)
  prompt = np.repeat(prompt[:1], len(LENGTHS), axis=0)  # identical rows stop together
  free = sampling.generate(model, params, prompt, prompt_mask, jax.random.key(0), config=GREEDY)
  eos = int(free.response_tokens[0, 2])
  stop = _first_index(np.asarray(free.response_tokens[0]), eos)
  out = sampling.generate(model, params, prompt, prompt_mask, jax.random.key(0),
                          config=dataclasses.replace(GREEDY, eos_id=eos))
  assert np.all(np.asarray(out.finished))
  assert int(out.num_steps) == stop + 1 < N
  np.testing.assert_array_equal(out.response_mask.sum(axis=1), [stop + 1] * len(LENGTHS))


# ------------------------------------------------------- compilation, donation, sharding


def test_repeated_calls_do_not_recompile_and_cache_is_donated():
  model, params = _model("llama")
  prompt, prompt_mask = _prompts()
  sampling.generate(model, params, prompt, prompt_mask, jax.random.key(0), config=SAMPLED)
  sizes = sampling._prefill._cache_size(), sampling._decode._cache_size()
  # A fresh but equal model and config hit the same compiled functions.
  sampling.generate(CausalLM(model.config), params, prompt, prompt_mask, jax.random.key(1),
                    config=dataclasses.replace(SAMPLED))
  assert (sampling._prefill._cache_size(), sampling._decode._cache_size()) == sizes

  prompt, prompt_mask = jnp.asarray(prompt), jnp.asarray(prompt_mask)
  logits, cache = sampling._prefill(model, params, prompt, prompt_mask, cache_len=WIDTH + N)
  sampling._decode(model, params, cache, logits, prompt, prompt_mask, jax.random.key(0),
                   config=SAMPLED)
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(cache))


def test_sharded_prompts_and_params_give_the_same_output():
  model, params = _model("gpt2")
  prompt, prompt_mask = _prompts()
  key = jax.random.key(2)
  single = sampling.generate(model, params, prompt, prompt_mask, key, config=SAMPLED)

  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("data", "tensor"))
  batch_sharding = NamedSharding(mesh, PartitionSpec("data"))

  def shard_last_axis(x):  # e.g. split heads / hidden units over "tensor"
    spec = PartitionSpec(*([None] * (x.ndim - 1)), "tensor") if x.shape[-1] % 2 == 0 else None
    return jax.device_put(x, NamedSharding(mesh, spec or PartitionSpec()))

  sharded = sampling.generate(
      model, jax.tree.map(shard_last_axis, params), jax.device_put(prompt, batch_sharding),
      jax.device_put(prompt_mask, batch_sharding), key, config=SAMPLED)
  assert len(sharded.response_tokens.sharding.device_set) == 8
  np.testing.assert_array_equal(sharded.tokens, single.tokens)
  np.testing.assert_allclose(sharded.logprobs, single.logprobs, atol=1e-5)


# ------------------------------------------------------------------ HF reference parity


HF_FIXTURES = sorted(p.name for p in FIXTURES.iterdir() if (p / "reference.npz").exists())


def test_every_family_has_a_fixture():
  assert {"gpt2", "llama", "llama3_rope", "mistral", "qwen2", "qwen3"} <= set(HF_FIXTURES)


@pytest.mark.parametrize("name", HF_FIXTURES)
def test_greedy_matches_transformers_generate(name):
  """The KV-cache sampler against `generate`, left-padded prompts (and Mistral's window,
  scaled RoPE past the original context, Qwen's biases and q/k norms)."""
  fixture = FIXTURES / name
  model, params = models.from_hf(fixture)
  reference = np.load(fixture / "reference.npz")
  prompt, expected = reference["gen_prompt_ids"], reference["gen_greedy_ids"]  # [B, P + N]
  config = sampling.SamplingConfig(max_new_tokens=expected.shape[1] - prompt.shape[1],
                                   greedy=True)
  out = sampling.generate(model, params, prompt, reference["gen_prompt_mask"],
                          jax.random.key(0), config=config)
  np.testing.assert_array_equal(out.tokens, expected)
