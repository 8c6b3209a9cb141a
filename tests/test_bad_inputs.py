"""A catalogue of bad inputs to the stage programs, each refused with a clear error.

Every case asserts the exception type and that the message names the problem: the file
and line, the config field, or the expected and actual values. Data problems go through
the stage programs themselves (`config.data.source="jsonl"` with a small word-level
tokenizer), which read their data before compiling anything, so they cost milliseconds.
Command-line mistakes (an override of a config field or section that does not exist, a
--workdir that cannot be written) run a program as a subprocess and check what it prints
before it stops: the line naming the flag, and for an override the fields there are.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
import tokenizers
import transformers
from flax.core import meta
from tokenizers import models, pre_tokenizers

from instructjax import reward, sft, sharding, stage_export
from instructjax.checkpoints import CheckpointError, Checkpointer
from instructjax.config import (DEFAULT_CONFIG, ConfigError, check_workdir, load_config,
                                validate)
from instructjax.data import batching, sources
from instructjax.data.records import DataError, RankingRecord, SftRecord, read_jsonl
from instructjax.models import CausalLM, ModelConfig, from_hf
from instructjax.models.hf_interop import HFCheckpointError
from instructjax.stage_loop import NonFiniteLossError
from instructjax.train_state import create_train_state, make_init_state

TEST_CONFIG = DEFAULT_CONFIG + ":test"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the cat dog sat ran on a mat log and then it was red blue big small one two three "
         "what did do ? .").split()
EOS = "<eos>"


def _save_tokenizer(directory, words, *, eos: str | None = EOS):
  """A word-level tokenizer saved in HF format: len(tokenizer) = len(words) + 2."""
  vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}
  vocab[EOS] = len(vocab)
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                            eos_token=eos)
  hf.save_pretrained(directory)
  return str(directory)


def _write(path, lines):
  with open(path, "w", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in lines))


def _sentence(rng, n):
  return " ".join(rng.choice(WORDS[:-5], n))  # no question words or punctuation


@pytest.fixture(scope="module")
def good_data(tmp_path_factory):
  """A directory of small, valid split files and the tokenizer that goes with them."""
  root = tmp_path_factory.mktemp("good_data")
  rng = np.random.default_rng(0)
  texts = [json.dumps({"text": _sentence(rng, rng.integers(5, 30))}) for _ in range(32)]
  _write(root / "pretrain.jsonl", texts)
  _write(root / "pretrain_heldout.jsonl", texts[:8])
  _write(root / "sft.jsonl", [json.dumps({"prompt": _sentence(rng, 6) + " ?",
                                          "response": _sentence(rng, 5)}) for _ in range(16)])
  rankings = [json.dumps({"prompt": "what did the cat do ?",
                          "responses": [_sentence(rng, 4) for _ in range(3)],
                          "ranking": [2, 0, 1]}) for _ in range(8)]
  _write(root / "rm_train.jsonl", rankings)
  _write(root / "rm_eval.jsonl", rankings)
  return root, _save_tokenizer(root / "tokenizer", WORDS)


def _jsonl_config(data_dir, tokenizer_dir):
  config = load_config(TEST_CONFIG)
  config.data.source = "jsonl"
  config.data.dir = str(data_dir)
  config.data.tokenizer = str(tokenizer_dir)
  config.log.tensorboard = False
  # The smallest model the words fit: compiling it is what the program tests wait for.
  config.model.update(vocab_size=32, d_model=16, n_layers=1, n_heads=2)
  return config


def _data_dir_with(tmp_path, good_data, split, lines):
  """Fills tmp_path with links to the good split files, except `split`, which holds
  `lines`."""
  root, _ = good_data
  for name in os.listdir(root):
    if name.endswith(".jsonl") and name != f"{split}.jsonl":
      os.symlink(root / name, tmp_path / name)
  _write(tmp_path / f"{split}.jsonl", lines)


def _run_stage(config, run_dir, stage):
  if stage == "rm":
    return reward.run(config, str(run_dir))
  return sft.run(config, str(run_dir), stage=stage)


# --- 1. data files given to the stage programs (file and line) ------------------------

_SFT_ROW = '{"prompt": "what did the cat do ?", "response": "it sat"}'
_RANK_ROW = '{"prompt": "p q", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}'


@pytest.mark.parametrize("stage, split, bad_line, expected", [
    # malformed JSON (a line cut short)
    ("pretrain", "pretrain", '{"text": "the cat sat"',
     r"pretrain\.jsonl:2: Expecting ',' delimiter"),
    # a JSON value that is not an object
    ("pretrain", "pretrain", '["the", "cat"]', r"pretrain\.jsonl:2: expected a JSON object, "
     r"got list"),
    # wrong field type
    ("sft", "sft", '{"prompt": 5, "response": "it sat"}',
     r"sft\.jsonl:2: field 'prompt' must be a string, got int"),
    # missing field
    ("sft", "sft", '{"prompt": "what did the cat do ?"}',
     r"sft\.jsonl:2: missing field\(s\) \['response'\] for a 'sft' record"),
    # empty text
    ("sft", "sft", '{"prompt": "  ", "response": "it sat"}',
     r"sft\.jsonl:2: field 'prompt' is empty"),
    # ranking not a permutation
    ("rm", "rm_train", '{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 0, 2]}',
     r"rm_train\.jsonl:2: field 'ranking'=\[0, 0, 2\] is not a permutation of range\(3\)"),
    # K < 2
    ("rm", "rm_train", '{"prompt": "p", "responses": ["a"], "ranking": [0]}',
     r"rm_train\.jsonl:2: field 'responses' needs K >= 2 responses, got K=1"),
    # ranking entries of the wrong type
    ("rm", "rm_eval", '{"prompt": "p", "responses": ["a", "b"], "ranking": [true, 0]}',
     r"rm_eval\.jsonl:2: field 'ranking' must hold integers"),
])
def test_bad_row_names_file_and_line(tmp_path, good_data, stage, split, bad_line, expected):
  good = {"pretrain": '{"text": "the cat sat"}', "sft": _SFT_ROW}.get(split, _RANK_ROW)
  _data_dir_with(tmp_path, good_data, split, [good, bad_line, good])
  config = _jsonl_config(tmp_path, good_data[1])
  with pytest.raises(DataError, match=expected):
    _run_stage(config, tmp_path / "run", stage)


def test_bad_utf8_names_file_and_line(tmp_path, good_data):
  _data_dir_with(tmp_path, good_data, "sft", [_SFT_ROW])
  with open(tmp_path / "sft.jsonl", "ab") as f:
    f.write(b'{"prompt": "\xff\xfe", "response": "x"}\n')
  config = _jsonl_config(tmp_path, good_data[1])
  with pytest.raises(DataError, match=r"sft\.jsonl:2: .*utf-8"):
    sft.run(config, str(tmp_path / "run"), stage="sft")


def test_empty_dataset_is_refused(tmp_path, good_data):
  _data_dir_with(tmp_path, good_data, "pretrain", ["", "   "])
  config = _jsonl_config(tmp_path, good_data[1])
  with pytest.raises(DataError, match=r"pretrain\.jsonl: empty dataset, no records"):
    sft.run(config, str(tmp_path / "run"), stage="pretrain")


def test_skip_bad_rows_counts_instead_of_failing(tmp_path, good_data):
  """skip_bad_rows=True is the documented escape hatch: rows are dropped AND counted."""
  _data_dir_with(tmp_path, good_data, "pretrain",
                 ['{"text": "the cat sat"}', "{not json", '{"text": 3}'])
  config = _jsonl_config(tmp_path, good_data[1])
  data = sources.load_data(config, str(tmp_path / "run"))
  assert len(data.read("pretrain", skip_bad_rows=True)) == 1
  assert data.bad_rows == {"pretrain": 2}


def test_truncated_gzip_names_the_file(tmp_path):
  path = tmp_path / "sft.jsonl.gz"
  with gzip.open(path, "wt", encoding="utf-8") as f:
    for _ in range(200):
      f.write(_SFT_ROW + "\n")
  blob = path.read_bytes()
  path.write_bytes(blob[:len(blob) // 2])
  with pytest.raises(DataError, match=r"sft\.jsonl\.gz:\d+: file is truncated or corrupt"):
    read_jsonl(path, "sft")


def test_jsonl_source_without_data_dir(good_data):
  config = _jsonl_config("", good_data[1])
  with pytest.raises(ValueError, match=r"config\.data\.dir='': a directory of split files"):
    sources.load_data(config, "/nonexistent-run")


def test_unknown_data_source(good_data):
  config = _jsonl_config(good_data[0], good_data[1])
  config.data.source = "parquet"
  with pytest.raises(ValueError, match=r"config\.data\.source='parquet' is not 'testbed' or "
                     "'jsonl'"):
    sources.load_data(config, "/nonexistent-run")


def test_testbed_of_another_config_is_not_rebuilt_under_trained_models(tmp_path):
  """Rebuilding would retrain the tokenizer under the models already trained on it."""
  config = load_config(TEST_CONFIG)
  sources.load_data(config, str(tmp_path))
  tokenizer_file = tmp_path / "testbed" / "tokenizer" / "tokenizer.json"
  before = tokenizer_file.read_bytes()
  config.data.testbed.rm_train = 41
  with pytest.raises(DataError, match=r"testbed holds a testbed built for another config; "
                     r"changed fields sizes\.rm_train: 40 -> 41\. Its tokenizer and splits"):
    sources.load_data(config, str(tmp_path))
  assert tokenizer_file.read_bytes() == before


# --- 2. tokenizer and lengths ---------------------------------------------------------

def test_tokenizer_larger_than_model_vocabulary(tmp_path, good_data):
  config = _jsonl_config(good_data[0], good_data[1])
  config.model.vocab_size = 16  # the tokenizer has <unk>, 25 words and <eos>
  with pytest.raises(ValueError, match=r"tokenizer has 27 tokens \(including added tokens\) "
                     r"but the model's vocab_size is 16: ids >= 16 would index past"):
    sources.load_data(config, str(tmp_path))


def test_tokenizer_without_eos(tmp_path, good_data):
  config = _jsonl_config(good_data[0], _save_tokenizer(tmp_path / "tok", WORDS, eos=None))
  with pytest.raises(ValueError, match=r"has no EOS token; set eos_token"):
    sources.load_data(config, str(tmp_path))


def test_prompt_longer_than_the_context_is_cut_and_counted(good_data):
  """Not an error: the truncation policy cuts the prompt from the left and counts it."""
  tokenizer = transformers.AutoTokenizer.from_pretrained(good_data[1])
  config = load_config(TEST_CONFIG)  # model.max_len = data.max_len = 64, max_prompt_len 40
  long_prompt = " ".join(["the cat"] * 100 + ["what did it do ?"])  # 205 tokens
  batcher = batching.SftBatcher(tokenizer, buckets=tuple(config.data.buckets),
                                max_prompt_len=config.data.max_prompt_len)
  rows = [SftRecord(long_prompt, "it sat"), SftRecord("what did the dog do ?", "it ran")]
  batch = batcher(rows, np.arange(2), slice(0, 2))
  assert batch.tokens.shape == (2, config.model.max_len)
  assert batcher.stats.as_dict() == {"prompts": 2, "prompts_truncated": 1, "responses": 2,
                                     "responses_truncated": 0, "texts": 0,
                                     "texts_truncated": 0}
  # The last 40 prompt tokens are kept (the end of the prompt), then "it sat" + EOS.
  ids = tokenizer(long_prompt, add_special_tokens=False)["input_ids"][-40:]
  expected = ids + tokenizer("it sat", add_special_tokens=False)["input_ids"] + [
      tokenizer.eos_token_id]
  assert batch.tokens[0, :43].tolist() == expected
  assert batch.loss_mask[0].tolist() == [0] * 40 + [1] * 3 + [0] * 21


def test_more_responses_than_k_max(good_data):
  tokenizer = transformers.AutoTokenizer.from_pretrained(good_data[1])
  batcher = batching.RankingBatcher(tokenizer, buckets=(64,), max_prompt_len=40, k_max=2)
  row = RankingRecord("p", ("a", "b", "c"), (0, 1, 2))
  with pytest.raises(DataError, match=r"row 7: K=3 responses > k_max=2"):
    batcher([row], np.array([7]), slice(0, 1))


# --- 3. configs (the field is named) ----------------------------------------------------

def test_unknown_model_architecture():
  with pytest.raises(ValueError, match=r"arch='gpt5' is not one of \('gpt2', 'llama'\)"):
    ModelConfig(arch="gpt5")
  config = load_config(TEST_CONFIG)
  config.model.arch = "gpt5"
  with pytest.raises(ConfigError, match=r"config\.model: invalid model config: arch='gpt5'"):
    validate(config)


def test_unknown_config_key_is_refused():
  config = load_config(TEST_CONFIG)
  with pytest.raises(AttributeError, match=r"foo.*locked"):
    config.ppo.foo = 1


@pytest.mark.parametrize("field, value, expected", [
    ("sft.batch_size", 0, r"config\.sft\.batch_size: 0 must be >= 1"),
    ("rm.steps", -3, r"config\.rm\.steps: -3 must be >= 1"),
    ("sft.accum_steps", 3, r"config\.sft\.accum_steps: batch_size=8 is not divisible by "
     r"accum_steps=3"),
    ("pretrain.warmup_steps", 100, r"config\.pretrain\.warmup_steps: 100 must be in "
     r"\[0, steps=6\]"),
    ("sft.lr", 0.0, r"config\.sft\.lr: 0\.0 must be positive"),
    ("ppo.clip_eps", 1.5, r"config\.ppo\.clip_eps: 1\.5 must be in \(0, 1\)"),
    ("data.max_len", 128, r"config\.data\.max_len: 128 exceeds model\.max_len=64"),
    ("mesh.tensor", 0, r"config\.mesh\.tensor: 0 must be >= 1 or -1"),
    ("data.pack_pretraining", 65, r"config\.data\.pack_pretraining: 65 must be 0 \(no "
     r"packing\) or in \[2, model\.max_len=64\]"),
])
def test_impossible_config_value_names_the_field(field, value, expected):
  config = load_config(TEST_CONFIG)
  section, name = field.split(".")
  config[section][name] = value
  if field == "data.max_len":
    config.data.buckets = (value,)
  with pytest.raises(ConfigError, match=expected):
    validate(config)


@pytest.mark.parametrize("config, override, section, problem", [
    (TEST_CONFIG, "--config.ppo.foo=1", "ppo",
     "--config.ppo.foo: config.ppo has no field 'foo'"),
    (TEST_CONFIG, "--config.pp.lr=1", None,
     "--config.pp.lr: config has no field 'pp' (did you mean 'ppo'?)"),
    # Without --config, the default config takes the overrides when the flag is defined.
    (None, "--config.sft.lrr=1", "sft",
     "--config.sft.lrr: config.sft has no field 'lrr' (did you mean 'lr'?)"),
], ids=["field", "section", "default_config"])
def test_unknown_override_on_the_command_line(tmp_path, config, override, section, problem):
  """The program stops before doing anything, with one line naming the flag, the
  section and the fields it does have; no traceback."""
  result = _program(tmp_path / "run", override, config=config)
  assert result.returncode == 1
  loaded = load_config(config or DEFAULT_CONFIG)
  fields = ", ".join(sorted((loaded[section] if section else loaded).keys()))
  assert [line for line in result.stderr.splitlines() if "FATAL" in line] == [
      f"FATAL Flags parsing error: {problem}; known fields: {fields}"]
  assert "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "run")


# --- 4. meshes and shardings ------------------------------------------------------------

def test_mesh_that_does_not_divide_the_devices():
  assert jax.device_count() == 8
  with pytest.raises(sharding.ShardingError, match=r"the fixed axes multiply to 3, which "
                     r"does not divide the 8 devices"):
    sharding.make_mesh(data=-1, fsdp=3)
  with pytest.raises(sharding.ShardingError, match=r"needs 4 devices but there are 8"):
    sharding.make_mesh(data=2, fsdp=2, tensor=1)


def test_batch_not_divisible_by_data_times_fsdp():
  mesh = sharding.make_mesh(data=4, fsdp=2)
  with pytest.raises(sharding.ShardingError, match=r"config\.sft\.batch_size=12 is not "
                     r"divisible by data x fsdp = 8"):
    sharding.check_batch_divides(12, mesh, field="config.sft.batch_size")


def test_model_dimension_not_divisible_by_tensor_axis():
  model = CausalLM(ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=4, max_len=8))
  mesh = sharding.make_mesh(data=1, tensor=8)

  def init(rng):
    params = model.init(rng, np.zeros((1, 8), np.int32))["params"]
    return create_train_state(apply_fn=model.apply, params=params,
                              tx=optax.sgd(0.1), rng=rng)
  with pytest.raises(sharding.ShardingError, match=r"parameter transformer/block_0/attn/"
                     r"k_proj/bias of shape \(4, 4\): dimension 'kv_heads'=4 cannot be split "
                     r"8 ways over mesh axes \('tensor',\)"):
    sharding.create_sharded(init, mesh, jax.random.PRNGKey(0))


# --- 5. previous stages, work directories, checkpoints ---------------------------------

def test_missing_previous_stage_export(tmp_path, good_data):
  config = _jsonl_config(good_data[0], good_data[1])
  with pytest.raises(CheckpointError, match=r"pretrain holds no finished stage export "
                     r"\(.*export\.json is missing\); run that stage first"):
    sft.run(config, str(tmp_path), stage="sft")


def test_wrong_stage_export(tmp_path, good_data):
  stage_export.save_export(str(tmp_path / "pretrain"), {"w": np.zeros(2, np.float32)},
                           stage_export.ExportCard(stage="rm", model={}, steps=0))
  config = _jsonl_config(good_data[0], good_data[1])
  with pytest.raises(CheckpointError, match=r"holds a 'rm' export, but one of "
                     r"\('pretrain',\) is needed"):
    sft.run(config, str(tmp_path), stage="sft")


def _program(workdir, *flags, config: str | None = TEST_CONFIG):
  """Runs `python -m instructjax.sft --stage=pretrain` (without --config if config is None)."""
  return subprocess.run(
      [sys.executable, "-m", "instructjax.sft", "--stage=pretrain",
       *([f"--config={config}"] if config else []), f"--workdir={workdir}", *flags],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def test_workdir_that_is_a_file(tmp_path):
  workdir = tmp_path / "a_file"
  workdir.write_text("not a directory")
  result = _program(workdir)
  assert result.returncode != 0
  assert result.stderr.splitlines()[-1] == (
      f"instructjax.config.ConfigError: --workdir={workdir}: the run directory cannot be "
      f"written: {workdir} is a file")


def test_workdir_under_a_file_or_read_only_dir(tmp_path, monkeypatch):
  (tmp_path / "a_file").write_text("")
  with pytest.raises(ConfigError, match=r"a_file is a file, so no directory can be made "
                     "under it"):
    check_workdir(str(tmp_path / "a_file" / "run"))
  read_only = tmp_path / "read_only"
  read_only.mkdir()
  # Root may write anywhere, so the OS's answer for this directory is simulated.
  real_access = os.access
  monkeypatch.setattr(os, "access", lambda p, mode: (
      os.fspath(p) != os.fspath(read_only) and real_access(p, mode)))
  with pytest.raises(ConfigError, match=rf"--workdir={read_only}/run: the run directory "
                     rf"cannot be written: {read_only} is not writable"):
    check_workdir(str(read_only / "run"))
  assert check_workdir(str(tmp_path / "new" / "run")) == str(tmp_path / "new" / "run")
  assert not os.path.exists(tmp_path / "new")  # the check creates nothing


def test_pickle_only_checkpoint_given_to_from_hf(tmp_path):
  fixture = os.path.join(REPO, "tests", "fixtures", "hf", "gpt2", "config.json")
  (tmp_path / "config.json").write_text(open(fixture, encoding="utf-8").read())
  (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
  with pytest.raises(HFCheckpointError, match=r"holds only pickle weights \(pytorch_model"
                     r"\.bin\).*save_pretrained\(out_dir, safe_serialization=True\)"):
    from_hf(str(tmp_path))


def test_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, good_data):
  """lr=1e30 blows the weights up at the first update with a non-zero rate (step 2, after
  warmup); every later loss is NaN/Inf, so the guard skips those updates and the run
  stops after 2 in a row, at step 4, before that step's checkpoint."""
  config = _jsonl_config(good_data[0], good_data[1])
  config.pretrain.update(steps=8, lr=1e30, checkpoint_every=2, eval_every=100,
                         max_consecutive_skips=2)
  with pytest.raises(NonFiniteLossError, match=r"\[pretrain\] step 4: loss or gradients "
                     r"were NaN/Inf for 2 updates in a row \(loss=(nan|inf), .*the last good "
                     r"checkpoint in .*pretrain/checkpoints is intact"):
    sft.run(config, str(tmp_path), stage="pretrain")
  ckpt_dir = tmp_path / "pretrain" / "checkpoints"
  assert os.listdir(ckpt_dir) == ["2"]
  model = CausalLM(ModelConfig(**config.model.to_dict()))
  init = make_init_state(model, config.pretrain, config.data.buckets[0])
  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  checkpointer = Checkpointer(str(ckpt_dir), stage="pretrain")
  state, extra, step = checkpointer.restore_latest(
      meta.unbox(abstract), sharding.logical_shardings(abstract, sharding.make_mesh()))
  checkpointer.close()
  assert step == 2 and int(state.step) == 2 and int(state.skipped_updates) == 0
  assert extra["data"]["step"] == 2
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.params)))


def test_pipeline_checks_every_batch_before_any_stage(tmp_path):
  from instructjax import pipeline  # pylint: disable=import-outside-toplevel
  config = load_config(DEFAULT_CONFIG + ":test")
  config.ppo.minibatch_size = 4  # PPO's minibatches, hours into a real run, on 8 devices
  config.ppo.rollout_batch_size = 12
  with pytest.raises(sharding.ShardingError,
                     match=r"config.ppo.rollout_batch_size=12 is not divisible by data x fsdp"):
    pipeline.run(config, str(tmp_path))
  assert os.listdir(tmp_path) == []  # no data made, no stage started
