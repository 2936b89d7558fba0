"""tf.data input pipelines, one per task, with static shapes (unless bucketed by length).

`make_dataset(config, split, tokenizer, input_context, training)` yields batches
`(features, labels, sample_weight)` of `B` examples (the per-replica batch when an
`InputContext` is given, else `config.train.global_batch_size`) and `L =
config.data.sequence_length` tokens:

  causal_lm                 features token_ids int32 [B, L], padding_mask bool [B, L];
                            labels int32 [B, L] (token_ids shifted by one); weight [B, L].
                            Documents are tokenized, each followed by an end-of-document
                            token, concatenated and cut into blocks of L + 1 (packing: no
                            padding, no token lost or repeated; the tail of a finite split
                            shorter than a block is dropped).
  masked_lm                 features token_ids [B, L] (masked), padding_mask [B, L],
                            mask_positions int32 [B, P]; labels int32 [B, P] (original ids);
                            weight [B, P] (0 for unused slots). Packed like causal LM into
                            `[CLS] block [SEP]`; masks drawn anew for every batch by
                            `mask_tokens`, a stateless function of `data.seed` and the
                            batch's index (rate `data.mlm_probability`, 80% mask / 10%
                            random / 10% kept), P = `data.max_predictions`.
  sequence_classification   features token_ids, padding_mask [B, L] (`[CLS] text [SEP]`,
                            truncated or padded); labels int32 [B]; weight [B].
  token_classification      features token_ids, padding_mask, word_ids int32 [B, L] (index of
                            the word a piece belongs to, -1 for special and pad tokens);
                            labels int32 [B, L] (the word's tag on its first piece);
                            weight [B, L] (1 on first pieces, 0 elsewhere). With
                            `data.context_tokens`, pieces of the sentences around it in its
                            document surround a sentence (word id -1, weight 0).

Training pipelines shuffle (seeded by `data.seed`, reshuffled each epoch) and repeat;
evaluation ones read the split once in order. Every pipeline yields one order, however its
parallel maps are scheduled: rebuilt and skipped by k batches, it yields what it yielded from
batch k (how a resumed run finds its place). Tokenization runs as TF ops inside the pipeline,
through the task's preprocessor (`tfllm.data.preprocessors`), the object the served
signatures call too.

Classification evaluation covers the whole split: the last partial batch is filled up to B
with examples of weight 0. With `data.bucket_lengths` (classification only) examples are
batched by length and each batch pads only to its bucket, so L varies between batches (one
compiled step per bucket): CoNLL-2003 sentences are 16 word pieces at the median, and a batch
padded to 128 spends most of its compute on padding.

The package holds one module per task (`causal_lm`, `masked_lm`, `classification`,
`tagging`) and the shared parts (`examples`: reading a split; `labels`; `batching`: buckets
and padded partial batches). Components take their config section (`data`, `task`) and plain
arguments; `make_dataset` reads the global batch size once and passes the batch size down.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from tfllm.config import ConfigError
from tfllm.data import preprocessors
from tfllm.data.config import (CLASSIFICATION_TASKS, check_bucket_lengths,
                               check_context_tokens, check_with_task)
from tfllm.data.masking import mask_tokens
from tfllm.data.pipelines import batching, causal_lm, classification, examples, masked_lm
from tfllm.data.pipelines import tagging
from tfllm.data.pipelines.labels import label_names, resolve_labels
from tfllm.data.pipelines.tagging import with_document_context
from tfllm.data.tokenizers import required_special_ids

__all__ = ["TASKS", "make_dataset", "check_bucket_lengths", "check_context_tokens",
           "label_names", "resolve_labels", "mask_tokens", "with_document_context"]

TASKS = ("causal_lm", "masked_lm", "sequence_classification", "token_classification")
AUTOTUNE = tf.data.AUTOTUNE


def _task_name(config) -> str:
  name = config.task.name
  if name not in TASKS:
    raise ValueError(f"config.task.name={name!r} has no single input pipeline; accepted: "
                     f"{', '.join(TASKS)} (a multi_task job builds one dataset per head)")
  return name


def batch_size_of(global_batch_size: int, input_context=None) -> int:
  """Examples a batch of one input pipeline: the per-replica share of the global batch."""
  if input_context is None:
    return global_batch_size
  return input_context.get_per_replica_batch_size(global_batch_size)


def _build(task, config, split, tokenizer, input_context, training, batch_size):
  """The task's batches (before bucketing, padding and prefetching)."""
  data = config.data
  if task == "token_classification":
    preprocessor = preprocessors.TokenClassifierPreprocessor(tokenizer, data.sequence_length,
                                                             purpose="this task")
    in_order = functools.partial(tagging.tagged_pieces, data, config.task, preprocessor)
    source = examples.read_examples(config, split, input_context, training, in_order)
    return tagging.token_classification_dataset(preprocessor, source, batch_size, training)
  source = examples.read_examples(config, split, input_context, training)
  if task == "causal_lm":
    return causal_lm.causal_lm_dataset(data, source, tokenizer, batch_size, training)
  if task == "masked_lm":
    # Each input pipeline masks with its own seeds (its batches are other blocks anyway).
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    return masked_lm.masked_lm_dataset(data, source, tokenizer, batch_size, training,
                                       mask_seed=(data.seed, pipeline_id))
  return classification.sequence_classification_dataset(data, config.task, source, tokenizer,
                                                         batch_size, training)


def make_dataset(config, split: str, tokenizer, input_context=None,
                 training: bool = True) -> tf.data.Dataset:
  """The input pipeline of `config.task.name` over `split`.

  Args:
    config: the full config (`data`, `task`, `train.global_batch_size` are read).
    split: split name, e.g. `config.data.train_split` (TFDS slicing such as
      `"train[:10%]"` works for TFDS datasets).
    tokenizer: from `tfllm.data.tokenizers.get_tokenizer`.
    input_context: `tf.distribute.InputContext` (from
      `strategy.distribute_datasets_from_function`): the dataset reads shard
      `input_pipeline_id` of `num_input_pipelines` and batches per replica.
    training: shuffle and repeat forever (True), or read the split once in order (False).

  Returns:
    `tf.data.Dataset` of `(features, labels, sample_weight)` with static shapes.

  Raises:
    ValueError: unknown task or dataset, missing feature, labels outside the label set,
      a tokenizer without the special tokens the task needs.
  """
  task = _task_name(config)
  data = config.data
  if data.sequence_length < 2:
    raise ConfigError(f"config.data.sequence_length={data.sequence_length} is too "
                      "short; accepted: >= 2")
  # Library callers build datasets without `tfllm.config.validate`: the cross-section rules
  # are cheap, so they run here too.
  check_with_task(config)
  batch_size = batch_size_of(config.train.global_batch_size, input_context)
  dataset = _build(task, config, split, tokenizer, input_context, training, batch_size)
  if task in CLASSIFICATION_TASKS:
    pad_id, = required_special_ids(tokenizer, "pad")
    buckets = tuple(data.bucket_lengths)
    if buckets:
      dataset = batching.bucket_by_length(dataset, buckets, data.sequence_length, batch_size,
                                          pad_id, drop_remainder=training)
    if not training:
      dataset = batching.pad_partial_batches(dataset, batch_size, pad_id)
  return dataset.prefetch(AUTOTUNE).with_options(examples.options())
