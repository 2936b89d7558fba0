"""`run(config, ...)`: one training/evaluation job, from a config to a trained model_dir.

It reads config -> strategy -> experiment (`tfllm.training.experiment`) -> trainer and its
controller (`tfllm.training.loop`, `controller`, `actions`) -> report
(`tfllm.training.report`). The model_dir it writes holds what a run needs to resume and what
export needs (`tfllm.model_dir` names its files).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional

import ml_collections
import tensorflow as tf

from tfllm import config as config_lib
from tfllm import distribute, runtime
from tfllm.artifacts import checkpoints
from tfllm.model_dir import checkpoint_dir
from tfllm.models import tensor_parallel as tp_models
from tfllm.training import tensor_parallel
from tfllm.training.devices import jit_compile_setting
from tfllm.training.experiment import Experiment, build_experiment
from tfllm.training.loop import Trainer
from tfllm.training.report import report
from tfllm.training.saved_config import compare_with_model_dir

MODES = ("train", "eval", "train_and_eval")


def run(config: ml_collections.ConfigDict, model_dir: str, mode: str = "train_and_eval",
        strategy_name: str = "mirrored", tpu: Optional[str] = None,
        num_gpus: Optional[int] = None, mixed_precision: str = "float32",
        log: Callable[[str], None] = print,
        startup: Optional[runtime.StartupTimer] = None) -> Dict[str, Any]:
  """Trains and/or evaluates the model `config` describes, in `model_dir`.

  A `model_dir` holding a checkpoint resumes from it exactly (model, optimizer, step, data
  position); one holding a different model shape is refused before anything is written.

  Args:
    config: full tfllm config (validated here).
    model_dir: directory of the run (created; see the module docstring for its contents).
    mode: "train", "eval" (the newest checkpoint) or "train_and_eval".
    strategy_name: see `tfllm.distribute.get_strategy`.
    tpu: TPU name or address for `strategy_name="tpu"`.
    num_gpus: GPUs for `mirrored` (None = all).
    mixed_precision: see `tfllm.precision.set_policy`.
    log: where the chief's progress and results go.
    startup: times the phases up to the first training step (a command-line app passes
      the one it started at launch); None: a new one, from this call. The chief logs them
      after the first step (`time to first step ...`).

  Returns:
    dict with `step`, `eval_metrics`, `stop_reason`, `tokens_per_second`, `train_seconds`,
    `sample` (causal LMs with `train.sample_new_tokens`), `checkpoint`.
  """
  startup = startup or runtime.StartupTimer(since_process_start=False)
  config = validate(config, mode, model_dir)
  # Thread pools are fixed when the runtime initializes, which the strategy does.
  threads = runtime.plan_threads(config.runtime)
  threads_note = runtime.configure_threads(threads)
  strategy = _strategy(config, strategy_name, tpu, num_gpus, mixed_precision)
  groups = (tensor_parallel.data_parallel_groups(config, strategy_name, num_gpus,
                                                 replicas=strategy.num_replicas_in_sync)
            if config.train.model_parallel > 1 else 1)
  startup.mark("strategy")
  check_with_strategy(config, strategy, mode, model_dir)
  chief = distribute.is_chief(strategy)
  worker_dir = None if chief else distribute.worker_temp_dir(model_dir, strategy)
  log = log if chief else (lambda line: None)
  experiment = build_experiment(config, strategy, model_dir, mixed_precision, threads,
                                chief=chief, worker_dir=worker_dir, log=log, startup=startup,
                                tensor_parallel_groups=groups)
  trainer = _trainer(config, strategy, experiment, model_dir, chief, worker_dir, log, startup)
  _restore(trainer, experiment, mode, log)
  _log_setup(log, trainer, experiment, threads_note or threads.describe())
  summary = _train_or_evaluate(trainer, mode, log)
  return report(summary, trainer, _unsharded(experiment), config, mode, chief, log)


def _strategy(config, strategy_name, tpu, num_gpus, mixed_precision) -> tf.distribute.Strategy:
  """The strategy `strategy_name` names; with `train.model_parallel = N > 1`, one replica a
  machine whose program spans its tensor-parallel groups' devices (several groups under
  `mirrored` and `multi_worker_mirrored`: `tensor_parallel.data_parallel_groups`): TF's
  default strategy on one machine, `multi_worker_mirrored` with a replica a worker across
  machines."""
  if config.train.model_parallel > 1:
    tensor_parallel.check_training(config, strategy_name, mixed_precision)
    strategy = tf.distribute.get_strategy()
    if str(strategy_name).strip().lower() == "multi_worker_mirrored":
      # One replica a worker, whose program spans the worker's tensor-parallel groups; made
      # before anything lists the devices (which starts the runtime MWMS must configure).
      strategy = distribute.get_strategy(strategy_name, one_replica_per_worker=True)
    tp_models.check_config(config)   # N against the devices (the vocabulary: once it is known)
    return strategy
  return distribute.get_strategy(strategy_name, tpu=tpu, num_gpus=num_gpus)


def _train_or_evaluate(trainer: Trainer, mode: str, log) -> Dict[str, Any]:
  """Runs `mode` (evaluation alone, or training with or without evaluations); the summary."""
  summary: Dict[str, Any] = dict(step=int(trainer.step.numpy()), eval_metrics={},
                                 stop_reason="", tokens_per_second=0.0, train_seconds=0.0)
  if mode == "eval":
    summary["eval_metrics"] = trainer.evaluate()
    return summary
  if mode == "train":
    trainer.train_config.eval_steps = 0
  result = trainer.train()
  summary.update(step=result.step, eval_metrics=result.eval_metrics,
                 stop_reason=result.stop_reason, tokens_per_second=result.tokens_per_second,
                 train_seconds=result.train_seconds)
  log(f"trained to step {result.step} ({result.stop_reason}) in {result.train_seconds:.1f} s "
      f"of steps, {result.tokens_per_second:,.0f} tokens/s")
  log(runtime.describe_thread_cpu(runtime.thread_cpu_seconds()))
  return summary


def _unsharded(experiment: Experiment) -> Experiment:
  """The experiment the report reads: a tensor-parallel run's sample (and anything else the
  report runs) uses the unsharded model on the host."""
  if experiment.checkpoint_state is None:
    return experiment
  experiment.checkpoint_state.before_save()
  return dataclasses.replace(experiment, trained_model=experiment.checkpoint_state.model)


def validate(config: ml_collections.ConfigDict, mode: str,
             model_dir: str) -> ml_collections.ConfigDict:
  """The job's own validated copy of `config` (the caller's is left as it is).

  Raises:
    ConfigError: a bad mode, model_dir or setting, or one the mode cannot run.
  """
  if mode not in MODES:
    raise config_lib.ConfigError(f"mode={mode!r} is not known; use one of: {', '.join(MODES)}")
  if not model_dir:
    raise config_lib.ConfigError("model_dir is empty; give the directory to train in")
  config = config_lib.validate(ml_collections.ConfigDict(config.to_dict()))
  if mode == "train" and config.train.early_stopping.metric:
    raise config_lib.ConfigError(
        f"config.train.early_stopping.metric={config.train.early_stopping.metric!r} needs "
        "evaluations, which mode=train does not run; use mode=train_and_eval or set "
        "config.train.early_stopping.metric=''")
  return config


def check_with_strategy(config: ml_collections.ConfigDict, strategy: tf.distribute.Strategy,
                        mode: str, model_dir: str):
  """The checks that read the data sources, the strategy or `model_dir`, before any work.

  Raises:
    ConfigError: the data settings do not fit, the strategy cannot run them, `model_dir`
      holds a different model, or `mode=eval` finds no checkpoint.
  """
  if config.data.bucket_lengths and isinstance(strategy, tf.distribute.TPUStrategy):
    raise config_lib.ConfigError(
        f"config.data.bucket_lengths={tuple(config.data.bucket_lengths)} gives "
        "batches of varying length, which TPUStrategy cannot compile; set it to () on TPUs")
  compare_with_model_dir(config, model_dir)   # refuse a different model before any work
  if mode == "eval" and checkpoints.latest_checkpoint(model_dir) is None:
    raise config_lib.ConfigError(f"mode=eval needs a checkpoint; "
                                 f"{checkpoint_dir(model_dir)} has none")


def _trainer(config, strategy, experiment: Experiment, model_dir, chief, worker_dir, log,
             startup) -> Trainer:
  # A tensor-parallel step is one program over several devices: not one XLA cluster.
  jit_compile = (False if experiment.checkpoint_state is not None
                 else jit_compile_setting(config.train))
  return Trainer(
      config, strategy, experiment.model, experiment.optimizer, model_dir,
      experiment.train_data, experiment.eval_data, metrics=experiment.metrics,
      is_chief=chief, worker_dir=worker_dir, jit_compile=jit_compile,
      flops_per_token=experiment.flops_per_token,
      peak_flops_per_device=experiment.peak.flops_per_second,
      budget_progress=experiment.budget_progress, objective=experiment.objective,
      trained_model=experiment.trained_model, gradients=experiment.gradients,
      step_hooks=experiment.step_hooks, checkpoint_state=experiment.checkpoint_state,
      data_parallel_groups=experiment.data_parallel_groups, log=log, startup=startup)


def _log_setup(log, trainer: Trainer, experiment: Experiment, threads_line: str):
  """The lines that say what runs: model size, strategy, precision, XLA, threads, MFU peak."""
  strategy, peak = trainer.strategy, experiment.peak
  tensor = ""
  if experiment.checkpoint_state is not None:
    groups = experiment.data_parallel_groups
    tensor = (f"; tensor parallel: {groups} group{'s' if groups > 1 else ''} of "
              f"{trainer.config.train.model_parallel} devices a replica")
  log(f"model: {experiment.trained_model.count_params():,} parameters; strategy: "
      f"{type(strategy).__name__} ({strategy.num_replicas_in_sync} replicas){tensor}; "
      f"precision: {experiment.policy}; XLA: {'on' if trainer.jit_compile else 'off'}")
  log(threads_line)
  log(f"MFU peak: {peak.flops_per_second / 1e12:g} TFLOP/s per device ({peak.source})"
      if peak.flops_per_second else
      f"MFU: not reported ({peak.source}; set config.train.peak_flops_per_device)")


def _restore(trainer: Trainer, experiment: Experiment, mode: str, log):
  """Evaluation alone reads the model training produced: early stopping's best checkpoint
  when it kept one; training resumes from the newest."""
  to_evaluate, which = checkpoints.checkpoint_to_use(trainer.model_dir)
  restored = trainer.restore(to_evaluate if mode == "eval" else None)
  if mode == "eval":
    log(f"evaluating {which}: {restored}")
  elif restored:
    log(f"resumed from {restored} (step {int(trainer.step.numpy())})")
    changed = experiment.changed_settings
    if changed:
      more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
      log(f"resuming with changed settings: {'; '.join(changed[:3])}{more}")
