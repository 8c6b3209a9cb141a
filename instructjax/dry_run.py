"""Lowers or compiles every step of a config on abstract shapes: no weights, no data.

  python -m instructjax.dry_run --config=experiments/gpt2_hh_rlhf.py:gpu
  python -m instructjax.dry_run --config=experiments/llama_hh_rlhf.py:tpu --platform=tpu
  python -m instructjax.dry_run --config=experiments/gpt2_tldr.py --steps=ppo_step
  python -m instructjax.dry_run --config=experiments/gpt2_tldr.py:gpu --device_memory_gib=80

Builds the train states with `jax.eval_shape` (nothing is allocated) and the batches as
`jax.ShapeDtypeStruct`s laid out as the stage programs lay them out, then lowers (and,
where it is affordable, compiles) the functions the programs run, made by the programs'
own builders: the SFT step, the reward-model step, the DPO step (when the config has a
dpo section), the PPO sampler and rollout scorer, and the PPO step (PPO-ptx's, with its
pretraining batch, when config.ppo.ptx_coef > 0; without a value model when
config.ppo.advantage is critic-free).
The sampler is traced as one program: a run dispatches its two jits (prefill, then the
decode loop) one after the other, so its memory line is an upper bound. Batches take the
largest shapes a run can see (the longest bucket, the configured batch sizes), so shape,
sharding and config errors show up before a run starts rather than an hour into it.
Prints one line per step: lowering and compile time, the parameters it trains, the bytes
per device of the state it carries, and the per-device memory XLA plans for it (compiled
steps only), plus, for the PPO functions, what the rest of the PPO loop keeps on each
device meanwhile (the other models, Adam's moments, the EMA).

Memory: the steps must fit in the memory of one device: `--device_memory_gib` when
given (to plan for an accelerator from a laptop), else the allocator's `bytes_limit` of
the devices present (GPU, TPU; a CPU has none, so nothing is checked). A step that does
not fit is a ConfigError naming the knobs to turn, in the order to try them: remat, the
fsdp axis, the step's batch size, bf16 compute. A compiled step is checked on XLA's plan
(on a CPU, XLA:CPU's: an estimate of an accelerator's); a step only lowered on its state
alone, a lower bound.

Modes: "lower" traces and lowers to StableHLO only (under a minute even for a 1B model on
a CPU); "compile" also runs XLA (gives the memory plan; slow for real-size models on a
CPU); "auto" compiles when the mesh's devices exist and either they are accelerators or
the policy has at most 50M parameters. A mesh that needs more devices than are present
(a `tpu` variant on a laptop) is built as a `jax.sharding.AbstractMesh` and only lowered,
for `--platform` (default: the platform of the devices present).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags, logging
from jax.sharding import AbstractMesh, Mesh

from instructjax import cli, dpo, ppo, reward, sft, sharding, stage_table
from instructjax.config import ConfigError, model_config, validate
from instructjax.data.batches import RankingBatch, TokenBatch
from instructjax.models import CausalLM, ScalarModel
from instructjax.train_state import make_init_state

STEPS = ("sft_step", "reward_step", "dpo_step", "sample", "score", "ppo_step")
MODES = ("auto", "lower", "compile")
# "auto" on a CPU compiles policies up to this size; XLA:CPU takes minutes beyond it.
CPU_COMPILE_MAX_PARAMS = 50_000_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepReport:
  """What the dry run learned about one jitted step."""
  name: str
  compiled: bool  # False: lowered only
  lower_seconds: float  # tracing + lowering to StableHLO
  compile_seconds: float | None  # XLA compilation; None when not compiled
  params: int  # parameters the step trains (the rollout: the four frozen models')
  state_bytes: int  # bytes per device of the state it takes (params, optimizer, EMA)
  # Bytes per device its stage keeps beside that state while it runs (for the PPO
  # functions: the rest of the PPO state and the frozen models); 0 for the others.
  held_bytes: int
  memory: dict[str, int] | None  # compiled.memory_analysis() per device; None if not compiled

  @property
  def planned_bytes(self) -> int:
    """Bytes per device it needs: XLA's planned peak, or (not compiled) its state alone,
    a lower bound; plus what its stage holds beside it."""
    own = self.memory["peak"] if self.memory is not None else self.state_bytes
    return own + self.held_bytes

  def line(self) -> str:
    timing = f"lower {self.lower_seconds:6.1f}s"
    timing += (f"  compile {self.compile_seconds:6.1f}s" if self.compiled
               else "  (not compiled)")
    memory = ""
    if self.memory is not None:
      memory = (f"  memory/device: peak~{_size(self.memory['peak'])} "
                f"(args {_size(self.memory['arguments'])}, temp {_size(self.memory['temp'])})")
    if self.held_bytes:
      memory += f"  + {_size(self.held_bytes)} held by the rest of the PPO loop"
    return (f"{self.name:<12} {timing}  params {self.params / 1e6:9.2f}M  "
            f"state/device {_size(self.state_bytes)}{memory}")


def _size(num_bytes: int) -> str:
  if num_bytes >= 2**30:
    return f"{num_bytes / 2**30:.2f}GiB"
  return f"{num_bytes / 2**20:.1f}MiB"


def build_mesh(mesh_config: ml_collections.ConfigDict, devices) -> Mesh | AbstractMesh:
  """The config's mesh over `devices`; an AbstractMesh when it needs more than exist.

  A mesh with a -1 axis takes all devices, as the stage programs do. A fixed mesh uses
  the first devices it needs (the programs would insist on exactly that many).
  """
  sizes = {axis: mesh_config[axis] for axis in sharding.MESH_AXES}
  needed = math.prod(sizes.values())
  if -1 not in sizes.values() and needed > len(devices):
    return AbstractMesh(tuple(sizes[a] for a in sharding.MESH_AXES), sharding.MESH_AXES)
  try:
    return sharding.make_mesh(
        **sizes, devices=devices if -1 in sizes.values() else devices[:needed])
  except sharding.ShardingError as error:
    raise sharding.ShardingError(f"config.mesh: {error}") from error


def check_batches(config: ml_collections.ConfigDict, mesh) -> None:
  """Every global batch of the stages divides data x fsdp (over all hosts' devices)."""
  fields = ["sft.batch_size", "rm.batch_size", "dpo.batch_size"]
  fields += [f"{rl}.{name}" for rl in ("ppo", "rloo", "grpo")
             for name in ("rollout_batch_size", "minibatch_size", "ptx_batch_size")]
  for field in fields:
    section, name = field.split(".")
    if section in config:
      sharding.check_batch_divides(config[section][name], mesh, field=f"config.{field}")


def check_fits(config: ml_collections.ConfigDict, mesh) -> None:
  """The checks the stage programs make when they start, all at once: every global batch
  divides data x fsdp, and a rollout fits GPT-2's learned positions."""
  check_batches(config, mesh)
  rollout_len = config.data.max_prompt_len + config.ppo.max_new_tokens
  if config.model.arch == "gpt2" and rollout_len > config.model.max_len:
    raise ConfigError(
        f"config.ppo.max_new_tokens={config.ppo.max_new_tokens}: with data.max_prompt_len="
        f"{config.data.max_prompt_len} a rollout is {rollout_len} tokens, more than "
        f"model.max_len={config.model.max_len} learned positions")


def _batch(shape: tuple[int, ...], dtype, mesh) -> jax.ShapeDtypeStruct:
  """A batch-major array laid out as `sharding.shard_batch` lays it out (a scalar, as a
  jit's output leaves it: replicated)."""
  layout = sharding.batch_sharding(mesh, len(shape)) if shape else sharding.replicated(mesh)
  return jax.ShapeDtypeStruct(shape, dtype, sharding=layout)


def _token_batch(batch_size: int, length: int, mesh) -> TokenBatch:
  field = _batch((batch_size, length), jnp.int32, mesh)
  return TokenBatch(tokens=field, token_mask=field, loss_mask=field)


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _bytes_per_device(tree) -> int:
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class _Step:
  """A jitted function, the abstract arguments it is called with, and its state."""
  fn: Any  # jax.jit(...) output
  args: tuple
  kwargs: dict
  params: Any  # the parameters it trains (or, for the rollout, reads)
  state: Any  # all it carries from step to step: params, optimizer state, EMA
  held_bytes: int = 0  # bytes per device its stage keeps beside `state` (StepReport)


def _abstract_state(init_fn, mesh):
  return sharding.abstract_init(init_fn, mesh, jax.random.PRNGKey(0))


def _sft_step(config, mesh) -> _Step:
  train = config.sft
  model = CausalLM(model_config(config.model, field="config.model"))
  buckets = tuple(config.data.buckets)
  state, shardings = _abstract_state(make_init_state(model, train, buckets[0]), mesh)
  return _Step(sft.build_step(train, shardings),
               (state, _token_batch(train.batch_size, buckets[-1], mesh)), {},
               state.params, state)


def _rm_config(config):
  """The reward model's architecture: its trunk's section (config.rm.trunk)."""
  section = stage_table.rm_trunk(config).model_section
  return model_config(config[section], field=f"config.{section}")


def _ranking_size(config) -> int:
  """K, the responses per ranked prompt: the testbed's maximum, or the dataset's."""
  if config.data.source == "testbed":
    return config.data.testbed.max_responses
  if "max_responses" not in config.data:
    raise ConfigError("config.data.max_responses: a dry run of a config that reads "
                      f"data.source={config.data.source!r} needs K, the responses per "
                      "ranked prompt (2 for pairwise comparisons)")
  return config.data.max_responses


def _ranking_batch(config, batch_size: int, mesh) -> RankingBatch:
  b, k, t = batch_size, _ranking_size(config), config.data.buckets[-1]
  return RankingBatch(tokens=_batch((b, k, t), jnp.int32, mesh),
                      token_mask=_batch((b, k, t), jnp.int32, mesh),
                      loss_mask=_batch((b, k, t), jnp.int32, mesh),
                      response_mask=_batch((b, k), jnp.int32, mesh),
                      labeler=_batch((b,), jnp.int32, mesh))


def _ranking_step(config, mesh, model, train, build_step, *, with_reference: bool) -> _Step:
  """A step on K-wise rankings: the RM's, or DPO's, which also takes its frozen reference
  (SFT), laid out as the policy."""
  state, shardings = _abstract_state(
      make_init_state(model, train, config.data.buckets[0]), mesh)
  batch = _ranking_batch(config, train.batch_size, mesh)
  args = (state, batch, state.params) if with_reference else (state, batch)
  return _Step(build_step(train, shardings), args, {}, state.params, state)


def _laid_out(shapes, mesh):
  """A jit's output shapes as the next function receives them: batch-major, sharded."""
  return jax.tree.map(lambda s: _batch(s.shape, s.dtype, mesh), shapes)


class _PPOSteps:
  """The PPO iteration's three functions as `instructjax.ppo` builds them, abstract.
  Each takes the previous one's output shapes, as in a run."""

  def __init__(self, config, mesh):
    self.config, self.mesh = config, mesh
    cfg = model_config(config.model, field="config.model")
    self.policy, self.value_model, self.reward_model = ppo.make_models(
        cfg, rm_cfg=_rm_config(config), critic=ppo.has_critic(config.ppo),
        likelihood_feature=config.rm.likelihood_feature)
    self.state, self.shardings = _abstract_state(
        ppo.make_init_state(config.ppo, self.policy, self.value_model), mesh)
    n, prompt_len = config.ppo.rollout_batch_size, config.data.max_prompt_len
    self.prompt_mask = _batch((n, prompt_len), jnp.int32, mesh)
    self.prompt_tokens, self.example_index = self.prompt_mask, _batch((n,), jnp.int32, mesh)
    # The frozen reference has the policy's layout, and the RM the value model's less
    # the head bias (without a critic: the RM's own abstract layout).
    params = self.state.params
    if "value" in params:
      head = params["value"]["scalar_head"]
      reward = {**params["value"], "scalar_head": {"kernel": head["kernel"]}}
    else:
      reward = sharding.abstract_params(self.reward_model, mesh)
    self.frozen = {**params, "ref": params["policy"], "reward": reward}
    # What the PPO loop keeps on each device throughout: its state and the frozen models.
    self.resident_bytes = _bytes_per_device((self.state, self.frozen["ref"], reward))

  def _step(self, fn, args, params, state) -> _Step:
    return _Step(fn, args, {}, params, state,
                 self.resident_bytes - _bytes_per_device(state))

  def sample(self, shapes=None) -> _Step:
    del shapes  # the first of the three: its inputs are the prompts
    # Token ids come from the tokenizer, which a dry run does not load; their values
    # change nothing that is compiled.
    sampler = ppo.build_sampler(self.config.ppo, self.policy,
                                eos_id=self.policy.config.vocab_size - 1, pad_id=0)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding.replicated(self.mesh))
    params = self.state.params["policy"]
    return self._step(jax.jit(sampler), (params, self.prompt_tokens, self.prompt_mask, key),
                      params, params)

  def score(self, sample_shapes) -> _Step:
    scorer = ppo.build_scorer(self.config.ppo, self.policy, self.value_model,
                              self.reward_model, reward_bias=0.0)
    args = (self.frozen, _laid_out(sample_shapes, self.mesh), self.prompt_mask,
            self.example_index, self.state.kl_coef)
    return self._step(jax.jit(scorer), args, self.frozen, self.frozen)

  def update(self, rollout_shapes) -> _Step:
    ppo_cfg = self.config.ppo
    minibatch = jax.tree.map(
        lambda s: _batch((ppo_cfg.minibatch_size, *s.shape[1:]), s.dtype, self.mesh),
        rollout_shapes)
    # PPO-ptx when the config has a ptx coefficient: its step is plain PPO's plus a
    # pretraining forward/backward.
    ptx = (_token_batch(ppo_cfg.ptx_batch_size, self.config.data.buckets[-1], self.mesh)
           if ppo_cfg.ptx_coef > 0 else None)
    fn = ppo.build_update(ppo_cfg, self.policy, self.value_model,
                          prompt_len=self.config.data.max_prompt_len,
                          ptx_coef=ppo_cfg.ptx_coef, state_shardings=self.shardings)
    return self._step(fn, (self.state, minibatch, ptx), self.state.params, self.state)


