"""Masked LM pretraining batches: packed `[CLS] block [SEP]` with dynamic masking."""

from __future__ import annotations

import tensorflow as tf

from tfllm.data.pipelines.causal_lm import packed_blocks
from tfllm.data.preprocessors import MaskedLMPreprocessor

AUTOTUNE = tf.data.AUTOTUNE


def masked_lm_dataset(data, source, tokenizer, batch_size, training, mask_seed=(0, 0)):
  """Packed `[CLS] block [SEP]` sequences with dynamic masking (see `tfllm.data.pipelines`).

  `mask_seed` (two ints) and a batch's index in the pipeline seed its masks (`mask_tokens`):
  a repeated block is masked anew, and a pipeline yields the same masks each time it runs.
  """
  length = data.sequence_length
  preprocessor = MaskedLMPreprocessor(tokenizer, length, data.mlm_probability,
                                      data.max_predictions, purpose="this task")
  if length < 3:
    raise ValueError(f"config.data.sequence_length={length} leaves no room for text between "
                     "[CLS] and [SEP]; masked_lm needs >= 3")
  blocks = packed_blocks(data, source, preprocessor, length - 2, training)
  base_seed = tf.constant(mask_seed, tf.int64)

  def to_example(index, block):
    return preprocessor.mask_blocks(
        block, tf.random.experimental.stateless_fold_in(base_seed, index))

  return blocks.batch(batch_size, drop_remainder=True).enumerate().map(
      to_example, num_parallel_calls=AUTOTUNE)
