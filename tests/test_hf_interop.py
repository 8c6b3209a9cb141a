"""HF checkpoint import/export against outputs of transformers' PyTorch models.

The references in tests/fixtures/hf were written by tests/fixtures/make_hf_fixtures.py
(with torch); these tests need no torch.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import transformers

from instructjax.models import ScalarModel, from_hf, to_hf
from instructjax.models.hf_interop import HFCheckpointError

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "hf"
# One directory per fixture of tests/fixtures/make_hf_fixtures.py.
ARCHS = ("gpt2", "llama", "llama3_rope", "linear_rope", "mistral", "qwen2", "qwen2_tied",
         "qwen3")
TOL = 1e-4


@pytest.fixture(scope="module", params=ARCHS)
def loaded(request):
  name = request.param
  model, params = from_hf(FIXTURES / name)
  return name, model, params, dict(np.load(FIXTURES / name / "reference.npz"))


def copy_fixture(name: str, dest: pathlib.Path) -> pathlib.Path:
  out = dest / name
  shutil.copytree(FIXTURES / name, out)
  return out


def edit_config(directory: pathlib.Path, **changes) -> None:
  path = directory / "config.json"
  config = json.loads(path.read_text())
  config.update(changes)
  path.write_text(json.dumps(config))


def hf_tensors(name: str) -> dict[str, np.ndarray]:
  return safetensors.numpy.load_file(FIXTURES / name / "model.safetensors")


def test_logits_match_transformers(loaded):
  name, model, params, ref = loaded
  logits = jax.jit(model.apply)(
      {"params": params}, ref["input_ids"], token_mask=ref["attention_mask"])
  assert logits.shape == ref["logits"].shape  # [B, T, V]
  err = np.abs(np.asarray(logits) - ref["logits"])  # [B, T, V]
  real = ref["attention_mask"].astype(bool)  # [B, T]
  assert not real[1].all() and real[0].all()  # row 1 is the left-padded one
  print(f"{name}: max |logits error| full row {err[0].max():.2e}, "
        f"padded row (real tokens) {err[1][real[1]].max():.2e}, "
        f"logit scale {np.abs(ref['logits']).max():.1f}")
  assert err[0].max() < TOL
  assert err[1][real[1]].max() < TOL
  original = model.config.rope_original_max_len
  if original:  # scaled RoPE: the positions past the original context are covered too
    beyond = err[0, original:]
    print(f"{name}: positions {original}..{err.shape[1] - 1} (past the original context "
          f"of {original}): max error {beyond.max():.2e}")
    assert beyond.size and beyond.max() < TOL


def test_greedy_matches_transformers_generate(loaded):
  name, model, params, ref = loaded
  prompt, expected = ref["gen_prompt_ids"], ref["gen_greedy_ids"]  # [B, P], [B, P + N]
  assert not ref["gen_prompt_mask"][1].all()  # row 1 is left-padded
  batch, total = expected.shape
  mask = np.ones((batch, total), np.int32)  # [B, P + N]
  mask[:, :prompt.shape[1]] = ref["gen_prompt_mask"]
  # Causal attention: the logits at t - 1 ignore the zeros in later slots, so one
  # fixed-shape jitted forward serves every step.
  forward = jax.jit(lambda tokens: model.apply({"params": params}, tokens, token_mask=mask))
  tokens = np.zeros((batch, total), np.int32)
  tokens[:, :prompt.shape[1]] = prompt
  for t in range(prompt.shape[1], total):
    tokens[:, t] = np.argmax(np.asarray(forward(tokens))[:, t - 1], axis=-1)
  np.testing.assert_array_equal(tokens, expected, err_msg=name)


def test_greedy_with_kv_cache_matches_transformers_generate(loaded):
  name, model, params, ref = loaded
  prompt, expected = ref["gen_prompt_ids"], ref["gen_greedy_ids"]  # [B, P], [B, P + N]
  batch, total = expected.shape
  # A fresh cache is all zeros (index 0), so its shapes are enough to build it.
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.ones((batch, total), jnp.int32), decode=True))
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])
  decode = jax.jit(lambda cache, tokens, positions, token_mask: model.apply(
      {"params": params, "cache": cache}, tokens, positions=positions,
      token_mask=token_mask, decode=True, mutable=["cache"]))
  tokens, token_mask = jnp.asarray(prompt), jnp.asarray(ref["gen_prompt_mask"])  # [B, P]
  positions = jnp.maximum(jnp.cumsum(token_mask, axis=1) - 1, 0)  # real tokens only
  out = [prompt]
  for _ in range(total - prompt.shape[1]):  # then [B, 1] per step
    logits, mutated = decode(cache, tokens, positions, token_mask)
    cache = mutated["cache"]
    tokens = jnp.argmax(logits[:, -1], axis=-1)[:, None].astype(jnp.int32)  # [B, 1]
    positions, token_mask = positions[:, -1:] + 1, jnp.ones_like(tokens)
    out.append(np.asarray(tokens))
  np.testing.assert_array_equal(np.concatenate(out, axis=1), expected, err_msg=name)


def test_sharded_index_loads_same_params(tmp_path):
  tensors = hf_tensors("gpt2")
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
            "model-00002-of-00002.safetensors": names[len(names) // 2:]}
  shutil.copy(FIXTURES / "gpt2" / "config.json", tmp_path / "config.json")
  for shard, shard_names in shards.items():
    safetensors.numpy.save_file({n: tensors[n] for n in shard_names}, tmp_path / shard,
                                metadata={"format": "pt"})
  index = {"metadata": {}, "weight_map": {n: s for s, ns in shards.items() for n in ns}}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))

  _, sharded = from_hf(tmp_path)
  _, single = from_hf(FIXTURES / "gpt2")
  jax.tree.map(np.testing.assert_array_equal, sharded, single)

  (tmp_path / "model-00002-of-00002.safetensors").unlink()
  with pytest.raises(HFCheckpointError, match="model-00002-of-00002.safetensors.*missing"):
    from_hf(tmp_path)


def test_base_model_names_and_buffers_load(tmp_path):
  # Old GPT-2 exports (e.g. the Hub's gpt2) lack the "transformer." prefix and carry the
  # causal-mask buffers attn.bias / attn.masked_bias.
  tensors = {n.removeprefix("transformer."): t for n, t in hf_tensors("gpt2").items()}
  tensors["h.0.attn.bias"] = np.ones((1, 1, 64, 64), np.float32)
  tensors["h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
  shutil.copy(FIXTURES / "gpt2" / "config.json", tmp_path / "config.json")
  safetensors.numpy.save_file(tensors, tmp_path / "model.safetensors")
  _, params = from_hf(tmp_path)
  _, expected = from_hf(FIXTURES / "gpt2")
  jax.tree.map(np.testing.assert_array_equal, params, expected)


@pytest.mark.parametrize("name", ARCHS)
def test_to_hf_round_trips(name, tmp_path):
  model, params = from_hf(FIXTURES / name)
  out = tmp_path / "exported"
  to_hf(model, params, out)

  # The tensors are exactly the ones transformers wrote, under the same names.
  written, original = safetensors.numpy.load_file(out / "model.safetensors"), hf_tensors(name)
  assert sorted(written) == sorted(original)
  for tensor_name, value in original.items():
    np.testing.assert_array_equal(written[tensor_name], value, err_msg=tensor_name)

  # And transformers reads the same config back: every field but the token ids (not in
  # ModelConfig), GPT-2's dropout (the model's own rate is written) and the path.
  new, old = (transformers.AutoConfig.from_pretrained(p) for p in (out, FIXTURES / name))
  assert type(new) is type(old)
  ignored = {"bos_token_id", "eos_token_id", "_name_or_path", "embd_pdrop", "attn_pdrop",
             "resid_pdrop"}
  new_fields, old_fields = new.to_dict(), old.to_dict()
  for field in sorted((set(new_fields) | set(old_fields)) - ignored):
    assert new_fields.get(field) == old_fields.get(field), field

  model2, params2 = from_hf(out)
  assert model2.config == model.config
  assert jax.tree.structure(params2) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, params2, params)


@pytest.mark.parametrize("name", ARCHS)
def test_to_hf_output_generates_in_transformers(name, tmp_path):
  """transformers' own PyTorch model, loaded from to_hf's files, decodes the fixture's
  greedy tokens (left-padded prompts). Needs torch, which the test requirements leave
  out: `pip install torch==2.13.0` to run it."""
  torch = pytest.importorskip("torch")
  model, params = from_hf(FIXTURES / name)
  to_hf(model, params, tmp_path / "exported")
  ref = np.load(FIXTURES / name / "reference.npz")
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
  prompt, expected = ref["gen_prompt_ids"], ref["gen_greedy_ids"]  # [B, P], [B, P + N]
  with torch.no_grad():
    greedy = hf_model.generate(
        torch.from_numpy(prompt).long(),
        attention_mask=torch.from_numpy(ref["gen_prompt_mask"]).long(), do_sample=False,
        max_new_tokens=expected.shape[1] - prompt.shape[1], pad_token_id=0,
        eos_token_id=None)
  np.testing.assert_array_equal(greedy.numpy(), expected)


def _reward_model(name):
  """The fixture's trunk under a random score head: a reward model as the RM stage has."""
  model, params = from_hf(FIXTURES / name)
  scalar = ScalarModel(model.config)
  head = np.random.default_rng(0).normal(size=(model.config.d_model, 1)).astype(np.float32)
  return scalar, {"transformer": params["transformer"], "scalar_head": {"kernel": head}}


