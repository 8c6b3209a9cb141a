"""Checkpoints and exports under damage: a broken newest checkpoint falls back to the
previous one, checkpoints reshard between 8 devices and 1, a checkpoint or export of
another stage is refused, and a failed write never replaces a good export."""

from __future__ import annotations

import os
import shutil

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy
from flax.core import meta

from instructjax import reward, sharding, stage_export
from instructjax.checkpoints import CheckpointError, Checkpointer
from instructjax.data.batches import TokenBatch
from instructjax.models import CausalLM, ModelConfig, from_hf, to_hf
from instructjax.stage_loop import StageProgram, batch_advance, cadence, jit_step, train
from instructjax.steps.sft_step import sft_step
from instructjax.train_state import make_init_state

CFG = ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, max_len=8)
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hf")
TRAIN = ml_collections.ConfigDict(dict(
    steps=4, batch_size=8, accum_steps=1, lr=1e-2, warmup_steps=1, weight_decay=0.0,
    grad_clip_norm=1.0, eval_every=100, checkpoint_every=2, keep_checkpoints=2,
    max_consecutive_skips=3))
# One model and optimizer for every run: they are static parts of the state's pytree,
# so new ones would make each run compile its step again.
INIT_STATE = make_init_state(CausalLM(CFG), TRAIN, 8)


def _card(stage: str, run: int = 0) -> stage_export.ExportCard:
  """A card told apart by `run` (its step count)."""
  return stage_export.ExportCard(stage=stage, model={}, steps=run)


class _Batches:
  """Batch s is made from seed s alone, so a resumed iterator repeats the stream."""

  def __init__(self):
    self.step = 0

  def __iter__(self):
    return self

  def __next__(self) -> TokenBatch:
    tokens = np.random.default_rng(self.step).integers(0, CFG.vocab_size, (8, 8))  # [B, T]
    self.step += 1
    ones = np.ones((8, 8), np.int32)  # [B, T]
    return TokenBatch(tokens=tokens.astype(np.int32), token_mask=ones, loss_mask=ones)

  def get_state(self) -> dict:
    return {"step": self.step}

  def set_state(self, state: dict) -> None:
    self.step = state["step"]

  def close(self) -> None:
    pass  # nothing runs ahead


def _run(workdir) -> dict:
  """Trains the tiny stage to step 4 (checkpoints at 2 and 4); -> host params."""
  mesh, batches = sharding.make_mesh(), _Batches()
  program = StageProgram(
      name="pretrain", workdir=str(workdir), cadence=cadence(TRAIN), mesh=mesh,
      init_state=INIT_STATE, seed=0, iterators={"data": batches},
      build_advance=lambda shardings: batch_advance(jit_step(sft_step, shardings), batches,
                                                    mesh),
      exports=lambda state, final_eval: [],
      log=ml_collections.ConfigDict(dict(tensorboard=False, wandb_project="")))
  state, _ = train(program)
  return jax.device_get(state.params)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("finished")
  return workdir, _run(workdir)


def _delete_metadata(state_dir):
  os.remove(os.path.join(state_dir, "_METADATA"))


def _truncate_arrays(state_dir):
  data_dir = os.path.join(state_dir, "d")  # the OCDBT data files the arrays are read from
  assert os.listdir(data_dir)
  for name in os.listdir(data_dir):
    with open(os.path.join(data_dir, name), "r+b") as f:
      f.truncate(10)


@pytest.mark.parametrize("damage", [_delete_metadata, _truncate_arrays])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(finished_run, tmp_path, capsys,
                                                              damage):
  source, expected_params = finished_run
  shutil.copytree(source / "checkpoints", tmp_path / "checkpoints")
  ckpt_dir = tmp_path / "checkpoints"
  damage(ckpt_dir / "4" / "state")
  capsys.readouterr()

  params = _run(tmp_path)
  out = capsys.readouterr().out
  assert (f"warning: checkpoint step 4 in {ckpt_dir} cannot be restored" in out
          and "falling back to step 2" in out), out
  assert f"moved damaged checkpoint {ckpt_dir}/4 to {ckpt_dir}/4.damaged" in out
  assert "[pretrain] resumed from step 2" in out
  # Steps 3 and 4 were trained again on the same batches: the same parameters.
  jax.tree.map(np.testing.assert_array_equal, params, expected_params)
  assert sorted(os.listdir(ckpt_dir)) == ["2", "4", "4.damaged"]

  checkpointer = Checkpointer(str(ckpt_dir), stage="pretrain")  # step 4 was saved again
  state, _, step = checkpointer.restore_latest(*_template(sharding.make_mesh()))
  checkpointer.close()
  assert step == 4 and "warning" not in capsys.readouterr().out
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), expected_params)


def _template(mesh):
  abstract = jax.eval_shape(INIT_STATE, jax.random.PRNGKey(0))
  return meta.unbox(abstract), sharding.logical_shardings(abstract, mesh)


def _arrays(state):
  """The state's arrays (its apply_fn and tx are code, not data)."""
  return dict(params=state.params, opt_state=state.opt_state, step=state.step, rng=state.rng,
              skipped_updates=state.skipped_updates)


def test_no_restorable_checkpoint_is_an_error_and_nothing_is_moved(finished_run, tmp_path):
  shutil.copytree(finished_run[0] / "checkpoints", tmp_path / "checkpoints")
  for step in ("2", "4"):
    _delete_metadata(tmp_path / "checkpoints" / step / "state")
  checkpointer = Checkpointer(str(tmp_path / "checkpoints"), stage="pretrain")
  with pytest.raises(CheckpointError, match=r"no checkpoint in .*checkpoints could be "
                     r"restored \(tried steps \[4, 2\]\)"):
    checkpointer.restore_latest(*_template(sharding.make_mesh()))
  checkpointer.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


