"""Any stage of a run as a Hugging Face checkpoint, tokenizer included.

  python -m instructjax.export --workdir=runs/demo --stage=ppo_ptx --to=exported/ppo_ptx
  python -m instructjax.export --workdir=runs/demo --stage=ppo --ema --to=exported/ppo_ema
  python -m instructjax.export --workdir=runs/demo --stage=rm --to=exported/rm

A policy is what `transformers.AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)` load and generate from: config.json (with the
tokenizer's EOS / BOS / pad ids, so `generate` stops at EOS), model.safetensors, and the
tokenizer files. A reward model (rm, rm_judge) is what
`AutoModelForSequenceClassification` loads: one label, the reward at the last token, and
config.json's `reward_bias` to subtract for the reward PPO used. Score a sequence ending
in EOS without padding after it: when the pad id is EOS, as with GPT-2's tokenizer, HF
takes the token before the last EOS as the last one. The architecture is the one the
stage's export card records; the tokenizer is the run's own: the imported checkpoint's
(WORKDIR/tokenizer) or the testbed's (WORKDIR/testbed/tokenizer), unless --tokenizer
names another directory.
"""

from __future__ import annotations

import functools
import os
import pathlib

import flax.core.meta
import jax
import transformers

from instructjax import hf_import, stage_export, stage_table
from instructjax.data import tokenize
from instructjax.models import CausalLM, ModelConfig, ScalarModel, to_hf

REWARD_STAGES = stage_table.run_by("instructjax.reward")  # scalar heads: no LM head


def run_tokenizer_dir(run_dir: str) -> str:
  """The tokenizer a run's policies were trained with."""
  for candidate in (hf_import.TOKENIZER_DIR, os.path.join("testbed", "tokenizer")):
    path = os.path.join(run_dir, candidate)
    if os.path.isdir(path):
      return path
  raise FileNotFoundError(
      f"{run_dir} holds no tokenizer ({hf_import.TOKENIZER_DIR}/ or testbed/tokenizer/); "
      "pass --tokenizer=DIR")


def _host_params(model: CausalLM | ScalarModel, workdir: str, stage: str):
  """The export's params restored onto the host CPU, whatever devices trained them."""
  cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 1), "int32"))
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=cpu),
                          flax.core.meta.unbox(shapes["params"]))
  params, _ = stage_export.load_export(workdir, abstract, expected_stages=(stage,))
  return params


def export(run_dir: str, stage: str, to: str, *, ema: bool = False,
           tokenizer_dir: str | None = None) -> pathlib.Path:
  """Writes `stage`'s exported policy (its EMA with `ema=True`) or reward model to `to` as
  an HF checkpoint with the run's tokenizer; returns the directory."""
  if stage not in stage_table.NAMES:
    raise ValueError(f"unknown stage {stage!r}; known: {stage_table.NAMES}")
  reward = stage in REWARD_STAGES
  if ema and reward:
    raise ValueError(f"stage {stage!r} is a reward model: only PPO keeps an EMA")
  workdir = os.path.join(run_dir, stage, "ema" if ema else "")
  card = stage_export.read_card(workdir, expected_stages=(stage,))
  if ema and not card.ema:
    raise ValueError(f"{workdir} holds no EMA export; the stage ran with ema_decay=0")
  model = (functools.partial(ScalarModel, likelihood_feature=card.likelihood_feature)
           if reward else CausalLM)(ModelConfig(**card.model))
  tokenizer = transformers.AutoTokenizer.from_pretrained(
      tokenizer_dir or run_tokenizer_dir(run_dir), trust_remote_code=False)
  tokenize.check_tokenizer_matches(tokenizer, model.config.vocab_size)
  params = _host_params(model, workdir, stage)
  token_ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenize.pad_id(tokenizer)}
  to_hf(model, params, to, token_ids=token_ids,
        reward_bias=card.reward_bias if reward else None)
  tokenizer.save_pretrained(to)
  print(f"[export] {stage}{' (EMA)' if ema else ''} -> {to}", flush=True)
  return pathlib.Path(to)


def main() -> None:
  """The command line; flags are defined here, so importing this module defines none."""
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  workdir = flags.DEFINE_string("workdir", None, "the run's directory", required=True)
  stage = flags.DEFINE_enum("stage", "ppo_ptx", list(stage_table.NAMES), "the stage to export")
  to = flags.DEFINE_string("to", None, "the HF checkpoint directory to write", required=True)
  ema = flags.DEFINE_bool("ema", False, "export the EMA of the PPO policy instead")
  tokenizer_dir = flags.DEFINE_string(
      "tokenizer", None, "tokenizer directory (default: the run's own)")

  def program(argv):
    del argv
    export(workdir.value, stage.value, to.value, ema=ema.value,
           tokenizer_dir=tokenizer_dir.value)
  app.run(program)


if __name__ == "__main__":
  main()
