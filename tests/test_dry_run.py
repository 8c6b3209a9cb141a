"""Every experiment config, every variant: each step lowers on abstract shapes.

Models are lowered with one block instead of their full depth: the blocks all have the
same shapes and shardings, so one checks them all, and tracing the full depth of every
variant would take minutes on two cores. The full-depth real models are checked against
the published parameter counts of their Hugging Face checkpoints instead.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from instructjax import dry_run as dry_run_lib
from instructjax.config import ConfigError, load_config, model_config
from instructjax.models import CausalLM
from instructjax.sharding import ShardingError

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "experiments")
CONFIG_FILES = sorted(glob.glob(os.path.join(EXPERIMENTS, "*.py")))


def _variants(path: str) -> tuple[str, ...]:
  spec = importlib.util.spec_from_file_location("experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert hasattr(module, "VARIANTS"), f"{path} lacks a VARIANTS tuple"
  return module.VARIANTS


# A smoke variant's architecture is its checkpoint's, known only at run time
# (tests/test_smoke_pipelines.py runs them); its config's model sizes are placeholders.
CASES = [(os.path.basename(path), variant) for path in CONFIG_FILES
         for variant in _variants(path) if "smoke" not in variant]


def _load(name: str, variant: str = ""):
  return load_config(os.path.join(EXPERIMENTS, name) + (f":{variant}" if variant else ""))


def _devices():
  # At most 4: the testbed's "test" variant has PPO minibatches of 4 rows.
  return jax.devices()[:4]


def test_every_config_file_is_covered():
  names = {name for name, _ in CASES}
  assert {"instructgpt_tiny.py", "gpt2_hh_rlhf.py", "gpt2_tldr.py",
          "llama_hh_rlhf.py"} <= names


@pytest.mark.parametrize("name,variant", CASES, ids=[f"{n}:{v}" for n, v in CASES])
def test_every_step_lowers(name, variant):
  config = _load(name, variant)
  config.model.n_layers = 1  # one block stands for all of them
  if "big_model" in config:  # the RM's, in large_rm
    config.big_model.n_layers = 1
  reports = dry_run_lib.dry_run(config, devices=_devices(), mode="lower", verbose=False)
  with_dpo = "dpo" in config
  assert list(reports) == ["sft_step", "reward_step", *(["dpo_step"] * with_dpo), "sample",
                           "score", "ppo_step"]
  assert not any(r.compiled for r in reports.values())
  if with_dpo:  # DPO trains the policy alone
    assert reports.pop("dpo_step").params == reports["sft_step"].params
  sft, rm, sample, score, ppo = reports.values()
  # The PPO state trains a policy (the SFT model) and a value model (the RM with a head
  # bias); the sampler reads the policy; the scorer reads both and their frozen copies
  # (reference, reward: the RM has no bias).
  assert ppo.params == sft.params + rm.params + 1
  assert sample.params == sft.params
  assert score.params == 2 * ppo.params - 1
  if "gpu" in variant and all(size == 1 for size in config.mesh.values()):
    # One device holds it all: float32 params and Adam's two moments.
    for report in (sft, rm):
      assert 12 * report.params <= report.state_bytes < 12 * report.params + 1024


# Published parameter counts of the Hugging Face checkpoints the configs import.
@pytest.mark.parametrize("name,variant,section,hf_name,count", [
    ("gpt2_hh_rlhf.py", "", "model", "gpt2", 124_439_808),
    ("gpt2_hh_rlhf.py", "medium", "model", "gpt2-medium", 354_823_168),
    ("gpt2_tldr.py", "", "big_model", "gpt2-xl", 1_557_611_200),
    ("llama_hh_rlhf.py", "", "model",
     "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", 1_100_048_384),
    ("llama_hh_rlhf.py", "", "big_model", "meta-llama/Llama-2-7b-hf", 6_738_415_616),
    ("llama_hh_rlhf.py", "llama3.2-1b", "model", "meta-llama/Llama-3.2-1B", 1_235_814_400),
    ("llama_hh_rlhf.py", "llama3.2-1b", "big_model", "meta-llama/Llama-3.1-8B",
     8_030_261_248),
    ("llama_hh_rlhf.py", "qwen2.5-0.5b", "model", "Qwen/Qwen2.5-0.5B", 494_032_768),
    ("llama_hh_rlhf.py", "qwen2.5-0.5b", "big_model", "Qwen/Qwen2.5-7B", 7_615_616_512),
    ("llama_hh_rlhf.py", "qwen3-0.6b", "model", "Qwen/Qwen3-0.6B-Base", 596_049_920),
    ("llama_hh_rlhf.py", "qwen3-0.6b", "big_model", "Qwen/Qwen3-8B-Base", 8_190_735_360),
    ("llama_hh_rlhf.py", "mistral-7b", "model", "mistralai/Mistral-7B-v0.1", 7_241_732_096),
])
def test_models_match_their_checkpoints(name, variant, section, hf_name, count):
  config = _load(name, variant)
  assert config.hf_name[section] == hf_name
  model = CausalLM(model_config(config[section], field=section))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == count


def test_small_step_compiles_with_a_memory_estimate():
  config = _load("instructgpt_tiny.py", "test")
  # The scorer: the quickest for XLA:CPU to compile.
  reports = dry_run_lib.dry_run(config, devices=jax.devices()[:1], steps=("score",),
                                verbose=False)
  assert list(reports) == ["score"]
  report = reports["score"]
  assert report.compiled and report.compile_seconds > 0
  # The arguments hold at least the four frozen models' parameters.
  assert report.memory["arguments"] >= report.state_bytes > 0
  assert report.memory["peak"] >= report.memory["arguments"]
  assert "compile" in report.line() and "memory/device: peak" in report.line()


def test_step_that_does_not_fit_names_the_knobs_in_order():
  config = _load("instructgpt_tiny.py", "test")  # remat off, float32, data=-1 x fsdp=1
  assert not config.model.remat and config.model.dtype == "float32"
  devices = jax.devices()[:2]  # data 2 x fsdp 1: fsdp could take both
  with pytest.raises(ConfigError) as error:
    dry_run_lib.dry_run(config, devices=devices, steps=("sft_step",), mode="compile",
                        device_memory_gib=0.001, verbose=False)
  message = str(error.value)
  assert re.search(r"1 step\(s\) do not fit in 1\.0MiB per device \(device_memory_gib=0\.001\):"
                   r"\n  sft_step needs .*MiB per device: XLA plans a peak of", message)
  knobs = ["config.model.remat=True", "config.mesh.data=1, fsdp=-1",
           "config.sft.accum_steps above 1 (a divisor of batch_size=8)",
           "config.model.dtype='bfloat16'"]
  where = [message.index(knob) for knob in knobs]
  assert where == sorted(where)

  report = dry_run_lib.dry_run(config, devices=devices, steps=("sft_step",),
                               mode="compile", device_memory_gib=1.0,
                               verbose=False)["sft_step"]
  need = report.planned_bytes
  assert 2**20 < need < 2**30 and need == report.memory["peak"]
  check = functools.partial(dry_run_lib.check_memory, {"sft_step": report}, config,
                            dry_run_lib.build_mesh(config.mesh, devices), source="test",
                            device_count=2)
  check(limit=need)
  with pytest.raises(ConfigError, match="sft_step needs"):
    check(limit=need - 1)


def test_lowered_steps_are_checked_on_the_state_the_ppo_loop_holds():
  config = _load("instructgpt_tiny.py", "test")
  assert config.ppo.ema_decay == 0
  steps = ("sample", "score", "ppo_step")
  reports = dry_run_lib.dry_run(config, devices=jax.devices()[:1], mode="lower",
                                steps=steps, verbose=False)
  sample, score, ppo = reports.values()
  policy, reward = sample.params, ppo.params - sample.params - 1  # the value head's bias
  # While the update runs, the loop also holds the frozen reference and reward model,
  # float32 and (one device) whole; each function's state and what is held beside it
  # add up to the same resident set.
  resident = ppo.state_bytes + 4 * (policy + reward)
  assert ppo.held_bytes == resident - ppo.state_bytes
  assert sample.state_bytes + sample.held_bytes == resident
  assert score.state_bytes + score.held_bytes == resident
  with pytest.raises(ConfigError) as error:
    dry_run_lib.dry_run(config, devices=jax.devices()[:1], mode="lower", steps=steps,
                        device_memory_gib=0.99 * resident / 2**30, verbose=False)
  # Not compiled, each is checked on the resident set alone: none fits in less.
  sample_line, score_line, ppo_line = str(error.value).splitlines()[1:]
  assert re.fullmatch(r"  sample needs at least .* \(not compiled: activations unknown\), "
                      r"and the rest of the PPO loop holds .*\. Try, in this order: a smaller "
                      r"config\.ppo\.rollout_batch_size \(now 16\); "
                      r"config\.model\.dtype='bfloat16' .*", sample_line)
  assert score_line.startswith("  score needs at least")
  assert re.fullmatch(r"  ppo_step needs .*\. Try, in this order: config\.model\.remat=True "
                      r".*; a smaller config\.ppo\.minibatch_size \(now 8\) and "
                      r"config\.ppo\.ptx_batch_size \(now 8\); "
                      r"config\.model\.dtype='bfloat16' .*", ppo_line)


def test_memory_knobs_are_those_that_apply():
  one_gpu = _load("gpt2_hh_rlhf.py", "gpu")  # remat off, bf16 already, one device
  mesh = dry_run_lib.build_mesh(one_gpu.mesh, jax.devices()[:1])
  assert dry_run_lib.memory_knobs("sft_step", one_gpu, mesh, 1) == [
      "config.model.remat=True (recompute each block in the backward pass)",
      "config.sft.accum_steps above 2 (a divisor of batch_size=64), or a smaller "
      "config.sft.batch_size"]
  # Inference has no backward pass to recompute.
  assert dry_run_lib.memory_knobs("sample", one_gpu, mesh, 1) == [
      "a smaller config.ppo.rollout_batch_size (now 128)"]
  tpu = _load("gpt2_hh_rlhf.py", "tpu")  # remat on; data 2 x fsdp 8 on 16 chips
  mesh = dry_run_lib.build_mesh(tpu.mesh, jax.devices())
  assert dry_run_lib.memory_knobs("ppo_step", tpu, mesh, 16) == [
      "config.mesh.data=1, fsdp=-1 (weights and optimizer state sharded 16 ways, not 8)",
      "a smaller config.ppo.minibatch_size (now 64) and config.ppo.ptx_batch_size (now 512)"]
  tpu.rm.accum_steps = tpu.rm.batch_size  # microbatches of one prompt already
  assert dry_run_lib.memory_knobs("reward_step", tpu, mesh, 16)[-1] == (
      "a smaller config.rm.batch_size (now 64)")


def test_device_memory_flag_on_the_command_line():
  result = subprocess.run(
      [sys.executable, "-m", "instructjax.dry_run",
       f"--config={os.path.join(EXPERIMENTS, 'instructgpt_tiny.py')}:test", "--mode=lower",
       "--steps=sft_step", "--device_memory_gib=0.0001"],
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  assert "device memory: 0.1MiB, checked on each step's state alone" in result.stdout
  assert "ConfigError: 1 step(s) do not fit in 0.1MiB per device" in result.stderr
  assert "config.sft.accum_steps above 1" in result.stderr


def test_critic_free_ppo_step_trains_the_policy_alone():
  config = _load("instructgpt_tiny.py")
  config.ppo.update(advantage="rloo", group_size=4)
  reports = dry_run_lib.dry_run(config, devices=_devices(), mode="lower", verbose=False,
                                steps=("sft_step", "reward_step", "score", "ppo_step"))
  sft, rm, score, ppo = reports.values()
  assert ppo.params == sft.params
  assert score.params == 2 * sft.params + rm.params  # policy, reference, reward model


def test_mesh_larger_than_the_host_is_abstract():
  config = _load("gpt2_hh_rlhf.py", "tpu")
  mesh = dry_run_lib.build_mesh(config.mesh, jax.devices())
  assert isinstance(mesh, jax.sharding.AbstractMesh)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 8, "tensor": 1}
  with pytest.raises(ConfigError, match=r"config.mesh .* needs 16 devices"):
    dry_run_lib.dry_run(config, mode="compile", verbose=False)


def test_batch_that_the_mesh_does_not_divide_names_the_field():
  config = _load("gpt2_hh_rlhf.py", "tpu")
  config.sft.batch_size = 24
  with pytest.raises(ShardingError, match=r"config.sft.batch_size=24 .* data x fsdp = 16"):
    dry_run_lib.dry_run(config, mode="lower", verbose=False)


def test_mesh_that_does_not_fit_the_devices_names_the_field():
  config = _load("instructgpt_tiny.py")
  config.mesh.tensor = 3
  with pytest.raises(ShardingError, match=r"config.mesh: .*multiply to 3.* 8 devices"):
    dry_run_lib.dry_run(config, devices=jax.devices()[:8], verbose=False)


def test_tensor_axis_that_does_not_divide_the_vocabulary_names_the_parameter():
  config = _load("gpt2_tldr.py")
  config.model.n_layers = 1
  config.mesh.update(fsdp=-1, tensor=2)
  with pytest.raises(ShardingError, match=r"transformer/wte/embedding .*'vocab'=50257"):
    dry_run_lib.dry_run(config, devices=jax.devices()[:4], mode="lower", verbose=False)


def test_rollout_longer_than_gpt2_positions_names_the_field():
  config = _load("gpt2_tldr.py")
  config.ppo.max_new_tokens = 600
  with pytest.raises(ConfigError, match=r"config.ppo.max_new_tokens=600.*1112 tokens"):
    dry_run_lib.dry_run(config, devices=_devices(), mode="lower", verbose=False)


def test_no_steps_asked_checks_the_config_only():
  assert dry_run_lib.dry_run(_load("instructgpt_tiny.py"), steps=(), verbose=False) == {}


def test_unknown_mode_step_and_variant():
  with pytest.raises(ValueError, match="mode='fast'"):
    dry_run_lib.dry_run(_load("instructgpt_tiny.py"), mode="fast")
  with pytest.raises(ValueError, match=r"steps \['eval'\]"):
    dry_run_lib.dry_run(_load("instructgpt_tiny.py"), steps=("eval",))
  with pytest.raises(ValueError, match="unknown variant 'cpu'"):
    _load("gpt2_hh_rlhf.py", "cpu")
