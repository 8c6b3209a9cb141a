"""The RL stages' advantage estimators and the group size each needs.

Kept apart from the rollout code so that validating a config imports no model code; the
config check, the RL program and `score_rollout` all ask `problem` here.
"""

from __future__ import annotations

# estimator -> whether it needs a value model
NEEDS_VALUE_MODEL = {"gae": True, "rloo": False, "grpo": False}


def problem(advantage: str, group_size: int, rollout_batch_size: int | None = None
            ) -> tuple[str, str] | None:
  """(field, what is wrong) when the estimator is unknown, its group size is wrong (GAE
  takes one sample per prompt, a group baseline at least two), or a rollout would not
  hold whole groups; None when they agree."""
  if advantage not in NEEDS_VALUE_MODEL:
    return "advantage", f"{advantage!r} is not one of {tuple(NEEDS_VALUE_MODEL)}"
  if advantage == "gae" and group_size != 1:
    return "group_size", (f"{group_size}: GAE draws one sample per prompt; set group_size=1 "
                          "or a critic-free advantage (rloo, grpo)")
  if advantage != "gae" and group_size < 2:
    return "group_size", (f"{group_size}: {advantage} baselines each sample with the other "
                          "samples of its prompt, so it needs group_size >= 2")
  if rollout_batch_size is not None and rollout_batch_size % group_size:
    return "group_size", (f"{group_size} does not divide rollout_batch_size="
                          f"{rollout_batch_size}: each rollout holds whole groups of samples "
                          "of one prompt")
  return None
