"""Choose a hyperparameter on validation data (instructjax.evaluation.validation_sweep).

  python experiments/validity/validation_sweep.py --workdir=runs/demo --stage=ppo \
      --field=ppo.kl_coef --values=0.02,0.05,0.1
  python experiments/validity/validation_sweep.py --workdir=runs/demo --stage=ppo_ptx \
      --field=ppo.ptx_coef --values=0.3,1.0,3.0
  python experiments/validity/validation_sweep.py --workdir=runs/demo --stage=rm \
      --field=rm.likelihood_feature --values=false,true

WORKDIR holds a finished pipeline run of the same --config; each value trains the stage
again from its SFT policy and RM and is scored on the validation prompts.
"""

from absl import flags

from instructjax import cli
from instructjax.evaluation import validation_sweep

_FIELD = flags.DEFINE_string("field", "ppo.kl_coef", "the config field to choose")
_VALUES = flags.DEFINE_list("values", ["0.02", "0.05", "0.1"], "its candidate values")


def run(config, workdir, *, stage):
  validation_sweep.sweep(config, workdir, stage=stage, field=_FIELD.value,
                         values=_VALUES.value)


if __name__ == "__main__":
  cli.main(run, stages=("rm", "ppo", "ppo_ptx", "rloo", "grpo", "dpo"), default_stage="ppo")
