"""Tokenizers: training, special tokens, saving and reloading identically, bad input."""

from __future__ import annotations

import os

import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from tests.data.conftest import make_config, write_text_files
from tfllm.data import tokenizers

SAMPLE = ["The quick brown fox jumps over the lazy dog.", "Déjà vu: naïve café, 42 times!"]


def _ids(tokenizer, texts):
  """Token ids of `texts` as lists (keras-hub returns lists, not tensors, when eager)."""
  ids = tokenizer.tokenize(tf.constant(texts))
  return ids.to_list() if hasattr(ids, "to_list") else [list(map(int, row)) for row in ids]


@pytest.fixture(scope="module")
def word_piece(topics_glob):
  config = make_config(dataset="text_files", files=topics_glob)
  config.tokenizer.update(dict(type="word_piece", vocab_size=600))
  return tokenizers.get_tokenizer(config)


def test_byte_level_specials_follow_the_bytes_and_detokenize_drops_them():
  tokenizer = tokenizers.ByteLevelTokenizer()
  ids = tokenizers.special_token_ids(tokenizer)
  assert tokenizer.vocabulary_size() == 256 + 4
  assert sorted({ids["pad"], ids["cls"], ids["sep"], ids["mask"]}) == [256, 257, 258, 259]
  assert ids["bos"] == ids["cls"] and ids["eos"] == ids["sep"]
  tokens = _ids(tokenizer, SAMPLE)
  assert tokens[0] == list(SAMPLE[0].encode("utf-8"))
  with_specials = tf.ragged.constant([[ids["cls"]] + row + [ids["sep"], ids["pad"]]
                                      for row in tokens])
  texts = tokenizer.detokenize(with_specials)
  assert [t.decode("utf-8") if isinstance(t, bytes) else t for t in texts] == SAMPLE


def test_word_piece_trained_has_reserved_tokens_first_and_about_the_asked_size(word_piece):
  assert 0.95 * 600 <= word_piece.vocabulary_size() <= 600
  assert word_piece.get_vocabulary()[:5] == list(tokenizers.WORD_PIECE_RESERVED)
  ids = tokenizers.special_token_ids(word_piece)
  assert (ids["pad"], ids["unk"], ids["cls"], ids["sep"], ids["mask"]) == (0, 1, 2, 3, 4)
  assert (ids["bos"], ids["eos"]) == (2, 3)
  # A text of the training corpus tokenizes to more than unknowns.
  pieces = _ids(word_piece, ["The following"])[0]
  assert pieces and ids["unk"] not in pieces


def test_sentence_piece_trained_has_pad_unk_bos_eos_and_a_mask(topics_glob, tmp_path):
  config = make_config(dataset="text_files", files=topics_glob)
  config.tokenizer.update(dict(type="sentence_piece", vocab_size=400))
  tokenizer = tokenizers.get_tokenizer(config, model_dir=str(tmp_path))
  assert isinstance(tokenizer, keras_hub.tokenizers.SentencePieceTokenizer)
  assert tokenizer.vocabulary_size() == 400
  ids = tokenizers.special_token_ids(tokenizer)
  assert (ids["pad"], ids["unk"], ids["bos"], ids["eos"], ids["mask"]) == (0, 1, 2, 3, 4)
  reloaded = tokenizers.load_tokenizer(os.path.join(tmp_path, "tokenizer"))
  assert _ids(reloaded, SAMPLE) == _ids(tokenizer, SAMPLE)
  # The mask is a control symbol: text never produces it, even spelled out.
  assert ids["mask"] not in _ids(tokenizer, ["a [MASK] b"])[0]


@pytest.mark.parametrize("kind", ["word_piece", "byte"])
def test_get_tokenizer_saves_to_model_dir_and_reloads_it_identically(kind, topics_glob,
                                                                      tmp_path, word_piece):
  config = make_config(dataset="text_files", files=topics_glob)
  config.tokenizer.update(dict(type=kind, vocab_size=600))
  if kind == "word_piece":
    # The saved vocabulary wins over the config, so later runs never retrain a different one.
    tokenizers.save_tokenizer(word_piece, os.path.join(tmp_path, "tokenizer"))
    config.tokenizer.vocab_size = 50
  first = tokenizers.get_tokenizer(config, model_dir=str(tmp_path))
  assert os.path.isfile(os.path.join(tmp_path, "tokenizer", "tokenizer.json"))
  again = tokenizers.get_tokenizer(config, model_dir=str(tmp_path))
  assert type(again) is type(first)
  assert again.vocabulary_size() == first.vocabulary_size()
  assert _ids(again, SAMPLE) == _ids(first, SAMPLE)
  assert tokenizers.special_token_ids(again) == tokenizers.special_token_ids(first)
  if kind == "word_piece":
    assert again.get_vocabulary() == word_piece.get_vocabulary()


