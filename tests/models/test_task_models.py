"""Task models: output shapes, heads' numerics, serialization, and build(config)."""

import numpy as np
import pytest

from tests.testing import run_model_test, tiny_config
from tfllm import models

B, T = 2, 8


def _features(with_positions=False):
  rng = np.random.default_rng(0)
  features = {"token_ids": rng.integers(1, 97, size=(B, T)).astype("int32"),
              "padding_mask": np.ones((B, T), bool)}
  features["padding_mask"][1, 5:] = False
  if with_positions:
    features["mask_positions"] = np.array([[0, 3, 4], [1, 2, 0]], "int32")
  return features


# case -> (style, task, logits shape, trainable weights). GPT-2: token and position tables,
# 2 blocks of 12 (QKV, output, up, down: kernel and bias; two LayerNorms), a final LayerNorm,
# the tied head adds none: 28. Llama: token table, 2 blocks of 7 (bias-free attention 2,
# SwiGLU 3, two RMSNorms), final RMSNorm, untied head kernel: 17. BERT: three tables, the
# embedding LayerNorm and 2 blocks: 29, plus the MLM head's 5 (transform kernel and bias,
# LayerNorm, output bias) or a classifier's kernel and bias.
CASES = {
    "causal_lm": ("gpt2", "causal_lm", (B, T, 97), 28),
    "causal_lm_untied": ("llama", "causal_lm", (B, T, 97), 17),
    "masked_lm": ("bert", "masked_lm", (B, 3, 97), 34),
    "sequence_classification": ("bert", "sequence_classification", (B, 3), 31),
    "token_classification": ("bert", "token_classification", (B, T, 3), 31),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_task_model_contract(case):
  """Shapes, float32 logits under every policy, weight counts, config and `.keras` round
  trips (bitwise), and XLA."""
  style, task, shape, trainable = CASES[case]
  run_model_test(lambda: models.build(tiny_config(style, task=task)),
                 _features(with_positions=task == "masked_lm"), shape,
                 expected_num_trainable_weights=trainable)


def test_tied_causal_lm_head_is_the_embedding_transpose():
  model = models.build(tiny_config("gpt2"))
  features = _features()
  hidden = np.asarray(model.backbone(features))
  table = np.asarray(model.backbone.token_embedding.embeddings)
  np.testing.assert_allclose(model(features), hidden @ table.T, atol=1e-5)
  assert not any("projection" in v.path for v in model.weights)


def test_masked_lm_logits_only_at_mask_positions():
  model = models.build(tiny_config("bert", task="masked_lm"))
  features = _features(with_positions=True)
  logits = np.asarray(model(features))
  hidden = np.asarray(model.backbone(features))
  head = model.head
  gathered = hidden[0, [0, 3, 4]]
  x = np.asarray(head.norm(head.transform(gathered[None])))[0]
  table = np.asarray(model.backbone.token_embedding.embeddings)
  np.testing.assert_allclose(logits[0], x @ table.T + np.asarray(head.output_bias), atol=1e-5)


def test_mean_pooling_ignores_padding():
  config = tiny_config("bert", task="sequence_classification")
  config.task.pooling = "mean"
  config.task.dropout = 0.0
  model = models.build(config)
  features = _features()
  hidden = np.asarray(model.backbone(features))
  pooled = hidden[1, :5].mean(axis=0)
  kernel, bias = model.head.classifier.get_weights()
  np.testing.assert_allclose(np.asarray(model(features))[1], pooled @ kernel + bias, atol=1e-5)


def test_multi_task_model_shares_one_backbone():
  config = tiny_config("bert", task="multi_task")
  config.task.heads = {
      "ner": dict(task="token_classification", labels=["O", "B-PER", "I-PER"]),
      "sentiment": dict(task="sequence_classification", num_classes=2),
  }
  model = models.build(config)
  outputs = model(_features())
  assert set(outputs) == {"ner", "sentiment"}
  assert tuple(outputs["ner"].shape) == (B, T, 3) and tuple(outputs["sentiment"].shape) == (B, 2)
  backbone_weights = len(model.backbone.weights)
  assert len(model.weights) == backbone_weights + 4  # two classifiers: kernel + bias each
  restored = models.MultiTaskModel.from_config(model.get_config())
  restored(_features())
  restored.set_weights(model.get_weights())
  np.testing.assert_allclose(restored(_features())["ner"], outputs["ner"], atol=1e-6)


def test_classifier_needs_labels():
  config = tiny_config("bert", task="sequence_classification")
  config.task.labels = []
  with pytest.raises(ValueError, match="needs `labels` or `num_classes`"):
    models.build(config)


@pytest.mark.parametrize("task", ["causal_lm", "multi_task"])
def test_tf_checkpoint_holds_every_variable(task, tmp_path):
  import tensorflow as tf
  config = tiny_config("bert" if task == "multi_task" else "gpt2", task=task)
  if task == "multi_task":
    config.task.heads = {"ner": dict(task="token_classification", num_classes=3),
                         "mlm": dict(task="masked_lm")}
  model = models.build(config)
  for layer in model.backbone.blocks:
    layer.trainable = False  # frozen variables must be saved too, not only optimizer slots
  path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
  restored = models.build(config)
  tf.train.Checkpoint(model=restored).read(path).assert_existing_objects_matched()
  for a, b in zip(model.weights, restored.weights):
    np.testing.assert_array_equal(a, b)