def _memory(compiled) -> dict[str, int] | None:
  stats = compiled.memory_analysis()
  if stats is None:  # some backends do not report it
    return None
  memory = {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
            "aliased": stats.alias_size_in_bytes, "temp": stats.temp_size_in_bytes,
            "code": stats.generated_code_size_in_bytes}
  memory["peak"] = memory["arguments"] + memory["outputs"] + memory["temp"] - memory["aliased"]
  return memory


def _run_step(name: str, step: _Step, *, compile_it: bool, platform: str | None,
              verbose: bool):
  """-> (StepReport, the traced function's output shapes)."""
  t0 = time.perf_counter()
  traced = step.fn.trace(*step.args, **step.kwargs)
  lowered = (traced.lower(lowering_platforms=(platform,)) if platform is not None
             else traced.lower())
  lower_seconds = time.perf_counter() - t0
  compile_seconds, memory = None, None
  if compile_it:
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_seconds = time.perf_counter() - t0
    memory = _memory(compiled)
  report = StepReport(name=name, compiled=compile_it, lower_seconds=lower_seconds,
                      compile_seconds=compile_seconds, params=_count(step.params),
                      state_bytes=_bytes_per_device(step.state),
                      held_bytes=step.held_bytes, memory=memory)
  if verbose:
    print(report.line(), flush=True)
  return report, traced.out_info


