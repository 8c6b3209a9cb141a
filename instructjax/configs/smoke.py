"""The `smoke` variant of every real-model config: the same code path, minutes on a CPU.

  python -m instructjax.pipeline --config=experiments/gpt2_hh_rlhf.py:smoke --workdir=W \
      --config.hf_name.model=CKPT_DIR --config.data.manual_dir=HH_DIR

It needs nothing but a checkpoint directory (config.json, model.safetensors, tokenizer
files) and a manual dir in the published layout: both vanilla LMs are imported from
CKPT_DIR, the data are built from the manual dir as in a real run, and every stage takes
a few steps on short sequences. The numbers it reports mean nothing; that it runs means
the real run's data, import, stages, evaluation and report all fit together.
"""

from __future__ import annotations

import ml_collections


def apply_smoke(config: ml_collections.ConfigDict) -> None:
  """Shrinks a real-model config in place to a CPU smoke run."""
  # One checkpoint serves as both vanilla LMs, so a smoke run needs just one directory.
  config.hf_name.big_model = config.hf_name.get_ref("model")
  for section in ("model", "big_model"):
    config[section].update(dtype="float32", remat=False, dropout_rate=0.0)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  config.data.update(max_prompt_len=48, max_len=80, buckets=(80,))
  for section in ("sft", "rm"):
    config[section].update(steps=4, batch_size=8, accum_steps=1, eval_every=2,
                           checkpoint_every=2, warmup_steps=1)
  config.rm.judge_fraction = 0.3
  # Batches of 8 divide the 1, 2, 4 or 8 devices a CPU host (or a test) shows.
  config.ppo.update(iterations=2, rollout_batch_size=8, minibatch_size=8, ptx_batch_size=8,
                    epochs=1, max_new_tokens=8, checkpoint_every=1, warmup_steps=1)
  config.eval.update(prompts=8, max_new_tokens=8)
  config.log.tensorboard = False
