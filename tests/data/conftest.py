"""Fixtures of the data tests: configs, small real corpora, a per-session TFDS data dir."""

from __future__ import annotations

import os
import pydoc_data.topics

import pytest
import tensorflow_datasets as tfds
import tensorflow as tf

from tfllm.config import default_config

tfds.disable_progress_bar()


def make_config(data_dir: str = "", **data):
  """The default config with `data` keys overridden and a small batch."""
  config = default_config()
  config.data.data_dir = data_dir
  config.data.update(data)
  config.train.global_batch_size = 4
  return config


def pydoc_topics(count: int):
  """The first `count` topics of CPython's pydoc help (real English prose), sorted by name."""
  topics = pydoc_data.topics.topics
  return [topics[name] for name in sorted(topics)[:count]]


def write_text_files(directory, texts, split="train"):
  """Writes one file per text under `directory/split/`; returns the `{split}` glob."""
  folder = os.path.join(directory, split)
  os.makedirs(folder, exist_ok=True)
  for index, text in enumerate(texts):
    data = text if isinstance(text, bytes) else text.encode("utf-8")
    with open(os.path.join(folder, f"doc{index:04d}.txt"), "wb") as f:
      f.write(data)
  return os.path.join(str(directory), "{split}", "*.txt")


def write_tfrecord(path, examples):
  """Writes dicts name -> list of str / int as tf.Example records."""
  with tf.io.TFRecordWriter(str(path)) as writer:
    for example in examples:
      feature = {}
      for name, values in example.items():
        values = values if isinstance(values, (list, tuple)) else [values]
        if values and isinstance(values[0], str):
          feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
              value=[v.encode("utf-8") for v in values]))
        else:
          feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
      writer.write(tf.train.Example(
          features=tf.train.Features(feature=feature)).SerializeToString())


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """A TFDS data dir shared by the session: each real builder is prepared at most once."""
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def topics_glob(tmp_path_factory):
  """40 pydoc topics as text files under train/ and 10 under validation/."""
  directory = tmp_path_factory.mktemp("topics")
  texts = pydoc_topics(50)
  write_text_files(directory, texts[:40], "train")
  return write_text_files(directory, texts[40:], "validation")
