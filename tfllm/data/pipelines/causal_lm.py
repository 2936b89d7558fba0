"""Packed language-model blocks: documents -> one token stream -> blocks (causal and masked)."""

from __future__ import annotations

import tensorflow as tf

from tfllm.data import sources
from tfllm.data.preprocessors import TOKENIZE_BATCH, CausalLMPreprocessor

AUTOTUNE = tf.data.AUTOTUNE


def token_stream(documents: tf.data.Dataset, tokenize) -> tf.data.Dataset:
  """`tokenize(texts [batch]) -> int32 [tokens]` over batches of `documents` (string scalars).

  Returns:
    dataset of 1-D int32 tensors (several documents each); concatenated in order they are
    the documents' tokens (with the separator `tokenize` puts after each document).
  """
  return documents.batch(TOKENIZE_BATCH).map(tokenize, num_parallel_calls=AUTOTUNE)


def pack_blocks(stream: tf.data.Dataset, block_length: int) -> tf.data.Dataset:
  """Cuts a stream of 1-D token chunks into consecutive blocks of `block_length` tokens.

  The tokens left after the last full block of a chunk carry over to the next chunk, so
  every token lands in exactly one block, in order; only the final remainder (shorter than a
  block) of a finite stream is dropped.

  Returns:
    dataset of int32 [block_length] tensors.
  """
  def cut(carry, chunk):
    tokens = tf.concat([carry, chunk], axis=0)
    full = (tf.shape(tokens)[0] // block_length) * block_length
    blocks = tf.reshape(tokens[:full], [-1, block_length])
    return tokens[full:], blocks

  return stream.scan(tf.zeros([0], tf.int32), cut).unbatch()


def packed_blocks(data, source: sources.Source, tokenize, block_length: int,
                  training: bool) -> tf.data.Dataset:
  """Blocks of `block_length` tokens of the source's documents (shuffled when training)."""
  name = source.text_feature
  documents = source.examples.map(lambda example: sources.as_text(example[name]),
                                  num_parallel_calls=AUTOTUNE)
  blocks = pack_blocks(token_stream(documents, tokenize), block_length)
  if training:
    blocks = blocks.shuffle(data.shuffle_buffer, seed=data.seed,
                            reshuffle_each_iteration=True)
  return blocks


def causal_lm_dataset(data, source, tokenizer, batch_size, training):
  """Packed next-token prediction batches (see `tfllm.data.pipelines`)."""
  preprocessor = CausalLMPreprocessor(tokenizer, purpose="this task")
  blocks = packed_blocks(data, source, preprocessor, data.sequence_length + 1, training)
  return blocks.batch(batch_size, drop_remainder=True).map(
      preprocessor.to_example, num_parallel_calls=AUTOTUNE)
