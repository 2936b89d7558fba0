"""Training: optimizer and schedule, losses and metrics, checkpoints, the distributed loop.

`run(config, model_dir=..., ...)` is the job `tfllm-train` runs (`tfllm.training.job`): config ->
strategy -> experiment (`build_experiment`) -> `Trainer` (compiled steps) run by a `Controller`
and its actions (`tfllm.training.actions`) -> report.
The public names below import their module on first use, so that the TF-free config schema
(`tfllm.training.config`) imports without TensorFlow (`tfllm.lazy_exports`).
"""

from tfllm.lazy_exports import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "checkpointing": ["CheckpointWriteError", "Checkpointer"],
    "flops": ["model_flops_utilization", "peak_flops", "training_flops_per_token"],
    "actions": ["Action", "default_actions"],
    "controller": ["Controller", "LoopState", "TrainResult"],
    "errors": ["DivergedError", "StopRequested", "TrainingError"],
    "experiment": ["Experiment", "build_experiment"],
    "job": ["run"],
    "loop": ["Trainer"],
    "optimizer": ["WarmupDecay", "build_optimizer", "learning_rate_schedule",
                  "time_budget_progress"],
    "sampling": ["sample_continuation"],
})
