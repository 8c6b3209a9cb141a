"""Batched autoregressive sampling from a `CausalLM` over a KV cache.

`generate` runs two jit-compiled functions: a prefill that writes the whole (left-padded)
prompt into a fresh cache in one forward pass, and a decode loop (`lax.while_loop`) that
samples one token per sequence per step, feeds it back through the cache, and stops as
soon as every sequence has emitted EOS. The cache is donated to the decode loop so XLA
updates it in place. Both functions are cached by jit: the model and the sampling config
are static (hashable), so repeated calls with the same shapes do not recompile.

Prompts must be LEFT-padded (all sequences then end at the same column and the new tokens
are written at a shared cache index). Tokenizers usually right-pad; convert with
`left_pad(tokens, mask)` first.

Sharded inputs work unchanged: plain jit propagates the shardings of params and prompts
(e.g. a batch-sharded prompt gives a batch-sharded cache and output).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from instructjax.models.transformer import CausalLM, default_positions


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
  """How to pick each new token. Static under jit: changing a field recompiles."""

  max_new_tokens: int  # N: tokens generated per prompt (at most)
  temperature: float = 1.0  # divides the logits; > 0 (use `greedy` for argmax)
  top_k: int = 0  # keep only the k most likely tokens; 0 = off
  top_p: float = 1.0  # keep the smallest set of tokens with mass >= top_p; 1.0 = off
  greedy: bool = False  # take the argmax of the (filtered) logits instead of sampling
  eos_id: int | None = None  # a sequence stops after emitting it; None = never stops
  pad_id: int = 0  # written after EOS

  def __post_init__(self):
    problems = []
    if not isinstance(self.max_new_tokens, int) or self.max_new_tokens <= 0:
      problems.append(f"max_new_tokens={self.max_new_tokens!r} must be a positive int")
    if not (math.isfinite(self.temperature) and self.temperature > 0):
      problems.append(
          f"temperature={self.temperature} must be finite and > 0 (set greedy=True for argmax)")
    if not isinstance(self.top_k, int) or self.top_k < 0:
      problems.append(f"top_k={self.top_k!r} must be an int >= 0 (0 = off)")
    if not 0.0 < self.top_p <= 1.0:
      problems.append(f"top_p={self.top_p} must be in (0, 1] (1.0 = off)")
    if self.eos_id is not None and self.eos_id < 0:
      problems.append(f"eos_id={self.eos_id} must be >= 0 or None")
    if self.pad_id < 0:
      problems.append(f"pad_id={self.pad_id} must be >= 0")
    if problems:
      raise ValueError("invalid sampling config: " + "; ".join(problems))


@flax.struct.dataclass
class SampleOutput:
  """What `generate` returns. N = config.max_new_tokens, P = prompt length."""
  tokens: jax.Array  # [B, P + N] int32: the prompt as given, then response_tokens
  token_mask: jax.Array  # [B, P + N] int32: prompt_mask, then response_mask
  response_tokens: jax.Array  # [B, N] int32: pad_id after EOS
  response_mask: jax.Array  # [B, N] int32: 1 up to and including EOS, 0 after
  logprobs: jax.Array  # [B, N] float32: log-prob under the sampling distribution; 0 masked
  finished: jax.Array  # [B] bool: the sequence emitted EOS
  num_steps: jax.Array  # [] int32: decode steps run (< N if all finished early)
  # The temperature of the full softmax the tokens were drawn from; None when top_k,
  # top_p or greedy changed that distribution. RL recomputes log-probs from it.
  softmax_temperature: float | None = flax.struct.field(pytree_node=False, default=None)


def left_pad(tokens, mask):
  """Moves each row's padding to the left, keeping the order of its real tokens.

  tokens, mask: [B, P] (mask 1 = real token), e.g. right-padded tokenizer output.
  Returns (tokens, mask) [B, P], left-padded, ready for `generate`.
  """
  order = jnp.argsort(mask > 0, axis=-1, stable=True)  # [B, P]: padding first
  return (jnp.take_along_axis(tokens, order, axis=-1),
          jnp.take_along_axis(mask, order, axis=-1))


def filter_logits(logits, *, top_k: int = 0, top_p: float = 1.0):
  """Sets logits outside the top-k / top-p set to -inf.

  logits: [B, V]. top_k keeps the k largest (ties broken towards the lower id; k larger
  than V keeps all). top_p then keeps, of what is left and renormalised, the smallest
  set of most likely tokens whose mass reaches top_p; the most likely token always stays.
  """
  if top_k == 0 and top_p >= 1.0:
    return logits
  vocab = logits.shape[-1]
  k = vocab if top_k == 0 else min(top_k, vocab)
  top_values, top_ids = jax.lax.top_k(logits, k)  # [B, k], descending
  keep_sorted = jnp.ones(top_values.shape, bool)  # [B, k]
  if top_p < 1.0:
    probs = jax.nn.softmax(top_values, axis=-1)  # [B, k]
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # exactly 0 for the top token
    keep_sorted = mass_before < top_p
  rows = jnp.arange(logits.shape[0])[:, None]  # [B, 1]
  keep = jnp.zeros(logits.shape, bool).at[rows, top_ids].set(keep_sorted)  # [B, V]
  return jnp.where(keep, logits, -jnp.inf)


def sample_token(logits, rng, *, config: SamplingConfig):
  """logits: [B, V] -> (token [B] int32, its log-prob [B] under the sampling distribution).

  The sampling distribution is softmax(filter(logits / temperature)); greedy takes its
  argmax (the first, as np.argmax) and reports that token's log-prob under the same
  distribution. Sampling draws one uniform per row (`inverse_cdf_sample`), not a Gumbel
  per vocabulary entry: on a CPU the V random numbers per row cost more than a small
  model's whole decode step.
  """
  logits = filter_logits(logits / config.temperature, top_k=config.top_k, top_p=config.top_p)
  top = jnp.max(logits, axis=-1, keepdims=True)  # [B, 1]
  weights = jnp.exp(logits - top)  # [B, V]: unnormalised probabilities, 1 at the top
  if config.greedy:
    token = first_max_index(logits, top)
  else:
    token = inverse_cdf_sample(weights, rng)
  chosen = jnp.take_along_axis(logits, token[:, None], axis=-1)[:, 0]  # [B]
  logprob = chosen - top[:, 0] - jnp.log(jnp.sum(weights, axis=-1))  # [B]
  return token, logprob


def first_max_index(values, top):
  """values [B, V], top [B, 1] = their row max -> [B] int32: the first index holding it.

  np.argmax's answer from two plain reductions: XLA:CPU's argmax (a reduce over value and
  index pairs) is about 7x slower at V = 50k.
  """
  ids = jnp.arange(values.shape[-1], dtype=jnp.int32)  # [V]
  return jnp.min(jnp.where(values == top, ids, values.shape[-1] - 1), axis=-1)


def inverse_cdf_sample(weights, rng, *, block: int = 256):
  """weights [B, V] >= 0, not all 0 -> [B] int32 ids drawn with probability weights / sum.

  One uniform u per row picks the first id whose cumulative weight reaches u * total. The
  search runs in two levels (blocks of `block` ids, then the ids of the chosen block), so
  no cumulative sum is longer than V / block or block. The draw resolves mass to the
  uniform's 2^-23, as a float32 Gumbel draw does.
  """
  batch, vocab = weights.shape
  blocks = -(-vocab // block)
  padded = jnp.pad(weights, ((0, 0), (0, blocks * block - vocab)))
  padded = padded.reshape(batch, blocks, block)  # [B, nb, block]
  through = jnp.cumsum(jnp.sum(padded, axis=-1), axis=-1)  # [B, nb]: mass up to each block's end
  # u in (0, 1]: the target is > 0, so an id of weight 0 is never the first to reach it.
  target = (1.0 - jax.random.uniform(rng, (batch,))) * through[:, -1]  # [B]
  chosen = jnp.sum(through < target[:, None], axis=-1)  # [B]: first block reaching it
  before = jnp.take_along_axis(jnp.pad(through, ((0, 0), (1, 0))), chosen[:, None],
                               axis=-1)[:, 0]  # [B]: mass before that block, < target
  inside = jnp.cumsum(jnp.take_along_axis(padded, chosen[:, None, None], axis=1)[:, 0],
                      axis=-1)  # [B, block]
  # Summed in another order, the block's own total can fall a rounding short of the
  # remaining target: clipping onto it lands on the block's last id of nonzero weight.
  rest = jnp.minimum(target - before, inside[:, -1])  # [B], > 0
  return (chosen * block + jnp.sum(inside < rest[:, None], axis=-1)).astype(jnp.int32)


def init_cache(model: CausalLM, batch_size: int, length: int):
  """A zero KV cache of `length` slots, built from shapes only (no parameters computed)."""
  shapes = jax.eval_shape(
      functools.partial(model.init, decode=True), jax.random.key(0),
      jnp.zeros((batch_size, length), jnp.int32))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@functools.partial(jax.jit, static_argnames=("model", "cache_len"))
def _prefill(model, params, prompt_tokens, prompt_mask, *, cache_len):
  """Writes the prompt into a new cache: -> (next-token logits [B, V], cache)."""
  batch = prompt_tokens.shape[0]
  logits, variables = model.apply(
      {"params": params, "cache": init_cache(model, batch, cache_len)}, prompt_tokens,
      positions=default_positions(prompt_mask), token_mask=prompt_mask, decode=True,
      last_only=True, mutable=["cache"])  # logits: [B, 1, V]
  # Left padding puts every prompt's last real token in the last column.
  return logits[:, 0], variables["cache"]


@flax.struct.dataclass
class _DecodeState:
  step: jax.Array  # [] int32
  cache: dict
  logits: jax.Array  # [B, V]: next-token logits
  positions: jax.Array  # [B]: position of the token sampled this step
  tokens: jax.Array  # [B, N]
  mask: jax.Array  # [B, N]
  logprobs: jax.Array  # [B, N]
  done: jax.Array  # [B] bool: EOS emitted


@functools.partial(jax.jit, static_argnames=("model", "config"), donate_argnames=("cache",))
def _decode(model, params, cache, logits, prompt_tokens, prompt_mask, rng, *, config):
  """Samples up to N tokens one at a time over the cache: -> (SampleOutput, cache)."""
  batch, n = logits.shape[0], config.max_new_tokens

  def sample_and_feed(s: _DecodeState) -> _DecodeState:
    token, logprob = sample_token(s.logits, jax.random.fold_in(rng, s.step), config=config)
    live = ~s.done  # [B]: rows still generating; this step's token is real for them
    token = jnp.where(live, token, config.pad_id)  # [B]
    logprob = jnp.where(live, logprob, 0.0)  # [B]
    done = s.done
    if config.eos_id is not None:
      done = done | (token == config.eos_id)
    live_i32 = live.astype(jnp.int32)
    next_logits, variables = model.apply(
        {"params": params, "cache": s.cache}, token[:, None], positions=s.positions[:, None],
        token_mask=live_i32[:, None], decode=True, mutable=["cache"])  # [B, 1, V]
    return _DecodeState(
        step=s.step + 1, cache=variables["cache"], logits=next_logits[:, 0],
        positions=s.positions + live_i32,
        tokens=s.tokens.at[:, s.step].set(token), mask=s.mask.at[:, s.step].set(live_i32),
        logprobs=s.logprobs.at[:, s.step].set(logprob), done=done)

  def keep_going(s: _DecodeState):
    return (s.step < n) & ~jnp.all(s.done)

  start = _DecodeState(
      step=jnp.array(0, jnp.int32), cache=cache, logits=logits,
      positions=jnp.sum(prompt_mask, axis=-1),
      tokens=jnp.full((batch, n), config.pad_id, jnp.int32),
      mask=jnp.zeros((batch, n), jnp.int32), logprobs=jnp.zeros((batch, n), jnp.float32),
      done=jnp.zeros((batch,), bool))
  end = jax.lax.while_loop(keep_going, sample_and_feed, start)
  output = SampleOutput(
      tokens=jnp.concatenate([prompt_tokens, end.tokens], axis=-1),
      token_mask=jnp.concatenate([prompt_mask, end.mask], axis=-1),
      response_tokens=end.tokens, response_mask=end.mask, logprobs=end.logprobs,
      finished=end.done, num_steps=end.step,
      softmax_temperature=(config.temperature if not config.greedy and config.top_k == 0
                           and config.top_p == 1.0 else None))
  return output, end.cache


def generate(model: CausalLM, params, prompt_tokens, prompt_mask, rng, *,
             config: SamplingConfig) -> SampleOutput:
  """Samples up to `config.max_new_tokens` tokens after each LEFT-padded prompt.

  Args:
    model: the policy; its config's max_len bounds P + N for GPT-2 (learned positions).
    params: its parameters, plain or boxed (`nn.LogicallyPartitioned`), possibly sharded.
    prompt_tokens: [B, P] int, left-padded (use `left_pad` on right-padded prompts).
    prompt_mask: [B, P], 1 = real token; every row needs at least one.
    rng: a PRNG key; step t samples with `fold_in(rng, t)`.
    config: the sampling settings.

  Returns:
    A SampleOutput. Call this from Python, not under an outer jit: it checks the mask on
    the host, then runs the two jitted functions (prefill, then the donated-cache loop).
  """
  _check_inputs(model, prompt_tokens, prompt_mask, config)
  prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
  prompt_mask = jnp.asarray(prompt_mask > 0, jnp.int32)
  params = meta.unbox(params)
  logits, cache = _prefill(model, params, prompt_tokens, prompt_mask,
                           cache_len=prompt_tokens.shape[1] + config.max_new_tokens)
  output, _ = _decode(model, params, cache, logits, prompt_tokens, prompt_mask, rng,
                      config=config)
  return output


def _check_inputs(model: CausalLM, prompt_tokens, prompt_mask, config: SamplingConfig):
  shape = np.shape(prompt_tokens)
  if len(shape) != 2 or shape[1] == 0:
    raise ValueError(f"prompt_tokens must have shape [B, P] with P >= 1, got {shape}")
  if np.shape(prompt_mask) != shape:
    raise ValueError(
        f"prompt_mask shape {np.shape(prompt_mask)} != prompt_tokens shape {shape}")
  if not jnp.issubdtype(jnp.result_type(prompt_tokens), jnp.integer):
    raise ValueError(f"prompt_tokens must be integers, got {jnp.result_type(prompt_tokens)}")
  model_cfg = model.config
  total = shape[1] + config.max_new_tokens
  if model_cfg.arch == "gpt2" and total > model_cfg.max_len:
    raise ValueError(
        f"prompt length {shape[1]} + max_new_tokens {config.max_new_tokens} = {total} exceeds "
        f"the model's max_len={model_cfg.max_len} (GPT-2 learned positions)")
  for name in ("eos_id", "pad_id"):
    value = getattr(config, name)
    if value is not None and value >= model_cfg.vocab_size:
      raise ValueError(f"{name}={value} is outside the vocabulary (size {model_cfg.vocab_size})")
  if isinstance(prompt_mask, jax.core.Tracer):
    return  # inside a caller's jit (e.g. the dry run's): values are not known here
  # Checked on the host: a [B, P] mask is small, and eager device ops would each compile.
  # Of a global array spanning several processes, each checks the rows it holds.
  if isinstance(prompt_mask, jax.Array) and not prompt_mask.is_fully_addressable:
    for shard in prompt_mask.addressable_shards:
      _check_mask(np.asarray(shard.data), first_row=shard.index[0].start or 0)
  else:
    _check_mask(np.asarray(prompt_mask))


def _check_mask(mask: np.ndarray, *, first_row: int = 0) -> None:
  """ValueError naming the rows (first_row + local index) of mask [B, P] that have no
  real token or are not left-padded."""
  real = mask > 0  # [B, P]
  empty = first_row + np.flatnonzero(~real.any(axis=-1))
  if empty.size:
    raise ValueError(f"prompt rows {empty.tolist()} have no real token (prompt_mask all 0)")
  # Left padding: once a row has a real token, every later column is real.
  not_left = first_row + np.flatnonzero((real[:, :-1] & ~real[:, 1:]).any(axis=-1))
  if not_left.size:
    raise ValueError(
        f"prompt rows {not_left.tolist()} are not left-padded (padding after a real token); "
        "convert with instructjax.sampling.left_pad")
