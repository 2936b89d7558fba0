"""Token classification batches: words -> first-piece tags, optionally with document context."""

from __future__ import annotations

import tensorflow as tf

from tfllm.data import sources
from tfllm.data.pipelines import labels as labels_lib
from tfllm.data.preprocessors import TOKENIZE_BATCH, TokenClassifierPreprocessor

AUTOTUNE = tf.data.AUTOTUNE
# Sentences looked at on each side for document context; the token budget
# (`data.context_tokens`) usually runs out first.
CONTEXT_SENTENCES = 8


def _context_windows(sentences: tf.data.Dataset, window: int) -> tf.data.Dataset:
  """Each sentence with `window` sentences on each side (blank ones past the ends)."""
  size = 2 * window + 1
  # Empty sentences before the first and after the last let every sentence sit mid-window.
  blank = tf.data.Dataset.from_tensors(tuple(
      tf.zeros([0], s.dtype) if s.shape.rank else tf.constant(-1, s.dtype)
      for s in sentences.element_spec)).repeat(window)
  return blank.concatenate(sentences).concatenate(blank).window(
      size, shift=1, drop_remainder=True).flat_map(
          lambda *parts: tf.data.Dataset.zip(parts).ragged_batch(size))


def with_document_context(sentences: tf.data.Dataset, context_tokens: int,
                          max_tokens: int) -> tf.data.Dataset:
  """Adds to each sentence the word pieces of the sentences around it in its document.

  Args:
    sentences: elements `(piece_ids, word_ids, piece_tags, first_piece, document)` in
      document order: four int32 `[n]` vectors (as from `align_word_tags`) and the
      sentence's document id (scalar).
    context_tokens: pieces of context to add: the nearest ones before and after the
      sentence, half on each side (more on one side when the other runs out), from its own
      document only, within `CONTEXT_SENTENCES` sentences.
    max_tokens: a sentence and its context never exceed this many pieces (the sentence's own
      pieces come first: a long sentence gets less context, or none).

  Returns:
    Elements `(piece_ids, word_ids, piece_tags, first_piece)`, one a sentence in the same
    order: context pieces carry word id -1, tag 0 and first_piece 0, so they are read but
    neither trained on nor scored.
  """
  window = CONTEXT_SENTENCES

  def assemble(piece_ids, word_ids, piece_tags, first_piece, documents):
    same = tf.equal(documents, documents[window])
    before = tf.ragged.boolean_mask(piece_ids[:window], same[:window]).flat_values
    after = tf.ragged.boolean_mask(piece_ids[window + 1:], same[window + 1:]).flat_values
    own = piece_ids[window]
    budget = tf.clip_by_value(max_tokens - tf.size(own), 0, context_tokens)
    n_before, n_after = tf.size(before), tf.size(after)
    take_before = tf.minimum(n_before, tf.maximum(budget // 2, budget - n_after))
    take_after = tf.minimum(n_after, budget - take_before)

    def around(middle, fill):
      return tf.concat([tf.fill([take_before], fill), middle, tf.fill([take_after], fill)], 0)

    return (tf.concat([before[n_before - take_before:], own, after[:take_after]], 0),
            around(word_ids[window], -1), around(piece_tags[window], 0),
            around(first_piece[window], 0))

  return _context_windows(sentences, window).map(assemble, num_parallel_calls=AUTOTUNE)


def tagged_pieces(data, task, preprocessor: TokenClassifierPreprocessor,
                  source: sources.Source) -> tf.data.Dataset:
  """A token-classification split in source order, one element a sentence.

  Returns:
    Elements `(piece_ids, word_ids, piece_tags, first_piece)`, int32 `[n]` each (see
    `align_word_tags`), with document context when `data.context_tokens` > 0.
  """
  map_label = labels_lib.label_mapper(data, task, source)
  text_name, label_name = source.text_feature, source.label_feature
  context, document_name = data.context_tokens, data.document_feature
  if context:
    sources.check_feature(document_name, list(source.examples.element_spec),
                          "document_feature", repr(data.dataset))

  def parts(example):
    document = (tf.cast(labels_lib.scalar(example[document_name]), tf.int64) if context
                else tf.constant(0, tf.int64))
    return sources.as_words(example[text_name]), map_label(example[label_name]), document

  def tokenize(words, tags, documents):
    return preprocessor.tagged(words, tags) + (documents,)

  # Order matters here (neighbours are context): deterministic maps. The last map also
  # turns the unbatched rows (ragged specs of ragged rank 0) into plain tensors.
  sentences = source.examples.map(parts).ragged_batch(TOKENIZE_BATCH).map(
      tokenize, num_parallel_calls=AUTOTUNE, deterministic=True).unbatch().map(
          lambda *parts: parts if context else parts[:4])
  if not context:
    return sentences
  # [CLS] and [SEP] take two of the sequence's tokens.
  return with_document_context(sentences, context, data.sequence_length - 2)


def token_classification_dataset(preprocessor: TokenClassifierPreprocessor, source,
                                 batch_size, training):
  """`[CLS] pieces [SEP]` with word tags on first pieces (see `tfllm.data.pipelines`).

  `source.examples` are `tagged_pieces` elements (`make_dataset` reads them in order).
  """
  return source.examples.ragged_batch(batch_size, drop_remainder=training).map(
      preprocessor.pack, num_parallel_calls=AUTOTUNE)
