"""Writes the notebooks of this folder from the cell sources below, without outputs.

  python notebooks/make_notebooks.py

Edit the cells here, not in the .ipynb files: the JSON diffs of notebooks are hard to
review, these are not. `tests/test_notebooks.py` executes the written notebooks.
"""

from __future__ import annotations

import os
import textwrap

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))

# Both notebooks start with these two cells. In Colab the repository is cloned (the
# configs in experiments/ are not part of the package); elsewhere nothing happens.
COLAB = '''
import sys

if "google.colab" in sys.modules:
  REPO_URL = "https://github.com/YOUR_ORG/instructjax"  # placeholder: where the repo lives
  !git clone -q {REPO_URL} /content/instructjax
  # On a GPU or TPU runtime, first install the matching jax (see requirements.txt).
  !pip install -q -r /content/instructjax/requirements.txt
  !pip install -q -e /content/instructjax
  sys.path.insert(0, "/content/instructjax")  # an editable install needs a restart otherwise
  %cd /content/instructjax
'''

PARAMETERS = '''
import os

# Relative paths are taken from the repository root; tests set both variables.
CONFIG = os.environ.get("INSTRUCTJAX_NOTEBOOK_CONFIG", "experiments/instructgpt_tiny.py:quick")
RUN_DIR = os.environ.get("INSTRUCTJAX_NOTEBOOK_RUN_DIR", "runs/notebook")
'''

# The repository root is the working directory or, when the notebook runs from
# notebooks/, its parent.
ROOT = '''
import pathlib

ROOT = next((p for p in (pathlib.Path.cwd(), pathlib.Path.cwd().parent)
             if (p / "experiments").is_dir() and (p / "instructjax").is_dir()), None)
if ROOT is None:
  raise FileNotFoundError(f"{pathlib.Path.cwd()} is neither the instructjax repository nor "
                          "its notebooks/ folder; start the notebook from one of them")
RUN_DIR = os.path.join(ROOT, RUN_DIR)  # an absolute RUN_DIR stays as it is
config = load_config(os.path.join(ROOT, CONFIG))
'''

