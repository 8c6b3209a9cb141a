"""Compile seconds come from JAX's events, and the persistent cache that the command line
sets up under the workdir spares a rerun the compiling: two fresh processes compile the
same training step, the second loading it from the cache (JAX's cache-hit events say so;
no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from instructjax import compile_time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A fresh process: the cache under its workdir, one SFT step of a small model compiled.
_PROGRAM = """
import json, sys
import jax, jax.numpy as jnp
from instructjax import compile_time
from instructjax.models import CausalLM, ModelConfig
cache = compile_time.use_persistent_cache(sys.argv[1])
events = {"hits": 0, "misses": 0}
def count(event, **unused):
  for kind in events:
    if event == "/jax/compilation_cache/cache_" + kind:
      events[kind] += 1
jax.monitoring.register_event_listener(count)
model = CausalLM(ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_len=32))
tokens = jnp.zeros((4, 32), jnp.int32)
params = model.init(jax.random.key(0), tokens)["params"]
loss = lambda p: jnp.mean(model.apply({"params": p}, tokens) ** 2)
before = compile_time.seconds()
jax.block_until_ready(jax.jit(jax.grad(loss))(params))
print(json.dumps({"cache": cache, "compile_s": compile_time.seconds() - before, **events}))
"""


def _fresh_process(workdir) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  done = subprocess.run([sys.executable, "-c", _PROGRAM, str(workdir)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=True)
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_the_step_from_the_cache_under_the_workdir(tmp_path):
  first, second = _fresh_process(tmp_path), _fresh_process(tmp_path)
  assert first["cache"] == second["cache"] == str(tmp_path / "xla_cache")
  assert os.listdir(tmp_path / "xla_cache")
  # JAX's own cache events: the first process compiles and stores, the second loads. (It
  # may still miss on programs under the cache's 0.1 s threshold, which are not stored.)
  assert first["misses"] >= 1 and first["hits"] == 0, first
  assert second["hits"] >= 1, second
  assert first["compile_s"] > 0 and second["compile_s"] > 0


def test_seconds_count_compiling_not_calls():
  step = jax.jit(lambda x: jnp.tanh(x) @ x.T + 1.5)
  before = compile_time.seconds()
  jax.block_until_ready(step(jnp.ones((16, 16))))
  compiled = compile_time.seconds()
  jax.block_until_ready(step(jnp.ones((16, 16))))  # the same shapes: no compile
  assert compiled > before
  assert compile_time.seconds() == compiled


def test_the_nan_guard_compiles_in_size_linear_in_the_state():
  # XLA once copied the per-leaf finiteness checks, as a chain of one `and` per gradient,
  # into every state leaf's kernel: PPO's step at 4 layers held ~96k `and`s and took 20 s
  # to compile. With 60 leaves that chain would show up 180 times (params, mu, nu).
  import optax  # pylint: disable=import-outside-toplevel
  from instructjax.steps.gradients import guarded_update  # pylint: disable=import-outside-toplevel
  from instructjax.train_state import create_train_state  # pylint: disable=import-outside-toplevel
  params = {f"w{i}": jnp.full((4,), float(i)) for i in range(60)}
  state = create_train_state(apply_fn=None, params=params, tx=optax.adam(1e-3),
                             rng=jax.random.key(0))
  hlo = jax.jit(guarded_update).lower(state, params, jnp.float32(1.0)).compile().as_text()
  assert hlo.count(" and(") < 60
