"""Training: optimizer and schedule, losses and metrics, checkpoints, the distributed loop.

`run(config, model_dir=..., ...)` is the job `tfllm-train` runs (`tfllm.training.job`).
"""

# Registers nats/bits per character for every causal-LM evaluation.
from tfllm.training import char_loss  # noqa: F401  pylint: disable=unused-import
from tfllm.training.checkpointing import (CheckpointWriteError, checkpoint_dir,
                                          latest_checkpoint, restore_model)
from tfllm.training.flops import (model_flops_utilization, peak_flops,
                                  training_flops_per_token)
from tfllm.training.loop import (DivergedError, StopRequested, Trainer, TrainingError,
                                 TrainResult)
from tfllm.training.metrics import EvalMetric, eval_metrics, register_eval_metric
from tfllm.training.optimizer import (WarmupDecay, build_optimizer, learning_rate_schedule,
                                      time_budget_progress)
from tfllm.training.sampling import sample_continuation


def run(*args, **kwargs):
  """See `tfllm.training.job.run` (imported on use: it pulls in data and models)."""
  from tfllm.training import job  # pylint: disable=g-import-not-at-top
  return job.run(*args, **kwargs)


__all__ = [
    "CheckpointWriteError", "DivergedError", "EvalMetric", "StopRequested", "Trainer",
    "TrainingError", "TrainResult", "WarmupDecay", "build_optimizer", "checkpoint_dir",
    "eval_metrics", "latest_checkpoint", "learning_rate_schedule", "model_flops_utilization",
    "peak_flops", "register_eval_metric", "restore_model", "run", "sample_continuation",
    "time_budget_progress", "training_flops_per_token",
]
