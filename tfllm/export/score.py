"""Scoring served predictions against a labelled TFDS split (`tfllm-predict --score`).

The figures are the evaluation report's, computed from what the served signature returned
rather than from logits inside the eval step, so they check that an export (an ensemble or a
soup too, which have no model dir to evaluate) gives the figure `tfllm-train --mode=eval`
printed:

- sequence classification: `accuracy`, `class/<label>/{precision,recall,f1}` and
  `class/macro/f1`, from the served `label_id` (`tfllm.metrics.classification_f1.class_scores`);
- token classification: `entity/<type|micro|macro|weighted>/{precision,recall,f1,support}`
  with seqeval's chunk rules (`tfllm.metrics.entity_f1.entity_counts`, the eval step's own
  count), from the served `tags`, plus `tag_accuracy`, the fraction of words whose decoded
  tag is right. The eval report's `accuracy` is the argmax's, before IOB2 decoding, so it is
  not comparable with `tag_accuracy`.

The gold labels go through the trainer's label mapping (`tfllm.data.pipelines.labels`), so
class and tag ids mean what they meant in training. Words past the model's sequence length
get no served tag; the eval step does not score them either, so they are left out here too
and counted (`words_past_sequence_length`). Inputs `tfllm-predict` skips (empty text) are
not scored; the eval report counts them, so the two figures differ when a split has any.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import ml_collections
import numpy as np
import tensorflow as tf

from tfllm import config as config_lib
from tfllm.data.pipelines import labels as labels_lib
from tfllm.export.heads import label_names
from tfllm.metrics.classification_f1 import class_scores
from tfllm.metrics.entity_f1 import (entity_counts, entity_scores, flat_entity_results,
                                     format_entity_report)
from tfllm.tagging.iob2 import iob2_scheme

SCORED_TASKS = ("sequence_classification", "token_classification")


class Scorer:
  """Counts of one scoring run: `add` a batch of gold labels and served rows, then `result`.

  Attributes:
    examples: examples scored so far.
  """

  def __init__(self, labels: Sequence[str], map_label):
    self.labels = tuple(labels)
    self._map_label = map_label
    self.examples = 0

  def add(self, raw_labels: Sequence[Any], rows: Sequence[Mapping[str, Any]]) -> None:
    raise NotImplementedError

  def result(self) -> Dict[str, float]:
    raise NotImplementedError

  def report(self) -> str:
    """A table to print under the results line ("" when there is none)."""
    return ""


class ClassificationScorer(Scorer):
  """Accuracy and per-class / macro F1 of a classifier's served `label_id`s."""

  def __init__(self, labels, map_label):
    super().__init__(labels, map_label)
    self._true: List[int] = []
    self._pred: List[int] = []

  def add(self, raw_labels, rows):
    if raw_labels:   # one lookup a batch
      try:
        batch = tf.constant(np.stack([np.asarray(label) for label in raw_labels]))
      except ValueError:
        raise ValueError("the split's label feature has labels of different shapes; a "
                         "classifier's label is one value an example") from None
      self._true.extend(self._map_label(labels_lib.scalar(batch, batched=True)).numpy()
                        .tolist())
    self._pred.extend(int(row["label_id"]) for row in rows)
    self.examples += len(rows)

  def result(self):
    true, pred = np.asarray(self._true), np.asarray(self._pred)
    classes = np.arange(len(self.labels))
    counts = [((true == c) & (pred == c)).sum() for c in classes]
    out = {"accuracy": float(np.mean(true == pred)) if len(true) else 0.0}
    out.update(class_scores(self.labels, counts, [(pred == c).sum() for c in classes],
                            [(true == c).sum() for c in classes]))
    return {key: float(value) for key, value in out.items()}


class EntityScorer(Scorer):
  """Entity P/R/F1 (seqeval's rules) and word tag accuracy of a tagger's served `tags`."""

  def __init__(self, labels, map_label):
    super().__init__(labels, map_label)
    self._prefixes, self._types, self._type_names = iob2_scheme(self.labels)
    self._index = {tag: i for i, tag in enumerate(self.labels)}
    self._counts = np.zeros((3, len(self._type_names)))
    self._words = self._correct = self._past_length = 0

  def add(self, raw_labels, rows):
    gold, pred = [], []
    raw_tags = [np.asarray(raw).reshape(-1) for raw in raw_labels]
    lengths = [len(tags) for tags in raw_tags]
    mapped = (self._map_label(tf.constant(np.concatenate(raw_tags))).numpy()
              if sum(lengths) else np.zeros([0], np.int32))   # one lookup a batch
    for ids, row in zip(np.split(mapped, np.cumsum(lengths)[:-1]), rows):
      served = row["num_words"]
      if served > len(ids):
        raise ValueError(f"the served model split an input into {served} words but the "
                         f"split's label feature has {len(ids)} tags for it; scoring needs "
                         "one tag a whitespace-separated word")
      unknown = [tag for tag in row["tags"] if tag not in self._index]
      if unknown:
        raise ValueError(f"the served model returned tag {unknown[0]!r}, not one of the "
                         f"model's tags {list(self.labels)}")
      self._past_length += len(ids) - served
      gold.append(ids[:served])
      pred.append(np.asarray([self._index[tag] for tag in row["tags"]], np.int64))
    width = max([len(g) for g in gold] + [1])

    def padded(arrays):
      return np.stack([np.pad(a, (0, width - len(a))) for a in arrays]).astype(np.int32)

    weights = padded([np.ones(len(g)) for g in gold]).astype(np.float32)
    true_ids, pred_ids = padded(gold), padded(pred)
    counts = entity_counts(tf.constant(true_ids), tf.constant(pred_ids), tf.constant(weights),
                           self._prefixes, self._types, len(self._type_names))
    self._counts += np.stack([c.numpy() for c in counts])
    self._words += int(weights.sum())
    self._correct += int(((true_ids == pred_ids) * weights).sum())
    self.examples += len(rows)

  def scores(self):
    return entity_scores(self._type_names, *self._counts)

  def result(self):
    out = flat_entity_results(self.scores())
    out["tag_accuracy"] = self._correct / self._words if self._words else 0.0
    out["words_past_sequence_length"] = float(self._past_length)
    return out

  def report(self):
    return format_entity_report(self.scores())


def check_scored_task(config: Mapping) -> str:
  """The task of a model config (a dict) that scoring handles, else a `ConfigError`."""
  name = config.get("task", {}).get("name")
  if name not in SCORED_TASKS:
    what = f"a {name} model" if name else "an export without a tfllm config"
    raise config_lib.ConfigError(
        f"--score scores {' and '.join(SCORED_TASKS)} models; this is {what}")
  return name


def scorer_for(config: Mapping, inputs) -> Scorer:
  """The scorer of a model whose config (a dict, as `tfllm.export.predictor.model_config`
  reads it) is a single-task classifier or tagger, for `inputs` opened with a label field.

  Raises:
    ConfigError: another task (language models, multi-task models, an export without a
      tfllm config), or labels that do not map onto the model's label set.
  """
  name = check_scored_task(config)
  section = ml_collections.ConfigDict(dict(config["task"]))
  data = ml_collections.ConfigDict(dict(config.get("data", {})))
  data.dataset = inputs.description   # for messages
  data.label_feature = inputs.label_field
  try:
    map_label = labels_lib.label_mapper(data, section, inputs.source)
  except ValueError as error:
    raise config_lib.ConfigError(f"input={inputs.description!r}: {error}") from None
  scorer = ClassificationScorer if name == "sequence_classification" else EntityScorer
  return scorer(label_names(section), map_label)
