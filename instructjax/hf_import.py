"""Stage 0 as an import: a Hugging Face checkpoint by hub id or local directory.

With `config.hf_name.model` (and `config.hf_name.big_model`) set, the vanilla LM stages
(`pretrain`, `pretrain_big`) do not train: they import that checkpoint. Its architecture
comes from its config.json, its weights from safetensors, and its tokenizer from the same
place (`AutoTokenizer`). The config's model section then only sets what a checkpoint does
not fix: compute and parameter dtype, remat, dropout and the attention implementation.
Every later stage takes its architecture from the import's export card (`resolve_model`),
so a stale size in the config cannot disagree with the weights.

Before any weight is converted, the tokenizer and the run's lengths are checked against
the architecture: ids the embedding cannot hold, a missing EOS, a pad id out of range,
or prompt + response longer than the model's positions each stop the run with the fix.
"""

from __future__ import annotations

import os
import shutil

import jax
import ml_collections
import transformers

from instructjax import stage_export, stage_table
from instructjax.config import ConfigError, model_config
from instructjax.data import tokenize
from instructjax.models import ModelConfig, from_hf
from instructjax.models.hf_interop import resolve_checkpoint

TOKENIZER_DIR = "tokenizer"  # WORKDIR/tokenizer: the imported checkpoint's tokenizer
_RUNTIME_FIELDS = ("dtype", "param_dtype", "remat", "dropout_rate", "attention")


def hf_source(config: ml_collections.ConfigDict, section: str) -> str:
  """The checkpoint a model section is imported from; "" when it is trained from scratch."""
  names = config.get("hf_name")
  return str(names.get(section) or "") if names is not None else ""


def _import_stage(section: str) -> stage_table.Stage:
  (stage,) = [s for s in stage_table.STAGES if not s.parents and s.model_section == section]
  return stage


def resolve_model(config: ml_collections.ConfigDict, run_dir: str, section: str) -> ModelConfig:
  """The architecture of `config[section]`'s model in this run: the imported checkpoint's
  (from its stage's export card) with the config's runtime fields, or the section's own."""
  own = model_config(config[section], field=f"config.{section}")
  if not hf_source(config, section):
    return own
  stage = _import_stage(section)
  card = stage_export.read_card(os.path.join(run_dir, stage.name), expected_stages=(stage.name,))
  return ModelConfig(**card.model).replace(
      **{name: getattr(own, name) for name in _RUNTIME_FIELDS})


def check_fits(config: ml_collections.ConfigDict, model: ModelConfig, tokenizer, *,
               where: str) -> None:
  """Raises ConfigError, naming the fix, if the tokenizer or the run's sequence lengths do
  not fit the architecture."""
  problems = []
  try:
    tokenize.check_tokenizer_matches(tokenizer, model.vocab_size)
    pad = tokenize.pad_id(tokenizer)
    if not 0 <= pad < model.vocab_size:
      problems.append(f"the tokenizer's pad id {pad} is outside the vocabulary "
                      f"(vocab_size={model.vocab_size}); set a pad_token it has")
  except ValueError as e:
    problems.append(f"{e}; use the checkpoint's own tokenizer (config.data.tokenizer)")
  lengths = {"config.data.max_len": config.data.max_len}
  if "ppo" in config:
    lengths["config.data.max_prompt_len + config.ppo.max_new_tokens"] = (
        config.data.max_prompt_len + config.ppo.max_new_tokens)
  if "eval" in config:
    lengths["config.data.max_prompt_len + config.eval.max_new_tokens"] = (
        config.data.max_prompt_len + config.eval.max_new_tokens)
  for name, length in lengths.items():
    if length > model.max_len:
      problems.append(f"{name} = {length} exceeds the checkpoint's {model.max_len} positions "
                      "(max_position_embeddings); shorten it")
  if problems:
    raise ConfigError(f"{where}: " + "; ".join(problems))


def import_stage(config: ml_collections.ConfigDict, run_dir: str, stage: str) -> str:
  """Imports the checkpoint of `stage` (pretrain or pretrain_big) as its finished export,
  unless that export exists; returns the stage directory."""
  section = stage_table.stage(stage).model_section
  workdir = os.path.join(run_dir, stage)
  if stage_export.is_exported(workdir):
    return workdir
  name = hf_source(config, section)
  directory = resolve_checkpoint(name)
  own = model_config(config[section], field=f"config.{section}")
  model, params = from_hf(directory, dtype=own.dtype, param_dtype=own.param_dtype)
  cfg = model.config.replace(**{f: getattr(own, f) for f in _RUNTIME_FIELDS})
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
  check_fits(config, cfg, tokenizer, where=f"config.hf_name.{section}={name!r}")
  print(f"[{stage}] imported {name}: {cfg.hf_family}, {cfg.num_params() / 1e6:.1f}M "
        "parameters", flush=True)
  if section == "model" and jax.process_index() == 0:
    # The policy's tokenizer: the one `instructjax.export` writes out with it.
    _save_tokenizer(tokenizer, os.path.join(run_dir, TOKENIZER_DIR))
  stage_export.save_export(workdir, params, stage_export.ExportCard(
      stage=stage, model=cfg.__dict__, steps=0))
  return workdir


def _save_tokenizer(tokenizer, directory: str) -> None:
  staging = directory + ".tmp"
  shutil.rmtree(staging, ignore_errors=True)
  tokenizer.save_pretrained(staging)
  shutil.rmtree(directory, ignore_errors=True)
  os.rename(staging, directory)
