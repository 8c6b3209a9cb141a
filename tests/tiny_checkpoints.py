"""Tiny Hugging Face checkpoint directories for the real-model tests: random weights of a
supported family written by `to_hf`, and a BPE tokenizer trained on the test's own text.

A real run starts from such a directory (config.json, model.safetensors, tokenizer
files); at this size one trains and compiles in seconds."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import transformers
from flax.core import meta
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from instructjax.models import CausalLM, ModelConfig, to_hf

SPECIAL_TOKENS = ("<unk>", "<pad>", "<eos>")


def save_bpe_tokenizer(corpus: Sequence[str], directory: pathlib.Path, *,
                       vocab_size: int) -> None:
  """A BPE seeded from the corpus' characters (not 256 bytes, so it fits a small
  embedding), saved as a `PreTrainedTokenizerFast` that `AutoTokenizer` loads."""
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size,
                                                      special_tokens=list(SPECIAL_TOKENS)))
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>",
  ).save_pretrained(directory)


def write_checkpoint(directory: pathlib.Path, config: ModelConfig, corpus: Sequence[str], *,
                     seed: int = 0) -> pathlib.Path:
  """A random checkpoint of `config`'s family with a tokenizer trained on corpus."""
  model = CausalLM(config)
  params = model.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]
  to_hf(model, meta.unbox(params), directory)
  save_bpe_tokenizer(corpus, directory, vocab_size=config.vocab_size - 8)
  return directory
