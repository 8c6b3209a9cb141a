"""The whole pipeline once per seed, and its headline numbers with their spread.

  python experiments/validity/seeds.py --workdir=runs/seeds --seeds=0,1,2
  python experiments/validity/seeds.py --config=experiments/instructgpt_tiny.py:quick \
      --workdir=runs/seeds_quick --seeds=0,1,2

Seed s runs in WORKDIR/seed_<s> with config.seed = s (the testbed, every init and every
data order change with it); a rerun reuses finished seeds and stages. Writes
WORKDIR/seeds.json (each number's mean, std, range and per-seed values) and
WORKDIR/seeds.md (the table the README quotes), and prints the table.
"""

import os

from absl import flags

from instructjax import cli, pipeline
from instructjax.atomic_write import write_atomic, write_json
from instructjax.evaluation import seeds

_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "the values of config.seed to run")


def run(config, workdir):
  chosen = [int(s) for s in _SEEDS.value]
  per_seed = {}
  for seed in chosen:
    print(f"##### seed {seed} #####", flush=True)
    config_s = config.copy_and_resolve_references()
    config_s.seed = seed
    per_seed[seed] = seeds.headline(pipeline.run(config_s, os.path.join(workdir, f"seed_{seed}")))
  table = seeds.aggregate(per_seed)
  write_json(os.path.join(workdir, "seeds.json"), {"seeds": chosen, "table": table})
  markdown = seeds.to_markdown(table, chosen)
  write_atomic(os.path.join(workdir, "seeds.md"), markdown.encode("utf-8"))
  print(markdown, flush=True)


if __name__ == "__main__":
  cli.main(run)
