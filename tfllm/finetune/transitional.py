"""Transitional: four names the trainer's job (tfllm/training/job.py and
tfllm/training/evaluation.py, reshaped on another branch of the house refactor) still reads
from `tfllm.finetune`. The merge retargets those calls and deletes this module:

- `load_trained_model(d)` -> `tfllm.artifacts.load_trained_model(d)`;
- `teacher_student(student, config)` -> `finetune.check_student(config)`, then
  `tfllm.artifacts.load_trained_model(config.finetune.distill.teacher_model_dir)`, then
  `finetune.pair_with_teacher(student, config, teacher, teacher_config)`;
- `entity_reports_from_results` -> `tfllm.metrics.entity_reports_from_results`;
- `register_eval_metrics()` -> nothing (`tfllm.metrics.eval_metrics` reads an explicit table).

The two upward imports below (finetune, level 3, importing artifacts, level 4) are listed in
tests/test_layering.py's allow-list for the same reason.
"""

from __future__ import annotations

from tfllm.finetune.distillation import check_student, pair_with_teacher
from tfllm.metrics.entity_f1 import entity_reports_from_results  # noqa: F401


def load_trained_model(model_dir: str):
  """`tfllm.artifacts.load_trained_model(model_dir)`."""
  from tfllm.artifacts.loader import load_trained_model as load  # transitional, see docstring
  return load(model_dir)


def teacher_student(student, config):
  """Loads the teacher of `config.finetune.distill` and pairs it with `student`
  (`pair_with_teacher`)."""
  from tfllm.artifacts.loader import load_trained_model as load  # transitional, see docstring
  check_student(config)
  teacher, teacher_config = load(config.finetune.distill.teacher_model_dir)
  return pair_with_teacher(student, config, teacher, teacher_config)


def register_eval_metrics() -> None:
  """Does nothing: the task metrics are an explicit table (`tfllm.metrics.tables`)."""