@pytest.mark.parametrize("name", ARCHS)
def test_reward_model_is_written_as_a_one_label_classifier(name, tmp_path):
  scalar, params = _reward_model(name)
  to_hf(scalar, params, tmp_path / "rm", reward_bias=0.25)
  written = safetensors.numpy.load_file(tmp_path / "rm" / "model.safetensors")
  original = hf_tensors(name)
  # The causal LM's trunk tensors, HF's [1, d_model] score in place of any LM head.
  trunk = {k: v for k, v in original.items() if k != "lm_head.weight"}
  assert sorted(written) == sorted([*trunk, "score.weight"])
  for tensor_name, value in trunk.items():
    np.testing.assert_array_equal(written[tensor_name], value, err_msg=tensor_name)
  np.testing.assert_array_equal(written["score.weight"], params["scalar_head"]["kernel"].T)
  raw = json.loads((tmp_path / "rm" / "config.json").read_text())
  family = "GPT2" if name == "gpt2" else raw["model_type"].capitalize()
  assert raw["architectures"] == [f"{family}ForSequenceClassification"]
  assert len(raw["id2label"]) == 1 and raw["reward_bias"] == 0.25
  with pytest.raises(HFCheckpointError, match="head bias"):
    to_hf(ScalarModel(scalar.config, head_bias=True), params, tmp_path / "value")