QUICKSTART = [
    ("markdown", '''
# instructjax quickstart: InstructGPT stage by stage

This notebook walks the InstructGPT recipe (Ouyang et al., 2022) on the embedded testbed:
a small world of instruction-following tasks with gold scores and simulated labelers, so
everything runs on a laptop CPU without downloads.

1. **Stage 0**: pretrain a small vanilla LM on web-like text. It continues text; it does
   not follow instructions.
2. **SFT**: fine-tune it on labeler demonstrations (prompt -> ideal answer).
3. **Reward model**: the SFT trunk with a scalar head, trained on K-wise labeler rankings.
4. **PPO / PPO-ptx**: RL against the reward model with a KL penalty to the SFT policy;
   PPO-ptx also mixes in pretraining gradients.

Each stage writes `RUN_DIR/<stage>/` (metrics, checkpoints, an export) and is reused when
the notebook is run again. The `:quick` config takes 5 to 7 minutes on 2 CPU cores; the
full config (`experiments/instructgpt_tiny.py`) about 10 to 15, and it is the one sized to
reproduce the paper's claims. `python -m instructjax.pipeline` runs all of it plus a report.
'''),
    ("code", COLAB),
    ("parameters", PARAMETERS),
    ("code", '''
import json

import jax
import matplotlib.pyplot as plt

from instructjax import ppo, reward, sft, sharding, stage_export
from instructjax.evaluation import final_eval, measures
from instructjax.config import load_config, model_config
from instructjax.data import batching, sources, testbed
from instructjax.models import CausalLM
''' + ROOT + '''
print(f"config {CONFIG}, runs in {RUN_DIR}, {jax.device_count()} {jax.default_backend()} device(s)")
print("model:", {k: config.model[k] for k in ("arch", "d_model", "n_layers", "n_heads")})
print("steps:", {s: config[s].steps for s in ("pretrain", "sft", "rm")},
      "PPO iterations:", config.ppo.iterations)
'''),
    ("markdown", '''
## The testbed

Every prompt reads `Instruction: <task>\\nAnswer:`. The testbed knows the ideal answer, so
any response gets a **gold score** in [0, 1] (partial credit for near misses, a penalty for
extra words). Simulated labelers rank K candidate responses per prompt by gold score plus
a personal quirk (liking long or short answers) and some noise; three of them are held
out and only judge evaluation data.
'''),
    ("code", '''
data = sources.load_data(config, RUN_DIR)  # generates the testbed once
bed = data.testbed
print({split: len(getattr(bed, split)) for split in
       ("pretrain", "sft", "rm_train", "rm_eval", "ppo_prompts", "eval_prompts")})
print("\\nA pretraining document:", repr(bed.pretrain[0]))
for example in bed.sft[:3]:
  print(f"\\n[{example.family}] {example.prompt!r}\\n  ideal answer: {example.answer!r}")
'''),
    ("code", '''
ranking = bed.rm_train[0]
labeler = bed.labelers[ranking.labeler]
print(f"{ranking.example.prompt!r}\\nranked by labeler {labeler.id} "
      f"(noise {labeler.temperature:.2f}, length bias {labeler.length_bias:+.3f}/word):")
for place, index in enumerate(ranking.ranking, start=1):
  response = ranking.responses[index]
  print(f"  {place}. gold {testbed.score(ranking.example, response):.2f}  {response!r}")
'''),
    ("markdown", '''
## Stage 0: the vanilla LM

Next-token prediction on documents that state the testbed's facts in plain sentences, but
never as instruction + answer: the skills are latent, the format is not.
'''),
    ("code", '''
def read_metrics(stage):
  with open(os.path.join(RUN_DIR, stage, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def curve(rows, key):
  points = sorted({r["step"]: r[key] for r in rows if r.get(key) is not None}.items())
  return [p[0] for p in points], [p[1] for p in points]


sft.run(config, RUN_DIR, stage="pretrain")
rows = read_metrics("pretrain")
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(*curve(rows, "train/loss"), "o-", label="train")
ax.plot(*curve(rows, "eval/heldout_pretrain_loss"), "s--", label="held-out documents")
ax.set(xlabel="step", ylabel="next-token loss (nats)", title="Stage 0: pretraining")
ax.legend()
plt.show()
'''),
    ("markdown", '''
### Vanilla samples: the misalignment

Greedy continuations of held-out prompts. Trained to continue text, the vanilla LM tends
to write more of the sheet (another instruction, a sentence) instead of answering.
'''),
    ("code", '''
policy = CausalLM(model_config(config.model, field="config.model"))
mesh = sharding.make_mesh(**config.mesh)
examples = bed.eval_prompts[:config.eval.prompts]
greedy = measures.greedy_config(data.tokenizer, max_new_tokens=config.eval.max_new_tokens)
NAMES = {"pretrain": "vanilla", "sft": "SFT", "ppo": "PPO", "ppo_ptx": "PPO-ptx"}
params, answers = {}, {}


def load_policy(stage):
  """A stage's exported policy, and its greedy answers to the evaluation prompts."""
  params[stage], _ = stage_export.load_export(
      os.path.join(RUN_DIR, stage), sharding.abstract_params(policy, mesh),
      expected_stages=(stage,))
  # One batch of all prompts: no padding rows, one compilation for every policy.
  answers[stage] = measures.sample_responses(
      policy, params[stage], [e.prompt for e in examples], data.tokenizer,
      sampling_config=greedy, batch_size=len(examples), buckets=(config.data.max_prompt_len,),
      mesh=mesh, rng=jax.random.PRNGKey(config.seed))


def show_answers(stage, n=3):
  for example, answer in zip(examples[:n], answers[stage]):
    print(f"{example.prompt!r}\\n  ideal: {example.answer!r}\\n  {NAMES[stage]}: {answer!r}  "
          f"(gold {testbed.score(example, answer):.2f})")


load_policy("pretrain")
show_answers("pretrain")
'''),
    ("markdown", '''
## Stage 1: supervised fine-tuning

Demonstrations (prompt -> ideal answer), loss on the answer tokens only, starting from the
vanilla LM. The stage also tracks the gold score of greedy answers to the validation
prompts, and exports the evaluated checkpoint that scored best on them.
'''),
    ("code", '''
sft.run(config, RUN_DIR, stage="sft")
rows = read_metrics("sft")
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(*curve(rows, "train/loss"), "o-", label="train loss (answer tokens)")
ax.plot(*curve(rows, "eval/heldout_pretrain_loss"), "s--", label="held-out documents loss")
ax.set(xlabel="step", ylabel="loss (nats)", title="Stage 1: SFT")
ax.legend()
plt.show()
load_policy("sft")
show_answers("sft")
'''),
    ("markdown", '''
## Stage 2: the reward model

The SFT trunk with a scalar head, read at the last token. All C(K,2) comparisons of a
prompt form one batch element (K forward passes). Accuracy is measured on held-out
prompts, separately for training labelers and for held-out labelers who produced no
training data. After training, a bias is stored so that demonstrations score 0 on average.
'''),
    ("code", '''
reward.run(config, RUN_DIR)
rows = read_metrics("rm")
fig, ax = plt.subplots(figsize=(6, 3.5))
for group, style in (("train_labelers", "o-"), ("heldout_labelers", "s--")):
  ax.plot(*curve(rows, f"eval/accuracy_{group}"), style, label=group.replace("_", " "))
ax.axhline(0.5, color="gray", lw=0.8)
ax.set(xlabel="step", ylabel="pairwise accuracy", title="Stage 2: reward model")
ax.legend()
plt.show()
rm_card = stage_export.read_card(os.path.join(RUN_DIR, "rm"), expected_stages=("rm",))
print({k: round(v, 3) for k, v in rm_card.final_eval.items()},
      f"reward_bias={rm_card.reward_bias:.3f}")
'''),
    ("markdown", '''
## Stage 3: PPO and PPO-ptx

Sample a response per prompt, score it with the RM, subtract a per-token KL penalty to the
SFT policy, take PPO steps; the value model starts from the RM. PPO-ptx adds the
pretraining loss to the objective (`config.ppo.ptx_coef`) to limit the alignment tax. The
curves show the RM score the policy optimises (before the normalising bias), the gold
score it should improve, and the KL to the SFT policy it pays.
'''),
    ("code", '''
ppo.run(config, RUN_DIR, stage="ppo")
ppo.run(config, RUN_DIR, stage="ppo_ptx")
fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
for stage, style in (("ppo", "o-"), ("ppo_ptx", "s--")):
  rows = read_metrics(stage)
  for ax, (key, title) in zip(axes, (("rm_score", "RM score"), ("gold_score", "gold score"),
                                      ("kl_to_ref", "KL to SFT (nats)"))):
    ax.plot(*curve(rows, key), style, label=stage)
    ax.set(xlabel="iteration", title=title)
axes[0].legend()
plt.show()
for stage in ("ppo", "ppo_ptx"):
  load_policy(stage)
show_answers("ppo_ptx")
'''),
    ("markdown", '''
## A small comparison

Greedy answers to the evaluation prompts: their gold score, how often the training
labelers prefer them to the SFT policy's (0.5 = a tie), and the loss on held-out
pretraining documents (a higher loss is the alignment tax). `python -m
instructjax.pipeline` runs the full evaluation (larger vanilla LM, few-shot prompting,
held-out labelers, KL) and writes a report. With `:quick`'s few RL iterations the order
of the models means little; the full config is sized for the paper's claims.
'''),
    ("code", '''
train_labelers = [l for l in bed.labelers if not l.held_out]
documents = data.read("pretrain_heldout")
batcher = batching.PretrainBatcher(data.tokenizer, buckets=tuple(config.data.buckets))
table = {}
print(f"{'model':8} {'gold':>6} {'win vs SFT':>11} {'pretrain loss':>14}")
for stage, name in NAMES.items():
  table[name] = {
      "gold": measures.mean_gold_score(examples, answers[stage]),
      "win": final_eval.win_rate(examples, answers[stage], answers["sft"],
                                 train_labelers)["rate"],
      "loss": measures.lm_loss(policy.apply, params[stage], documents, batcher,
                                 batch_size=32, mesh=mesh, max_batches=8)}
  row = table[name]
  print(f"{name:8} {row['gold']:6.3f} {row['win']:11.3f} {row['loss']:14.3f}")

fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for ax, (key, title) in zip(axes, (("gold", "gold score"), ("win", "win rate vs SFT"),
                                   ("loss", "held-out pretraining loss"))):
  ax.bar(list(table), [row[key] for row in table.values()], color="#4C72B0")
  ax.set_title(title)
axes[1].axhline(0.5, color="gray", lw=0.8)
plt.show()
'''),
]