def device_memory(mesh, *, gib: float | None) -> tuple[int | None, str]:
  """-> (bytes one device may use, where that figure comes from); None when unknown.

  `gib` when given; else the allocator's limit of the mesh's devices (GPU, TPU; on a GPU
  75% of its memory unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise). A CPU has
  no limit, and an abstract mesh no devices to ask.
  """
  if gib is not None:
    if gib <= 0:
      raise ValueError(f"device_memory_gib={gib} must be positive")
    return int(gib * 2**30), f"device_memory_gib={gib:g}"
  if isinstance(mesh, AbstractMesh):
    return None, "unknown for an abstract mesh"
  device = mesh.devices.flat[0]
  stats = device.memory_stats()
  if stats is None or "bytes_limit" not in stats:
    return None, f"{device.platform} reports no limit"
  return stats["bytes_limit"], f"bytes_limit of {device}"


# The config section whose batch a training step's activations scale with.
_TRAIN_SECTIONS = {"sft_step": "sft", "reward_step": "rm", "dpo_step": "dpo"}


def _batch_knob(name: str, config: ml_collections.ConfigDict) -> str:
  if name in _TRAIN_SECTIONS:
    field = f"config.{_TRAIN_SECTIONS[name]}"
    train = config[_TRAIN_SECTIONS[name]]
    if train.accum_steps < train.batch_size:  # microbatches keep the batch the same
      return (f"{field}.accum_steps above {train.accum_steps} (a divisor of batch_size="
              f"{train.batch_size}), or a smaller {field}.batch_size")
    return f"a smaller {field}.batch_size (now {train.batch_size})"
  ppo = config.ppo
  if name == "ppo_step":
    ptx = (f" and config.ppo.ptx_batch_size (now {ppo.ptx_batch_size})"
           if ppo.ptx_coef > 0 else "")
    return f"a smaller config.ppo.minibatch_size (now {ppo.minibatch_size}){ptx}"
  return f"a smaller config.ppo.rollout_batch_size (now {ppo.rollout_batch_size})"


