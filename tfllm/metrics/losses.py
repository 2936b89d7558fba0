"""Weighted cross-entropy sums: the loss is averaged over the global batch, not per replica.

A replica computes `sum(sample_weight * cross_entropy)` over its examples; the step divides by
the sum of weights over every replica, worker and micro-batch (one all-reduce of a scalar per
head). The mean is then the same whatever the strategy or the split into micro-batches.
"""

from __future__ import annotations

from typing import Dict, Mapping, Tuple

import ml_collections
import tensorflow as tf

from tfllm.layers.tensor_parallel import ShardedLogits
from tfllm.tagging.crf import crf_negative_log_likelihood_sums
from tfllm.tagging.scores import TagScores

# Head name of single-task models (multi-task models name their heads in config.task.heads).
SINGLE_HEAD = "output"


def head_loss_weights(task: ml_collections.ConfigDict) -> Dict[str, float]:
  """Head name -> weight of its mean loss in the total loss."""
  if task.name == "multi_task":
    return {name: float(head.loss_weight) for name, head in task.heads.items()}
  return {SINGLE_HEAD: 1.0}


def as_heads(value) -> Dict[str, tf.Tensor]:
  """Logits, labels or sample weights as a head name -> tensor dict."""
  if isinstance(value, Mapping):
    return dict(value)
  return {SINGLE_HEAD: value}


def weight_heads(sample_weight) -> Dict[str, tf.Tensor]:
  """A batch's sample weights as a head name -> tensor dict; empty when it has none."""
  return as_heads(sample_weight) if sample_weight is not None else {}


def batch_heads(logits, labels, sample_weight):
  """A batch's logits, labels and sample weights as head name -> tensor dicts (`as_heads`);
  the weights dict is empty when the batch has none."""
  return as_heads(logits), as_heads(labels), weight_heads(sample_weight)


def head_weights(labels: tf.Tensor, sample_weight) -> tf.Tensor:
  """The float32 sample weights of one head, ones where none are given."""
  if sample_weight is None:
    return tf.ones(tf.shape(labels), tf.float32)
  return tf.cast(sample_weight, tf.float32)


def cross_entropy_sums(logits: tf.Tensor, labels: tf.Tensor,
                       sample_weight) -> Tuple[tf.Tensor, tf.Tensor]:
  """Weighted cross-entropy sum and weight sum of one head.

  Args:
    logits: float `[..., num_classes]` (vocab for LMs); computed in float32. Or a
      tensor-parallel model's `ShardedLogits` (the vocabulary-parallel cross-entropy), or a
      CRF tagging head's `TagScores` (the sentences' negative log-likelihood instead of the
      words' cross-entropy: `tfllm.tagging.crf`; weights then only mark the words).
    labels: int `[...]` (the shape of `logits` without its last axis).
    sample_weight: float `[...]` or None (all ones); 0 masks a position out.

  Returns:
    (sum of weight * cross-entropy, sum of weights), float32 scalars.
  """
  weights = head_weights(labels, sample_weight)
  if isinstance(logits, TagScores):
    return crf_negative_log_likelihood_sums(logits, labels, weights)
  if isinstance(logits, ShardedLogits):  # tensor parallel: from the shards, never joined
    ce = logits.cross_entropy(labels)
  else:
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32))
  return tf.reduce_sum(ce * weights), tf.reduce_sum(weights)


def predictions(logits) -> tf.Tensor:
  """int32 `argmax` of `logits` over the last axis (of the shards, for `ShardedLogits`; of
  the emissions, for `TagScores`)."""
  if isinstance(logits, TagScores):
    logits = logits.emissions
  if isinstance(logits, ShardedLogits):
    return logits.argmax()
  return tf.argmax(logits, axis=-1, output_type=tf.int32)


def weight_sums(labels, sample_weight) -> Dict[str, tf.Tensor]:
  """Head name -> this replica's sum of sample weights (known before the forward pass)."""
  labels, weights = as_heads(labels), weight_heads(sample_weight)
  return {name: tf.reduce_sum(head_weights(label, weights.get(name)))
          for name, label in labels.items()}
