"""Distillation: the loss, the teacher-student model and loading a fine-tuned teacher."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.finetune.test_strategies import features, tiny_classifier
from tfllm import config as config_lib
from tfllm import finetune, models
from tfllm.finetune.config import with_finetune_section
from tfllm.models.config import model_preset
from tfllm.training import checkpointing


def _logits(seed, shape=(5, 3)):
  return np.random.default_rng(seed).normal(size=shape).astype("float32") * 2


def test_loss_terms():
  student, teacher = _logits(0), _logits(1)
  labels = np.array([0, 2, 1, 1, 0])
  weights = np.array([1, 1, 0, 1, 1], "float32")
  ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=student).numpy()
  hard = finetune.distillation_loss(student, teacher, labels, weights, temperature=3.0, alpha=0.0)
  np.testing.assert_allclose(hard, (ce * weights).sum() / weights.sum(), rtol=1e-6)
  soft = finetune.distillation_loss(student, teacher, labels, weights, temperature=3.0, alpha=1.0)
  p = tf.nn.softmax(teacher / 3.0).numpy()
  kl = (p * (np.log(p) - tf.nn.log_softmax(student / 3.0).numpy())).sum(-1)
  np.testing.assert_allclose(soft, 9.0 * (kl * weights).sum() / weights.sum(), rtol=1e-5)
  same = finetune.distillation_loss(teacher, teacher, labels, weights, temperature=3.0, alpha=1.0)
  assert abs(float(same)) < 1e-6
  with pytest.raises(ValueError, match="temperature=0 must be > 0"):
    finetune.distillation_loss(student, teacher, labels, temperature=0)
  with pytest.raises(ValueError, match="alpha=1.5 must be in"):
    finetune.distillation_loss(student, teacher, labels, alpha=1.5)


def test_student_moves_toward_teacher_and_teacher_stays():
  teacher = tiny_classifier(seed=3)
  student = tiny_classifier(seed=4)
  pair = finetune.TeacherStudent(student, teacher)
  x = features(batch=8, seed=5)
  pair(x)
  assert {id(v) for v in pair.trainable_variables} == {id(v) for v in student.trainable_variables}
  teacher_before = [v.numpy().copy() for v in teacher.weights]
  objective = finetune.distillation_objective(temperature=2.0, alpha=1.0)
  labels = np.zeros((8,), "int32")
  optimizer = keras.optimizers.Adam(1e-2)

  def kl():
    outputs = pair(x)
    return float(finetune.distillation_loss(outputs["output"], outputs["teacher"], labels,
                                            temperature=2.0, alpha=1.0))

  start = kl()
  for _ in range(20):
    with tf.GradientTape() as tape:
      loss = objective(pair(x, training=True), labels, None, {"output": tf.constant(8.0)})
    grads = tape.gradient(loss, pair.trainable_variables)
    optimizer.apply(grads, pair.trainable_variables)
  assert kl() < 0.5 * start
  for before, variable in zip(teacher_before, teacher.weights):
    np.testing.assert_array_equal(before, variable.numpy())


def test_load_lora_teacher_from_model_dir(tmp_path, finetune_section):
  config = with_finetune_section(config_lib.default_config())
  config.model.update(model_preset("bert"))
  config.model.update(vocab_size=50, num_layers=2, hidden_dim=16, num_heads=2,
                      intermediate_dim=32)
  config.task.update(name="sequence_classification", labels=["negative", "positive"])
  config.finetune.update(strategy="lora", lora_rank=2)
  model = models.build(config)
  finetune.apply_strategy(model, config.finetune)
  for variable in model.trainable_variables:   # as if fine-tuned: adapters and head non-zero
    variable.assign(np.random.default_rng(0).normal(size=variable.shape) * 0.1)
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                                       checkpointing.checkpoint_dir(str(tmp_path)), 1)
  manager.save()
  with open(os.path.join(tmp_path, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))
  teacher, teacher_config = finetune.load_teacher(str(tmp_path))
  assert not finetune.strategies.lora_enabled(teacher)   # merged
  assert teacher_config.task.labels == ["negative", "positive"]
  x = features(batch=3)
  x["token_ids"] = x["token_ids"] % 50
  np.testing.assert_allclose(np.asarray(teacher(x)), np.asarray(model(x)), atol=1e-5)
  with pytest.raises(FileNotFoundError, match="config.json is missing"):
    finetune.load_teacher(str(tmp_path / "missing"))
