"""Stage 0 from a Hugging Face checkpoint directory, through SFT, RM and PPO-ptx, and out
again with `instructjax.export`.

The checkpoint is the Qwen2 parity fixture (written by transformers, see
tests/fixtures/make_hf_fixtures.py) with a BPE tokenizer trained here on the run's own
text, and the data are small JSONL split files: the same code path as a real model on
real data, at a size CPU tests afford.
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
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

from instructjax import export as export_lib
from instructjax import hf_import, ppo, reward, sft, stage_export
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


def _save_tokenizer(corpus: list[str], directory: pathlib.Path, *, vocab_size: int) -> None:
  """A character-seeded BPE (no 256-byte alphabet, so it fits a 97-token embedding)."""
  tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  tok.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=["<unk>", "<pad>", "<eos>"]))
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>",
  ).save_pretrained(directory)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
  """(a checkpoint directory with its tokenizer, the data directory)."""
  root = tmp_path_factory.mktemp("hf_import")
  corpus = _write_splits(root / "data")
  ckpt = root / "qwen2"
  shutil.copytree(FIXTURE, ckpt)
  _save_tokenizer(corpus, ckpt, vocab_size=90)
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


def test_checkpoint_goes_through_sft_rm_ppo_ptx_and_exports(checkpoint, tmp_path):
  ckpt, data_dir = checkpoint
  config = _config(ckpt, data_dir)
  run_dir = str(tmp_path / "run")
  for stage in ("pretrain", "sft"):
    sft.run(config, run_dir, stage=stage)
  reward.run(config, run_dir)
  ppo.run(config, run_dir, stage="ppo_ptx")
  for stage in ("sft", "rm", "ppo_ptx"):
    card = stage_export.read_card(str(tmp_path / "run" / stage), expected_stages=(stage,))
    assert card.model["family"] == "qwen2" and card.model["d_model"] == 48, stage

  out = export_lib.export(run_dir, "ppo_ptx", str(tmp_path / "hf"))
  model = CausalLM(hf_import.resolve_model(config, run_dir, "model"))
  trained = export_lib._host_params(model, str(tmp_path / "run" / "ppo_ptx"), "ppo_ptx")
  _, reloaded = from_hf(out)
  jax.tree.map(np.testing.assert_array_equal, reloaded, trained)
  hf_config = transformers.AutoConfig.from_pretrained(out)
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert type(hf_config).__name__ == "Qwen2Config"
  eos = tokenizer.convert_tokens_to_ids("<eos>")
  assert hf_config.eos_token_id == tokenizer.eos_token_id == eos
  assert hf_config.pad_token_id == tokenizer.pad_token_id
  original = safetensors.numpy.load_file(ckpt / "model.safetensors")
  written = safetensors.numpy.load_file(out / "model.safetensors")
  assert sorted(written) == sorted(original)
  assert not np.array_equal(written["lm_head.weight"], original["lm_head.weight"])  # trained

  torch = pytest.importorskip("torch")
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  ids = tokenizer("say red sun moon:", return_tensors="pt")
  with torch.no_grad():
    generated = hf_model.generate(**ids, do_sample=False, max_new_tokens=4)
  assert generated.shape[1] > ids["input_ids"].shape[1]


def test_tokenizer_larger_than_the_embedding_stops_before_any_weight(checkpoint, tmp_path):
  ckpt, data_dir = checkpoint
  big = tmp_path / "big_tokenizer"
  shutil.copytree(ckpt, big)
  _save_tokenizer([f"w{i} x{i} y{i}" for i in range(200)], big, vocab_size=160)
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


def test_export_refuses_what_is_not_a_policy(checkpoint, tmp_path):
  ckpt, data_dir = checkpoint
  sft.run(_config(ckpt, data_dir), str(tmp_path), stage="pretrain")
  with pytest.raises(ValueError, match="'rm' is a reward model"):
    export_lib.export(str(tmp_path), "rm", str(tmp_path / "out"))
  with pytest.raises(ValueError, match="unknown stage 'dpo'"):
    export_lib.export(str(tmp_path), "dpo", str(tmp_path / "out"))
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
