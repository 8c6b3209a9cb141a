"""The testbed's BPE tokenizer: HF loading, exact round trips, compact world words."""

from __future__ import annotations

import random
import time

import pytest
import transformers

from instructjax.data.testbed import candidates, splits, tokenizer, world


@pytest.fixture(scope="module")
def bed():
  return splits.build_testbed(seed=0)


@pytest.fixture(scope="module")
def hf_tokenizer(bed, tmp_path_factory):
  start = time.perf_counter()
  directory = tokenizer.train_tokenizer(bed, tmp_path_factory.mktemp("tok"),
                                        vocab_size=1024)
  print(f"\ntokenizer trained in {time.perf_counter() - start:.2f} s")
  return transformers.AutoTokenizer.from_pretrained(directory)


def _ids(tok, text: str) -> list[int]:
  return tok.encode(text, add_special_tokens=False)


def test_loads_with_special_tokens(hf_tokenizer):
  tok = hf_tokenizer
  print(f"\nvocabulary size: {len(tok)}")
  assert 512 <= len(tok) <= 1024
  assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
  assert tok.eos_token_id != tok.pad_token_id
  assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|endoftext|>"
  assert _ids(tok, "<|endoftext|>") == [tok.eos_token_id]  # one token, not split
  assert tok.decode([tok.eos_token_id]) == "<|endoftext|>"


def test_round_trip_is_exact(hf_tokenizer, bed):
  tok = hf_tokenizer
  rng = random.Random(0)
  texts = [" apple red cat", "", " ", "  two  spaces \n\n", "Ünïcode ✓ 🙂 and tabs\t!",
           "UPPER Case 12345 67"]
  texts += [e.prompt + e.answer for e in bed.sft[:200]]
  texts += [e.prompt + r for e in bed.eval_prompts[:50]
            for r in candidates.candidate_responses(e, rng, k=6)]
  texts += list(bed.pretrain[:200])
  for text in texts:
    assert tok.decode(_ids(tok, text)) == text


def test_response_tokens_start_at_the_response(hf_tokenizer, bed):
  """Prompt + response tokenises as prompt tokens then response tokens, so a pipeline
  can tokenise the two separately and mask the loss on the response."""
  tok = hf_tokenizer
  for example in bed.sft[:300]:
    whole = _ids(tok, example.prompt + example.answer)
    assert whole == _ids(tok, example.prompt) + _ids(tok, example.answer)


def test_world_words_and_numbers_are_compact(hf_tokenizer, bed):
  tok = hf_tokenizer
  lengths = {w: len(_ids(tok, " " + w)) for w in world.ALL_WORDS}
  assert max(lengths.values()) <= 2, [w for w, n in lengths.items() if n > 2]
  assert all(lengths[n] == 1 for n in world.NUMBERS)
  prompt_lengths = [len(_ids(tok, e.prompt)) for e in bed.eval_prompts]
  assert max(prompt_lengths) <= 40


def test_too_small_vocabulary_is_rejected(bed, tmp_path):
  with pytest.raises(ValueError, match="vocab_size=100 must be >= 258"):
    tokenizer.train_tokenizer(bed, tmp_path, vocab_size=100)
