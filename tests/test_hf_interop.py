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

from instructjax.models import from_hf, to_hf
from instructjax.models.hf_interop import HFCheckpointError

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "hf"
ARCHS = ("gpt2", "llama")
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


def test_greedy_matches_transformers_generate(loaded):
  name, model, params, ref = loaded
  prompt, expected = ref["gen_prompt_ids"], ref["gen_greedy_ids"]  # [B, P], [B, P + N]
  batch, total = expected.shape
  # Causal attention: the logits at t - 1 ignore the zeros in later slots, so one
  # fixed-shape jitted forward serves every step.
  forward = jax.jit(lambda tokens: model.apply({"params": params}, tokens))
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
  decode = jax.jit(lambda cache, tokens, positions: model.apply(
      {"params": params, "cache": cache}, tokens, positions=positions, decode=True,
      mutable=["cache"]))
  tokens = jnp.asarray(prompt)  # [B, P] first, then [B, 1] per step
  positions = jnp.broadcast_to(jnp.arange(prompt.shape[1]), prompt.shape)
  out = [prompt]
  for _ in range(total - prompt.shape[1]):
    logits, mutated = decode(cache, tokens, positions)
    cache = mutated["cache"]
    tokens = jnp.argmax(logits[:, -1], axis=-1)[:, None].astype(jnp.int32)  # [B, 1]
    positions = positions[:, -1:] + 1
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

  new, old = (transformers.AutoConfig.from_pretrained(p) for p in (out, FIXTURES / name))
  assert type(new) is type(old)
  assert new.architectures == old.architectures
  if name == "gpt2":
    fields = ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head",
              "layer_norm_epsilon", "tie_word_embeddings", "activation_function"]
    assert (new.n_inner or 4 * new.n_embd) == (old.n_inner or 4 * old.n_embd)
  else:
    fields = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
              "max_position_embeddings", "rms_norm_eps", "rope_parameters",
              "tie_word_embeddings", "attention_bias", "mlp_bias"]
  for field in fields:
    assert getattr(new, field) == getattr(old, field), field

  model2, params2 = from_hf(out)
  assert model2.config == model.config
  assert jax.tree.structure(params2) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_to_hf_bfloat16_and_boxed_params(tmp_path):
  model, params = from_hf(FIXTURES / "llama", param_dtype="bfloat16")
  assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))
  # Params straight from `model.init` are boxed in nn.LogicallyPartitioned.
  boxed = jax.tree.map(lambda x: nn.LogicallyPartitioned(x, (None,) * x.ndim), params)
  to_hf(model, boxed, tmp_path / "bf16")
  assert transformers.AutoConfig.from_pretrained(tmp_path / "bf16").dtype == "bfloat16"
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
  _, params = from_hf(directory)
  _, expected = from_hf(FIXTURES / "llama")
  jax.tree.map(np.testing.assert_array_equal, params, expected)
  edit_config(directory, sliding_window=4)
  with pytest.raises(HFCheckpointError, match="sliding_window=4"):
    from_hf(directory)


def test_hub_name_offline_fails_fast(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  start = time.monotonic()
  with pytest.raises(HFCheckpointError, match="instructjax-tests/no-such-model.*offline"):
    from_hf("instructjax-tests/no-such-model")
  assert time.monotonic() - start < 10


def test_missing_local_directory_is_not_sent_to_the_hub(tmp_path):
  with pytest.raises(HFCheckpointError, match="no such checkpoint directory"):
    from_hf(tmp_path / "nope")
