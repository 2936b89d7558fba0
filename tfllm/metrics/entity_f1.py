"""Entity-level precision, recall and F1 on IOB2 tags, computed the way `seqeval` does.

An entity is a chunk `(type, first word, last word)`; a predicted entity counts only when the
same chunk is among the true ones. Chunks follow seqeval's default (non-strict) IOB2 rules:
a chunk starts at `B-X`, or at `I-X` after `O` or after a tag of another type; it continues
over `I-X` tags of its type. Per type: precision = tp / predicted, recall = tp / true,
F1 = their harmonic mean (0 where undefined); micro = the same over all types' counts; macro =
the mean over the types that occur in the true or the predicted tags.

The counts are computed inside the (XLA-compiled) eval step on static-shape tensors: word
tags sit at the first word piece of each word (sample weight > 0 there), so a sort moves the
words of each row to its front; chunk boundaries and matches are then elementwise and
cumulative-sum operations. The counts add up over replicas and batches (`EntityF1`).
"""

from __future__ import annotations

from typing import Dict, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfllm.metrics import losses
from tfllm.metrics.base import EvalMetric, head_evaluated, precision_recall_f1, task_heads
from tfllm.tagging.decoding import decode_word_tags, words_first_order
from tfllm.tagging.iob2 import BEGIN, OUTSIDE, iob2_scheme, tag_decoding