PROTOTYPE = [
    ("markdown", '''
# Prototyping a new reward-model loss

The library's losses are pure functions and its train steps are built from two shared
pieces, `summed_gradients` (microbatched gradients of a summed loss) and `guarded_update`
(the optimizer step, skipped on NaN/Inf). So trying a new loss is a few dozen lines: here
a **margin ranking loss** for the reward model,

$$\\ell_{ij} = -\\log \\sigma\\big(r_i - r_j - m\\,(j - i)\\big), \\quad i < j \\text{ (response } i \\text{ ranked better)},$$

which asks responses far apart in a labeler's ranking to be far apart in reward as well
(a margin that grows with the rank gap; `m = 0` is InstructGPT's loss). It is trained
exactly like the built-in RM (same SFT checkpoint, optimizer, batches and number of
steps) and compared on held-out comparisons from training and held-out labelers.
'''),
    ("code", COLAB),
    ("parameters", PARAMETERS),
    ("code", '''
import functools
import json

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from instructjax import losses, reward, sft, sharding, stage_export, stage_loop
from instructjax.config import load_config, model_config
from instructjax.data import batching, records, sources
from instructjax.models import CausalLM, ScalarModel
from instructjax.steps.gradients import divide, guarded_update, step_rng, summed_gradients
from instructjax.steps.dpo_step import ranked_logprobs
from instructjax.steps.reward_step import ranking_rewards
from instructjax.train_state import make_init_state
''' + ROOT + '''
print(f"config {CONFIG}, runs in {RUN_DIR}")
'''),
    ("markdown", '''
## The starting point and the baseline

The SFT checkpoint and the built-in RM (stages reused if `01_quickstart` ran with the same
`RUN_DIR`).
'''),
    ("code", '''
sft.run(config, RUN_DIR, stage="pretrain")
sft.run(config, RUN_DIR, stage="sft")
reward.run(config, RUN_DIR)
builtin = stage_export.read_card(os.path.join(RUN_DIR, "rm"), expected_stages=("rm",))
print("built-in RM:", {k: round(v, 3) for k, v in builtin.final_eval.items()})
'''),
    ("markdown", '''
## The loss: a pure function returning `(loss, metrics)`

Like `instructjax.losses.ranking_loss`, it keeps sums and counts apart (`loss_sum`,
`element_count`, ...) so gradient accumulation and data parallelism add them exactly, and
it has no Python control flow on traced values.
'''),
    ("code", '''
def margin_ranking_loss(*, rewards, response_mask, margin):
  """K-wise ranking loss with a margin of `margin` per place between two responses.

  Args:
    rewards: [B, K] float, best response first.
    response_mask: [B, K]; nonzero = a real response (padding comes last).
    margin: reward gap asked for per place of rank difference; 0 = InstructGPT's loss.

  Returns:
    (loss, metrics): the mean over prompts of the mean over their pairs; metrics hold
    loss_sum, element_count, pair_correct_sum and pair_count.
  """
  losses.require_shape("margin_ranking_loss", "rewards", rewards, (None, None))
  losses.require_shape("margin_ranking_loss", "response_mask", response_mask, rewards.shape)
  real = response_mask != 0  # [B, K]
  rewards = jnp.where(real, rewards.astype(jnp.float32), 0.0)  # padding may hold garbage
  k = rewards.shape[1]
  place = jnp.arange(k)
  gap = (place[None, :] - place[:, None]).astype(jnp.float32)  # [K, K]: j - i
  pair_mask = real[:, :, None] & real[:, None, :] & (gap > 0)  # [B, K, K]
  diff = rewards[:, :, None] - rewards[:, None, :]  # [B, K, K]: r_i - r_j
  pair_loss = jax.nn.softplus(-(diff - margin * gap))  # [B, K, K]
  pairs = losses.masked_count(pair_mask, axis=(1, 2))  # [B]
  element_loss = losses.masked_sum(pair_loss, pair_mask, axis=(1, 2)) / jnp.maximum(pairs, 1)
  counted = pairs > 0  # [B]
  metrics = {
      "loss_sum": losses.masked_sum(element_loss, counted),
      "element_count": losses.masked_count(counted),
      "pair_correct_sum": losses.masked_sum(diff > 0, pair_mask),
      "pair_count": jnp.sum(pairs),
  }
  return metrics["loss_sum"] / jnp.maximum(metrics["element_count"], 1), metrics
'''),
    ("markdown", '''
Two checks before training anything. By hand: one prompt, rewards (1, 0, 0.5), margin
0.25. The pairs (i, j) with their gaps are (0, 1): 1 - 0 - 0.25, (0, 2): 1 - 0.5 - 0.5 and
(1, 2): 0 - 0.5 - 0.25, each giving softplus(-x). And with `margin=0` it must equal the
built-in loss, padding included.
'''),
    ("code", '''
softplus = lambda x: np.log1p(np.exp(x))
by_hand = (softplus(-0.75) + softplus(-0.0) + softplus(0.75)) / 3
loss, _ = margin_ranking_loss(rewards=jnp.array([[1.0, 0.0, 0.5]]),
                              response_mask=jnp.ones((1, 3)), margin=0.25)
print(f"by hand {by_hand:.6f}, margin_ranking_loss {float(loss):.6f}")
np.testing.assert_allclose(float(loss), by_hand, rtol=1e-6)

rewards = jax.random.normal(jax.random.PRNGKey(0), (4, 6))  # [B, K]
mask = jnp.arange(6)[None, :] < jnp.array([[6], [4], [2], [1]])  # [B, K]: K_b = 6, 4, 2, 1
ours, _ = margin_ranking_loss(rewards=rewards, response_mask=mask, margin=0.0)
theirs, _ = losses.ranking_loss(rewards=rewards, response_mask=mask)
print(f"margin 0: {float(ours):.6f}, built-in ranking_loss: {float(theirs):.6f}")
np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-6)
'''),
    ("markdown", '''
## The step: `reward_step`'s structure with the new loss

`reward_step` is `summed_gradients` over a function returning `(loss_sum, metric sums)`,
one division by the number of prompts, and `guarded_update`. Only the loss changes.
'''),
    ("code", '''
MARGIN = 0.25


def margin_reward_step(state, batch, *, margin, accum_steps=1):
  """-> (new_state, metrics), like instructjax.steps.reward_step.reward_step."""

  def loss_sums(params, micro, rng):
    rewards = ranking_rewards(state.apply_fn, params, micro, rng=rng)  # [B, K]
    _, metrics = margin_ranking_loss(rewards=rewards, response_mask=micro.response_mask,
                                     margin=margin)
    return metrics["loss_sum"], metrics

  grads, sums = summed_gradients(loss_sums, state.params, batch, step_rng(state),
                                 accum_steps=accum_steps)
  count = jnp.maximum(sums["element_count"], 1)
  loss = sums["loss_sum"] / count
  state, update_metrics = guarded_update(state, divide(grads, count), loss)
  return state, {**sums, **update_metrics, "loss": loss,
                 "accuracy": sums["pair_correct_sum"] / jnp.maximum(sums["pair_count"], 1)}
'''),
    ("markdown", '''
## Training it like the RM stage

The same pieces `instructjax.reward.run` hands to the stage loop (`stage_loop.train`): the SFT trunk
with a zero scalar head, the RM optimizer, the RM's comparisons and batch order (same
seed, so the same batches), `config.rm.steps` steps, and evaluation on the held-out
comparisons. The loop checkpoints to `RUN_DIR/rm_margin` and resumes from there when run
again.
'''),
    ("code", '''
train = config.rm
cfg = model_config(config.model, field="config.model")
data = sources.load_data(config, RUN_DIR)
mesh = sharding.make_mesh(**config.mesh)
model = ScalarModel(cfg)
buckets = tuple(config.data.buckets)
# The rows the built-in RM trained on: with config.rm.policy_sample_fraction > 0 the RM
# stage mixed SFT samples into the testbed's rankings and cached the result.
comparisons_path = os.path.join(RUN_DIR, "rm", "comparisons.jsonl")
rows = (records.read_jsonl(comparisons_path, "ranking").records
        if os.path.exists(comparisons_path) else data.read("rm_train"))
eval_rows = data.read("rm_eval")
k_max = max(len(r.responses) for r in rows + eval_rows)


def ranking_batcher():
  return batching.RankingBatcher(data.tokenizer, buckets=buckets,
                                 max_prompt_len=config.data.max_prompt_len, k_max=k_max)


eval_batcher = ranking_batcher()
held_out = frozenset(l.id for l in data.testbed.labelers if l.held_out)


def begin(state):  # the SFT trunk and a zero scalar head, as the RM stage starts
  return reward.start_from_sft(state, reward.load_sft_params(os.path.join(RUN_DIR, "sft"),
                                                             cfg, mesh))


def evaluate(state):
  return reward.ranking_accuracy(
      functools.partial(reward.ranking_scores, state.params, apply_fn=model.apply),
      eval_rows, eval_batcher, mesh=mesh, held_out_ids=held_out)


batches = batching.BatchIterator(rows, ranking_batcher(), batch_size=train.batch_size,
                                 seed=config.seed)
step = functools.partial(margin_reward_step, margin=MARGIN, accum_steps=train.accum_steps)
program = stage_loop.StageProgram(
    name="rm_margin", workdir=os.path.join(RUN_DIR, "rm_margin"),
    cadence=stage_loop.cadence(train), mesh=mesh,
    init_state=make_init_state(model, train, buckets[0]), seed=config.seed,
    build_advance=lambda shardings: stage_loop.batch_advance(
        stage_loop.jit_step(step, shardings), batches, mesh),
    iterators={"data": batches}, begin=begin, evaluate=evaluate,
    exports=lambda state, final_eval: [], log=config.log)
state, margin_eval = stage_loop.train(program)
print("margin RM:", {k: round(float(v), 3) for k, v in margin_eval.items()})
'''),
    ("markdown", '''
## Comparison

Pairwise accuracy on the held-out comparisons (each prompt ranked by one training and one
held-out labeler), after the same number of steps. On the `:quick` config the difference
is within noise; run the full config to compare for real.
'''),
    ("code", '''
def read_metrics(stage):
  with open(os.path.join(RUN_DIR, stage, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


results = {"built-in ranking loss": builtin.final_eval,
           f"margin loss (m={MARGIN})": margin_eval}
groups = ("accuracy_train_labelers", "accuracy_heldout_labelers")
print(f"{'loss':26} {'train labelers':>15} {'held-out labelers':>18}")
for name, acc in results.items():
  print(f"{name:26} {acc[groups[0]]:15.3f} {acc[groups[1]]:18.3f}")

fig, (ax_acc, ax_train) = plt.subplots(1, 2, figsize=(11, 3.5))
width = 0.38
for i, (name, acc) in enumerate(results.items()):
  ax_acc.bar(np.arange(2) + (i - 0.5) * width, [acc[g] for g in groups], width, label=name)
ax_acc.set_xticks(range(2), ["training labelers", "held-out labelers"])
ax_acc.axhline(0.5, color="gray", lw=0.8)
ax_acc.set(ylim=(0, 1), ylabel="pairwise accuracy", title="held-out comparisons")
ax_acc.legend(loc="upper right")
for stage, name in (("rm", "built-in ranking loss"), ("rm_margin", "margin loss")):
  points = sorted({r["step"]: r["train/accuracy"] for r in read_metrics(stage)
                   if "train/accuracy" in r}.items())
  ax_train.plot(*zip(*points), "o-", label=name)
ax_train.set(xlabel="step", ylabel="pairwise accuracy", title="training batches")
ax_train.legend()
plt.show()
'''),
    ("markdown", '''
## Past the RM: DPO or Plackett-Luce DPO on the same rankings

The offline preference losses in `instructjax.losses` take the summed log-probs of each
prompt's K ranked responses (best first) under a policy and a frozen reference, `[B, K]`.
`dpo_loss` applies DPO to every ranked pair; `plackett_luce_dpo_loss` scores the whole
ranking at once. Swapping one for the other is one line (`steps.dpo_step` trains with
either). Here the policy is the pretrained LM and the reference the SFT model, on a few
held-out rankings.
'''),
    ("code", '''
policy = CausalLM(cfg)


def load(stage):
  params, _ = stage_export.load_export(os.path.join(RUN_DIR, stage),
                                       sharding.abstract_params(policy, mesh),
                                       expected_stages=(stage,))
  return params


# The rankings as the RM batches them; batch.loss_mask marks each response's tokens.
(batch,) = batching.iterate_once(eval_rows[:16], eval_batcher, batch_size=16)
pol = ranked_logprobs(policy.apply, load("pretrain"), batch)  # [B, K]
ref = ranked_logprobs(policy.apply, load("sft"), batch)  # [B, K]
mask = batch.response_mask  # [B, K]
for name, loss_fn in (("DPO on every pair", functools.partial(losses.dpo_loss, beta=0.1)),
                      ("Plackett-Luce DPO", functools.partial(losses.plackett_luce_dpo_loss,
                                                              beta=0.1))):
  value, grad = jax.value_and_grad(
      lambda p: loss_fn(policy_logps=p, ref_logps=ref, response_mask=mask)[0])(pol)
  print(f"{name:18} loss {float(value):.4f}, gradient norm {float(jnp.linalg.norm(grad)):.4f}")

# With two responses per prompt the two losses are the same.
two = dict(policy_logps=pol[:, :2], ref_logps=ref[:, :2], response_mask=mask[:, :2])
dpo, _ = losses.dpo_loss(**two, beta=0.1)
pl, _ = losses.plackett_luce_dpo_loss(**two, beta=0.1)
print(f"K=2: dpo {float(dpo):.6f}, plackett-luce {float(pl):.6f}")
np.testing.assert_allclose(float(dpo), float(pl), rtol=1e-6)
'''),
]


def make_notebook(cells, *, prefix: str) -> nbformat.NotebookNode:
  """cells: (kind, source) with kind 'markdown', 'code' or 'parameters' (a code cell
  tagged for papermill)."""
  notebook = nbformat.v4.new_notebook()
  notebook.metadata.update(
      kernelspec={"name": "python3", "display_name": "Python 3", "language": "python"},
      language_info={"name": "python"})
  for index, (kind, source) in enumerate(cells):
    source = textwrap.dedent(source).strip("\n")
    if kind == "markdown":
      cell = nbformat.v4.new_markdown_cell(source)
    else:
      cell = nbformat.v4.new_code_cell(source)
      if kind == "parameters":
        cell.metadata["tags"] = ["parameters"]
    cell.id = f"{prefix}-{index:02d}"  # fixed ids: rewriting the file changes nothing
    notebook.cells.append(cell)
  nbformat.validate(notebook)
  return notebook


def main() -> None:
  for name, cells in (("01_quickstart.ipynb", QUICKSTART),
                      ("02_prototype_a_loss.ipynb", PROTOTYPE)):
    path = os.path.join(HERE, name)
    nbformat.write(make_notebook(cells, prefix=name[:2]), path)
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
