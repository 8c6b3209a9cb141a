"""The RM's comparison data: the SFT policy's samples join the synthetic responses only
when they ended with EOS (a cut sample would reach the RM as a finished one)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
import transformers

from instructjax import comparisons, sharding
from instructjax.data.testbed import splits, tokenizer
from instructjax.models import CausalLM, ModelConfig

SIZES = splits.TestbedSizes(pretrain=40, pretrain_heldout=4, sft=8, rm_train=12, rm_eval=4,
                            ppo=4, eval=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  bed = splits.build_testbed(seed=0, sizes=SIZES)
  tok = transformers.AutoTokenizer.from_pretrained(
      tokenizer.train_tokenizer(bed, tmp_path_factory.mktemp("tok"), vocab_size=300))
  policy = CausalLM(ModelConfig(vocab_size=len(tok), d_model=16, n_layers=1, n_heads=2,
                                max_len=128))
  params = policy.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  return bed, tok, policy, params


def _with_samples(world, *, max_new_tokens: int):
  bed, tok, policy, params = world
  return comparisons.with_policy_samples(
      bed.rm_train, bed.labelers, policy, params, tok, fraction=0.5, temperature=1.0,
      max_new_tokens=max_new_tokens, prompt_len=48, mesh=sharding.make_mesh(), seed=0)


def test_samples_cut_at_max_new_tokens_keep_the_synthetic_response(world):
  bed = world[0]
  # A random policy almost never emits EOS first, so every one-token sample is cut.
  for ranking, record in zip(bed.rm_train, _with_samples(world, max_new_tokens=1)):
    assert sorted(record.responses) == sorted(ranking.responses)


def test_finished_samples_replace_synthetic_responses(world):
  # With room to finish, some random samples do end with EOS and are ranked instead.
  bed = world[0]
  records = _with_samples(world, max_new_tokens=40)
  replaced = sum(len(set(r.responses) - set(k.responses))
                 for k, r in zip(bed.rm_train, records))
  assert replaced > 0
