"""The reward model's trunk (config.rm.trunk): the RM starts from that SFT stage's export
and has its architecture, and so has PPO's value model. The `:test` config trains its RM
from sft_big (the large LM after SFT); the default config from sft, the policy's size.
The stage tests read the session's `test_run` (conftest.py), never write it."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from instructjax import ppo, reward, sharding, stage_table
from instructjax.config import DEFAULT_CONFIG, ConfigError, load_config, model_config, validate


def _leaves(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_the_rm_begins_at_its_trunks_export_not_the_policys(test_run):
  config, run_dir = test_run
  assert stage_table.rm_trunk(config).name == "sft_big"
  program = reward._program(config, str(run_dir), "rm")  # pylint: disable=protected-access
  state, _ = sharding.create_sharded(program.init_state, program.mesh, jax.random.PRNGKey(0))
  begun = jax.device_get(program.begin(state).params)
  cfg = reward.model_config_of(config, str(run_dir))
  trunk = reward.load_sft_params(str(run_dir / "sft_big"), cfg, program.mesh, stage="sft_big")
  policy = reward.load_sft_params(str(run_dir / "sft"), cfg, program.mesh)
  for got, want in zip(_leaves(begun["transformer"]), _leaves(trunk["transformer"])):
    np.testing.assert_array_equal(got, want)
  # The two SFT models differ, so the check above could tell them apart.
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(begun["transformer"]),
                                                      _leaves(policy["transformer"])))
  assert all(not leaf.any() for leaf in _leaves(begun["scalar_head"]))


def test_the_rm_and_value_model_have_the_trunks_architecture():
  large = load_config(DEFAULT_CONFIG + ":large_rm")
  policy_cfg = model_config(large.model, field="model")
  big = model_config(large.big_model, field="big_model")
  assert big.d_model > policy_cfg.d_model
  assert reward.model_config_of(large, "unused: no checkpoint is imported") == big
  policy, value_model, reward_model = ppo.make_models(policy_cfg, rm_cfg=big, critic=True)
  assert policy.config == policy_cfg
  assert value_model.config == big and reward_model.config == big
  default = load_config(DEFAULT_CONFIG)
  assert reward.model_config_of(default, "unused") == model_config(default.model, field="m")
  assert stage_table.parents(default, "rm") == ("sft",)  # no sft_big section, no stage
  assert stage_table.parents(large, "rm") == ("sft", "sft_big")


def test_an_rm_trunk_that_never_trains_is_refused_naming_the_field():
  config = load_config(DEFAULT_CONFIG)
  config.unlock()
  config.rm.trunk = "sft_big"  # but the config has no sft_big section
  with pytest.raises(ConfigError, match=r"config\.rm\.trunk: 'sft_big' needs a "
                                        r"config\.sft_big section"):
    validate(config)
  config.rm.trunk = "pretrain"
  with pytest.raises(ConfigError, match=r"config\.rm\.trunk: 'pretrain' is not 'sft' or "
                                        r"'sft_big'"):
    validate(config)
