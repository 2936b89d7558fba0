"""Entity spans of word tags: which tags begin an entity, and the padded spans of a batch."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from tfllm.tagging import iob2


def tag_spans(tags: Sequence[str]):
  """Per tag id: `(entity type index or -1 for O, begins an entity)` and the type names.

  An IOB2 tag set is read by the one IOB2 parser (`iob2.iob2_scheme`): `B-X` begins an
  entity of type X, `I-X` continues one (or begins it after another type), `O` is outside.
  A tag set that is not IOB2 (part-of-speech or chunk tags: a token classification head
  accepts any tag set, and its served entities must not fail) makes each tag other than `O`
  its own type, whose runs are spans.

  Returns:
    `(type_of, begins, type_names)`: tuples indexed by tag id, and the entity type names.
  """
  tags = tuple(tags)
  try:
    prefixes, types, type_names = iob2.iob2_scheme(tags)
  except ValueError:
    type_names = [tag for tag in dict.fromkeys(tags) if tag != "O"]
    return (tuple(-1 if tag == "O" else type_names.index(tag) for tag in tags),
            (False,) * len(tags), tuple(type_names))
  return tuple(types), tuple(prefix == iob2.BEGIN for prefix in prefixes), tuple(type_names)


def entity_spans(tag_ids, num_words, type_of, begins):
  """Entities of padded word tags as padded `(type index, start, end)`, end exclusive.

  Args:
    tag_ids: int32 `[batch, words]` (values past `num_words` are ignored).
    num_words: int32 `[batch]`.
    type_of, begins: per tag id, from `tag_spans`.

  Returns:
    `(types, starts, ends)` int32 `[batch, max entities]` padded with -1, and
    `num_entities [batch]`.

  Example:

  >>> type_of, begins, names = tag_spans(["O", "B-PER", "I-PER"])
  >>> _, starts, ends, n = entity_spans(tf.constant([[1, 2, 0, 1]]), tf.constant([4]),
  ...                                   type_of, begins)
  >>> starts.numpy().tolist(), ends.numpy().tolist(), n.numpy().tolist()
  ([[0, 3]], [[2, 4]], [2])
  """
  batch, width = tf.shape(tag_ids)[0], tf.shape(tag_ids)[1]
  valid = tf.range(width)[None, :] < num_words[:, None]
  types = tf.where(valid, tf.gather(tf.constant(type_of, tf.int32), tag_ids), -1)
  begin = tf.logical_and(valid, tf.gather(tf.constant(begins), tag_ids))
  previous = tf.pad(types[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
  starts = tf.logical_and(types >= 0, tf.logical_or(begin, previous != types))
  inside = types >= 0  # every typed word is a start or continues the entity before it
  flat_starts = tf.reshape(starts, [-1])
  entity = tf.math.cumsum(tf.cast(flat_starts, tf.int32)) - 1
  num_total = tf.reduce_sum(tf.cast(flat_starts, tf.int32))
  positions = tf.reshape(tf.tile(tf.range(width)[None, :], [batch, 1]), [-1])
  in_flat = tf.reshape(inside, [-1])
  ends = tf.math.unsorted_segment_max(tf.boolean_mask(positions + 1, in_flat),
                                      tf.boolean_mask(entity, in_flat), num_total)
  rows = tf.boolean_mask(tf.reshape(tf.tile(tf.range(batch)[:, None], [1, width]), [-1]),
                         flat_starts)
  ragged = lambda values: tf.RaggedTensor.from_value_rowids(  # noqa: E731
      values, rows, nrows=batch).to_tensor(default_value=-1)
  num_entities = tf.math.bincount(rows, minlength=batch, maxlength=batch, dtype=tf.int32)
  return (ragged(tf.boolean_mask(tf.reshape(types, [-1]), flat_starts)),
          ragged(tf.boolean_mask(positions, flat_starts)), ragged(ends), num_entities)