_MESHES = {
    "1 device": lambda: sharding.make_mesh(devices=jax.devices()[:1]),
    "data=8": lambda: sharding.make_mesh(data=8),
    "fsdp=8": lambda: sharding.make_mesh(data=1, fsdp=8),
}


@pytest.mark.parametrize("saved_on, restored_on", [
    ("data=8", "1 device"), ("1 device", "data=8"), ("fsdp=8", "1 device"),
    ("1 device", "fsdp=8")])
def test_checkpoint_reshards_between_device_counts(tmp_path, saved_on, restored_on):
  save_mesh, restore_mesh = _MESHES[saved_on](), _MESHES[restored_on]()
  state, _ = sharding.create_sharded(INIT_STATE, save_mesh, jax.random.PRNGKey(0))
  # Non-zero optimizer moments, laid out as the state's own arrays are.
  rng = np.random.default_rng(0)
  state = state.replace(opt_state=jax.tree.map(
      lambda x: jax.device_put(rng.normal(size=x.shape).astype(x.dtype), x.sharding)
      if np.issubdtype(x.dtype, np.floating) else x, state.opt_state))
  expected = jax.device_get(_arrays(state))
  saver = Checkpointer(str(tmp_path), stage="sft")
  saver.save(7, state, extra={"data": {"step": 7}})
  saver.close()

  template, shardings = _template(restore_mesh)
  restorer = Checkpointer(str(tmp_path), stage="sft")
  restored, extra, step = restorer.restore_latest(template, shardings)
  restorer.close()
  assert step == 7 and extra == {"stage": "sft", "data": {"step": 7}}
  for leaf in jax.tree.leaves(restored):
    assert leaf.sharding.mesh.devices.size == restore_mesh.devices.size
  if restored_on == "fsdp=8":  # really split, not replicated
    embedding = restored.params["transformer"]["wte"]["embedding"]  # [V, D], D over fsdp
    assert embedding.sharding.shard_shape(embedding.shape) == (CFG.vocab_size, 2)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(_arrays(restored)), expected)


def test_checkpoint_of_another_stage_is_refused(finished_run):
  checkpointer = Checkpointer(str(finished_run[0] / "checkpoints"), stage="rm")
  with pytest.raises(CheckpointError, match=r"checkpoints/4 is a 'pretrain' checkpoint, "
                     r"expected 'rm'"):
    checkpointer.restore_latest(*_template(sharding.make_mesh()))
  checkpointer.close()


def test_export_of_another_stage_is_refused(tmp_path):
  rm_dir = str(tmp_path / "rm")
  stage_export.save_export(rm_dir, {"w": np.zeros(3, np.float32)}, _card("rm"))
  with pytest.raises(CheckpointError, match=r"rm holds a 'rm' export, but one of \('sft',\) "
                     r"is needed here"):
    reward.load_sft_params(rm_dir, CFG, sharding.make_mesh())
  with pytest.raises(CheckpointError, match=r"holds a 'rm' export, but one of "
                     r"\('pretrain', 'sft'\) is needed here"):
    stage_export.load_export(rm_dir, {"w": jax.ShapeDtypeStruct((3,), np.float32)},
                             expected_stages=("pretrain", "sft"))


def _load_w(workdir):
  abstract = {"w": jax.ShapeDtypeStruct((3,), np.float32)}
  params, card = stage_export.load_export(workdir, abstract, expected_stages=("sft",))
  return np.asarray(params["w"]), card


def _fail(*args, **kwargs):
  raise OSError("disk full (simulated)")


@pytest.mark.parametrize("broken", ["params", "card"])
def test_failed_export_keeps_the_previous_one(tmp_path, monkeypatch, broken):
  workdir = str(tmp_path)
  stage_export.save_export(workdir, {"w": np.full(3, 1.0, np.float32)}, _card("sft", 1))
  with monkeypatch.context() as patch:
    if broken == "params":
      patch.setattr(ocp.StandardCheckpointer, "save", _fail)
    else:
      patch.setattr(stage_export, "write_json", _fail)
    with pytest.raises(OSError, match="disk full"):
      stage_export.save_export(workdir, {"w": np.full(3, 2.0, np.float32)},
                               _card("sft", 2))
  w, card = _load_w(workdir)
  np.testing.assert_array_equal(w, [1.0, 1.0, 1.0])
  assert card == _card("sft", 1)

  stage_export.save_export(workdir, {"w": np.full(3, 3.0, np.float32)}, _card("sft", 3))
  w, card = _load_w(workdir)
  np.testing.assert_array_equal(w, [3.0, 3.0, 3.0])
  assert card == _card("sft", 3)
  assert sorted(os.listdir(tmp_path)) == ["export"]  # no staging or retired copies left


def test_failed_to_hf_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  model, params = from_hf(os.path.join(FIXTURES, "gpt2"))
  out = tmp_path / "hf"
  to_hf(model, params, out)
  before = {name: (out / name).read_bytes() for name in os.listdir(out)}

  def half_written(tensors, path, metadata=None):
    with open(path, "wb") as f:
      f.write(b"\0" * 100)
    raise OSError("disk full (simulated)")
  monkeypatch.setattr(safetensors.numpy, "save_file", half_written)
  with pytest.raises(OSError, match="disk full"):
    to_hf(model, jax.tree.map(lambda x: 2 * x, params), out)
  assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
  assert os.listdir(tmp_path) == ["hf"]
