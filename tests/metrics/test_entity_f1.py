"""Entity-level F1: the in-graph counts give seqeval's numbers on the same predictions."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tfllm.metrics.entity_f1 import (EntityF1, entity_counts, entity_reports_from_results,
                                      entity_scores, format_entity_report, iob2_scheme)

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def _batch(true_tags, pred_tags, length, seed=0):
  """Word tags at random first-word-piece positions of `[batch, length]` rows, as the
  token-classification pipeline lays them out (other positions: weight 0, junk labels)."""
  rng = np.random.default_rng(seed)
  batch = len(true_tags)
  true_ids = rng.integers(0, len(LABELS), (batch, length))
  pred_ids = rng.integers(0, len(LABELS), (batch, length))
  weights = np.zeros((batch, length), "float32")
  for row, (t, p) in enumerate(zip(true_tags, pred_tags)):
    positions = np.sort(rng.choice(length, len(t), replace=False))
    true_ids[row, positions] = [LABELS.index(x) for x in t]
    pred_ids[row, positions] = [LABELS.index(x) for x in p]
    weights[row, positions] = 1.0
  return true_ids, pred_ids, weights


def _ours(true_tags, pred_tags, length=24, jit_compile=False):
  prefixes, types, names = iob2_scheme(LABELS)
  counts_fn = tf.function(lambda t, p, w: entity_counts(t, p, w, prefixes, types, len(names)),
                          jit_compile=jit_compile)
  counts = counts_fn(*_batch(true_tags, pred_tags, length))
  return entity_scores(names, *(c.numpy() for c in counts))


def _random_tags(rng, num_sentences, max_words=14):
  """Tag sequences with entities, runs and ill-formed I- tags (after O, after another type)."""
  sentences = []
  for _ in range(num_sentences):
    n = int(rng.integers(1, max_words + 1))
    sentences.append([LABELS[i] for i in rng.choice(len(LABELS), n, p=[0.4] + [0.075] * 8)])
  return sentences


def _assert_same_as_seqeval(true_tags, pred_tags, ours):
  seqeval = pytest.importorskip("seqeval.metrics", reason="comparison needs seqeval "
                                "(pip install seqeval)")
  import warnings  # pylint: disable=import-outside-toplevel
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")   # seqeval warns on types with no prediction
    expected = seqeval.classification_report(true_tags, pred_tags, output_dict=True,
                                             zero_division=0)
  assert set(ours) == {k.replace(" avg", "") for k in expected}
  for key, values in expected.items():
    for metric in ("precision", "recall", "f1-score", "support"):
      ours_value = ours[key.replace(" avg", "")][metric.replace("-score", "")]
      assert ours_value == pytest.approx(values[metric], abs=1e-6), (key, metric)


@pytest.mark.reference("seqeval")
def test_seqeval_readme_example():
  true_tags = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
  pred_tags = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
  ours = _ours(true_tags, pred_tags, length=10)
  assert ours["micro"]["f1"] == pytest.approx(0.5)
  _assert_same_as_seqeval(true_tags, pred_tags, ours)


@pytest.mark.reference("seqeval")
@pytest.mark.parametrize("jit_compile", [False, True])
def test_random_predictions_match_seqeval(jit_compile):
  rng = np.random.default_rng(1)
  true_tags = _random_tags(rng, 64)
  # Predictions: the truth with a fraction of tags replaced, so that many entities match.
  pred_tags = [[t if rng.random() < 0.8 else LABELS[int(rng.integers(len(LABELS)))]
                for t in sentence] for sentence in true_tags]
  ours = _ours(true_tags, pred_tags, length=20, jit_compile=jit_compile)
  assert 0.2 < ours["micro"]["f1"] < 1.0
  _assert_same_as_seqeval(true_tags, pred_tags, ours)


@pytest.mark.reference("seqeval")
def test_entity_at_row_end_and_adjacent_chunks():
  # Chunks touching the row's last word, and B- right after a chunk (two adjacent entities).
  true_tags = [["B-PER", "B-PER", "I-PER"], ["O", "B-LOC", "I-LOC"], ["I-ORG", "I-ORG"]]
  pred_tags = [["B-PER", "I-PER", "I-PER"], ["O", "B-LOC", "I-LOC"], ["B-ORG", "I-ORG"]]
  ours = _ours(true_tags, pred_tags, length=3)
  _assert_same_as_seqeval(true_tags, pred_tags, ours)
  assert ours["PER"]["precision"] == 0.0 and ours["LOC"]["f1"] == 1.0


@pytest.mark.reference("seqeval")
def test_eval_metric_sums_add_up_over_batches():
  task = ml_collections.ConfigDict(dict(name="token_classification", labels=LABELS))
  metric = EntityF1(task)
  rng = np.random.default_rng(2)
  true_tags = _random_tags(rng, 16)
  pred_tags = [[t if rng.random() < 0.7 else "O" for t in s] for s in true_tags]
  true_ids, pred_ids, weights = _batch(true_tags, pred_tags, 16)
  logits = tf.one_hot(pred_ids, len(LABELS))
  totals = {}
  for part in (slice(0, 5), slice(5, 16)):
    sums = metric.sums({}, logits[part], true_ids[part], weights[part])
    for key, value in sums.items():
      totals[key] = totals.get(key, 0.0) + float(value)
  result = metric.result(totals)
  ours = metric.report(totals)["output"]
  assert result["entity/micro/f1"] == ours["micro"]["f1"]
  table = format_entity_report(ours)
  assert entity_reports_from_results(dict(result, loss=1.0)) == {"": table}
  per_line = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:] if line}
  assert float(per_line["PER"][2]) == pytest.approx(ours["PER"]["f1"], abs=1e-4)
  _assert_same_as_seqeval(true_tags, pred_tags, ours)


def test_bad_tag_names():
  with pytest.raises(ValueError, match="'E-PER' is not an IOB2 tag"):
    iob2_scheme(["O", "B-PER", "E-PER"])
