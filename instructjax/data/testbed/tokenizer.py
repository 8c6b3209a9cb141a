"""A small byte-level BPE tokenizer trained on the testbed, saved in HF format.

Byte-level pre-tokenisation keeps every string encodable and makes decode(encode(s))
== s exactly, leading spaces of responses included. With the testbed's few hundred
words, a vocabulary of about 1024 gives every world word and number 0-99, with its
leading space, a single token or two.
"""

from __future__ import annotations

import os
import pathlib

import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

from instructjax.data.testbed.splits import Testbed

EOS_TOKEN = "<|endoftext|>"  # end of every document and response; also BOS
PAD_TOKEN = "<|pad|>"


def train_tokenizer(testbed: Testbed, directory: str | os.PathLike, *,
                    vocab_size: int = 1024) -> pathlib.Path:
  """Trains BPE on every testbed text and saves it with `save_pretrained`.

  Returns the directory, which `transformers.AutoTokenizer.from_pretrained` loads.
  EOS is not appended by the tokenizer itself: the input pipelines add it.
  """
  alphabet = pre_tokenizers.ByteLevel.alphabet()
  if vocab_size < len(alphabet) + 2:
    raise ValueError(f"vocab_size={vocab_size} must be >= {len(alphabet) + 2} "
                     "(256 byte tokens and 2 special tokens)")
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=[EOS_TOKEN, PAD_TOKEN],
      initial_alphabet=alphabet, show_progress=False)
  tokenizer.train_from_iterator(testbed.texts(), trainer=trainer)
  hf_tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizer, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
      pad_token=PAD_TOKEN)
  directory = pathlib.Path(directory)
  hf_tokenizer.save_pretrained(directory)
  return directory
