"""Distillation: the loss, the teacher-student model, loading a fine-tuned teacher, and what a
distillation run trains its student toward."""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.finetune.test_recipes import load_recipe
from tests.finetune.test_strategies import features, tiny_classifier
from tfllm import config as config_lib
from tfllm import artifacts, finetune, models, training
from tfllm.data import pipelines, tokenizers
from tfllm.finetune.config import with_finetune_section
from tfllm.models.config import model_preset
from tfllm.model_dir import checkpoint_dir


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


def test_mixed_loss_equals_a_hand_computation_at_its_temperature():
  # Two examples, two classes, T = 2, alpha = 0.25, weights 1 and 3; softmaxes worked by hand.
  student = np.array([[0.0, 0.0], [1.0, -1.0]], "float32")
  teacher = np.array([[2 * math.log(3), 0.0], [0.0, 0.0]], "float32")
  labels, weights = np.array([1, 0]), np.array([1.0, 3.0], "float32")
  sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
  # Row 0: teacher / T = [ln 3, 0] -> [3/4, 1/4]; student / T = [0, 0] -> [1/2, 1/2].
  kl_0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
  # Row 1: teacher -> [1/2, 1/2]; student / T = [1/2, -1/2] -> [sigmoid(1), sigmoid(-1)].
  kl_1 = 0.5 * math.log(0.5 / sigmoid(1)) + 0.5 * math.log(0.5 / sigmoid(-1))
  # The hard term is at temperature 1: label 1 of [0, 0]; label 0 of [1, -1].
  ce_0, ce_1 = math.log(2), -math.log(sigmoid(2))
  alpha, t = 0.25, 2.0
  total = (1 * (alpha * t * t * kl_0 + (1 - alpha) * ce_0)
           + 3 * (alpha * t * t * kl_1 + (1 - alpha) * ce_1))
  loss_sum, weight_sum = finetune.distillation_sums(student, teacher, labels, weights,
                                                    temperature=t, alpha=alpha)
  assert float(loss_sum) == pytest.approx(total, rel=1e-5) and float(weight_sum) == 4.0
  assert float(finetune.distillation_loss(student, teacher, labels, weights, temperature=t,
                                          alpha=alpha)) == pytest.approx(total / 4, rel=1e-5)
  # The trainer's objective divides by the global batch's weights (here 8, as if 2 replicas).
  objective = finetune.distillation_objective(temperature=t, alpha=alpha)
  outputs = {"output": student, "teacher": teacher}
  assert float(objective(outputs, labels, weights, {"output": tf.constant(8.0)})) == (
      pytest.approx(total / 8, rel=1e-5))


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
                                       checkpoint_dir(str(tmp_path)), 1)
  manager.save()
  with open(os.path.join(tmp_path, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))
  teacher, teacher_config = artifacts.load_trained_model(str(tmp_path))
  assert not finetune.strategies.lora_enabled(teacher)   # merged
  assert teacher_config.task.labels == ["negative", "positive"]
  x = features(batch=3)
  x["token_ids"] = x["token_ids"] % 50
  np.testing.assert_allclose(np.asarray(teacher(x)), np.asarray(model(x)), atol=1e-5)
  with pytest.raises(FileNotFoundError, match="config.json is missing"):
    artifacts.load_trained_model(str(tmp_path / "missing"))


DISTILL_SPLIT = "train[:64]"   # trained on and measured on: what the loss pulls toward


def _tiny_distillation_config(tfds_dir, seed, alpha=0.5, teacher_model_dir=""):
  """configs/distill_bert_tiny.py at a size that trains in seconds: one narrow block, no
  dropout, 30 steps over 64 movie-sentiment examples."""
  config = load_recipe("distill_bert_tiny")
  config.model.update(num_layers=1, hidden_dim=32, num_heads=2, intermediate_dim=64)
  config.task.dropout = 0.0
  config.data.update(data_dir=tfds_dir, sequence_length=32, bucket_lengths=(16,),
                     train_split=DISTILL_SPLIT, eval_split=DISTILL_SPLIT)
  config.train.update(steps=30, steps_per_loop=30, eval_steps=0, global_batch_size=16,
                      checkpoint_every_steps=0, jit_compile="off", seed=seed)
  config.train.optimizer.update(learning_rate=3e-3, warmup_steps=1)
  config.finetune.distill.update(teacher_model_dir=teacher_model_dir, alpha=alpha)
  return config


