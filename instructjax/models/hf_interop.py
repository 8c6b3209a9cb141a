"""Hugging Face checkpoints in and out: safetensors <-> `CausalLM` params.

Families: GPT-2, and the Llama architecture as Llama 1-3 (RoPE default / linear /
llama3, optional biases), Mistral (sliding window), Qwen2 / Qwen2.5 (q/k/v biases) and
Qwen3 (q/k RMSNorm). Anything else, including mixture-of-experts checkpoints, is refused
with the config field and value that ask for it.

Only safetensors are read (through its numpy backend; torch is never imported). Pickle
checkpoints (pytorch_model.bin, *.pt, *.pkl) can run arbitrary code when loaded and are
refused. Config files are parsed by transformers' own config classes, so HF's defaults
for absent fields and its old/new field spellings (rope_theta vs rope_parameters) apply.

Each HF tensor is linked to the instructjax parameters it becomes (`_Link`); the same
table converts both ways, and the expected HF names and shapes are derived from it with
`jax.eval_shape`, so import checks and export cannot drift apart.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Any, Callable

import flax.core.meta
import huggingface_hub
import huggingface_hub.errors
import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from instructjax.models.model_config import ModelConfig
from instructjax.models.rope import ROPE_TYPES
from instructjax.models.transformer import CausalLM, ScalarModel

# HF architecture name -> model_type; both must agree with config.json.
SUPPORTED_ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
_ARCHITECTURE_OF = {t: a for a, t in SUPPORTED_ARCHITECTURES.items()}
# What a reward model (a ScalarModel) is written as: one label, a bias-free score head.
_CLASSIFIER_OF = {"gpt2": "GPT2ForSequenceClassification",
                  "llama": "LlamaForSequenceClassification",
                  "mistral": "MistralForSequenceClassification",
                  "qwen2": "Qwen2ForSequenceClassification",
                  "qwen3": "Qwen3ForSequenceClassification"}
# Families whose feed-forward layers are mixtures of experts: named in the refusal.
_MOE_MODEL_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3",
                    "llama4", "gpt_oss", "olmoe")
# JSON, safetensors and tokenizer files; never *.bin / *.pt / *.pkl (pickle).
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "tokenizer.model"]
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_INDEX_FILE = "model.safetensors.index.json"
_WEIGHTS_FILE = "model.safetensors"
# Non-parameter buffers that older exports saved: causal-mask tensors and RoPE tables.
_BUFFERS = {
    "gpt2": re.compile(r"\.attn\.(masked_)?bias$"),
    "llama": re.compile(r"\.rotary_emb\.inv_freq$"),
}
# The prefix of the base model inside *ForCausalLM; checkpoints of the base model lack it.
_BASE_PREFIX = {"gpt2": "transformer.", "llama": "model."}
_LM_HEAD = "lm_head.weight"
_SCORE = "score.weight"  # *ForSequenceClassification's head

ParamPath = tuple[str, ...]  # a parameter's path in the params tree, e.g. ("lm_head", "kernel")


class HFCheckpointError(ValueError):
  """A Hugging Face checkpoint that cannot be loaded or written, and why."""


def from_hf(path_or_name: str | os.PathLike, *, dtype: str = "float32",
            param_dtype: str = "float32") -> tuple[CausalLM, dict[str, Any]]:
  """Loads a GPT-2 or Llama-family HF checkpoint as `(CausalLM, params)`.

  Args:
    path_or_name: a directory with config.json and model.safetensors (or a sharded
      model.safetensors.index.json), or a Hub repo id, downloaded with
      `huggingface_hub.snapshot_download` (JSON, safetensors and tokenizer files only;
      HF_HUB_OFFLINE=1, read at call time, keeps it to the local cache).
    dtype: compute dtype of the returned model.
    param_dtype: dtype the weights are cast to.

  Returns:
    The model and its params: a plain (unboxed) tree of host numpy arrays, so the
    caller places them with its own shardings. `model.apply({'params': params}, ids)`
    gives logits [B, T, V]. Dropout is 0; set it with `model.config.replace(...)`.
  """
  directory = resolve_checkpoint(path_or_name)
  config = _read_config(directory / "config.json", dtype=dtype, param_dtype=param_dtype)
  model = CausalLM(config)
  tensors = _read_tensors(directory)
  tensors = _normalise_names(tensors, config)
  links = _links(config)
  _check_tensors(tensors, _hf_shapes(model, links), directory)
  params: dict[str, Any] = {}
  for link in links:
    for path, value in zip(link.paths, link.to_ours(tensors[link.hf_name])):
      _set(params, path, np.asarray(value, dtype=config.weight_dtype))
  _check_params(params, _abstract_params(model), what="converted params")
  return model, params


def to_hf(model: CausalLM | ScalarModel, params, path: str | os.PathLike, *,
          token_ids: dict[str, int | None] | None = None,
          reward_bias: float | None = None) -> None:
  """Writes `params` as an HF checkpoint: config.json and model.safetensors.

  A CausalLM becomes the family's *ForCausalLM. A reward model (a ScalarModel without a
  head bias) becomes its *ForSequenceClassification with one label, whose logit is the
  scalar at the last token; `reward_bias` (subtracted from it for the normalised reward)
  is then written into config.json.

  The files are written to a temporary directory beside `path` that is then renamed
  onto it, so a failure never leaves a half-written checkpoint. An existing `path` must
  be an HF checkpoint directory (it has config.json) or empty; files in it other than
  config and weights (e.g. tokenizer files) are kept. Special token ids are not part of
  `ModelConfig`: `token_ids` ({"bos_token_id": ..., "eos_token_id": ..., "pad_token_id":
  ...}, from the tokenizer) go into config.json; absent ones are written as null.
  """
  reward_model = isinstance(model, ScalarModel)
  if not isinstance(model, CausalLM) and not (reward_model and not model.head_bias):
    raise HFCheckpointError(f"to_hf exports a CausalLM or a reward model (a ScalarModel "
                            f"without head bias), got {model!r}")
  if reward_model and model.likelihood_feature:
    raise HFCheckpointError(
        "a reward model with likelihood_feature has no HF equivalent: "
        "*ForSequenceClassification reads the last token's head only, not the response "
        "likelihood; train the RM with config.rm.likelihood_feature=False to export it")
  config = model.config
  hf_config = _hf_config(config, token_ids or {})
  if reward_model:
    hf_config.architectures = [_CLASSIFIER_OF[config.hf_family]]
    hf_config.num_labels = 1
    hf_config.reward_bias = reward_bias
  params = flax.core.meta.unbox(params)
  _check_params(params, _abstract_params(model), what="params given to to_hf")
  tensors = {
      link.hf_name: np.ascontiguousarray(np.asarray(
          link.to_hf(*[_get(params, p) for p in link.paths])))
      for link in _links(config, score_head=reward_model)}

  target = pathlib.Path(path).expanduser()
  if target.exists() and not target.is_dir():
    raise HFCheckpointError(f"{target} exists and is not a directory")
  if target.is_dir() and any(target.iterdir()) and not (target / "config.json").exists():
    raise HFCheckpointError(
        f"{target} is a non-empty directory without config.json; refusing to replace it "
        "with a checkpoint")
  target.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
  try:
    hf_config.save_pretrained(staging)
    # "pt" declares PyTorch's layout, which transformers' loader requires.
    safetensors.numpy.save_file(tensors, staging / _WEIGHTS_FILE, metadata={"format": "pt"})
    if target.is_dir():
      _copy_extra_files(target, staging)
      retired = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
      os.rename(target, retired / target.name)
      os.rename(staging, target)
      shutil.rmtree(retired)
    else:
      os.rename(staging, target)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


# --- locating and reading a checkpoint -----------------------------------------------


def resolve_checkpoint(path_or_name) -> pathlib.Path:
  """An existing directory as is; otherwise a Hub repo id, downloaded (or cached): JSON,
  safetensors and tokenizer files only."""
  path = pathlib.Path(path_or_name).expanduser()
  if path.is_dir():
    return path
  name = str(path_or_name)
  if path.exists():
    raise HFCheckpointError(f"{path} is a file; from_hf needs a checkpoint directory")
  if name.startswith((os.sep, ".", "~")) or name.count("/") > 1:
    raise HFCheckpointError(f"no such checkpoint directory: {path}")
  offline = huggingface_hub.constants.HF_HUB_OFFLINE or (
      os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"))
  try:
    return pathlib.Path(huggingface_hub.snapshot_download(
        repo_id=name, allow_patterns=HUB_ALLOW_PATTERNS, local_files_only=offline))
  except (OSError, ValueError, huggingface_hub.errors.HTTPError) as e:
    mode = ("offline (HF_HUB_OFFLINE is set), not in the local cache" if offline
            else "download failed")
    raise HFCheckpointError(
        f"{name!r} is not a local directory and could not be fetched from the Hugging Face "
        f"Hub: {mode} ({type(e).__name__}: {e}). Pass a local checkpoint directory.") from e


def _read_config(path: pathlib.Path, *, dtype: str, param_dtype: str) -> ModelConfig:
  if not path.is_file():
    raise HFCheckpointError(f"{path} not found: an HF checkpoint directory needs config.json")
  try:
    raw = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise HFCheckpointError(f"{path}, line {e.lineno}: invalid JSON: {e.msg}") from e
  supported = ", ".join(f"{a} ({t})" for a, t in SUPPORTED_ARCHITECTURES.items())
  model_type = raw.get("model_type")
  if model_type not in SUPPORTED_ARCHITECTURES.values():
    moe = " (mixture-of-experts layers are not implemented)" if (
        model_type in _MOE_MODEL_TYPES) else ""
    raise HFCheckpointError(
        f"{path}: model_type {model_type!r} is not supported{moe}; supported: {supported}")
  architectures = raw.get("architectures") or []
  for arch in architectures:
    if SUPPORTED_ARCHITECTURES.get(arch) != model_type:
      raise HFCheckpointError(
          f"{path}: architecture {arch!r} (model_type {model_type!r}) is not supported; "
          f"supported: {supported}")
  transformers = _import_transformers()
  try:
    hf = transformers.CONFIG_MAPPING[model_type].from_dict(raw)
  except (huggingface_hub.errors.StrictDataclassError, ValueError, TypeError,
          ArithmeticError) as e:
    raise HFCheckpointError(f"{path}: invalid {model_type} config: {e}") from e
  try:
    if model_type == "gpt2":
      return _gpt2_config(hf, path, dtype=dtype, param_dtype=param_dtype)
    return _llama_family_config(hf, path, dtype=dtype, param_dtype=param_dtype)
  except HFCheckpointError:
    raise
  except ValueError as e:  # ModelConfig's own validation
    raise HFCheckpointError(f"{path}: {e}") from e


def _import_transformers():
  """transformers (for its config classes), imported on first use.

  Importing it takes about a second and warns when torch is absent: a cost that
  `import instructjax.models` should not pay when no checkpoint is converted.
  """
  import transformers  # pylint: disable=g-import-not-at-top
  return transformers


def _unsupported(path, field, value, expected) -> HFCheckpointError:
  return HFCheckpointError(
      f"{path}: {field}={value!r} is not supported by instructjax (expected {expected})")


def _gpt2_config(hf, path, *, dtype, param_dtype) -> ModelConfig:
  if hf.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
    raise _unsupported(path, "activation_function", hf.activation_function,
                       "the tanh GELU: 'gelu_new' or 'gelu_pytorch_tanh'")
  if not hf.scale_attn_weights or hf.scale_attn_by_inverse_layer_idx:
    raise _unsupported(
        path, "scale_attn_weights/scale_attn_by_inverse_layer_idx",
        (hf.scale_attn_weights, hf.scale_attn_by_inverse_layer_idx), "(True, False)")
  if hf.add_cross_attention:
    raise _unsupported(path, "add_cross_attention", True, False)
  return ModelConfig(
      arch="gpt2", vocab_size=hf.vocab_size, d_model=hf.n_embd, n_layers=hf.n_layer,
      n_heads=hf.n_head, d_ff=hf.n_inner or 0, max_len=hf.n_positions,
      norm_eps=hf.layer_norm_epsilon, tie_embeddings=hf.tie_word_embeddings,
      dtype=dtype, param_dtype=param_dtype)


def _llama_family_config(hf, path, *, dtype, param_dtype) -> ModelConfig:
  """Llama, Mistral, Qwen2 and Qwen3: one architecture, told apart by a few fields."""
  family = hf.model_type
  if hf.hidden_act != "silu":
    raise _unsupported(path, "hidden_act", hf.hidden_act, "'silu'")
  if family in ("qwen2", "qwen3"):
    _check_layer_types(hf, path)
  # Which biases each family's modeling code creates (Mistral has no such fields).
  attention_bias = getattr(hf, "attention_bias", False)
  qkv_bias, out_bias = {"qwen2": (True, False), "mistral": (False, False)}.get(
      family, (attention_bias, attention_bias))
  return ModelConfig(
      arch="llama", family=family, vocab_size=hf.vocab_size, d_model=hf.hidden_size,
      n_layers=hf.num_hidden_layers, n_heads=hf.num_attention_heads,
      n_kv_heads=hf.num_key_value_heads or 0, head_dim=getattr(hf, "head_dim", None) or 0,
      d_ff=hf.intermediate_size, max_len=hf.max_position_embeddings,
      norm_eps=hf.rms_norm_eps, qkv_bias=qkv_bias, out_bias=out_bias,
      mlp_bias=getattr(hf, "mlp_bias", False), qk_norm=family == "qwen3",
      sliding_window=_sliding_window(hf),
      **_rope_fields(hf.rope_parameters, path), tie_embeddings=hf.tie_word_embeddings,
      dtype=dtype, param_dtype=param_dtype)


def _sliding_window(hf) -> int:
  """The window every layer uses: Mistral's `sliding_window`, Qwen's when all layers slide."""
  if hf.model_type == "mistral" or "sliding_attention" in (getattr(hf, "layer_types", None) or []):
    return hf.sliding_window or 0
  return 0


def _check_layer_types(hf, path) -> None:
  """Qwen2/3 can slide the window in some layers only; one window for all is supported."""
  kinds = set(hf.layer_types or ["full_attention"])
  if len(kinds) > 1 or not kinds <= {"full_attention", "sliding_attention"}:
    raise _unsupported(
        path, "layer_types", sorted(kinds),
        "the same attention in every layer (set use_sliding_window=false, or "
        "max_window_layers=0 to slide in all of them)")


def _rope_fields(rope: dict, path) -> dict[str, Any]:
  """ModelConfig's RoPE fields from HF's `rope_parameters`."""
  rope_type = rope.get("rope_type", "default")
  if rope_type not in ROPE_TYPES:
    raise _unsupported(path, "rope_parameters.rope_type", rope_type, f"one of {ROPE_TYPES}")
  if rope.get("partial_rotary_factor", 1.0) != 1.0:
    raise _unsupported(path, "rope_parameters.partial_rotary_factor",
                       rope["partial_rotary_factor"], "1.0 (every channel rotates)")
  fields = dict(rope_theta=float(rope["rope_theta"]), rope_type=rope_type)
  if rope_type in ("linear", "llama3"):
    fields["rope_factor"] = float(rope["factor"])
  if rope_type == "llama3":
    fields.update(rope_low_freq_factor=float(rope["low_freq_factor"]),
                  rope_high_freq_factor=float(rope["high_freq_factor"]),
                  rope_original_max_len=int(rope["original_max_position_embeddings"]))
  return fields


def _weight_files(directory: pathlib.Path) -> dict[pathlib.Path, list[str] | None]:
  """Safetensors files to read -> the tensor names to take from each (None: all)."""
  index = directory / _INDEX_FILE
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except json.JSONDecodeError as e:
      raise HFCheckpointError(f"{index}, line {e.lineno}: invalid JSON: {e.msg}") from e
    except KeyError as e:
      raise HFCheckpointError(f"{index} has no 'weight_map'") from e
    files: dict[pathlib.Path, list[str]] = {}
    for name, shard in weight_map.items():
      if pathlib.Path(shard).name != shard:  # shards live in the checkpoint directory
        raise HFCheckpointError(f"{index}: shard {shard!r} of {name!r} is not a plain file name")
      files.setdefault(directory / shard, []).append(name)
    for shard in files:
      if not shard.is_file():
        raise HFCheckpointError(f"{index} lists shard {shard.name}, which is missing")
    return files
  if (directory / _WEIGHTS_FILE).is_file():
    return {directory / _WEIGHTS_FILE: None}
  pickles = sorted(p.name for p in directory.iterdir() if p.name.endswith(_PICKLE_SUFFIXES))
  if pickles:
    raise HFCheckpointError(
        f"{directory} holds only pickle weights ({', '.join(pickles)}); pickle checkpoints "
        "are never loaded because unpickling can run arbitrary code. Convert once where you "
        "trust the file: `transformers.AutoModelForCausalLM.from_pretrained(dir)"
        ".save_pretrained(out_dir, safe_serialization=True)`, then load out_dir.")
  others = sorted(p.name for p in directory.glob("*.safetensors"))
  raise HFCheckpointError(
      f"{directory} has neither {_WEIGHTS_FILE} nor {_INDEX_FILE}"
      + (f" (found {', '.join(others)})" if others else "")
      + "; on the Hub, a repo with only pickle (*.bin) weights is not downloaded")


def _read_tensors(directory: pathlib.Path) -> dict[str, np.ndarray]:
  tensors: dict[str, np.ndarray] = {}
  for file, names in _weight_files(directory).items():
    with safetensors.safe_open(file, framework="numpy") as f:
      available = set(f.keys())
      for name in names if names is not None else sorted(available):
        if name not in available:
          raise HFCheckpointError(f"{_INDEX_FILE} puts {name!r} in {file.name}, which lacks it")
        if name in tensors:
          raise HFCheckpointError(f"tensor {name!r} appears in more than one shard")
        tensors[name] = f.get_tensor(name)
  return tensors


def _normalise_names(tensors, config: ModelConfig) -> dict[str, np.ndarray]:
  """Adds the *ForCausalLM prefix if missing; drops buffers and a duplicate tied head."""
  family = config.arch
  prefix = _BASE_PREFIX[family]
  if not any(name.startswith(prefix) for name in tensors):
    tensors = {n if n == _LM_HEAD else prefix + n: t for n, t in tensors.items()}
  tensors = {n: t for n, t in tensors.items() if not _BUFFERS[family].search(n)}
  embedding = prefix + ("wte.weight" if family == "gpt2" else "embed_tokens.weight")
  if config.tie_embeddings and _LM_HEAD in tensors and embedding in tensors:
    if not np.array_equal(tensors[_LM_HEAD], tensors[embedding]):
      raise HFCheckpointError(
          f"tie_word_embeddings is true but {_LM_HEAD} differs from {embedding}")
    del tensors[_LM_HEAD]
  return tensors


def _check_tensors(tensors, expected, directory) -> None:
  missing = sorted(set(expected) - set(tensors))
  unexpected = sorted(set(tensors) - set(expected))
  if missing or unexpected:
    raise HFCheckpointError(
        f"{directory}: tensors do not match the config: missing {missing}, unexpected "
        f"{unexpected}")
  for name, want in expected.items():
    if tuple(tensors[name].shape) != tuple(want.shape):
      raise HFCheckpointError(
          f"{directory}: tensor {name!r} has shape {tuple(tensors[name].shape)}, the config "
          f"implies {tuple(want.shape)}")


def _copy_extra_files(old: pathlib.Path, new: pathlib.Path) -> None:
  """Keeps what to_hf does not write (tokenizer files...) when replacing a checkpoint."""
  for entry in old.iterdir():
    if (entry.name in ("config.json", "generation_config.json", _INDEX_FILE)
        or entry.name.endswith((".safetensors",) + _PICKLE_SUFFIXES)):
      continue
    if entry.is_dir():
      shutil.copytree(entry, new / entry.name, symlinks=True)
    else:
      shutil.copy2(entry, new / entry.name, follow_symlinks=False)


# --- the HF <-> instructjax tensor table ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Link:
  """One HF tensor and the instructjax parameters it becomes.

  `to_ours` uses only array methods, so it runs in numpy on the host; `to_hf` may use
  jnp, so `jax.eval_shape` can derive HF shapes without allocating weights.
  """
  hf_name: str
  paths: tuple[ParamPath, ...]
  to_ours: Callable[[Any], tuple[Any, ...]]
  to_hf: Callable[..., Any]


def _same(name: str, path: ParamPath) -> _Link:
  return _Link(name, (path,), lambda w: (w,), lambda p: p)


def _transposed(name: str, path: ParamPath, our_shape: tuple[int, ...], *,
                in_features: int = 0) -> _Link:
  """A torch Linear weight [out, in] <-> a kernel of `our_shape` (input axes first).

  `in_features` (default `our_shape[0]`) is the product of the kernel's input axes.
  """
  n_in = in_features or our_shape[0]
  return _Link(name, (path,), lambda w: (w.T.reshape(our_shape),),
               lambda k: k.reshape(n_in, -1).T)


def _links(config: ModelConfig, *, score_head: bool = False) -> list[_Link]:
  """The links of a CausalLM's params, or with `score_head` of a reward model's: the
  trunk and a [1, d_model] score in place of any LM head."""
  links = _gpt2_links(config) if config.arch == "gpt2" else _llama_links(config)
  if score_head:
    links = [link for link in links if link.hf_name != _LM_HEAD]
    links.append(_transposed(_SCORE, ("scalar_head", "kernel"), (config.d_model, 1)))
  return links


def _gpt2_links(config: ModelConfig) -> list[_Link]:
  d, h, dh = config.d_model, config.n_heads, config.head_dim_
  t = ("transformer",)
  links = [
      _same("transformer.wte.weight", t + ("wte", "embedding")),
      _same("transformer.wpe.weight", t + ("wpe", "embedding")),
      _same("transformer.ln_f.weight", t + ("ln_f", "scale")),
      _same("transformer.ln_f.bias", t + ("ln_f", "bias")),
  ]
  for i in range(config.n_layers):
    hf, ours = f"transformer.h.{i}.", t + (f"block_{i}",)
    qkv = ("q_proj", "k_proj", "v_proj")
    links += [
        _same(hf + "ln_1.weight", ours + ("ln_1", "scale")),
        _same(hf + "ln_1.bias", ours + ("ln_1", "bias")),
        _same(hf + "ln_2.weight", ours + ("ln_2", "scale")),
        _same(hf + "ln_2.bias", ours + ("ln_2", "bias")),
        # Conv1D weights are already [in, out]; q, k and v are fused along `out`.
        _Link(hf + "attn.c_attn.weight", tuple(ours + ("attn", n, "kernel") for n in qkv),
              lambda w: tuple(w[:, j * d:(j + 1) * d].reshape(d, h, dh) for j in range(3)),
              lambda *ks: jnp.concatenate([k.reshape(d, h * dh) for k in ks], axis=1)),
        _Link(hf + "attn.c_attn.bias", tuple(ours + ("attn", n, "bias") for n in qkv),
              lambda b: tuple(b[j * d:(j + 1) * d].reshape(h, dh) for j in range(3)),
              lambda *bs: jnp.concatenate([b.reshape(h * dh) for b in bs])),
        _Link(hf + "attn.c_proj.weight", (ours + ("attn", "o_proj", "kernel"),),
              lambda w: (w.reshape(h, dh, d),), lambda k: k.reshape(h * dh, d)),
        _same(hf + "attn.c_proj.bias", ours + ("attn", "o_proj", "bias")),
        _same(hf + "mlp.c_fc.weight", ours + ("mlp", "fc_in", "kernel")),
        _same(hf + "mlp.c_fc.bias", ours + ("mlp", "fc_in", "bias")),
        _same(hf + "mlp.c_proj.weight", ours + ("mlp", "fc_out", "kernel")),
        _same(hf + "mlp.c_proj.bias", ours + ("mlp", "fc_out", "bias")),
    ]
  if not config.tie_embeddings:
    links.append(_transposed(_LM_HEAD, ("lm_head", "kernel"), (d, config.vocab_size)))
  return links


def _llama_links(config: ModelConfig) -> list[_Link]:
  d, h, kv, dh, f = (config.d_model, config.n_heads, config.kv_heads, config.head_dim_,
                     config.ff_dim)
  t = ("transformer",)
  links = [
      _same("model.embed_tokens.weight", t + ("wte", "embedding")),
      _same("model.norm.weight", t + ("ln_f", "scale")),
  ]
  for i in range(config.n_layers):
    hf, ours = f"model.layers.{i}.", t + (f"block_{i}",)
    attn, mlp = ours + ("attn",), ours + ("mlp",)
    links += [
        _same(hf + "input_layernorm.weight", ours + ("ln_1", "scale")),
        _same(hf + "post_attention_layernorm.weight", ours + ("ln_2", "scale")),
        _transposed(hf + "self_attn.q_proj.weight", attn + ("q_proj", "kernel"), (d, h, dh)),
        _transposed(hf + "self_attn.k_proj.weight", attn + ("k_proj", "kernel"), (d, kv, dh)),
        _transposed(hf + "self_attn.v_proj.weight", attn + ("v_proj", "kernel"), (d, kv, dh)),
        _transposed(hf + "self_attn.o_proj.weight", attn + ("o_proj", "kernel"), (h, dh, d),
                    in_features=h * dh),
        _transposed(hf + "mlp.gate_proj.weight", mlp + ("gate_proj", "kernel"), (d, f)),
        _transposed(hf + "mlp.up_proj.weight", mlp + ("up_proj", "kernel"), (d, f)),
        _transposed(hf + "mlp.down_proj.weight", mlp + ("down_proj", "kernel"), (f, d)),
    ]
    if config.qkv_bias:  # HF [heads * Dh] <-> ours [heads, Dh]
      links += [_Link(hf + f"self_attn.{n}.bias", (attn + (n, "bias"),),
                      lambda b, heads=heads: (b.reshape(heads, dh),), lambda b: b.reshape(-1))
                for n, heads in (("q_proj", h), ("k_proj", kv), ("v_proj", kv))]
    if config.out_bias:
      links.append(_same(hf + "self_attn.o_proj.bias", attn + ("o_proj", "bias")))
    if config.mlp_bias:
      links += [_same(hf + f"mlp.{n}.bias", mlp + (n, "bias"))
                for n in ("gate_proj", "up_proj", "down_proj")]
    if config.qk_norm:
      links += [_same(hf + f"self_attn.{n}.weight", attn + (n, "scale"))
                for n in ("q_norm", "k_norm")]
  if not config.tie_embeddings:
    links.append(_transposed(_LM_HEAD, ("lm_head", "kernel"), (d, config.vocab_size)))
  return links


def _hf_config(config: ModelConfig, token_ids: dict[str, int | None]):
  """The transformers config object describing `config` (for `save_pretrained`)."""
  transformers = _import_transformers()
  unknown = sorted(set(token_ids) - {"bos_token_id", "eos_token_id", "pad_token_id"})
  if unknown:
    raise HFCheckpointError(f"token_ids has unknown keys {unknown}")
  common = dict(vocab_size=config.vocab_size, tie_word_embeddings=config.tie_embeddings,
                bos_token_id=None, eos_token_id=None, pad_token_id=None,
                dtype=config.param_dtype) | token_ids
  if config.arch == "gpt2":
    if config.kv_heads != config.n_heads or config.n_heads * config.head_dim_ != config.d_model:
      raise HFCheckpointError(
          f"GPT-2 in transformers needs n_kv_heads == n_heads and n_heads * head_dim == "
          f"d_model; got n_heads={config.n_heads}, n_kv_heads={config.kv_heads}, "
          f"head_dim={config.head_dim_}, d_model={config.d_model}")
    return transformers.GPT2Config(
        architectures=["GPT2LMHeadModel"], n_positions=config.max_len, n_embd=config.d_model,
        n_layer=config.n_layers, n_head=config.n_heads, n_inner=config.d_ff or None,
        activation_function="gelu_new", layer_norm_epsilon=config.norm_eps,
        resid_pdrop=config.dropout_rate, embd_pdrop=config.dropout_rate, attn_pdrop=0.0,
        **common)
  return _llama_family_hf_config(config, transformers, common)


def _llama_family_hf_config(config: ModelConfig, transformers, common: dict):
  """A Llama / Mistral / Qwen2 / Qwen3 config; ModelConfig already checked the family fits."""
  family = config.hf_family
  rope = {"rope_type": config.rope_type, "rope_theta": config.rope_theta}
  if config.rope_type != "default":
    rope["factor"] = config.rope_factor
  if config.rope_type == "llama3":
    rope.update(low_freq_factor=config.rope_low_freq_factor,
                high_freq_factor=config.rope_high_freq_factor,
                original_max_position_embeddings=config.rope_original_max_len)
  fields = dict(
      architectures=[_ARCHITECTURE_OF[family]], hidden_size=config.d_model,
      intermediate_size=config.ff_dim, num_hidden_layers=config.n_layers,
      num_attention_heads=config.n_heads, num_key_value_heads=config.kv_heads,
      max_position_embeddings=config.max_len, rms_norm_eps=config.norm_eps,
      hidden_act="silu", rope_parameters=rope, **common)
  if family != "qwen2":  # Qwen2 derives head_dim from hidden_size / heads
    fields["head_dim"] = config.head_dim_
  if family in ("llama", "qwen3"):
    fields["attention_bias"] = config.qkv_bias
  if family == "llama":
    fields["mlp_bias"] = config.mlp_bias
  if family == "mistral":
    fields["sliding_window"] = config.sliding_window or None
  if family in ("qwen2", "qwen3") and config.sliding_window:  # in every layer
    fields.update(use_sliding_window=True, sliding_window=config.sliding_window,
                  max_window_layers=0)
  return transformers.CONFIG_MAPPING[family](**fields)


# --- params trees --------------------------------------------------------------------


def _abstract_params(model: CausalLM | ScalarModel):
  """Shapes and dtypes of `model`'s params, without allocating them."""
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), tokens)
  return flax.core.meta.unbox(variables["params"])


