"""Served encoders are the training preprocessors: same features from the same text; entity
spans read IOB2 tag sets by the one IOB2 parser and other tag sets tag by tag."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.data.conftest import make_config, write_tfrecord
from tests.export.conftest import NER_TAGS, TOKENIZER_KINDS, tiny_tokenizer
from tfllm.data import pipelines
from tfllm.export import heads
from tfllm.tagging import spans as spans_lib

TEXTS = ["john lives in paris", "the film was good !", "a", "hello world , to be or not"]


def _pipeline_batch(tmp_path, task, tokenizer):
  """The first evaluation batch of `task` over TEXTS (one label or tag a word: 0)."""
  words = [text.split() for text in TEXTS]
  examples = ([{"text": text, "label": 0} for text in TEXTS] if task == "sequence_classification"
              else [{"text": w, "label": [0] * len(w)} for w in words])
  tmp_path.mkdir()
  write_tfrecord(tmp_path / "train.tfrecord", examples)
  config = make_config(dataset="tfrecord", files=str(tmp_path / "{split}.tfrecord"),
                       sequence_length=8)
  config.task.update(dict(name=task, labels=["A", "B"]))
  dataset = pipelines.make_dataset(config, "train", tokenizer, training=False)
  return tf.nest.map_structure(lambda t: t.numpy(), next(iter(dataset)))


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_served_encoders_give_the_training_features(tmp_path, kind):
  tokenizer = tiny_tokenizer(kind)
  text = heads.sanitize_text(tf.constant(TEXTS))
  features, _, _ = _pipeline_batch(tmp_path / "cls", "sequence_classification", tokenizer)
  # In a graph, as served (eager keras-hub tokenizers return Python lists).
  served, _ = tf.function(heads.TextEncoder(tokenizer, 8))(text)
  for name in ("token_ids", "padding_mask"):
    np.testing.assert_array_equal(served[name].numpy(), features[name])
  # Token classification: the same pieces, and the first pieces are where the weights are.
  features, _, weights = _pipeline_batch(tmp_path / "tok", "token_classification", tokenizer)
  served, context = tf.function(heads.WordEncoder(tokenizer, 8))(text)
  for name in ("token_ids", "padding_mask"):
    np.testing.assert_array_equal(served[name].numpy(), features[name])
  np.testing.assert_array_equal(context["first"].numpy(), weights > 0)


def test_tag_spans_read_iob2_by_the_iob2_parser_and_other_tag_sets_tag_by_tag():
  type_of, begins, types = spans_lib.tag_spans(NER_TAGS)
  assert [types[t] if t >= 0 else "O" for t in type_of] == ["O", "PER", "PER", "LOC", "LOC"]
  assert begins == (False, True, False, True, False)
  # Part-of-speech tags are no IOB2 set: each tag is its own type, its runs are spans.
  type_of, begins, types = spans_lib.tag_spans(["O", "NN", "VB"])
  assert type_of == (-1, 0, 1) and not any(begins) and types == ("NN", "VB")
  kinds, starts, ends, counts = spans_lib.entity_spans(
      tf.constant([[1, 1, 2, 0, 1]]), tf.constant([5]), type_of, begins)
  assert int(counts[0]) == 3
  assert [(types[k], s, e) for k, s, e in zip(kinds[0].numpy(), starts[0].numpy(),
                                              ends[0].numpy())] == [("NN", 0, 2), ("VB", 2, 3),
                                                                    ("NN", 4, 5)]
