"""Sequence classification batches: `[CLS] text [SEP]` padded to L, one label an example."""

from __future__ import annotations

import tensorflow as tf

from tfllm.data import sources
from tfllm.data.pipelines import labels as labels_lib
from tfllm.data.preprocessors import SequenceClassifierPreprocessor

AUTOTUNE = tf.data.AUTOTUNE


def sequence_classification_dataset(data, task, source, tokenizer, batch_size, training):
  """`[CLS] text [SEP]` padded to L, one label an example (see `tfllm.data.pipelines`)."""
  preprocessor = SequenceClassifierPreprocessor(tokenizer, data.sequence_length,
                                                purpose="this task")
  map_label = labels_lib.label_mapper(data, task, source)
  text_name, label_name = source.text_feature, source.label_feature
  examples = source.examples.map(
      lambda example: (sources.as_text(example[text_name]),
                       map_label(labels_lib.scalar(example[label_name]))),
      num_parallel_calls=AUTOTUNE)

  def to_example(texts, labels):
    return preprocessor(texts), labels, tf.ones(tf.shape(labels), tf.float32)

  # Evaluation keeps the last partial batch (`make_dataset` pads it): every example counts.
  return examples.batch(batch_size, drop_remainder=training).map(
      to_example, num_parallel_calls=AUTOTUNE)
