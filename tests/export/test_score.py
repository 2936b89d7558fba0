"""Scoring served predictions (`tfllm.export.score`) against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfllm import config as config_lib
from tfllm.data import sources
from tfllm.export import predict_inputs, score

NER_TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def reference_chunks(tags):
  """seqeval's default (non-strict) IOB2 chunks `(type, first, last)`, written plainly."""
  chunks, kind, start = set(), None, 0
  for i, tag in enumerate(list(tags) + ["O"]):
    prefix, _, tag_type = tag.partition("-")
    if kind is not None and (prefix in ("O", "B") or tag_type != kind):
      chunks.add((kind, start, i - 1))
      kind = None
    if prefix == "B" or (prefix == "I" and kind is None):
      kind, start = tag_type, i
  return chunks


def reference_micro(gold_rows, pred_rows):
  tp = predicted = actual = 0
  for gold, pred in zip(gold_rows, pred_rows):
    true_chunks, pred_chunks = reference_chunks(gold), reference_chunks(pred)
    tp += len(true_chunks & pred_chunks)
    predicted += len(pred_chunks)
    actual += len(true_chunks)
  precision, recall = tp / predicted, tp / actual
  return precision, recall, 2 * precision * recall / (precision + recall)


def source_of(label_names):
  examples = tf.data.Dataset.from_tensor_slices({"label": [0]})
  return sources.Source(examples, "text", "label", tuple(label_names), 1)


def inputs_of(label_names):
  return predict_inputs.Inputs("tfds:test_split/test", "examples", 1, lambda: iter(()),
                               source_of(label_names), "label")


def tagger_config():
  return {"task": {"name": "token_classification", "labels": list(NER_TAGS),
                   "decoding": "iob2_viterbi"}, "data": {"label_feature": "label"}}


def test_entity_scores_match_a_plain_seqeval_reference():
  rng = np.random.default_rng(0)
  gold_rows, pred_rows, raw, rows = [], [], [], []
  for _ in range(200):   # invalid IOB2 too (I- after O, I-LOC after B-PER): seqeval's rules
    length = int(rng.integers(1, 12))
    gold = [NER_TAGS[i] for i in rng.integers(0, len(NER_TAGS), length)]
    pred = [tag if rng.random() < 0.7 else NER_TAGS[rng.integers(0, len(NER_TAGS))]
            for tag in gold]
    gold_rows.append(gold)
    pred_rows.append(pred)
    raw.append(np.array([NER_TAGS.index(tag) for tag in gold], np.int64))
    rows.append({"tags": pred, "num_words": length})
  scorer = score.scorer_for(tagger_config(), inputs_of(NER_TAGS))
  for start in range(0, 200, 32):   # batches of rows of different lengths
    scorer.add(raw[start:start + 32], rows[start:start + 32])
  result = scorer.result()
  precision, recall, f1 = reference_micro(gold_rows, pred_rows)
  assert result["entity/micro/precision"] == pytest.approx(precision, abs=1e-9)
  assert result["entity/micro/recall"] == pytest.approx(recall, abs=1e-9)
  assert result["entity/micro/f1"] == pytest.approx(f1, abs=1e-9)
  assert 0.2 < f1 < 0.9   # a case that can fail both ways
  words = sum(len(g) for g in gold_rows)
  same = sum(a == b for g, p in zip(gold_rows, pred_rows) for a, b in zip(g, p))
  assert result["tag_accuracy"] == pytest.approx(same / words)
  assert result["words_past_sequence_length"] == 0
  assert "micro" in scorer.report() and "PER" in scorer.report()


def test_words_past_the_sequence_length_are_counted_not_scored():
  scorer = score.scorer_for(tagger_config(), inputs_of(NER_TAGS))
  # Gold: a PER at words 0-1 and a LOC at word 3; the model served only 2 words.
  scorer.add([np.array([1, 2, 0, 3])], [{"tags": ["B-PER", "I-PER"], "num_words": 2}])
  result = scorer.result()
  assert result["entity/micro/f1"] == 1.0 and result["entity/micro/support"] == 1
  assert result["words_past_sequence_length"] == 2
  with pytest.raises(ValueError, match="split an input into 3 words but the split's label "
                                       "feature has 2 tags"):
    scorer.add([np.array([0, 0])], [{"tags": ["O", "O", "O"], "num_words": 3}])
  with pytest.raises(ValueError, match="returned tag 'B-ORG', not one of"):
    scorer.add([np.array([0])], [{"tags": ["B-ORG"], "num_words": 1}])


@pytest.mark.parametrize("shape", [(), (1,)], ids=["scalar", "length-1 vector"])
def test_classification_scores_use_the_label_mapping_of_training(shape):
  # The split's class names in another order than the model's labels: mapped by name.
  # Labels as scalars, or as the length-1 vectors that TFRecord features parse as.
  config = {"task": {"name": "sequence_classification", "labels": ["negative", "positive"]},
            "data": {"label_feature": "label"}}
  scorer = score.scorer_for(config, inputs_of(["positive", "negative"]))
  gold_split_ids = [0, 0, 1, 1, 1]            # positive, positive, negative x3
  served = [1, 0, 0, 0, 1]                    # the model's ids: positive, negative, ...
  for start, stop in ((0, 2), (2, 5)):        # two batches
    scorer.add([np.full(shape, i, np.int64) for i in gold_split_ids[start:stop]],
               [{"label_id": i} for i in served[start:stop]])
  result = scorer.result()
  true = np.array([1, 1, 0, 0, 0])
  assert result["accuracy"] == pytest.approx(np.mean(true == np.array(served)))   # 3/5
  # positive: tp 1, predicted 2, true 2 -> f1 0.5; negative: tp 2, predicted 3, true 3.
  assert result["class/positive/f1"] == pytest.approx(0.5)
  assert result["class/negative/f1"] == pytest.approx(2 / 3)
  assert result["class/macro/f1"] == pytest.approx((0.5 + 2 / 3) / 2)


@pytest.mark.parametrize("config, message", [
    ({"task": {"name": "causal_lm"}}, "this is a causal_lm model"),
    ({}, "this is an export without a tfllm config"),
    ({"task": {"name": "sequence_classification", "labels": ["a", "b"]}},
     "outside config.task.labels"),
])
def test_models_and_labels_that_cannot_be_scored_are_config_errors(config, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    score.scorer_for(config, inputs_of(["negative", "positive"]))


def test_only_tfds_inputs_carry_labels(tmp_path):
  path = tmp_path / "in.txt"
  path.write_text("a film\n")
  with pytest.raises(config_lib.ConfigError, match="carries no labels; scoring reads a "
                                                   "labelled TFDS split"):
    predict_inputs.open_inputs(str(path), label_field="label")