def test_save_replaces_an_existing_tokenizer_and_leaves_no_temp_dirs(word_piece, tmp_path):
  target = os.path.join(tmp_path, "tokenizer")
  tokenizers.save_tokenizer(tokenizers.ByteLevelTokenizer(), target)
  tokenizers.save_tokenizer(word_piece, target)
  assert tokenizers.load_tokenizer(target).get_vocabulary() == word_piece.get_vocabulary()
  assert sorted(os.listdir(tmp_path)) == ["tokenizer"]


def test_bert_vocab_file_loads_with_its_special_tokens(tmp_path):
  vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(3)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                                              "the", "quick", "fox", "##es"]
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
  config = make_config()
  config.tokenizer.update(dict(vocabulary=str(path), lowercase=True))
  tokenizer = tokenizers.get_tokenizer(config)
  assert tokenizer.vocabulary_size() == len(vocab)
  ids = tokenizers.special_token_ids(tokenizer)
  assert {k: ids[k] for k in ("pad", "unk", "cls", "sep", "mask")} == dict(
      pad=0, unk=4, cls=5, sep=6, mask=7)
  assert _ids(tokenizer, ["The foxes"])[0] == [vocab.index("the"), vocab.index("fox"),
                                               vocab.index("##es")]


def test_vocab_size_larger_than_the_corpus_supports_is_an_error(tmp_path):
  files = write_text_files(tmp_path, ["one two three four five six", "seven eight nine ten"])
  config = make_config(dataset="text_files", files=files)
  config.tokenizer.update(dict(type="word_piece", vocab_size=5000))
  with pytest.raises(ValueError, match="vocab_size=5000 is larger than this corpus supports"):
    tokenizers.get_tokenizer(config)
  config.tokenizer.type = "sentence_piece"
  with pytest.raises(ValueError, match="vocab_size=5000 is larger than this corpus supports"):
    tokenizers.get_tokenizer(config)


def test_missing_vocabulary_file_and_empty_directory_are_errors(tmp_path):
  config = make_config()
  config.tokenizer.vocabulary = str(tmp_path / "nope.txt")
  with pytest.raises(ValueError, match="nope.txt' does not exist"):
    tokenizers.get_tokenizer(config)
  with pytest.raises(ValueError, match="holds no saved tokenizer"):
    tokenizers.load_tokenizer(str(tmp_path))


def test_tokenizers_run_inside_a_graph(word_piece):
  fn = tf.function(lambda texts: word_piece.tokenize(texts).to_tensor(),
                   input_signature=[tf.TensorSpec([None], tf.string)])
  dense = fn(tf.constant(SAMPLE)).numpy()
  expected = _ids(word_piece, SAMPLE)
  for row, ids in zip(dense, expected):
    np.testing.assert_array_equal(row[:len(ids)], ids)


@pytest.mark.parametrize("kind", ["word_piece", "byte"])
def test_tokenizer_inside_a_saved_model_tokenizes_identically_after_reload(kind, word_piece,
                                                                            tmp_path):
  tokenizer = word_piece if kind == "word_piece" else tokenizers.ByteLevelTokenizer()
  module = tf.Module()
  module.tokenizer = tokenizer
  module.tokenize = tf.function(
      lambda texts: tokenizer.tokenize(texts).to_tensor(default_value=-1),
      input_signature=[tf.TensorSpec([None], tf.string)])
  tf.saved_model.save(module, str(tmp_path / "saved"))
  reloaded = tf.saved_model.load(str(tmp_path / "saved"))
  np.testing.assert_array_equal(reloaded.tokenize(tf.constant(SAMPLE)).numpy(),
                                module.tokenize(tf.constant(SAMPLE)).numpy())