def memory_knobs(name: str, config: ml_collections.ConfigDict, mesh,
                 device_count: int) -> list[str]:
  """What would shrink step `name`'s memory per device, in the order to try them:
  remat, the fsdp axis, the step's batch, bf16 compute; only those that apply."""
  knobs = []
  if name not in ("sample", "score") and not config.model.remat:  # it has a backward pass
    knobs.append("config.model.remat=True (recompute each block in the backward pass)")
  sizes = dict(mesh.shape)
  widest = device_count // sizes["tensor"]
  if widest > sizes["fsdp"]:
    knobs.append(f"config.mesh.data=1, fsdp=-1 (weights and optimizer state sharded "
                 f"{widest} ways, not {sizes['fsdp']})")
  knobs.append(_batch_knob(name, config))
  if config.model.dtype == "float32":
    knobs.append(f"config.model.dtype='bfloat16' (bf16 compute; weights stay "
                 f"{config.model.param_dtype})")
  return knobs


def check_memory(reports: dict[str, StepReport], config: ml_collections.ConfigDict, mesh,
                 *, limit: int, source: str, device_count: int) -> None:
  """ConfigError naming, for each step that needs more than `limit` bytes per device,
  the knobs that would make it fit."""
  lines = []
  for report in reports.values():
    if report.planned_bytes <= limit:
      continue
    if report.compiled:
      need = (f"needs {_size(report.planned_bytes)} per device: XLA plans a peak of "
              f"{_size(report.memory['peak'])} (temporaries {_size(report.memory['temp'])})")
    else:  # lowered only: a lower bound
      need = (f"needs at least {_size(report.planned_bytes)} per device: its state "
              f"{_size(report.state_bytes)} (not compiled: activations unknown)")
    if report.held_bytes:
      need += f", and the rest of the PPO loop holds {_size(report.held_bytes)}"
    knobs = memory_knobs(report.name, config, mesh, device_count)
    lines.append(f"  {report.name} {need}. Try, in this order: " + "; ".join(knobs))
  if lines:
    raise ConfigError(f"{len(lines)} step(s) do not fit in {_size(limit)} per device "
                      f"({source}):\n" + "\n".join(lines))


