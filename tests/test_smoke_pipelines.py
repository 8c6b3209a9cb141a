"""The real-model pipeline end to end, as a user runs it: the `smoke` variant of a real
config with nothing but a checkpoint directory and a manual dir of published files.

  python -m instructjax.pipeline --config=experiments/gpt2_hh_rlhf.py:smoke --workdir=W \
      --config.hf_name.model=CKPT_DIR --config.data.manual_dir=HH_DIR

GPT-2 on HH-RLHF (killed mid-stage and resumed), and Llama on TL;DR: each checkpoint is
random, written in HF format with a BPE tokenizer trained on the data, and each manual
dir holds files in the published schema, including the rows that once stopped the
builders (an empty preferred reply).
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import transformers
from tiny_checkpoints import write_checkpoint

from instructjax.data import hh_rlhf
from instructjax.export import export
from instructjax.models import ModelConfig, from_hf

REPO = pathlib.Path(__file__).resolve().parent.parent
WORDS = ("red blue green sun moon tree river stone bird fish cloud rain snow wind fire "
         "light dark warm cold fast slow big small").split()
STAGES = ("pretrain", "pretrain_big", "sft", "rm", "rm_judge", "ppo", "ppo_ptx")


def _words(rng: np.random.Generator, n: int) -> str:
  return " ".join(rng.choice(WORDS, size=n))


def _hh_manual_dir(root: pathlib.Path) -> list[str]:
  """Every HH-RLHF subset's train and test files; -> all their text (tokenizer corpus)."""
  rng = np.random.default_rng(0)
  texts = []
  for subset in hh_rlhf.SUBSETS:
    for split, n in (("train", 24), ("test", 8)):
      rows = []
      for i in range(n):
        prompt = f"\n\nHuman: {_words(rng, 4)}?\n\nAssistant:"
        chosen = "" if i == 3 else " " + _words(rng, 3)  # the published empty reply
        rows.append({"chosen": prompt + chosen, "rejected": prompt + " " + _words(rng, 5)})
        texts += [rows[-1]["chosen"], rows[-1]["rejected"]]
      path = root / subset / f"{split}.jsonl.gz"
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
  return texts


def _tldr_manual_dir(root: pathlib.Path) -> list[str]:
  """comparisons/batch*.json in the published schema; -> their text."""
  rng = np.random.default_rng(1)
  texts, lines = [], []
  for i in range(80):
    split = "train" if i < 60 else ("valid2" if i < 72 else "valid1")
    info = {"id": f"t{i}", "subreddit": "test", "title": _words(rng, 3),
            "post": _words(rng, 12)}
    summaries = [{"text": " " + _words(rng, 3), "policy": "ref", "note": ""},
                 {"text": "" if i == 5 else " " + _words(rng, 4), "policy": "sup", "note": ""}]
    lines.append(json.dumps({"info": info, "summaries": summaries, "choice": i % 2,
                             "worker": f"w{i % 3}", "batch": "batch0", "split": split,
                             "extra": {}}))
    texts += [info["title"] + " " + info["post"], *(s["text"] for s in summaries),
              "SUBREDDIT: r/test TITLE: POST: TL;DR:"]
  (root / "comparisons").mkdir(parents=True)
  (root / "comparisons" / "batch0.json").write_text("\n".join(lines) + "\n")
  return texts


