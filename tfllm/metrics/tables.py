"""The metrics each task's evaluation reports: one explicit table, read by `eval_metrics`.

Every evaluation reports `LossAndAccuracy`; a task's row adds its own metrics. A multi-task
model gets the rows of its heads' tasks. A new metric is a new entry here: nothing registers
itself on import or by a call.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import ml_collections

from tfllm.metrics.base import EvalMetric, LossAndAccuracy
from tfllm.metrics.char_loss import character_loss
from tfllm.metrics.classification_f1 import ClassificationF1
from tfllm.metrics.entity_f1 import EntityF1

# task name -> factories `(config, tokenizer) -> EvalMetric`, after `LossAndAccuracy`.
TASK_METRICS: Dict[str, Tuple[Callable[..., EvalMetric], ...]] = {
    "causal_lm": (character_loss,),
    "masked_lm": (),
    "sequence_classification": (ClassificationF1.from_config,),
    "token_classification": (EntityF1.from_config,),
    "multi_task": (),
}


def eval_metrics(config: ml_collections.ConfigDict, tokenizer=None) -> List[EvalMetric]:
  """The metrics an evaluation of `config.task` reports.

  Args:
    config: the full config (`task` decides the metrics).
    tokenizer: the run's tokenizer, or None (metrics that need one, e.g. the per-character
      loss, then report nothing).
  """
  metrics: List[EvalMetric] = [LossAndAccuracy(config.task)]
  tasks = [config.task.name]
  if config.task.name == "multi_task":
    tasks += sorted({head.task for head in config.task.heads.values()})
  for task in tasks:
    metrics += [factory(config, tokenizer) for factory in TASK_METRICS.get(task, ())]
  return metrics
