"""The embedded instruction-following testbed: a small world where InstructGPT's
phenomena appear at laptop scale (misaligned vanilla LM, SFT, reward model, PPO).

  testbed = build_testbed(seed=0)               # seconds
  write_testbed(testbed, "runs/testbed")        # JSON-lines files, generic schemas
  train_tokenizer(testbed, "runs/testbed/tokenizer", vocab_size=1024)
  score(testbed.eval_prompts[i], response)      # gold score in [0, 1]
"""

from instructjax.data.testbed.labelers import Labeler, make_labelers
from instructjax.data.testbed.splits import (
    Ranking, Testbed, TestbedSizes, build_testbed, write_testbed)
from instructjax.data.testbed.tasks import FAMILIES, Example, credit, extra_words, score
from instructjax.data.testbed.tokenizer import EOS_TOKEN, PAD_TOKEN, train_tokenizer

__all__ = [
    "EOS_TOKEN", "Example", "FAMILIES", "Labeler", "PAD_TOKEN", "Ranking", "Testbed",
    "TestbedSizes", "build_testbed", "credit", "extra_words", "make_labelers", "score",
    "train_tokenizer",
    "write_testbed",
]
