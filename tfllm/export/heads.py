"""What a served classification or tagging head computes: text -> features (through the task's
preprocessor, the object the training pipeline maps with) and logits -> named outputs.

`TextEncoder`/`WordEncoder` and `LabelOutputs`/`TagOutputs` are shared by the single-task and
the multi-task signatures (`tfllm.export.signatures`) and by the LiteRT runner.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import tensorflow as tf

from tfllm.data.preprocessors import SequenceClassifierPreprocessor, TokenClassifierPreprocessor
from tfllm.tagging.decoding import decode_word_tags
from tfllm.tagging.iob2 import tag_decoding
from tfllm.tagging.spans import entity_spans, tag_spans


def sanitize_text(text):
  """Replaces invalid UTF-8 bytes with U+FFFD, so tokenizers never see malformed input."""
  return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")


def label_names(section) -> Tuple[str, ...]:
  """Class or tag names of a task or head section: its `labels`, else `"0" ... "n-1"`."""
  if section.labels:
    return tuple(str(label) for label in section.labels)
  return tuple(str(i) for i in range(section.num_classes))


class TextEncoder:
  """Text -> `[CLS] pieces [SEP]` features by `SequenceClassifierPreprocessor` (what a
  classification head was trained on); longer texts are truncated.

  Call: sanitized text `[batch]` -> `(features, {})`.
  """

  def __init__(self, tokenizer, sequence_length: int,
               purpose: str = "serving sequence_classification"):
    self.preprocessor = SequenceClassifierPreprocessor(tokenizer, sequence_length, purpose)

  def __call__(self, text):
    return self.preprocessor(text), {}


class WordEncoder:
  """Whitespace words -> `[CLS] pieces [SEP]` by `TokenClassifierPreprocessor` (what a
  tagging head was trained on).

  Call: sanitized text `[batch]` -> `(features, {"words": ragged words, "first": bool
  [batch, sequence_length], True at each word's first piece})`; words past the sequence
  length have no first piece.
  """

  def __init__(self, tokenizer, sequence_length: int,
               purpose: str = "serving token_classification"):
    self.preprocessor = TokenClassifierPreprocessor(tokenizer, sequence_length, purpose)

  def __call__(self, text):
    words = tf.strings.split(text)
    features, first = self.preprocessor(words)
    return features, {"words": words, "first": first}


class LabelOutputs:
  """A classification head's served outputs: `{label, label_id, probabilities}`.

  Call: logits `[batch, num_classes]` and the `TextEncoder`'s context -> outputs.
  """

  encoder = TextEncoder

  def __init__(self, labels: Sequence[str]):
    self.labels = tuple(labels)

  def __call__(self, logits, encoded):
    del encoded  # the label depends on the logits only
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
    label_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return {"label": tf.gather(tf.constant(self.labels), label_id), "label_id": label_id,
            "probabilities": probabilities}


class TagOutputs:
  """A tagging head's served outputs: one tag a word (its first piece's, decoded as
  `decoding` says) and the entities the tags spell (see `docs/serving.md`).

  Call: logits `[batch, sequence_length, num_tags]` and the `WordEncoder`'s context ->
  `{words, tags, num_words, entity_types, entity_starts, entity_ends, num_entities}`.
  """

  encoder = WordEncoder

  def __init__(self, tags: Sequence[str], decoding: str):
    self.tags = tuple(tags)
    self.decoding = decoding
    self.type_of, self.begins, self.entity_types = tag_spans(self.tags)

  def __call__(self, logits, encoded):
    words, first = encoded["words"], encoded["first"]
    piece_tags = decode_word_tags(logits, first, self.tags, self.decoding, trim=True)
    word_tags = tf.ragged.boolean_mask(piece_tags, first)
    num_words = tf.cast(word_tags.row_lengths(), tf.int32)
    kept_words = tf.ragged.boolean_mask(
        words, tf.ragged.range(words.row_lengths()) < tf.cast(num_words, tf.int64)[:, None])
    tag_ids = word_tags.to_tensor(default_value=0)
    types, starts, ends, num_entities = entity_spans(tag_ids, num_words, self.type_of,
                                                     self.begins)
    type_names = tf.constant(list(self.entity_types) + [""])
    return {
        "words": kept_words.to_tensor(default_value=""),
        "tags": tf.ragged.map_flat_values(
            tf.gather, tf.constant(self.tags), word_tags).to_tensor(default_value=""),
        "num_words": num_words,
        "entity_types": tf.gather(type_names, tf.where(types >= 0, types, len(self.entity_types))),
        "entity_starts": starts,
        "entity_ends": ends,
        "num_entities": num_entities,
    }


def head_outputs(section):
  """`LabelOutputs` or `TagOutputs` of a classification or tagging task / head section."""
  task = section.get("task", section.get("name"))
  if task == "sequence_classification":
    return LabelOutputs(label_names(section))
  if task == "token_classification":
    return TagOutputs(label_names(section), tag_decoding(section))
  raise ValueError(f"a {task} head has no served signature here; served heads: "
                   "sequence_classification, token_classification")
