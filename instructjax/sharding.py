"""The device mesh and the one rule table that maps logical axis names onto it.

Every parameter carries logical axis names (`nn.with_logical_partitioning` in
`instructjax.models`). `LOGICAL_AXIS_RULES` maps each name to mesh axes; a parameter
whose name matches no rule, or that carries no names at all, is an error rather than
silently replicated. State is created already sharded: abstract shapes first, then
`jax.jit(init, out_shardings=...)`, so no full copy ever lands on one device.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
from flax.core import meta
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or axes, or None = replicated). The whole table.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("positions", None),
    ("norm", None),
    ("scalar", None),
)
_RULES = dict(LOGICAL_AXIS_RULES)


class ShardingError(ValueError):
  """A mesh or parameter that cannot be sharded as configured."""


def make_mesh(*, data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over all devices; one axis may be -1 to take the rest."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ShardingError(f"mesh: only one axis may be -1, got {sizes}")
  for name, size in sizes.items():
    if size == 0 or size < -1:
      raise ShardingError(f"mesh.{name}={size} must be positive or -1")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if len(devices) % fixed:
      raise ShardingError(
          f"mesh {sizes}: the fixed axes multiply to {fixed}, which does not divide the "
          f"{len(devices)} devices")
    sizes[free[0]] = len(devices) // fixed
  if math.prod(sizes.values()) != len(devices):
    raise ShardingError(
        f"mesh {sizes} needs {math.prod(sizes.values())} devices but there are {len(devices)}")
  shape = tuple(sizes[name] for name in MESH_AXES)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def check_partitioning(abstract_params, mesh: Mesh) -> None:
  """Raises ShardingError naming the parameter if one has no or unknown axis names, or a
  dimension that its mesh axes do not divide."""
  leaves = jax.tree_util.tree_leaves_with_path(
      abstract_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  for path, leaf in leaves:
    name = _path_str(path)
    if not isinstance(leaf, nn.LogicallyPartitioned):
      raise ShardingError(f"parameter {name} carries no logical axis names")
    shape = leaf.value.shape
    for dim, axis in zip(shape, leaf.names):
      if axis not in _RULES:
        raise ShardingError(
            f"parameter {name}: logical axis {axis!r} matches no rule in "
            f"LOGICAL_AXIS_RULES (known: {sorted(_RULES)})")
      mesh_axes = _RULES[axis]
      mesh_axes = () if mesh_axes is None else (
          (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes)
      ways = math.prod(mesh.shape[a] for a in mesh_axes)
      if dim % ways:
        raise ShardingError(
            f"parameter {name} of shape {shape}: dimension {axis!r}={dim} cannot be split "
            f"{ways} ways over mesh axes {mesh_axes} (mesh {dict(mesh.shape)})")


def logical_shardings(abstract_tree, mesh: Mesh):
  """NamedShardings for a tree whose leaves may be boxed with logical names."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)


def abstract_tree(tree, shardings=None):
  """ShapeDtypeStructs of a tree of arrays (or of abstract values), laid out as
  `shardings` says, or as the leaves are when it is None: a restore or lowering target."""
  if shardings is None:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def abstract_init(init_fn: Callable[..., Any], mesh: Mesh, *args):
  """`init_fn(*args)` (boxed params, or a train state holding them) traced, not run.
  -> (its unboxed tree as ShapeDtypeStructs with their shardings, the shardings).

  Raises ShardingError naming a parameter the mesh cannot hold."""
  boxed = jax.eval_shape(init_fn, *args)
  check_partitioning(getattr(boxed, "params", boxed), mesh)
  shardings = logical_shardings(boxed, mesh)
  return abstract_tree(meta.unbox(boxed), shardings), shardings


def create_sharded(init_fn: Callable[..., Any], mesh: Mesh, *args):
  """Runs `init_fn(*args)` (which returns a tree of boxed params or a train state holding
  them) under jit with out_shardings, so every array is created in its final layout.
  Returns (unboxed tree, its shardings)."""
  _, shardings = abstract_init(init_fn, mesh, *args)
  tree = jax.jit(lambda *a: meta.unbox(init_fn(*a)), out_shardings=shardings)(*args)
  return tree, shardings


def abstract_params(model: nn.Module, mesh: Mesh, *, example_len: int = 8):
  """The model's parameters as ShapeDtypeStructs laid out on the mesh: a restore target
  for a checkpoint, computed without allocating anything."""
  def init(rng):
    return model.init(rng, jax.numpy.zeros((1, example_len), jax.numpy.int32))["params"]
  abstract, _ = abstract_init(init, mesh, jax.random.PRNGKey(0))
  return abstract


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) dimension over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch, mesh: Mesh):
  """Places a host batch (numpy leaves, global batch on one host) on the mesh.

  On several hosts each process passes its own rows; they are assembled into global
  arrays with `jax.make_array_from_process_local_data`.
  """
  def put(x):
    x = np.asarray(x)
    sharding = batch_sharding(mesh, x.ndim)
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(put, batch)


def shard_global_batch(batch, mesh: Mesh):
  """Places a batch that every process holds whole (numpy leaves, all rows) on the mesh:
  each device takes its own rows, so nothing is sent between hosts."""
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, batch_sharding(mesh, x.ndim),
                                        lambda index: x[index])
  return jax.tree.map(put, batch)


def check_batch_divides(global_batch_size: int, mesh: Mesh, *, field: str) -> None:
  ways = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch_size % ways:
    raise ShardingError(
        f"{field}={global_batch_size} is not divisible by data x fsdp = {ways} "
        f"(mesh {dict(mesh.shape)})")
