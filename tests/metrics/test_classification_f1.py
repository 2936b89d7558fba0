"""Per-class and macro F1 of sequence classification against scikit-learn's."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tfllm.metrics import ClassificationF1


@pytest.mark.reference("sklearn")
@pytest.mark.parametrize("multi_task", [False, True])
def test_matches_sklearn_over_batches(multi_task):
  metrics = pytest.importorskip("sklearn.metrics", reason="comparison needs scikit-learn "
                                "(installed with seqeval)")
  labels = ["negative", "neutral", "positive"]
  if multi_task:
    task = ml_collections.ConfigDict(dict(name="multi_task", heads=dict(
        sentiment=dict(task="sequence_classification", labels=labels),
        ner=dict(task="token_classification", labels=["O"]))))
  else:
    task = ml_collections.ConfigDict(dict(name="sequence_classification", labels=labels))
  metric = ClassificationF1(task)
  rng = np.random.default_rng(0)
  true = rng.integers(0, 3, 50)
  pred = np.where(rng.random(50) < 0.6, true, rng.integers(0, 3, 50))
  weight = (rng.random(50) < 0.9).astype("float32")     # some examples masked out
  totals = {}
  for part in (slice(0, 20), slice(20, 50)):
    logits = tf.one_hot(pred[part], 3)
    y, w = true[part], weight[part]
    if multi_task:
      logits, y, w = {"sentiment": logits}, {"sentiment": y}, {"sentiment": w}
    for key, value in metric.sums({}, logits, y, w).items():
      totals[key] = totals.get(key, 0.0) + float(value)
  result = metric.result(totals)
  prefix = "sentiment/class/" if multi_task else "class/"
  kept = weight > 0
  p, r, f, _ = metrics.precision_recall_fscore_support(true[kept], pred[kept], labels=[0, 1, 2],
                                                       zero_division=0)
  for i, name in enumerate(labels):
    assert result[f"{prefix}{name}/precision"] == pytest.approx(p[i])
    assert result[f"{prefix}{name}/recall"] == pytest.approx(r[i])
    assert result[f"{prefix}{name}/f1"] == pytest.approx(f[i])
  assert result[f"{prefix}macro/f1"] == pytest.approx(metrics.f1_score(
      true[kept], pred[kept], average="macro"))
