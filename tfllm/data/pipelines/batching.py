"""Batching of classification examples: length buckets and padded partial batches."""

from __future__ import annotations

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def fill_values(element_spec, pad_id: int):
  """What pads each component of a classification example: the pad token for `token_ids`,
  -1 for `word_ids`, zeros (False, weight 0) for the rest."""
  features, labels, weight = element_spec

  def fill(name, spec):
    value = {"token_ids": pad_id, "word_ids": -1}.get(name, 0)
    return tf.cast(tf.constant(value), spec.dtype)

  return ({name: fill(name, spec) for name, spec in features.items()},
          tf.nest.map_structure(lambda spec: fill("", spec), labels),
          tf.nest.map_structure(lambda spec: fill("", spec), weight))


def bucket_by_length(batches: tf.data.Dataset, bucket_lengths, sequence_length: int,
                     batch_size: int, pad_id: int, drop_remainder: bool) -> tf.data.Dataset:
  """Re-batches classification examples so that each batch pads only to its length bucket.

  Args:
    batches: `(features, labels, weight)` batches padded to `sequence_length`.
    bucket_lengths: increasing lengths below `sequence_length`; an example of n tokens
      (padding excluded) goes to the first bucket of length >= n, or to `sequence_length`.
    batch_size, pad_id: examples a batch; the token that pads `token_ids`.
    drop_remainder: drop each bucket's last partial batch (training) or keep it (evaluation).

  Returns:
    Batches of `batch_size` examples whose sequence axis is one of the bucket lengths.
  """
  def trim(features, labels, weight):
    n = tf.reduce_sum(tf.cast(features["padding_mask"], tf.int32))
    cut = lambda t: t[:n] if t.shape.rank == 1 and t.shape[0] == sequence_length else t
    return tf.nest.map_structure(cut, (features, labels, weight))

  examples = batches.unbatch()
  fill = fill_values(examples.element_spec, pad_id)
  # Boundaries are exclusive upper bounds; padding goes to a bucket's boundary minus one.
  boundaries = [length + 1 for length in bucket_lengths] + [sequence_length + 1]
  return examples.map(trim, num_parallel_calls=AUTOTUNE).bucket_by_sequence_length(
      lambda features, labels, weight: tf.shape(features["token_ids"])[0],
      bucket_boundaries=boundaries, bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
      padding_values=fill, pad_to_bucket_boundary=True, drop_remainder=drop_remainder)


def pad_partial_batches(batches: tf.data.Dataset, batch_size: int,
                        pad_id: int) -> tf.data.Dataset:
  """Pads a batch of fewer than `batch_size` examples with examples of weight 0.

  Evaluation then covers the whole split with the static batch size the compiled step has.
  """
  fill = fill_values(batches.element_spec, pad_id)

  def pad(*batch):
    missing = batch_size - tf.shape(batch[0]["token_ids"])[0]

    def pad_one(tensor, value):
      paddings = [[0, missing]] + [[0, 0]] * (tensor.shape.rank - 1)
      padded = tf.pad(tensor, paddings, constant_values=value)
      return tf.ensure_shape(padded, [batch_size] + tensor.shape[1:])
    return tf.nest.map_structure(pad_one, batch, fill)

  return batches.map(pad, num_parallel_calls=AUTOTUNE)