def _tldr_sft_dir(root: pathlib.Path, posts: int = 40) -> list[str]:
  """train.jsonl of the filtered TL;DR demonstrations in the published schema (posts of
  their own); -> their text."""
  rng = np.random.default_rng(2)
  rows = [{"id": f"s{i}", "subreddit": "test", "title": _words(rng, 3),
           "post": _words(rng, 12), "summary": " " + _words(rng, 4)} for i in range(posts)]
  root.mkdir(parents=True)
  (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return [f"{r['title']} {r['post']} {r['summary']}" for r in rows]


def _command(config: str, workdir, ckpt, manual_dir, *more) -> list[str]:
  return [sys.executable, "-m", "instructjax.pipeline", f"--config={config}",
          f"--workdir={workdir}", f"--config.hf_name.model={ckpt}",
          f"--config.data.manual_dir={manual_dir}", *more]


def _env(cache_dir: pathlib.Path) -> dict[str, str]:
  """One CPU device, as a user's smoke run has (not the tests' 8 fake ones, which cost
  compile time), and a compilation cache that a rerun and the judge RM reuse."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
  return dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_COMPILATION_CACHE_DIR=str(cache_dir),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _run(command, env, timeout: float = 900) -> str:
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  return done.stdout


def _run_and_kill_in(command, env, ckpt_dir: pathlib.Path, log: pathlib.Path) -> None:
  """Starts the command and SIGKILLs it once ckpt_dir holds a finished checkpoint."""
  with open(log, "w", encoding="utf-8") as out:
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    try:
      while not (ckpt_dir.is_dir() and any(n.isdigit() for n in os.listdir(ckpt_dir))):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(0.05)
      proc.send_signal(signal.SIGKILL)
    finally:
      proc.wait()
  assert proc.returncode == -signal.SIGKILL


def _check_results(workdir: pathlib.Path) -> dict:
  results = json.loads((workdir / "eval" / "results.json").read_text())
  # config.ppo.ema_decay > 0: the EMA policies are contestants too
  assert set(results["models"]) == {"vanilla", "vanilla_big", "sft", "ppo", "ppo_ptx",
                                    "ppo_ema", "ppo_ptx_ema"}
  for name, model in results["models"].items():
    for judge in ("rm", "rm_judge"):
      stats = model["win_rate_vs_sft"][judge]
      assert 0 <= stats["ci_low"] <= stats["rate"] <= stats["ci_high"] <= 1, (name, judge)
    assert model["kl_to_sft"] >= -1e-3 and np.isfinite(model["heldout_loss"]), name
  assert results["models"]["sft"]["kl_to_sft"] == 0.0
  assert set(results["rm_accuracy"]) == {"rm", "rm_judge"}
  report = (workdir / "report.md").read_text()
  assert "cannot measure: human preference" in report
  assert "stood in" in report  # no ptx / held-out text files were given
  splits = json.loads((workdir / "data" / "splits.json").read_text())
  assert splits["complete"] and splits["counts"]["eval_prompts"] > 0
  return results


def test_gpt2_on_hh_rlhf_killed_and_resumed(tmp_path):
  corpus = _hh_manual_dir(tmp_path / "hh-rlhf")
  ckpt = write_checkpoint(tmp_path / "gpt2", ModelConfig(
      arch="gpt2", vocab_size=128, d_model=32, n_layers=2, n_heads=4, max_len=128), corpus)
  workdir = tmp_path / "run"
  command = _command("experiments/gpt2_hh_rlhf.py:smoke", workdir, ckpt, tmp_path / "hh-rlhf")
  env = _env(tmp_path / "xla_cache")
  _run_and_kill_in(command, env, workdir / "rm" / "checkpoints", tmp_path / "killed.log")
  assert not (workdir / "rm" / "export").exists()

  rerun = _run(command, env)
  for stage in ("pretrain", "pretrain_big", "sft"):
    assert f"[{stage}] finished earlier, reused" in rerun
  assert "[rm] resumed from step 2" in rerun, rerun[-3000:]
  results = _check_results(workdir)
  assert results["text_sources"].keys() == {"pretrain", "pretrain_heldout"}

  # The aligned policy leaves as an HF checkpoint transformers reads, tokenizer included.
  out = export(str(workdir), "ppo_ptx", str(tmp_path / "exported"))
  model, _ = from_hf(out)
  assert model.config.hf_family == "gpt2" and model.config.d_model == 32
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert transformers.AutoConfig.from_pretrained(out).eos_token_id == tokenizer.eos_token_id
  # So does the reward model, as a one-label classifier with the bias PPO subtracted.
  rm_out = export(str(workdir), "rm", str(tmp_path / "exported_rm"))
  rm_config = transformers.AutoConfig.from_pretrained(rm_out)
  card = json.loads((workdir / "rm" / "export" / "export.json").read_text())
  assert rm_config.architectures == ["GPT2ForSequenceClassification"]
  assert rm_config.num_labels == 1 and rm_config.reward_bias == card["reward_bias"]


def test_llama_on_tldr(tmp_path):
  corpus = _tldr_manual_dir(tmp_path / "tldr") + _tldr_sft_dir(tmp_path / "tldr_sft")
  ckpt = write_checkpoint(tmp_path / "llama", ModelConfig(
      arch="llama", vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
      max_len=128, tie_embeddings=False), corpus)
  workdir = tmp_path / "run"
  _run(_command("experiments/gpt2_tldr.py:smoke", workdir, ckpt, tmp_path / "tldr",
                f"--config.data.sft_manual_dir={tmp_path / 'tldr_sft'}"),
       _env(tmp_path / "xla_cache"))
  _check_results(workdir)
  splits = json.loads((workdir / "data" / "splits.json").read_text())
  assert splits["counts"]["sft"] == 40  # every demonstration: none shares a post
  for stage in STAGES:
    card = json.loads((workdir / stage / "export" / "export.json").read_text())
    assert card["model"]["family"] == "llama" and card["model"]["n_kv_heads"] == 2, stage