@pytest.mark.parametrize("name", ARCHS)
def test_reward_model_scores_like_transformers(name, tmp_path):
  """transformers' *ForSequenceClassification, loaded from to_hf's files, gives the
  reward our model reads at the last token. Needs torch (`pip install torch==2.13.0`)."""
  torch = pytest.importorskip("torch")
  scalar, params = _reward_model(name)
  to_hf(scalar, params, tmp_path / "rm")
  hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(
      tmp_path / "rm").eval()
  tokens = np.random.default_rng(1).integers(1, scalar.config.vocab_size, (1, 12))  # [1, T]
  ours = scalar.apply({"params": params}, jnp.asarray(tokens, jnp.int32))[0, -1]
  with torch.no_grad():
    theirs = hf_model(torch.from_numpy(tokens).long()).logits  # [1, 1]
  np.testing.assert_allclose(theirs.numpy()[0, 0], np.asarray(ours), rtol=1e-4, atol=1e-4)


def test_to_hf_bfloat16_and_boxed_params(tmp_path):
  model, params = from_hf(FIXTURES / "llama", param_dtype="bfloat16")
  assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))
  # Params straight from `model.init` are boxed in nn.LogicallyPartitioned.
  boxed = jax.tree.map(lambda x: nn.LogicallyPartitioned(x, (None,) * x.ndim), params)
  to_hf(model, boxed, tmp_path / "bf16")
  # A string without torch, torch.bfloat16 with it.
  dtype = transformers.AutoConfig.from_pretrained(tmp_path / "bf16").dtype
  assert str(dtype).removeprefix("torch.") == "bfloat16"
  written = safetensors.numpy.load_file(tmp_path / "bf16" / "model.safetensors")
  assert written["model.norm.weight"].dtype == jnp.bfloat16


def test_to_hf_replaces_a_checkpoint_atomically(tmp_path):
  model, params = from_hf(FIXTURES / "gpt2")
  out = tmp_path / "ckpt"
  to_hf(model, params, out)
  (out / "tokenizer.json").write_text("{}")
  before = (out / "model.safetensors").read_bytes()

  broken = jax.tree.map(lambda x: x, params)
  broken["transformer"]["ln_f"]["scale"] = np.ones((7,), np.float32)
  with pytest.raises(HFCheckpointError, match=r"ln_f/scale has shape \(7,\).*\(32,\)"):
    to_hf(model, broken, out)
  assert (out / "model.safetensors").read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dirs left

  doubled = jax.tree.map(lambda x: 2 * x, params)
  to_hf(model, doubled, out)
  assert (out / "tokenizer.json").read_text() == "{}"  # non-weight files are kept
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
  _, reloaded = from_hf(out)
  jax.tree.map(np.testing.assert_array_equal, reloaded, doubled)