def dry_run(config: ml_collections.ConfigDict, *, devices=None, mode: str = "auto",
            steps: Sequence[str] = STEPS, platform: str | None = None,
            device_memory_gib: float | None = None,
            verbose: bool = True) -> dict[str, StepReport]:
  """Validates `config`, then lowers (or compiles) each of `steps` on abstract shapes.

  Args:
    config: an experiment config (`instructjax.config.load_config`).
    devices: the devices to build the mesh over; default `jax.devices()`.
    mode: "lower", "compile", or "auto" (see the module docstring).
    steps: which of STEPS to check.
    platform: what to lower for when the mesh is abstract (e.g. "tpu"); default the
      platform of `devices`.
    device_memory_gib: the memory of one device, in GiB (2**30 bytes), that every step
      must fit in; default the devices' own limit (`device_memory`), if they have one.
    verbose: print a header and one line per step as they finish.

  Returns:
    {step name: StepReport} for `steps`, in the order of STEPS.

  Raises:
    ConfigError / ShardingError (both ValueErrors) naming the config field or parameter
    that cannot work: e.g. a batch that data x fsdp does not divide, a model dimension
    that the tensor axis does not divide, a mesh that does not fit the devices, a step
    that does not fit in a device's memory (`check_memory`).
  """
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is not one of {MODES}")
  unknown = [name for name in steps if name not in STEPS]
  if unknown:
    raise ValueError(f"steps {unknown} are not among {STEPS}")
  validate(config)
  devices = list(jax.devices() if devices is None else devices)
  mesh = build_mesh(config.mesh, devices)
  abstract = isinstance(mesh, AbstractMesh)
  if abstract and mode == "compile":
    raise ConfigError(
        f"config.mesh {dict(mesh.shape)} needs {mesh.size} devices but {len(devices)} are "
        "present; compiling needs them all (use mode='lower')")
  device_platform = devices[0].platform
  policy_params = model_config(config.model, field="config.model").num_params()
  compile_it = mode == "compile" or (mode == "auto" and not abstract and (
      device_platform != "cpu" or policy_params <= CPU_COMPILE_MAX_PARAMS))
  lower_for = (platform or device_platform) if abstract else None
  limit, limit_source = device_memory(mesh, gib=device_memory_gib)
  if verbose:
    _print_header(mesh, devices, compile_it=compile_it, lower_for=lower_for, limit=limit,
                  limit_source=limit_source)
  check_fits(config, mesh)
  reports = _run_steps(config, mesh, steps, run=functools.partial(
      _run_step, compile_it=compile_it, platform=lower_for, verbose=verbose))
  if limit is not None:
    check_memory(reports, config, mesh, limit=limit, source=limit_source,
                 device_count=mesh.size if abstract else len(devices))
  return reports


