"""The examples a pipeline reads: a split's source, subset or augmented, sharded, shuffled."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfllm.data import augmented_source, sources, train_subset

AUTOTUNE = tf.data.AUTOTUNE


def options() -> tf.data.Options:
  """The options of every pipeline: one element order, explicit sharding."""
  # Every pipeline yields its elements in one order, a function of the data and `data.seed`
  # alone: a resumed run that skips the batches it consumed then reads the batches an
  # uninterrupted run reads (exact resume). Parallel maps stay parallel; only their outputs
  # wait for their turn (docs/data.md has the throughput before and after).
  result = tf.data.Options()
  result.deterministic = True
  # Sharding is explicit (by example or file): keep tf.distribute from sharding again.
  result.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
  return result


def read_examples(config, split, input_context, training, in_order=None) -> sources.Source:
  """The split's examples for one input pipeline, shuffled and repeated when training.

  `config` is the full config: an augmented source reads `task` too (its cache key holds
  the labels). `in_order(source) -> tf.data.Dataset` transforms the examples while they are
  still in source order (before shuffling): document context needs a sentence's neighbours.
  """
  data = config.data
  # Document context reads neighbouring examples: the source keeps its order.
  keep_order = bool(data.context_tokens)
  if (keep_order and data.dataset == "tfrecord" and input_context
      and input_context.num_input_pipelines > 1):
    raise ValueError(f"config.data.context_tokens={data.context_tokens} needs whole "
                     "documents in each input pipeline, but TFRecord records are sharded "
                     f"round-robin over {input_context.num_input_pipelines} pipelines; use a "
                     "TFDS dataset (contiguous shards) or context_tokens=0")
  # A low-resource subset is chosen from the whole split in source order, then sharded (an
  # augmented source chooses it before augmenting).
  augmented = bool(training and augmented_source.enabled(data))
  subset = bool(training and not augmented and data.get("train_examples", 0)
                and split == data.train_split)
  if augmented:
    source = augmented_source.augmented_source(config, split, input_context)
  else:
    source = sources.load_source(data, split, None if subset else input_context,
                                 shuffle=training and not keep_order and not subset,
                                 seed=data.seed)
  examples = in_order(source) if in_order else source.examples
  if subset:
    examples = train_subset.select(examples, source.num_examples, data, input_context)
  if training:
    examples = examples.shuffle(data.shuffle_buffer, seed=data.seed,
                                reshuffle_each_iteration=True).repeat()
  return dataclasses.replace(source, examples=examples)
