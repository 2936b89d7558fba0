"""Characters per token: the sum over a text's tokens is the length of the text they decode to."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.data.conftest import make_config, pydoc_topics
from tfllm.data import char_counts, sources, tokenizers

# Non-ASCII letters (2- and 3-byte UTF-8), characters unknown to small vocabularies, runs of
# spaces and newlines: what the conventions must get right beyond plain English.
MIXED = "Déjà vu: naïve café — 42 日本  x\n  y"


def _as_str(text) -> str:
  text = text.numpy() if hasattr(text, "numpy") else text
  return text.decode("utf-8") if isinstance(text, bytes) else str(text)


def _ids(tokenizer, text: str) -> np.ndarray:
  return np.asarray(tokenizer.tokenize(tf.constant(text)), np.int64).reshape(-1)


def _decoded_text(tokenizer, ids) -> str:
  """The text `ids` decode to, special tokens (not `unk`) left out."""
  roles = tokenizers.special_token_ids(tokenizer)
  specials = {i for role, i in roles.items() if role != "unk"}
  kept = [int(i) for i in ids if int(i) not in specials]
  return _as_str(tokenizer.detokenize(tf.constant([kept], tf.int32))[0])


def _starts_with_space_convention(tokenizer, first_id: int) -> int:
  """1 when the first token counts a space that detokenization drops (word-start piece)."""
  if isinstance(tokenizer, tokenizers.ByteLevelTokenizer):
    return 0
  vocabulary = tokenizer.get_vocabulary()
  token = vocabulary[first_id]
  if isinstance(tokenizer, tokenizers.keras_hub.tokenizers.SentencePieceTokenizer):
    return int(token.startswith("▁"))
  return int(not token.startswith("##"))


def _assert_sum_matches_decoded_length(tokenizer, text: str):
  table = char_counts.characters_per_token(tokenizer)
  assert table.shape == (tokenizer.vocabulary_size(),)
  ids = _ids(tokenizer, text)
  decoded = _decoded_text(tokenizer, ids)
  assert int(table[ids].sum()) == len(decoded) + _starts_with_space_convention(tokenizer, ids[0])
  return table, ids, decoded


@pytest.fixture(scope="module")
def topics_tokenizers(topics_glob):
  """byte, WordPiece (600) and SentencePiece (400) tokenizers trained on pydoc topics."""
  made = {}
  for kind, size in (("byte", 0), ("word_piece", 600), ("sentence_piece", 400)):
    config = make_config(dataset="text_files", files=topics_glob)
    config.tokenizer.update(dict(type=kind, vocab_size=size or 8000))
    made[kind] = tokenizers.get_tokenizer(config)
  return made


def test_byte_level_counts_utf8_lead_bytes_and_reproduces_the_text():
  tokenizer = tokenizers.ByteLevelTokenizer()
  table, ids, decoded = _assert_sum_matches_decoded_length(tokenizer, MIXED)
  assert decoded == MIXED and int(table[ids].sum()) == len(MIXED)
  assert table[ord("a")] == 1 and table[0xC3] == 1 and table[0xA9] == 0 and table[0xE6] == 1
  assert not table[256:].any()  # [PAD] [CLS] [SEP] [MASK] decode to nothing


@pytest.mark.parametrize("kind", ["byte", "word_piece", "sentence_piece"])
def test_sum_equals_decoded_length_on_real_prose(topics_tokenizers, kind):
  text = "\n\n".join(pydoc_topics(50)[45:47]) + "\n" + MIXED
  _assert_sum_matches_decoded_length(topics_tokenizers[kind], text)


@pytest.mark.parametrize("kind, controls", [("word_piece", ("pad", "cls", "sep", "mask")),
                                            ("sentence_piece", ("pad", "bos", "eos", "mask"))])
def test_control_tokens_count_no_characters(topics_tokenizers, kind, controls):
  tokenizer = topics_tokenizers[kind]
  table = char_counts.characters_per_token(tokenizer)
  roles = tokenizers.special_token_ids(tokenizer)
  assert {role: int(table[roles[role]]) for role in controls} == dict.fromkeys(controls, 0)


def test_word_piece_conventions(topics_tokenizers):
  tokenizer = topics_tokenizers["word_piece"]
  table = char_counts.characters_per_token(tokenizer)
  vocabulary = tokenizer.get_vocabulary()
  roles = tokenizers.special_token_ids(tokenizer)
  assert table[roles["unk"]] == len("[UNK]") + 1
  suffix = next(i for i, t in enumerate(vocabulary) if t.startswith("##") and len(t) > 3)
  word = next(i for i, t in enumerate(vocabulary) if t.isalpha() and len(t) > 2)
  assert table[suffix] == len(vocabulary[suffix]) - 2
  assert table[word] == len(vocabulary[word]) + 1


def test_sentence_piece_counts_the_word_boundary_as_a_space(topics_tokenizers):
  tokenizer = topics_tokenizers["sentence_piece"]
  table = char_counts.characters_per_token(tokenizer)
  vocabulary = tokenizer.get_vocabulary()
  piece = next(i for i, t in enumerate(vocabulary) if t.startswith("▁") and len(t) > 2)
  assert table[piece] == len(vocabulary[piece])
  # Two sentences tokenized apart and the two id lists joined: the second one's leading "▁"
  # is the space between them, counted once.
  first, second = _ids(tokenizer, "The first one."), _ids(tokenizer, "A second one.")
  joined = np.concatenate([first, second])
  assert int(table[joined].sum()) == len(_decoded_text(tokenizer, joined)) + 1


def test_unknown_tokenizer_is_refused():
  with pytest.raises(ValueError, match="accepted: ByteLevelTokenizer"):
    char_counts.characters_per_token(object())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["byte", "word_piece", "sentence_piece"])
def test_sum_equals_decoded_length_on_shakespeare_validation(tfds_dir, kind):
  """Each validation play, tokenized as the pipelines do; byte-level reproduces it exactly."""
  config = make_config(data_dir=tfds_dir)
  config.tokenizer.update(dict(type=kind, vocab_size=500, max_training_lines=3000))
  tokenizer = tokenizers.get_tokenizer(config)
  plays = [_as_str(t) for t in sources.text_documents(config.data, "validation")]
  assert len(plays) == 3
  characters = 0
  for play in plays:
    _, ids, decoded = _assert_sum_matches_decoded_length(tokenizer, play)
    if kind == "byte":
      assert decoded == play
    characters += len(play)
  assert characters == sources.count_characters(config.data, "validation")