def _print_header(mesh, devices, *, compile_it: bool, lower_for: str | None,
                  limit: int | None, limit_source: str) -> None:
  where = (f"AbstractMesh (needs {mesh.size} devices, {len(devices)} present), lowered "
           f"for {lower_for}" if isinstance(mesh, AbstractMesh) else
           f"{mesh.size} of {len(devices)} {devices[0].platform} devices")
  print(f"mesh {dict(mesh.shape)}: {where}; "
        f"{'compiling' if compile_it else 'lowering only'}", flush=True)
  fit = ("not checked" if limit is None else
         f"{_size(limit)}, checked on XLA's plan" if compile_it else
         f"{_size(limit)}, checked on each step's state alone (not compiled)")
  print(f"device memory: {fit} ({limit_source})", flush=True)


def _run_steps(config: ml_collections.ConfigDict, mesh, steps: Sequence[str], *,
               run) -> dict[str, StepReport]:
  """Lowers (or compiles) each of `steps` with `run`: -> {name: StepReport}."""
  reports = {}
  if "sft_step" in steps:
    reports["sft_step"], _ = run("sft_step", _sft_step(config, mesh))
  if "reward_step" in steps:
    reports["reward_step"], _ = run("reward_step", _ranking_step(
        config, mesh, ScalarModel(_rm_config(config),
                                  likelihood_feature=config.rm.likelihood_feature),
        config.rm, reward.build_step, with_reference=False))
  if "dpo_step" in steps and "dpo" in config:
    reports["dpo_step"], _ = run("dpo_step", _ranking_step(
        config, mesh, CausalLM(model_config(config.model, field="config.model")),
        config.dpo, dpo.build_step, with_reference=True))
  last = max((STEPS.index(name) for name in steps), default=-1)
  if last >= STEPS.index("sample"):
    ppo_steps = _PPOSteps(config, mesh)
    shapes = None  # each function's output shapes are the next one's input
    for name, make in (("sample", ppo_steps.sample), ("score", ppo_steps.score),
                       ("ppo_step", ppo_steps.update)):
      if STEPS.index(name) > last:
        break
      step = make(shapes)
      if name in steps:
        reports[name], shapes = run(name, step)
      else:  # not asked for, but a later one needs its output shapes
        shapes = step.fn.trace(*step.args, **step.kwargs).out_info
  return reports


def main() -> None:
  """The command line; flags are defined here, so importing this module defines none."""
  config_flag = cli.define_config_flag()
  mode = flags.DEFINE_enum("mode", "auto", list(MODES), "lower only, compile, or choose")
  which = flags.DEFINE_multi_enum("steps", list(STEPS), list(STEPS), "the steps to check")
  platform = flags.DEFINE_string(
      "platform", None, "platform to lower for when the mesh needs more devices than exist")
  memory_gib = flags.DEFINE_float(
      "device_memory_gib", None, "GiB of memory per device the steps must fit in "
      "(default: the devices' own limit; a CPU has none)")

  def program(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    dry_run(config_flag.value, mode=mode.value, steps=which.value, platform=platform.value,
            device_memory_gib=memory_gib.value)
  # absl.app defines flags of its own (--pdb, profiling) when imported: only here.
  from absl import app  # pylint: disable=import-outside-toplevel
  app.run(program)


if __name__ == "__main__":
  main()