def test_to_hf_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path):
  model, params = from_hf(FIXTURES / "gpt2")
  (tmp_path / "notes.txt").write_text("keep me")
  with pytest.raises(HFCheckpointError, match="without config.json"):
    to_hf(model, params, tmp_path)
  assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_to_hf_rejects_gpt2_shapes_transformers_cannot_express(tmp_path):
  model, params = from_hf(FIXTURES / "gpt2")
  gqa = type(model)(model.config.replace(n_kv_heads=2))
  with pytest.raises(HFCheckpointError, match="n_kv_heads == n_heads"):
    to_hf(gqa, params, tmp_path)


def test_pickle_only_checkpoint_is_refused(tmp_path):
  shutil.copy(FIXTURES / "gpt2" / "config.json", tmp_path / "config.json")
  (tmp_path / "pytorch_model.bin").write_bytes(b"not to be unpickled")
  with pytest.raises(HFCheckpointError) as info:
    from_hf(tmp_path)
  message = str(info.value)
  assert "pytorch_model.bin" in message and "never loaded" in message
  assert "safe_serialization=True" in message


@pytest.mark.parametrize("changes, named", [
    ({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, "'bert'"),
    ({"architectures": ["GPT2ForSequenceClassification"]}, "'GPT2ForSequenceClassification'"),
])
def test_unknown_architecture_is_named(tmp_path, changes, named):
  directory = copy_fixture("gpt2", tmp_path)
  edit_config(directory, **changes)
  with pytest.raises(HFCheckpointError) as info:
    from_hf(directory)
  assert named in str(info.value)
  assert "GPT2LMHeadModel" in str(info.value) and "LlamaForCausalLM" in str(info.value)


@pytest.mark.parametrize("changes, message", [
    ({"activation_function": "relu"}, "activation_function='relu' is not supported"),
    ({"n_embd": "wide"}, "invalid gpt2 config.*n_embd"),
    ({"n_embd": 30}, "d_model=30 is not divisible by n_heads=4"),
])
def test_unsupported_config_value_is_named(tmp_path, changes, message):
  directory = copy_fixture("gpt2", tmp_path)
  edit_config(directory, **changes)
  with pytest.raises(HFCheckpointError, match=message):
    from_hf(directory)


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
  directory = copy_fixture("gpt2", tmp_path)
  edit_config(directory, n_positions=32)
  with pytest.raises(HFCheckpointError,
                     match=r"'transformer\.wpe\.weight' has shape \(64, 32\).*\(32, 32\)"):
    from_hf(directory)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
  tensors = hf_tensors("llama")
  del tensors["model.layers.1.mlp.up_proj.weight"]
  tensors["model.layers.1.mlp.extra.weight"] = np.zeros((2,), np.float32)
  shutil.copy(FIXTURES / "llama" / "config.json", tmp_path / "config.json")
  safetensors.numpy.save_file(tensors, tmp_path / "model.safetensors")
  with pytest.raises(HFCheckpointError,
                     match=r"missing \['model\.layers\.1\.mlp\.up_proj\.weight'\], "
                           r"unexpected \['model\.layers\.1\.mlp\.extra\.weight'\]"):
    from_hf(tmp_path)


def test_invalid_config_json_names_file_and_line(tmp_path):
  directory = copy_fixture("gpt2", tmp_path)
  (directory / "config.json").write_text('{\n  "model_type": "gpt2",\n  oops\n}')
  with pytest.raises(HFCheckpointError, match=r"config\.json, line 3"):
    from_hf(directory)


def test_mistral_without_sliding_window_loads_like_llama(tmp_path):
  directory = copy_fixture("llama", tmp_path)
  edit_config(directory, model_type="mistral", architectures=["MistralForCausalLM"],
              sliding_window=None)
  model, params = from_hf(directory)
  assert model.config.family == "mistral" and model.config.sliding_window == 0
  _, expected = from_hf(FIXTURES / "llama")
  jax.tree.map(np.testing.assert_array_equal, params, expected)


@pytest.mark.parametrize("fixture, changes, message", [
    ("llama3_rope", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0,
                                         "original_max_position_embeddings": 32}},
     r"rope_parameters.rope_type='yarn' is not supported"),
    ("llama", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
     r"rope_parameters.rope_type='dynamic' is not supported"),
    ("llama", {"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported"),
    # layer_types None: derived again from use_sliding_window and max_window_layers.
    ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1,
               "layer_types": None},
     r"layer_types=\['full_attention', 'sliding_attention'\] is not supported"),
    ("qwen3", {"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"]},
     r"model_type 'qwen3_moe' is not supported \(mixture-of-experts"),
    ("mistral", {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"]},
     r"model_type 'mixtral' is not supported \(mixture-of-experts"),
    ("llama", {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]},
     r"model_type 'gpt_neox' is not supported; supported: .*Qwen3ForCausalLM"),
])
def test_unsupported_family_feature_names_field_and_value(tmp_path, fixture, changes, message):
  directory = copy_fixture(fixture, tmp_path)
  edit_config(directory, **changes)
  with pytest.raises(HFCheckpointError, match=message):
    from_hf(directory)