def _logits_labels_weights(model, batches):
  return [np.concatenate(parts) for parts in zip(*[
      (np.asarray(model(x)), y.numpy(), w.numpy()) for x, y, w in batches])]


def _opinionated_random_teacher(config, model_dir, batches):
  """A teacher of random weights, written as a tfllm model_dir: its head scaled up and its
  bias centred so that it predicts both classes, confidently and regardless of the labels:
  a student can only learn these predictions from the teacher's logits."""
  keras.utils.set_random_seed(config.train.seed)
  teacher = models.build(config)
  head = {v.path.rsplit("/", 1)[-1]: v for v in teacher.trainable_variables
          if v.path.rsplit("/", 1)[0].endswith("/classifier")}
  head["kernel"].assign(head["kernel"] * 4.0)
  logits, _, weights = _logits_labels_weights(teacher, batches)
  median = float(np.median((logits[:, 1] - logits[:, 0])[weights > 0]))
  head["bias"].assign(head["bias"] + np.array([median / 2, -median / 2], "float32"))
  tf.train.CheckpointManager(tf.train.Checkpoint(model=teacher),
                             checkpoint_dir(model_dir), 1).save()
  with open(os.path.join(model_dir, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))
  return teacher


def _against_teacher(student_logits, teacher_logits, labels, weights, temperature):
  """Weighted means: KL(teacher || student) at `temperature`, how often the two agree, and
  the student's accuracy on the labels."""
  def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))

  teacher_log = log_softmax(teacher_logits / temperature)
  kl = (np.exp(teacher_log) * (teacher_log - log_softmax(student_logits / temperature))).sum(-1)
  mean = lambda values: float((values * weights).sum() / weights.sum())  # noqa: E731
  return dict(kl=mean(kl),
              agreement=mean(student_logits.argmax(-1) == teacher_logits.argmax(-1)),
              label_accuracy=mean(student_logits.argmax(-1) == labels))


@pytest.mark.slow
def test_distillation_run_follows_the_teacher_at_alpha_1_and_the_labels_at_alpha_0(
    tmp_path, tfds_dir, finetune_section):
  teacher_config = config_lib.validate(_tiny_distillation_config(tfds_dir, seed=7))
  tokenizer = tokenizers.get_tokenizer(teacher_config)
  teacher_config.model.vocab_size = int(tokenizer.vocabulary_size())
  batches = list(pipelines.make_dataset(teacher_config, DISTILL_SPLIT, tokenizer,
                                        training=False))
  teacher_dir = str(tmp_path / "teacher")
  teacher = _opinionated_random_teacher(teacher_config, teacher_dir, batches)
  teacher_logits, labels, weights = _logits_labels_weights(teacher, batches)
  temperature = teacher_config.finetune.distill.temperature

  def measured(model):
    return _against_teacher(_logits_labels_weights(model, batches)[0], teacher_logits, labels,
                            weights, temperature)

  # The teacher disagrees with the labels about half the time: following one is not
  # following the other.
  assert 0.3 < measured(teacher)["label_accuracy"] < 0.7
  student_config = _tiny_distillation_config(tfds_dir, seed=0)
  student_config.model.vocab_size = teacher_config.model.vocab_size
  keras.utils.set_random_seed(0)   # the runs' initialization (training.run seeds, then builds)
  results = {"untrained": measured(models.build(config_lib.validate(student_config)))}
  for alpha in (1.0, 0.0):
    model_dir = str(tmp_path / f"alpha_{alpha}")
    config = _tiny_distillation_config(tfds_dir, seed=0, alpha=alpha,
                                       teacher_model_dir=teacher_dir)
    training.run(config, model_dir, mode="train", strategy_name="one_device",
                 log=lambda line: None)
    results[alpha] = measured(artifacts.load_trained_model(model_dir)[0])
  untrained, soft_only, hard_only = results["untrained"], results[1.0], results[0.0]
  # alpha=1: the KL term alone pulls the student onto the teacher's predictions.
  assert soft_only["kl"] < 0.1 * untrained["kl"], results
  assert soft_only["agreement"] > max(untrained["agreement"], hard_only["agreement"]) + 0.2, (
      results)
  # alpha=0: the labels alone; the teacher's logits play no part.
  assert hard_only["label_accuracy"] > soft_only["label_accuracy"] + 0.2, results
  assert hard_only["kl"] > untrained["kl"], results
