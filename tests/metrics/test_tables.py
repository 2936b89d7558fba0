"""The per-task metric table: what each task's evaluation reports, with nothing registered."""

import pytest

from tests.training.helpers import trainer_config
from tfllm import metrics
from tfllm.models.config import TASKS


@pytest.mark.parametrize("task,expected", [
    ("causal_lm", ["LossAndAccuracy", "CharacterLoss"]),
    ("masked_lm", ["LossAndAccuracy"]),
    ("sequence_classification", ["LossAndAccuracy", "ClassificationF1"]),
    ("token_classification", ["LossAndAccuracy", "EntityF1"]),
    # A multi-task model gets its heads' rows, in task-name order.
    ("multi_task", ["LossAndAccuracy", "ClassificationF1", "EntityF1"]),
])
def test_each_task_reports_its_row_of_the_table(task, expected):
  assert [type(m).__name__ for m in metrics.eval_metrics(trainer_config(task))] == expected


def test_every_task_has_a_row():
  assert sorted(metrics.TASK_METRICS) == sorted(TASKS)