def _chunk_codes(prefix, entity_type):
  """Per word: chunk start, chunk continuation, and a code 0 (out), 1 (continue), 2 + type
  (start of a chunk of that type). Inputs `[b, n]`, the last column an `O` sentinel."""
  prev_prefix = tf.pad(prefix[:, :-1], [[0, 0], [1, 0]], constant_values=OUTSIDE)
  prev_type = tf.pad(entity_type[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
  tagged = prefix != OUTSIDE
  start = tagged & ((prefix == BEGIN) | (prev_prefix == OUTSIDE) | (prev_type != entity_type))
  cont = tagged & ~start
  code = tf.where(start, 2 + entity_type, tf.where(cont, 1, 0))
  return start, cont, code


def entity_counts(true_ids: tf.Tensor, pred_ids: tf.Tensor, weights: tf.Tensor,
                  prefixes: Sequence[int], types: Sequence[int],
                  num_types: int) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Per-type true positive, predicted and true entity counts of one batch.

  Args:
    true_ids: int `[batch, seq]` tag ids (read where `weights > 0`).
    pred_ids: int `[batch, seq]` predicted tag ids.
    weights: `[batch, seq]`, > 0 at the positions that carry a word's tag (first word piece).
    prefixes, types, num_types: from `iob2_scheme`.

  Returns:
    `(true_positives, predicted, actual)`, float32 `[num_types]` each.
  """
  prefix_table = tf.constant(prefixes, tf.int32)
  type_table = tf.constant(types, tf.int32)
  valid = tf.cast(weights, tf.float32) > 0
  # Words to the front of each row, in order; the rest (and one sentinel column) become O.
  order = words_first_order(valid)
  valid = tf.gather(valid, order, batch_dims=1)

  def codes(ids):
    ids = tf.gather(tf.cast(ids, tf.int32), order, batch_dims=1)
    prefix = tf.where(valid, tf.gather(prefix_table, ids), OUTSIDE)
    entity_type = tf.where(valid, tf.gather(type_table, ids), -1)
    prefix = tf.pad(prefix, [[0, 0], [0, 1]], constant_values=OUTSIDE)
    entity_type = tf.pad(entity_type, [[0, 0], [0, 1]], constant_values=-1)
    return (*_chunk_codes(prefix, entity_type), entity_type)

  true_start, true_cont, true_code, true_type = codes(true_ids)
  pred_start, _, pred_code, pred_type = codes(pred_ids)
  width = tf.shape(true_code)[1] + 1           # chunk ids 1..n, 0 = no chunk
  chunk_id = tf.cumsum(tf.cast(true_start, tf.int32), axis=1)
  member = true_start | true_cont
  prev_member = tf.pad(member[:, :-1], [[0, 0], [1, 0]])
  # A true chunk is predicted exactly when the codes agree over it and the predicted chunk
  # does not run on past its end (the word after it is no continuation in the prediction).
  after_end = prev_member & ~true_cont
  # The word after a chunk may start the next one: its two checks belong to two chunks.
  bad_inside = member & (true_code != pred_code)
  bad_after = after_end & (pred_code == 1)
  previous_id = chunk_id - tf.cast(true_start, tf.int32)

  def per_chunk(bad, owner):
    owner = tf.where(bad, owner, 0)
    return tf.reduce_sum(tf.one_hot(owner, width, dtype=tf.float32), axis=1)

  bad_per_chunk = per_chunk(bad_inside, chunk_id) + per_chunk(bad_after, previous_id)
  start_of_chunk = tf.one_hot(tf.where(true_start, chunk_id, 0), width, dtype=tf.float32)
  type_one_hot = tf.one_hot(true_type, num_types, dtype=tf.float32)   # -1 -> zeros
  chunk_type = tf.einsum("bpk,bpt->bkt", start_of_chunk, type_one_hot)  # one-hot per chunk
  matched = tf.cast(bad_per_chunk[:, 1:] == 0, tf.float32)
  true_positives = tf.einsum("bk,bkt->t", matched, chunk_type[:, 1:])
  actual = tf.reduce_sum(tf.cast(true_start, tf.float32)[..., None] * type_one_hot, [0, 1])
  predicted = tf.reduce_sum(tf.cast(pred_start, tf.float32)[..., None]
                            * tf.one_hot(pred_type, num_types, dtype=tf.float32), [0, 1])
  return true_positives, predicted, actual


def _prf(tp: float, predicted: float, actual: float) -> Dict[str, float]:
  precision, recall, f1 = precision_recall_f1(tp, predicted, actual)
  return dict(precision=precision, recall=recall, f1=f1, support=actual)


def entity_scores(type_names: Sequence[str], true_positives, predicted,
                  actual) -> Dict[str, Dict[str, float]]:
  """`{type or "micro"/"macro"/"weighted": {precision, recall, f1, support}}` from counts.

  Types with no true and no predicted entity are left out (as seqeval does: it only knows
  the types it sees), also from the macro and weighted means.
  """
  tp, predicted, actual = (np.asarray(x, np.float64) for x in (true_positives, predicted,
                                                               actual))
  scores = {name: _prf(tp[i], predicted[i], actual[i]) for i, name in enumerate(type_names)
            if predicted[i] or actual[i]}
  scores = dict(sorted(scores.items()))
  per_type = list(scores.values())
  scores["micro"] = _prf(tp.sum(), predicted.sum(), actual.sum())
  total = actual.sum()
  for average in ("macro", "weighted"):
    weights = [1.0 / len(per_type) if average == "macro" else
               (s["support"] / total if total else 0.0) for s in per_type]
    scores[average] = {key: float(sum(w * s[key] for w, s in zip(weights, per_type)))
                       for key in ("precision", "recall", "f1")}
    scores[average]["support"] = total
  return scores


def format_entity_report(scores: Mapping[str, Mapping[str, float]]) -> str:
  """A seqeval-style table: one row per type, then micro, macro and weighted averages."""
  lines = [f"{'':>10} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}"]
  for name, s in scores.items():
    if name == "micro":
      lines.append("")
    lines.append(f"{name:>10} {s['precision']:9.4f} {s['recall']:9.4f} {s['f1']:9.4f} "
                 f"{int(s['support']):9d}")
  return "\n".join(lines)


class EntityF1(EvalMetric):
  """Entity-level P/R/F1 of every token-classification head of a task config.

  Reports `entity/<type>/{precision,recall,f1}` and `entity/{micro,macro}/...` for a
  single-task model, `<head>/entity/...` for each tagging head of a multi-task model (left
  out when no evaluated batch reached that head).

  Args:
    task: the `config.task` section; tagging heads' `labels` must be IOB2 tags. Heads with
      no `labels` are skipped (no entity figures for them).
  """

  def __init__(self, task):
    self._multi = task.name == "multi_task"
    heads, self._prefix = task_heads(task, "token_classification")
    # A tagging head without tag names (labels) is scored by token accuracy alone: entity
    # chunks need the IOB2 names, and numeric tags (e.g. a user's own tag ids) have none.
    heads = {name: section for name, section in heads.items() if section.labels}
    self._schemes = {name: iob2_scheme(section.labels) for name, section in heads.items()}
    self._labels = {name: list(section.labels) for name, section in heads.items()}
    self._decoding = {name: tag_decoding(section) for name, section in heads.items()}

  def sums(self, features, logits, labels, sample_weight):
    logits, labels, weights = losses.batch_heads(logits, labels, sample_weight)
    out = {}
    for name, (prefixes, types, type_names) in self._schemes.items():
      head_weights = losses.head_weights(labels[name], weights.get(name))
      predicted_ids = decode_word_tags(logits[name], head_weights > 0, self._labels[name],
                                       self._decoding[name])
      counts = entity_counts(labels[name], predicted_ids, head_weights, prefixes, types,
                             len(type_names))
      out[f"{name}/entity_weight"] = tf.reduce_sum(tf.cast(head_weights, tf.float32))
      for kind, values in zip(("tp", "pred", "true"), counts):
        for i, type_name in enumerate(type_names):
          out[f"{name}/entity_{kind}/{type_name}"] = values[i]
    return out

  def report(self, totals: Mapping[str, float]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Head name -> `entity_scores` of the whole evaluation."""
    reports = {}
    for name, (_, _, type_names) in self._schemes.items():
      counts = [[totals[f"{name}/entity_{kind}/{t}"] for t in type_names]
                for kind in ("tp", "pred", "true")]
      if self._multi and not head_evaluated(totals, f"{name}/entity_weight"):
        continue
      reports[name] = entity_scores(type_names, *counts)
    return reports

  def result(self, totals):
    out = {}
    for name, scores in self.report(totals).items():
      out.update(flat_entity_results(scores, prefix=self._prefix[name]))
    return out


def flat_entity_results(scores: Mapping[str, Mapping[str, float]],
                        prefix: str = "") -> Dict[str, float]:
  """`entity_scores` as the flat results an evaluation reports:
  `{prefix}entity/<type or micro/macro/weighted>/{precision,recall,f1,support}`."""
  return {f"{prefix}entity/{group}/{key}": float(values[key])
          for group, values in scores.items()
          for key in ("precision", "recall", "f1", "support")}


def entity_reports_from_results(results: Mapping[str, float]) -> Dict[str, str]:
  """Report tables from an evaluation's flat results (`[<head>/]entity/<group>/<key>`), one
  per head prefix ("" for a single-task model), e.g. to print after `tfllm-train --mode=eval`."""
  grouped: Dict[str, Dict[str, Dict[str, float]]] = {}
  for key, value in results.items():
    head, marker, rest = key.rpartition("entity/")
    if not marker or rest.count("/") != 1 or (head and not head.endswith("/")):
      continue
    group, metric = rest.split("/")
    grouped.setdefault(head.rstrip("/"), {}).setdefault(group, {})[metric] = float(value)
  order = ("micro", "macro", "weighted")
  reports = {}
  for head, groups in grouped.items():
    if not all({"precision", "recall", "f1", "support"} <= set(g) for g in groups.values()):
      continue
    ordered = {name: groups[name] for name in sorted(groups) if name not in order}
    ordered.update({name: groups[name] for name in order if name in groups})
    reports[head] = format_entity_report(ordered)
  return reports