def _hf_shapes(model: CausalLM, links: list[_Link]) -> dict[str, jax.ShapeDtypeStruct]:
  def export(params):
    return {link.hf_name: link.to_hf(*[_get(params, p) for p in link.paths]) for link in links}
  return jax.eval_shape(export, _abstract_params(model))


def _check_params(params, expected, *, what: str) -> None:
  flat = _flatten(params, what)
  want = _flatten(expected, "expected")
  missing, unexpected = sorted(set(want) - set(flat)), sorted(set(flat) - set(want))
  if missing or unexpected:
    raise HFCheckpointError(
        f"{what} do not match the model: missing {['/'.join(p) for p in missing]}, "
        f"unexpected {['/'.join(p) for p in unexpected]}")
  for path, spec in want.items():
    if tuple(np.shape(flat[path])) != tuple(spec.shape):
      raise HFCheckpointError(
          f"{what}: {'/'.join(path)} has shape {tuple(np.shape(flat[path]))}, the model "
          f"expects {tuple(spec.shape)}")


def _flatten(tree, what: str) -> dict[ParamPath, Any]:
  if not isinstance(tree, collections.abc.Mapping) or not tree:
    raise HFCheckpointError(
        f"{what} must be a non-empty mapping of parameters, got {type(tree).__name__}")
  flat = {}
  for key, value in tree.items():
    if isinstance(value, collections.abc.Mapping):
      flat.update({(key,) + p: v for p, v in _flatten(value, what).items()})
    else:
      flat[(key,)] = value
  return flat


def _get(tree, path: ParamPath):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: ParamPath, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value
