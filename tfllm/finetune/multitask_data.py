"""Input pipeline of a multi-task model: each head's own dataset, mixed batch by batch.

Every batch comes from one head's data (`config.finetune.head_data.<head>`), built by the
single-task pipeline (`tfllm.data.pipelines.make_dataset`), and is widened to the multi-task
layout: features of every head (`word_ids` is -1 where a batch has none), labels and sample
weights as `{head: tensor}`, with zero weights for the heads the batch does not train. The
trainer's per-head losses divide by each head's global weight sum, so a step trains the heads
its batches carry. Training draws heads at random in proportion to `weight`; evaluation reads
each head's eval split once, one after the other.
"""

from __future__ import annotations

import copy

import ml_collections
import tensorflow as tf

from tfllm.config import ConfigError
from tfllm.data import pipelines
from tfllm.finetune.config import SCHEMAS as FINETUNE_SCHEMAS
from tfllm.models.config import SCHEMAS as MODEL_SCHEMAS

HEAD_SCHEMA = MODEL_SCHEMAS["task"].entry_schemas["heads"]
HEAD_DATA_SCHEMA = FINETUNE_SCHEMAS["finetune"].entry_schemas["head_data"]


def head_config(config, head_name):
  """A single-task config for one head: its task section and data source."""
  # Entries as given in a config file: fill in the keys left at their defaults.
  head = dict(HEAD_SCHEMA.defaults(), **config.task.heads[head_name].to_dict())
  source = dict(HEAD_DATA_SCHEMA.defaults(), **config.finetune.head_data[head_name].to_dict())
  sub = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  sub.task = ml_collections.ConfigDict(dict(
      name=head["task"], labels=list(head["labels"]), num_classes=head["num_classes"],
      pooling=head["pooling"], dropout=head["dropout"], heads={}))
  sub.data.update({key: source[key] for key in ("dataset", "text_feature", "label_feature",
                                                "train_split", "eval_split", "test_split")})
  return sub


def _widen(head_name, heads, batch_size):
  """Maps one head's `(features, labels, weight)` batch to the multi-task layout."""
  def widen(features, labels, weight):
    # The batch's own length: with `data.bucket_lengths` it is its bucket's.
    sequence_length = tf.shape(features["token_ids"])[1]

    def label_shape(task):
      return [batch_size, sequence_length] if task == "token_classification" else [batch_size]

    features = dict(features)
    if "word_ids" not in features:
      features["word_ids"] = tf.fill([batch_size, sequence_length], -1)
    all_labels, all_weights = {}, {}
    for name, head in heads.items():
      if name == head_name:
        all_labels[name], all_weights[name] = labels, weight
      else:
        all_labels[name] = tf.zeros(label_shape(head.task), tf.int32)
        all_weights[name] = tf.zeros(label_shape(head.task), tf.float32)
    return features, all_labels, all_weights
  return widen


def multitask_dataset(config, split_kind: str, tokenizer, input_context=None,
                      training: bool = True) -> tf.data.Dataset:
  """Mixed per-head batches of a `multi_task` config.

  Args:
    config: full config with `task.name == "multi_task"` and `finetune.head_data`.
    split_kind: `train`, `eval` or `test`: which of each head's splits to read.
    tokenizer, input_context, training: as for `tfllm.data.pipelines.make_dataset`.
  """
  if split_kind not in ("train", "eval", "test"):
    raise ValueError(f"split_kind={split_kind!r} is not accepted; use train, eval or test")
  for head_name, head in config.task.heads.items():
    if head_name not in config.finetune.head_data:
      raise ConfigError(f"config.finetune.head_data has no entry for head {head_name!r}; "
                        "give its dataset (heads: " + ", ".join(config.task.heads) + ")")
    if head.task not in ("sequence_classification", "token_classification"):
      raise ConfigError(f"config.task.heads.{head_name}.task={head.task!r}: multi-task data "
                        "supports sequence_classification and token_classification heads")
  batch_size = (input_context.get_per_replica_batch_size(config.train.global_batch_size)
                if input_context else config.train.global_batch_size)
  datasets, weights = [], []
  for head_name in config.task.heads:
    sub = head_config(config, head_name)
    split = sub.data[f"{split_kind}_split"]
    dataset = pipelines.make_dataset(sub, split, tokenizer, input_context=input_context,
                                     training=training)
    widen = _widen(head_name, config.task.heads, batch_size)
    datasets.append(dataset.map(widen))
    weights.append(float(config.finetune.head_data[head_name].get("weight", 1.0)))
  if not training:
    mixed = datasets[0]
    for dataset in datasets[1:]:
      mixed = mixed.concatenate(dataset)
    return mixed
  return tf.data.Dataset.sample_from_datasets(datasets, weights=weights, seed=config.data.seed,
                                              stop_on_empty_dataset=True)