def test_qwen_sliding_window_in_every_layer_is_a_window(tmp_path):
  directory = copy_fixture("qwen2", tmp_path)
  edit_config(directory, use_sliding_window=True, sliding_window=4, max_window_layers=0,
              layer_types=None)
  model, params = from_hf(directory)
  assert model.config.sliding_window == 4
  to_hf(model, params, tmp_path / "exported")
  exported = transformers.AutoConfig.from_pretrained(tmp_path / "exported")
  assert exported.layer_types == ["sliding_attention"] * 2 and exported.sliding_window == 4


def test_model_config_refuses_what_a_family_cannot_express():
  from instructjax.models import ModelConfig
  base = dict(arch="llama", vocab_size=32, d_model=16, n_layers=1, n_heads=2)
  with pytest.raises(ValueError, match="qkv_bias=False is not possible for family 'qwen2'"):
    ModelConfig(**base, family="qwen2")
  with pytest.raises(ValueError, match="sliding_window=8 is not possible for family 'llama'"):
    ModelConfig(**base, sliding_window=8)
  with pytest.raises(ValueError, match="qk_norm=True is not possible for family 'gpt2'"):
    ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, qk_norm=True)
  with pytest.raises(ValueError, match="family='mistral' uses arch='llama', not 'gpt2'"):
    ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, family="mistral")
  with pytest.raises(ValueError, match="rope_type='yarn' is not one of"):
    ModelConfig(**base, rope_type="yarn")
  with pytest.raises(ValueError, match="rope_type='llama3' needs rope_original_max_len > 0"):
    ModelConfig(**base, rope_type="llama3", rope_factor=8.0)


def test_hub_name_offline_fails_fast(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  start = time.monotonic()
  with pytest.raises(HFCheckpointError, match="instructjax-tests/no-such-model.*offline"):
    from_hf("instructjax-tests/no-such-model")
  assert time.monotonic() - start < 10


def test_missing_local_directory_is_not_sent_to_the_hub(tmp_path):
  with pytest.raises(HFCheckpointError, match="no such checkpoint directory"):
    from_hf(tmp_path / "nope")


# Each family fixture must exercise its feature: with the feature switched off, the same
# weights no longer match transformers. (Biases and q/k norms are checked by the tensor
# table itself: a checkpoint with them does not load into a model without them.)
@pytest.mark.parametrize("name, plain", [
    ("llama3_rope", dict(rope_type="default", rope_factor=1.0)),
    ("llama3_rope", dict(rope_type="linear")),
    ("linear_rope", dict(rope_type="default", rope_factor=1.0)),
    ("mistral", dict(sliding_window=0)),
])
def test_fixture_depends_on_its_feature(name, plain):
  model, params = from_hf(FIXTURES / name)
  ref = dict(np.load(FIXTURES / name / "reference.npz"))
  ablated = type(model)(model.config.replace(**plain))
  logits = ablated.apply({"params": params}, ref["input_ids"], token_mask=ref["attention_mask"])
  assert np.abs(np.asarray(logits)[0] - ref["logits"][0]).max() > 100 * TOL


@pytest.mark.parametrize("name", ARCHS)
def test_every_parameter_of_every_family_is_sharded(name):
  """Biases, q/k norms and all: each parameter has logical names the rule table maps."""
  from instructjax import sharding
  model, params = from_hf(FIXTURES / name)
  mesh = sharding.make_mesh(data=1, fsdp=-1, tensor=1, devices=jax.devices()[:4])
  abstract = sharding.abstract_params(model, mesh)
  assert jax.tree.structure(abstract) == jax.tree.structure(params)
  kv = model.config.kv_heads * model.config.head_dim_
  embed_sharded = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
    spec = leaf.sharding.spec
    # The d_model axis of every matrix is split over fsdp (4 ways); vectors replicate.
    embed_sharded += "fsdp" in jax.tree.leaves(tuple(spec))
    if path[-1].key == "bias" and path[-2].key in ("k_proj", "v_proj"):
      assert np.prod(leaf.shape) == kv, path
  assert embed_sharded >= 2 + 5 * model.config.n_layers  # embedding, q/k/v/o, MLP
