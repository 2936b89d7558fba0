"""Evaluation metrics as additive sums, so that replicas, workers and batches just add up.

An `EvalMetric` computes, inside the (XLA-compiled) eval step, a dict of float32 scalars that
are summed over replicas and batches; after the last batch `result` turns the totals into the
reported numbers. Loss, accuracy and perplexity are one such metric; others (entity F1 for
token classification: true/false positive and false negative counts; per-character loss:
nats and characters) are listed per task in `tfllm.metrics.tables.TASK_METRICS`; the loop
sees only `EvalMetric`s.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Tuple

import ml_collections
import tensorflow as tf

from tfllm.metrics import losses

LM_TASKS = ("causal_lm", "masked_lm")


class EvalMetric:
  """Base class: additive per-batch sums in the graph, a result on the host."""

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, tokenizer=None) -> "EvalMetric":
    """The metric for `config` (the `tfllm.metrics.tables` entry point); by default one built
    from the task section alone."""
    del tokenizer
    return cls(config.task)

  def sums(self, features: Mapping[str, tf.Tensor], logits, labels,
           sample_weight) -> Dict[str, tf.Tensor]:
    """Float32 scalar sums over one replica's batch (keys unique across metrics)."""
    raise NotImplementedError

  def result(self, totals: Mapping[str, float]) -> Dict[str, float]:
    """Reported metrics from the sums over the whole evaluation."""
    raise NotImplementedError


def precision_recall_f1(true_positives: float, predicted: float,
                        actual: float) -> Tuple[float, float, float]:
  """Precision, recall and F1 from counts, each 0 where undefined (no prediction, no true
  item, or both 0), as seqeval and scikit-learn's `zero_division=0` report them."""
  precision = true_positives / predicted if predicted else 0.0
  recall = true_positives / actual if actual else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return precision, recall, f1


def head_evaluated(totals: Mapping[str, float], weight_key: str) -> bool:
  """Whether an evaluation reached a head: its total weight `totals[weight_key]` is above 0.

  Multi-task metrics leave out a head that no evaluated batch reached (eval_steps ran out
  before any of its batches) rather than report 0 for it.
  """
  return totals.get(weight_key, 0.0) > 0


def task_heads(task: ml_collections.ConfigDict, head_task: str):
  """The heads of `task` that do `head_task`, and the prefix of their reported names.

  Returns:
    `(heads, prefixes)`: head name -> section, and head name -> "<head>/" for a multi-task
    model; for a single-task model the task section itself as `losses.SINGLE_HEAD`, prefix "".
  """
  if task.name == "multi_task":
    heads = {name: head for name, head in task.heads.items() if head.task == head_task}
    return heads, {name: f"{name}/" for name in heads}
  return {losses.SINGLE_HEAD: task}, {losses.SINGLE_HEAD: ""}


class LossAndAccuracy(EvalMetric):
  """Weighted mean cross-entropy and accuracy per head; perplexity = exp(loss) for LMs.

  Single-task models report `loss`, `accuracy` (and `perplexity`); multi-task models report
  `<head>/loss`, `<head>/accuracy` and `loss`, the loss-weighted sum of the head losses (the
  training objective). A head that no evaluated batch reached is left out (not reported as 0).
  """

  def __init__(self, task: ml_collections.ConfigDict):
    self._loss_weights = losses.head_loss_weights(task)
    self._multi = task.name == "multi_task"
    if self._multi:
      self._lm_heads = {n for n, h in task.heads.items() if h.task in LM_TASKS}
    else:
      self._lm_heads = {losses.SINGLE_HEAD} if task.name in LM_TASKS else set()

  def sums(self, features, logits, labels, sample_weight):
    logits, labels, weights = losses.batch_heads(logits, labels, sample_weight)
    out = {}
    for name in self._loss_weights:
      ce_sum, w_sum = losses.cross_entropy_sums(logits[name], labels[name], weights.get(name))
      w = losses.head_weights(labels[name], weights.get(name))
      predicted = losses.predictions(logits[name])
      correct = tf.cast(tf.equal(predicted, tf.cast(labels[name], tf.int32)), tf.float32)
      out[f"{name}/ce"] = ce_sum
      out[f"{name}/weight"] = w_sum
      out[f"{name}/correct"] = tf.reduce_sum(correct * w)
    return out

  def result(self, totals):
    out, total_loss = {}, 0.0
    for name, loss_weight in self._loss_weights.items():
      if self._multi and not head_evaluated(totals, f"{name}/weight"):
        continue
      weight = max(totals[f"{name}/weight"], 1e-12)
      loss = totals[f"{name}/ce"] / weight
      prefix = f"{name}/" if self._multi else ""
      out[f"{prefix}loss"] = loss
      out[f"{prefix}accuracy"] = totals[f"{name}/correct"] / weight
      if name in self._lm_heads:
        out[f"{prefix}perplexity"] = math.exp(min(loss, 700.0))
      total_loss += loss_weight * loss
    if self._multi:
      out["loss"] = total_loss
    return out
