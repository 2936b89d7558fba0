"""Transitional: `tfllm.metrics` holds the evaluation metrics and their per-task table.

The trainer's modules (job.py, loop.py) import them from here until the house
refactor's merge retargets those imports to `tfllm.metrics`; this module then goes.
"""

from tfllm.metrics.base import EvalMetric, LossAndAccuracy, head_evaluated  # noqa: F401
from tfllm.metrics.tables import eval_metrics  # noqa: F401
