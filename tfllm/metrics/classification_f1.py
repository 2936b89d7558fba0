"""Per-class and macro F1 of sequence classification, from additive confusion counts."""

from __future__ import annotations

from typing import Dict, List, Sequence

import tensorflow as tf

from tfllm.metrics import losses
from tfllm.metrics.base import EvalMetric, head_evaluated, precision_recall_f1, task_heads


class ClassificationF1(EvalMetric):
  """Reports `class/<label>/{precision,recall,f1}` and `class/macro/f1` (prefixed by the head
  name for multi-task models; a head that no evaluated batch reached is left out); labels are
  the config's names, else class ids.

  Args:
    task: the `config.task` section.
  """

  def __init__(self, task):
    self._multi = task.name == "multi_task"
    heads, self._prefix = task_heads(task, "sequence_classification")
    self._labels: Dict[str, List[str]] = {
        # A section's class count is its labels' count, else `num_classes`
        # (`tfllm.models.config.num_classes`, a level this package does not import).
        name: list(head.labels) or [str(i) for i in range(head.num_classes)]
        for name, head in heads.items()}

  def sums(self, features, logits, labels, sample_weight):
    logits, labels, weights = losses.batch_heads(logits, labels, sample_weight)
    out = {}
    for name, label_names in self._labels.items():
      depth = len(label_names)
      weight = losses.head_weights(labels[name], weights.get(name))[..., None]
      true = tf.one_hot(tf.cast(labels[name], tf.int32), depth) * weight
      pred = tf.one_hot(tf.argmax(logits[name], axis=-1, output_type=tf.int32), depth) * weight
      out[f"{name}/class_weight"] = tf.reduce_sum(weight)
      for kind, values in (("tp", tf.reduce_sum(true * pred, 0)),
                           ("pred", tf.reduce_sum(pred, 0)), ("true", tf.reduce_sum(true, 0))):
        for i, label in enumerate(label_names):
          out[f"{name}/class_{kind}/{label}"] = values[i]
    return out

  def result(self, totals):
    out = {}
    for name, label_names in self._labels.items():
      if self._multi and not head_evaluated(totals, f"{name}/class_weight"):
        continue
      counts = {kind: [totals[f"{name}/class_{kind}/{label}"] for label in label_names]
                for kind in ("tp", "pred", "true")}
      out.update(class_scores(label_names, counts["tp"], counts["pred"], counts["true"],
                              prefix=f"{self._prefix[name]}class/"))
    return out


def class_scores(label_names: Sequence[str], true_positives: Sequence[float],
                 predicted: Sequence[float], actual: Sequence[float],
                 prefix: str = "class/") -> Dict[str, float]:
  """`{prefix}<label>/{precision,recall,f1}` and `{prefix}macro/f1` from per-class counts
  (0 where undefined); the eval step's totals and served predictions (`tfllm-predict --score`)
  are scored by this one function."""
  out, f1s = {}, []
  for label, tp, pred, true in zip(label_names, true_positives, predicted, actual):
    precision, recall, f1 = precision_recall_f1(tp, pred, true)
    out.update({f"{prefix}{label}/precision": precision, f"{prefix}{label}/recall": recall,
                f"{prefix}{label}/f1": f1})
    f1s.append(f1)
  out[f"{prefix}macro/f1"] = sum(f1s) / len(f1s)
  return out
