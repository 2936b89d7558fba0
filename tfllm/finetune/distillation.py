"""Knowledge distillation: a small student learns the fine-tuned teacher's soft predictions.

Loss per example (Hinton et al., 2015):
  alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
  + (1 - alpha) * cross_entropy(label, softmax(student))
The T^2 factor keeps the soft term's gradient scale independent of the temperature T.
Losses are weighted sums over the batch plus the weight sum (the trainer's convention,
`tfllm.metrics.losses`), so the mean is over the global batch under any strategy.
"""

from __future__ import annotations

from typing import Callable, Tuple

import keras
import tensorflow as tf

from tfllm.config import ConfigError
from tfllm.metrics import losses
from tfllm.models.build import example_features
from tfllm.models.config import num_classes


def distillation_sums(student_logits, teacher_logits, labels, sample_weight=None,
                      temperature: float = 2.0, alpha: float = 0.5) -> Tuple[tf.Tensor, tf.Tensor]:
  """Weighted sum of the distillation loss and the sum of weights of one head.

  Args:
    student_logits, teacher_logits: float `[..., num_classes]`.
    labels: int `[...]` hard labels.
    sample_weight: float `[...]` or None; 0 masks a position (padding, non-first pieces).
    temperature: softening temperature T > 0.
    alpha: weight of the soft (KL) term, in [0, 1].

  Returns:
    `(loss_sum, weight_sum)`, float32 scalars.
  """
  if temperature <= 0:
    raise ValueError(f"temperature={temperature} must be > 0")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha={alpha} must be in [0, 1]")
  student = tf.cast(student_logits, tf.float32)
  teacher = tf.cast(teacher_logits, tf.float32)
  weights = losses.head_weights(labels, sample_weight)
  teacher_log_probs = tf.nn.log_softmax(teacher / temperature, axis=-1)
  student_log_probs = tf.nn.log_softmax(student / temperature, axis=-1)
  kl = tf.reduce_sum(tf.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs),
                     axis=-1)
  ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32),
                                                      logits=student)
  per_example = alpha * temperature ** 2 * kl + (1.0 - alpha) * ce
  return tf.reduce_sum(per_example * weights), tf.reduce_sum(weights)


def distillation_loss(student_logits, teacher_logits, labels, sample_weight=None,
                      temperature: float = 2.0, alpha: float = 0.5) -> tf.Tensor:
  """The weighted mean of `distillation_sums` over one batch."""
  total, weight = distillation_sums(student_logits, teacher_logits, labels, sample_weight,
                                    temperature, alpha)
  return total / tf.maximum(weight, 1e-12)


TEACHER_KEY = "teacher"


class TeacherStudent(keras.Model):
  """The student with its frozen teacher alongside, for the trainer's distillation loss.

  Returns `{"output": student logits, "teacher": teacher logits}`: the single-head key the
  trainer and its metrics read (`tfllm.metrics.losses.SINGLE_HEAD`), so evaluation reports
  the student, plus the teacher's logits (no gradient, no dropout) for
  `distillation_objective`. Only the student's variables train.

  Args:
    student: the single-task model to train.
    teacher: a model of the same task and label set.
  """

  def __init__(self, student: keras.Model, teacher: keras.Model, **kwargs):
    super().__init__(**kwargs)
    self.student = student
    self.teacher = teacher
    self.teacher.trainable = False

  def call(self, inputs, training=None):
    teacher_logits = tf.stop_gradient(self.teacher(inputs, training=False))
    return {losses.SINGLE_HEAD: self.student(inputs, training=training),
            TEACHER_KEY: teacher_logits}


def distillation_objective(temperature: float, alpha: float) -> Callable:
  """The training loss of a `TeacherStudent`, in the trainer's `_objective` form:
  `fn(logits, labels, sample_weight, global_weights) -> loss`, where `global_weights` maps
  the head name to the sum of sample weights over the global batch."""

  def objective(logits, labels, sample_weight, global_weights):
    total, _ = distillation_sums(logits[losses.SINGLE_HEAD], logits[TEACHER_KEY], labels,
                                 sample_weight, temperature, alpha)
    return total / global_weights[losses.SINGLE_HEAD]

  return objective


def _describe(config) -> dict:
  """What a teacher and its student must share: the task, its classes, the tokenizer."""
  task = config.task
  return {"task.name": task.name,
          "task.num_classes": num_classes(task) if task.name in (
              "sequence_classification", "token_classification") else None,
          "task.labels": list(task.labels),
          "tokenizer": config.tokenizer.to_dict(),
          "model.vocab_size": config.model.vocab_size}


def check_student(config) -> None:
  """Raises ConfigError unless `config` trains a student distillation supports (single-task);
  callers check before they load the teacher."""
  if config.task.name == "multi_task":
    raise ConfigError("distillation trains single-task students; config.task.name='multi_task' "
                      "is not supported with config.finetune.distill.teacher_model_dir")
  _check_no_crf(config, "the student's")


def _check_no_crf(config, whose: str) -> None:
  # The soft targets are per-word distributions; a CRF's are per sentence.
  if config.task.get("decoding", "argmax") == "crf":
    raise ConfigError(f"distillation matches per-word tag distributions; {whose} "
                      "config.task.decoding='crf' (a sentence-level CRF) is not supported: use "
                      "'iob2_viterbi'")


def pair_with_teacher(student: keras.Model, config, teacher: keras.Model,
                      teacher_config) -> Tuple[TeacherStudent, Callable]:
  """The pair and the loss of a distillation run (`config.finetune.distill`).

  Checks that the teacher (loaded by the caller from `distill.teacher_model_dir`, inside its
  `strategy.scope()`: `tfllm.artifacts.load_trained_model`) does the student's task on the
  same classes and tokens.

  Returns:
    `(TeacherStudent(student, teacher), distillation_objective(temperature, alpha))`.

  Raises:
    ConfigError: a multi-task student, or a teacher of another task, label set or tokenizer.
  """
  distill = config.finetune.distill
  check_student(config)
  _check_no_crf(teacher_config, "the teacher's")
  ours, theirs = _describe(config), _describe(teacher_config)
  for key, value in ours.items():
    if theirs[key] != value:
      raise ConfigError(f"the teacher in {distill.teacher_model_dir} has {key}={theirs[key]!r}, "
                        f"the student {value!r}; a teacher must share the task, its labels and "
                        "the tokenizer")
  pair = TeacherStudent(student, teacher)
  pair(example_features(config.task.name, config.model))
  return pair, distillation_objective(distill.temperature, distill.alpha)

