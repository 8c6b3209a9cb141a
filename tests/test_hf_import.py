"""Stage 0 from a Hugging Face checkpoint directory, and out again with
`instructjax.export`; the checks that stop a bad checkpoint before any weight is read.

The checkpoint is the Qwen2 parity fixture (written by transformers, see
tests/fixtures/make_hf_fixtures.py) with a BPE tokenizer trained here on the run's own
text, and the data are small JSONL split files. tests/test_smoke_pipelines.py takes
real-format checkpoints and data through every stage.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
import transformers
from tiny_checkpoints import save_bpe_tokenizer

from instructjax import export as export_lib
from instructjax import hf_import, sft, stage_export
from instructjax.config import ConfigError, load_config
from instructjax.data import records
from instructjax.models import CausalLM, from_hf
from instructjax.models.hf_interop import HFCheckpointError

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "hf" / "qwen2"  # vocab 97, 64 positions
WORDS = ("red blue green sun moon tree river stone bird fish cloud rain snow wind fire "
         "light dark warm cold fast slow big small").split()


def _text(rng: np.random.Generator, n: int) -> str:
  return " ".join(rng.choice(WORDS, size=n))


def _write_splits(directory: pathlib.Path) -> list[str]:
  """Small split files in the generic schema; returns all their text (tokenizer corpus)."""
  rng = np.random.default_rng(0)
  prompts = [f"say {_text(rng, 3)}:" for _ in range(48)]
  rows = {
      "pretrain": [records.TextRecord(_text(rng, 12)) for _ in range(32)],
      "pretrain_heldout": [records.TextRecord(_text(rng, 12)) for _ in range(8)],
      "sft": [records.SftRecord(p, " " + _text(rng, 4)) for p in prompts[:16]],
      "rm_train": [records.RankingRecord(p, (" " + _text(rng, 3), " " + _text(rng, 5)), (0, 1))
                   for p in prompts[16:32]],
      "rm_eval": [records.RankingRecord(p, (" " + _text(rng, 2), " " + _text(rng, 4)), (1, 0))
                  for p in prompts[32:40]],
      "ppo_prompts": [records.PromptRecord(p) for p in prompts[16:32]],
      "eval_prompts": [records.PromptRecord(p) for p in prompts[40:]],
  }
  directory.mkdir(parents=True)
  for split, split_rows in rows.items():
    records.write_jsonl(directory / f"{split}.jsonl", split_rows)
  return [json.dumps(records.record_to_json(r)) for rs in rows.values() for r in rs]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
  """(a checkpoint directory with its tokenizer, the data directory)."""
  root = tmp_path_factory.mktemp("hf_import")
  corpus = _write_splits(root / "data")
  ckpt = root / "qwen2"
  shutil.copytree(FIXTURE, ckpt)
  save_bpe_tokenizer(corpus, ckpt, vocab_size=90)
  return ckpt, root / "data"


def _config(ckpt: pathlib.Path, data_dir: pathlib.Path) -> ml_collections.ConfigDict:
  config = load_config("experiments/instructgpt_tiny.py:test")
  # The model sections keep the testbed's sizes (a GPT-2 of d_model 32): an import must
  # take the architecture from config.json and only the runtime fields from here.
  config.hf_name.update(model=str(ckpt), big_model=str(ckpt))
  config.data.update(source="jsonl", dir=str(data_dir), tokenizer=str(ckpt))
  config.log.tensorboard = False
  return config


def test_import_takes_the_architecture_from_config_json(checkpoint, tmp_path):
  ckpt, data_dir = checkpoint
  config = _config(ckpt, data_dir)
  config.model.dropout_rate = 0.1
  sft.run(config, str(tmp_path), stage="pretrain")

  expected_model, expected_params = from_hf(ckpt)
  resolved = hf_import.resolve_model(config, str(tmp_path), "model")
  assert resolved == expected_model.config.replace(dropout_rate=0.1)
  assert resolved.hf_family == "qwen2" and resolved.qkv_bias and resolved.d_model == 48
  card = stage_export.read_card(str(tmp_path / "pretrain"), expected_stages=("pretrain",))
  assert card.steps == 0
  params = export_lib._host_params(CausalLM(resolved), str(tmp_path / "pretrain"), "pretrain")
  jax.tree.map(np.testing.assert_array_equal, params, expected_params)
  # The checkpoint's tokenizer is kept with the run, for the export.
  saved = transformers.AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
  assert saved.get_vocab() == transformers.AutoTokenizer.from_pretrained(ckpt).get_vocab()


def test_tokenizer_larger_than_the_embedding_stops_before_any_weight(checkpoint, tmp_path):
  ckpt, data_dir = checkpoint
  big = tmp_path / "big_tokenizer"
  shutil.copytree(ckpt, big)
  save_bpe_tokenizer([f"w{i} x{i} y{i}" for i in range(200)], big, vocab_size=160)
  config = _config(big, data_dir)
  with pytest.raises(ConfigError, match=r"config.hf_name.model=.*tokenizer has 1\d\d tokens.*"
                                        r"vocab_size is 97.*checkpoint's own tokenizer"):
    sft.run(config, str(tmp_path / "run"), stage="pretrain")
  assert not (tmp_path / "run" / "pretrain").exists()


def test_sequences_longer_than_the_positions_are_named(checkpoint, tmp_path):
  ckpt, data_dir = checkpoint
  config = _config(ckpt, data_dir)
  config.ppo.max_new_tokens = 30  # 40 + 30 > the fixture's 64 positions
  with pytest.raises(ConfigError, match=r"config.data.max_prompt_len \+ config.ppo."
                                        r"max_new_tokens = 70 exceeds the checkpoint's 64"):
    sft.run(config, str(tmp_path), stage="pretrain")
  assert not (tmp_path / "pretrain").exists()


def test_unsupported_architecture_is_named_before_training(checkpoint, tmp_path):
  ckpt, data_dir = checkpoint
  neox = tmp_path / "neox"
  shutil.copytree(ckpt, neox)
  raw = json.loads((neox / "config.json").read_text())
  raw.update(model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"])
  (neox / "config.json").write_text(json.dumps(raw))
  with pytest.raises(HFCheckpointError, match="model_type 'gpt_neox' is not supported"):
    sft.run(_config(neox, data_dir), str(tmp_path / "run"), stage="pretrain")


def test_export_refuses_what_does_not_exist(checkpoint, tmp_path):
  ckpt, data_dir = checkpoint
  sft.run(_config(ckpt, data_dir), str(tmp_path), stage="pretrain")
  with pytest.raises(ValueError, match="'rm' is a reward model: only PPO keeps an EMA"):
    export_lib.export(str(tmp_path), "rm", str(tmp_path / "out"), ema=True)
  with pytest.raises(ValueError, match="unknown stage 'kto'"):
    export_lib.export(str(tmp_path), "kto", str(tmp_path / "out"))
  with pytest.raises(Exception, match="no finished stage export"):
    export_lib.export(str(tmp_path), "pretrain", str(tmp_path / "out"), ema=True)


def test_export_command_line(checkpoint, tmp_path):
  ckpt, data_dir = checkpoint
  sft.run(_config(ckpt, data_dir), str(tmp_path / "run"), stage="pretrain")
  done = subprocess.run(
      [sys.executable, "-m", "instructjax.export", f"--workdir={tmp_path / 'run'}",
       "--stage=pretrain", f"--to={tmp_path / 'hf'}"], capture_output=True, text=True,
      timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  written = safetensors.numpy.load_file(tmp_path / "hf" / "model.safetensors")
  original = safetensors.numpy.load_file(ckpt / "model.safetensors")
  assert sorted(written) == sorted(original)
  for name, value in original.items():  # an import exports the checkpoint unchanged
    np.testing.assert_array_equal(written[name], value, err_msg=name)
  assert (tmp_path / "hf" / "tokenizer.json").exists()
