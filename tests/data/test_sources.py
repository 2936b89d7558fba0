"""Raw sources: text files (with dirt), TFRecord files, and their bad-input errors."""

from __future__ import annotations

import logging

import pytest
import tensorflow as tf

from tests.data.conftest import make_config, write_text_files, write_tfrecord
from tfllm.data import sources


def _texts(config, split="train"):
  return [t.decode("utf-8") for t in sources.text_documents(config.data, split)
          .as_numpy_iterator()]


def test_non_utf8_files_are_decoded_with_replacement_and_counted(tmp_path, caplog):
  files = write_text_files(tmp_path, ["plain text", b"caf\xe9 au lait", b"\xff\xfe oops",
                                      "naïve"])
  config = make_config(dataset="text_files", files=files)
  with caplog.at_level(logging.WARNING):
    texts = _texts(config)
  assert "2 of 4 text files are not valid UTF-8" in caplog.text
  assert texts == ["plain text", "caf\ufffd au lait", "\ufffd\ufffd oops", "naïve"]
  paths = sorted(tf.io.gfile.glob(files.replace("{split}", "train")))
  assert sources.scan_text_files(paths) == (2, 0)


def test_split_placeholder_selects_files_and_characters_are_counted(tmp_path):
  write_text_files(tmp_path, ["train one", "train two"], "train")
  files = write_text_files(tmp_path, ["é valid"], "validation")
  config = make_config(dataset="text_files", files=files)
  assert _texts(config, "validation") == ["é valid"]
  assert sources.count_characters(config.data, "train") == len("train one") + len("train two")
  assert sources.count_characters(config.data, "validation") == 7


def test_text_file_errors(tmp_path):
  files = write_text_files(tmp_path, ["", "  \n"])
  config = make_config(dataset="text_files", files=files)
  with pytest.raises(ValueError, match="empty corpus: all 2 text file"):
    sources.load_source(config.data, "train")
  with pytest.raises(ValueError, match="matches no file for split 'test'"):
    sources.load_source(config.data, "test")
  with pytest.raises(ValueError, match="slicing such as 'train\\[:10%\\]' works only with TFDS"):
    sources.load_source(config.data, "train[:10%]")
  context = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=2)
  write_text_files(tmp_path, ["a", "b"], "two")
  with pytest.raises(ValueError, match="2 text file\\(s\\) for split 'two' cannot feed 3 input"):
    sources.load_source(config.data, "two", context)


def test_tfrecord_features_are_inferred_and_a_missing_text_feature_is_named(tmp_path):
  write_tfrecord(tmp_path / "train.tfrecord",
                 [{"body": "first", "label": 1}, {"body": "second", "label": 0}])
  config = make_config(dataset="tfrecord", files=str(tmp_path / "{split}.tfrecord"),
                       text_feature="body")
  source = sources.load_source(config.data, "train")
  assert source.label_feature == "label" and source.label_names is None
  assert _texts(config) == ["first", "second"]
  config.data.text_feature = "text"
  with pytest.raises(ValueError, match="text_feature='text' is not a feature of .*"
                                       "available features: body, label"):
    sources.load_source(config.data, "train")
  config.data.text_feature = "label"
  with pytest.raises(ValueError, match="holds int64 values"):
    sources.load_source(config.data, "train")
  write_tfrecord(tmp_path / "empty.tfrecord", [])
  config.data.text_feature = "body"
  with pytest.raises(ValueError, match="empty corpus: the 1 TFRecord file"):
    sources.load_source(config.data, "empty")


def test_tfrecord_shards_by_record_disjoint_and_covering(tmp_path):
  write_tfrecord(tmp_path / "train.tfrecord", [{"text": f"row {i}"} for i in range(7)])
  config = make_config(dataset="tfrecord", files=str(tmp_path / "{split}.tfrecord"))
  shards = []
  for index in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=index)
    shards.append(set(sources.text_documents(config.data, "train", context)
                      .as_numpy_iterator()))
  assert not shards[0] & shards[1]
  assert {t.decode() for t in shards[0] | shards[1]} == {f"row {i}" for i in range(7)}


def test_unknown_and_unprepared_tfds_datasets_fail_fast(tmp_path):
  config = make_config(data_dir=str(tmp_path), dataset="no_such_dataset_xyz")
  with pytest.raises(ValueError, match="'no_such_dataset_xyz' is not a TFDS dataset"):
    sources.load_source(config.data, "train")
  config.data.dataset = "imdb_reviews"
  with pytest.raises(ValueError, match="'imdb_reviews' is not prepared in"):
    sources.load_source(config.data, "train")
