"""The distributed training loop: `strategy.run` steps, `steps_per_loop` of them per host call.

Not `model.fit`: Keras 3's `fit` fails under `MultiWorkerMirroredStrategy` (docs/stack.md), and a
custom loop gives the same code path on every strategy (Model Garden's Orbit loops do the same).

One optimizer step, per replica:
  1. take `grad_accum_steps` micro-batches; all-reduce the sum of their sample weights, so the
     loss is `sum(weight * cross-entropy) / global sum of weights` whatever the split;
  2. sum the gradients of the micro-batches, all-reduce them (sum over replicas);
  3. clip them by their global norm, and apply AdamW (which does not all-reduce again).
The step function is XLA-compiled where that works; the host loop around it handles
checkpoints, evaluation, summaries, the progress line, stop requests and the NaN guard.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import signal
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import keras
import ml_collections
import numpy as np
import tensorflow as tf

from tfllm.config import ConfigError
from tfllm.training import checkpointing, flops, losses
from tfllm.training.metrics import EvalMetric

# An eval step's total sample weight: 0 once every replica is past its data.
_EVALUATED_WEIGHT = "_evaluated/weight"


class TrainingError(RuntimeError):
  """Training stopped on a condition the user must act on (the message says which)."""


class DivergedError(TrainingError):
  """The loss became NaN or Inf; nothing was saved after the last good checkpoint."""


class StopRequested(TrainingError):
  """A SIGTERM (or preemption notice) arrived; a checkpoint was saved before stopping."""


@dataclasses.dataclass
class TrainResult:
  """What a `Trainer.train` call did."""
  step: int
  losses: List[float]            # training loss of every step run in this call
  eval_metrics: Dict[str, float]
  stop_reason: str               # "steps", "time_budget", "early_stopping"
  train_seconds: float
  tokens_per_second: float


def _num_workers(strategy: tf.distribute.Strategy) -> int:
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return 1
  spec = resolver.cluster_spec().as_dict()
  return max(1, len(spec.get("worker", [])) + len(spec.get("chief", [])))


def strategy_device_types(strategy: tf.distribute.Strategy) -> List[str]:
  """The device types ("GPU", "TPU", "CPU") this worker's replicas run on."""
  if isinstance(strategy, tf.distribute.TPUStrategy):
    return ["TPU"]
  try:
    devices = list(strategy.extended.worker_devices)
  except RuntimeError:
    # The default strategy has no device list: ops go to the first GPU, else the CPU.
    devices = [d.name for d in tf.config.list_logical_devices("GPU")[:1]] or ["CPU:0"]
  return [tf.DeviceSpec.from_string(d if "/" in d else f"/device:{d}").device_type or "CPU"
          for d in devices]


def auto_jit_compile(device_types: Sequence[str], multi_worker: bool = False) -> bool:
  """`train.jit_compile="auto"`: XLA where it compiles and pays.

  GPUs and TPUs get XLA under every strategy (a lone GPU per `multi_worker_mirrored` worker,
  GPUs under `mirrored`, one replica or several). A single CPU replica of a one-machine job
  gets it too: the default job's steps run about twice as fast with it on CPU
  (docs/learning_quality.md). Several logical CPU replicas get none (XLA fails across the
  logical CPUs of one machine: docs/distributed.md), nor does a CPU worker of a multi-worker
  job. `jit_compile="on"` and `"off"` override.

  Args:
    device_types: the types ("GPU", "TPU", "CPU") of the devices this worker's replicas
      run on, one per replica.
    multi_worker: whether the job runs under `multi_worker_mirrored`.
  """
  if not device_types:
    return False
  if all(kind in ("GPU", "TPU") for kind in device_types):
    return True
  return list(device_types) == ["CPU"] and not multi_worker


def jit_compile_setting(train_config) -> Optional[bool]:
  """The `Trainer`'s `jit_compile` argument for `train.jit_compile` (None: "auto", decided
  from the devices by `default_jit_compile`)."""
  setting = train_config.jit_compile
  return None if setting == "auto" else setting == "on"


def default_jit_compile(strategy: tf.distribute.Strategy) -> bool:
  """`auto_jit_compile` of the devices `strategy` runs this worker's replicas on."""
  return auto_jit_compile(
      strategy_device_types(strategy),
      multi_worker=isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy))


class _StopSignal:
  """Turns SIGTERM into a flag the host loop polls between host calls."""

  def __init__(self):
    self.received = None
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Trainer:
  """Trains and evaluates one model under one strategy.

  Args:
    config: the full, validated config (`train`, `task`, `data` sections are read).
    strategy: the `tf.distribute.Strategy` whose scope created `model` and `optimizer`.
    model: the task model: `model(features, training=...)` -> float32 logits (a dict of them
      for multi-task models).
    optimizer: built from `tfllm.training.optimizer.build_optimizer` (possibly wrapped in a
      `LossScaleOptimizer`), created and built inside `strategy.scope()`.
    model_dir: the run's directory (checkpoints, summaries).
    train_dataset_fn: `input_context -> tf.data.Dataset` of per-replica batches
      `(features, labels, sample_weight)` (repeated; deterministic order for exact resume).
    eval_dataset_fn: the same for evaluation (finite or not; `eval_steps` batches are read).
    metrics: `EvalMetric`s of an evaluation.
    is_chief: whether this worker writes checkpoints, summaries and the progress line.
    worker_dir: non-chief workers: scratch directory for their checkpoint copy.
    jit_compile: None = `default_jit_compile(strategy)`.
    flops_per_token: training FLOPs per token, for MFU (None: MFU not reported).
    peak_flops_per_device: for MFU (None or 0: not reported).
    budget_progress: the `tfllm.training.optimizer.time_budget_progress()` variable the
      optimizer's schedule reads; with `train.time_budget_minutes`, the trainer sets it to the
      fraction of the budget spent before each host call (the schedule's time resolution is
      one `steps_per_loop`), so that the learning rate reaches its floor with the budget.
    objective: the training loss, `fn(logits, labels, sample_weight, global_weights) ->
      scalar` where `global_weights` maps each head to its sum of sample weights over the
      global batch (so that the loss is a global-batch mean under any strategy); default the
      heads' cross-entropy weighted by `config.task` (a distillation run gives its own).
    trained_model: the model training produces, which checkpoints hold and evaluation runs
      (default `model`). A distillation run's `model` is the teacher-student pair that gives
      the loss; its `trained_model` is the student, so its model_dir loads like any other.
    gradients: `fn(loss_fn, variables, scale_loss, loss_scale, features) -> (loss, gradients
      of scale_loss(loss))` of one micro-batch, where `loss_fn(word_embeddings_delta=None)`
      runs the model in training mode and gives the objective; default one forward and
      backward pass (`tfllm.finetune.adversarial` gives the adversarial ones).
    step_hooks: objects run with every optimizer step (e.g. `tfllm.finetune.pruning.Pruning`):
      `after_update(step)` runs inside the compiled step, in replica context, right after the
      optimizer's update (`step`: the updates done, that one included); `checkpoint_items()`
      gives trackables saved with the checkpoint; `summary_scalars()` gives host-side train
      scalars written with each progress report.
    log: where progress lines go (chief only).
    clock: seconds since an arbitrary origin (tests replace it).

  The seconds of the budget spent are saved in the checkpoint: a resumed run continues the
  same budget rather than starting a new one. With `train.early_stopping`, so are the best
  value of its metric and the evaluations since; each evaluation that improves on it writes
  the best checkpoint (`Checkpointer.save_best`), which export and `--mode=eval` read.
  """

  def __init__(self, config: ml_collections.ConfigDict, strategy: tf.distribute.Strategy,
               model: keras.Model, optimizer: keras.optimizers.Optimizer, model_dir: str,
               train_dataset_fn: Callable, eval_dataset_fn: Optional[Callable] = None,
               metrics: Sequence[EvalMetric] = (), is_chief: bool = True,
               worker_dir: Optional[str] = None, jit_compile: Optional[bool] = None,
               flops_per_token: Optional[float] = None,
               peak_flops_per_device: Optional[float] = None,
               budget_progress: Optional[tf.Variable] = None,
               objective: Optional[Callable] = None,
               trained_model: Optional[keras.Model] = None,
               gradients: Optional[Callable] = None,
               step_hooks: Sequence = (),
               log: Callable[[str], None] = print,
               clock: Callable[[], float] = time.perf_counter,
               startup=None):
    self.config = config
    self.train_config = config.train
    self.strategy = strategy
    self.model = model
    self.optimizer = optimizer
    self.model_dir = model_dir
    self.is_chief = is_chief
    self._train_dataset_fn = train_dataset_fn
    self._eval_dataset_fn = eval_dataset_fn
    self.metrics = list(metrics)
    self._log = log if is_chief else (lambda line: None)
    self._loss_weights = losses.head_loss_weights(config.task)
    self._flops_per_token = flops_per_token
    self._peak_flops = peak_flops_per_device or None
    self.jit_compile = default_jit_compile(strategy) if jit_compile is None else jit_compile
    # TPUStrategy compiles every step with XLA itself; the step functions take no flag there.
    self._function_jit_compile = (None if isinstance(strategy, tf.distribute.TPUStrategy)
                                  else self.jit_compile)
    self._check_batch_size()
    self.budget_progress = budget_progress
    self._clock = clock
    self._startup = startup  # a `tfllm.runtime.StartupTimer`: phases up to the first step
    with strategy.scope():
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    # Host-side only (never read in a step): wall-clock seconds of the time budget spent.
    self.budget_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                      name="budget_seconds")
    self._objective = objective or self._cross_entropy
    self._gradients = gradients or self._plain_gradients
    self.trained_model = model if trained_model is None else trained_model
    state = dict(model=self.trained_model, optimizer=optimizer, step=self.step,
                 budget_seconds=self.budget_seconds)
    self._step_hooks = list(step_hooks)
    for hook in self._step_hooks:
      state.update(hook.checkpoint_items())
    self.checkpoint = tf.train.Checkpoint(**state)
    required = None
    if self.train_config.early_stopping.metric:
      # Host-side: the best monitored value so far (NaN: none yet) and the evaluations since
      # it, saved with every checkpoint so that a resumed run keeps the same count. A run
      # resumed from a checkpoint without them (early stopping turned on) starts afresh.
      self.best_metric = tf.Variable(float("nan"), dtype=tf.float64, trainable=False,
                                     name="early_stopping_best")
      self.evaluations_without_improvement = tf.Variable(
          0, dtype=tf.int64, trainable=False, name="early_stopping_evaluations")
      required = self.checkpoint
      self.checkpoint = tf.train.Checkpoint(
          **state, early_stopping_best=self.best_metric,
          early_stopping_evaluations=self.evaluations_without_improvement)
    self.checkpointer = checkpointing.Checkpointer(
        self.checkpoint, model_dir, is_chief=is_chief, worker_dir=worker_dir,
        max_to_keep=self.train_config.keep_checkpoints, required=required)
    self._train_loop_fn = None
    self._eval_step_fns: Dict[int, Callable] = {}
    self._mean_over_workers_fn = None
    if is_chief:
      self._train_writer = tf.summary.create_file_writer(f"{model_dir}/train")
      self._eval_writer = tf.summary.create_file_writer(f"{model_dir}/eval")
    else:
      self._train_writer = self._eval_writer = tf.summary.create_noop_writer()

  # ---------------------------------------------------------------- set-up

  def _check_batch_size(self):
    replicas = self.strategy.num_replicas_in_sync
    if self.train_config.global_batch_size % replicas:
      raise ConfigError(
          f"config.train.global_batch_size={self.train_config.global_batch_size} is not "
          f"divisible by the {replicas} replicas of the {type(self.strategy).__name__}; use a "
          f"multiple of {replicas}")

  def restore(self, path: Optional[str] = None) -> Optional[str]:
    """Restores checkpoint `path`, by default the newest of `model_dir` (model, optimizer,
    step), if any; returns the path restored."""
    if path is not None:
      return self.checkpointer.restore(path)
    return self.checkpointer.restore_latest()

  def _distributed_dataset(self, dataset_fn: Callable, skip_steps: int = 0,
                           take_steps: Optional[int] = None, fill: bool = False):
    """The strategy's distributed dataset of `dataset_fn`'s per-replica batches.

    Args:
      dataset_fn: `InputContext -> tf.data.Dataset` of `(features, labels, sample_weight)`.
      skip_steps, take_steps: steps to skip (resuming) and to take.
      fill: with several replicas, follow each pipeline's batches by endless weight-0 copies
        of its first batch. tf.distribute ends the iteration at the first step that some
        replica has no batch for, so a finite split whose batch count is not a multiple of
        the replicas (or that runs out on one worker first) would lose its last batches;
        `evaluate` stops at the first step that carries no weight instead.
    """
    batches_per_step = self.train_config.grad_accum_steps if skip_steps else 1

    def per_worker(context: tf.distribute.InputContext):
      dataset = dataset_fn(context)
      replicas_here = context.num_replicas_in_sync // context.num_input_pipelines
      if fill and context.num_replicas_in_sync > 1:
        weightless = dataset.take(1).map(
            lambda features, labels, weight: (features, labels, tf.nest.map_structure(
                tf.zeros_like, weight)))
        dataset = dataset.concatenate(weightless.cache().repeat())
      # The distributed iterator is not checkpointable (docs/stack.md): resume by skipping the
      # per-replica batches that this pipeline fed to the steps already taken.
      if skip_steps:
        dataset = dataset.skip(skip_steps * batches_per_step * replicas_here)
      if take_steps is not None:
        dataset = dataset.take(take_steps * replicas_here)
      return dataset

    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    return self.strategy.distribute_datasets_from_function(per_worker, options)

  # ---------------------------------------------------------------- step functions

  def _loss_scale(self):
    scale = getattr(self.optimizer, "dynamic_scale", None)
    return tf.constant(1.0) if scale is None else tf.cast(scale, tf.float32)

  def _replica_train_step(self, micro_batches):
    """One optimizer step on this replica's micro-batches.

    Returns:
      `([its share of the loss, the token positions it ran], gradient norm)`: the first two
      are summed over replicas in one reduction.
    """
    context = tf.distribute.get_replica_context()
    variables = self.model.trainable_variables
    local_weights = {}
    for _, labels, sample_weight in micro_batches:
      for name, w in losses.weight_sums(labels, sample_weight).items():
        local_weights[name] = local_weights.get(name, 0.0) + w
    global_weights = context.all_reduce(tf.distribute.ReduceOp.SUM, local_weights)
    global_weights = {n: tf.maximum(w, 1e-12) for n, w in global_weights.items()}
    grads = [tf.zeros_like(v) for v in variables]
    loss = tf.constant(0.0)
    for features, labels, sample_weight in micro_batches:
      loss_fn = functools.partial(self._micro_loss, features, labels, sample_weight,
                                  global_weights)
      micro_loss, micro_grads = self._gradients(loss_fn, variables, self.optimizer.scale_loss,
                                                self._loss_scale(), features)
      grads = [g if mg is None else g + tf.convert_to_tensor(mg)
               for g, mg in zip(grads, micro_grads)]
      loss += micro_loss
    grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    scale = self._loss_scale()
    clip_norm = self.train_config.optimizer.clip_norm
    if clip_norm > 0:
      # Gradients are loss-scaled under float16: clip at the scaled threshold.
      grads, norm = tf.clip_by_global_norm(grads, clip_norm * scale)
    else:
      norm = tf.linalg.global_norm(grads)
    self.optimizer.apply(grads, variables)
    for hook in self._step_hooks:
      hook.after_update(self.step + 1)
    # Positions run, padding included: batch x length varies with `data.bucket_lengths`.
    tokens = tf.add_n([tf.cast(tf.size(features["token_ids"]), tf.float32)
                       for features, _, _ in micro_batches])
    return tf.stack([loss, tokens]), norm / scale

  def _micro_loss(self, features, labels, sample_weight, global_weights,
                  word_embeddings_delta=None):
    """This replica's share of the objective on one micro-batch (training mode)."""
    extra = {} if word_embeddings_delta is None else dict(
        word_embeddings_delta=word_embeddings_delta)
    logits = self.model(features, training=True, **extra)
    return self._objective(logits, labels, sample_weight, global_weights)

  @staticmethod
  def _plain_gradients(loss_fn, variables, scale_loss, loss_scale, features):
    """`(loss, gradients of the scaled loss)`: the step without `gradients`."""
    del loss_scale, features
    with tf.GradientTape() as tape:
      loss = loss_fn()
      scaled = scale_loss(loss)
    return loss, tape.gradient(scaled, variables)

  def _cross_entropy(self, logits, labels, sample_weight, global_weights):
    logits, labels = losses.as_heads(logits), losses.as_heads(labels)
    weights = losses.as_heads(sample_weight) if sample_weight is not None else {}
    total = tf.constant(0.0)
    for name, loss_weight in self._loss_weights.items():
      ce_sum, _ = losses.cross_entropy_sums(logits[name], labels[name], weights.get(name))
      total += loss_weight * ce_sum / global_weights[name]
    return total

  def _build_train_loop(self):
    accum = self.train_config.grad_accum_steps
    replica_step = tf.function(self._replica_train_step,
                               jit_compile=self._function_jit_compile)

    @tf.function
    def train_loop(iterator, num_steps):
      step_losses = tf.TensorArray(tf.float32, size=num_steps)
      norms = tf.TensorArray(tf.float32, size=num_steps)
      tokens = tf.constant(0.0)
      for i in tf.range(num_steps):
        micro_batches = tuple(next(iterator) for _ in range(accum))
        loss_and_tokens, norm = self.strategy.run(replica_step, args=(micro_batches,))
        loss_and_tokens = self.strategy.reduce("SUM", loss_and_tokens, axis=None)
        step_losses = step_losses.write(i, loss_and_tokens[0])
        norms = norms.write(i, self.strategy.reduce("MEAN", norm, axis=None))
        tokens += loss_and_tokens[1]
        self.step.assign_add(1)
      return step_losses.stack(), norms.stack(), tokens

    return train_loop

  def _replica_eval_step(self, model, batch):
    features, labels, sample_weight = batch
    logits = model(features, training=False)
    sums = {_EVALUATED_WEIGHT: tf.add_n([tf.reduce_sum(tf.cast(w, tf.float32))
                                         for w in tf.nest.flatten(sample_weight)])}
    for metric in self.metrics:
      sums.update(metric.sums(features, logits, labels, sample_weight))
    return sums

  def _build_eval_step(self, model):
    replica_step = tf.function(functools.partial(self._replica_eval_step, model),
                               jit_compile=self._function_jit_compile)

    # One trace for every batch length (length buckets); XLA still compiles one per shape.
    @tf.function(reduce_retracing=True)
    def eval_step(batch):
      sums = self.strategy.run(replica_step, args=(batch,))
      return {k: self.strategy.reduce("SUM", v, axis=None) for k, v in sums.items()}

    return eval_step

  # ---------------------------------------------------------------- evaluation

  def evaluate(self, num_steps: Optional[int] = None, model: Optional[keras.Model] = None,
               summary_prefix: str = "") -> Dict[str, float]:
    """Evaluates `num_steps` (default `eval_steps`) batches from the start of the eval split.

    Args:
      num_steps: batches to evaluate.
      model: the model to evaluate (default `trained_model`), e.g. its int8-quantized copy;
        it must take the same features and give logits of the same heads.
      summary_prefix: prepended to the TensorBoard scalar names (e.g. "int8/").
    """
    num_steps = self.train_config.eval_steps if num_steps is None else num_steps
    if self._eval_dataset_fn is None or not num_steps:
      return {}
    model = self.trained_model if model is None else model
    if id(model) not in self._eval_step_fns:
      self._eval_step_fns[id(model)] = self._build_eval_step(model)
    eval_step_fn = self._eval_step_fns[id(model)]
    totals: Dict[str, float] = {}
    for batch in self._distributed_dataset(self._eval_dataset_fn, take_steps=num_steps,
                                           fill=True):
      sums = eval_step_fn(batch)
      if not float(sums.pop(_EVALUATED_WEIGHT)):
        break   # every replica of every worker is past its data (only fill batches left)
      for key, value in sums.items():
        totals[key] = totals.get(key, 0.0) + float(value)
    if not totals:
      raise TrainingError(f"the eval split gave no batch of "
                          f"{self.train_config.global_batch_size} examples")
    results: Dict[str, float] = {}
    for metric in self.metrics:
      results.update(metric.result(totals))
    step = int(self.step.numpy())
    with self._eval_writer.as_default(step=step):
      for key, value in results.items():
        tf.summary.scalar(summary_prefix + key, value)
    self._eval_writer.flush()
    return results

  # ---------------------------------------------------------------- training

  def _mean_over_workers(self, value: float) -> float:
    """The mean of `value` over all replicas of all workers: the same number on every worker.

    (`tf.distribute.ReduceOp` has only SUM and MEAN.)"""
    if _num_workers(self.strategy) == 1:
      return value
    if self._mean_over_workers_fn is None:
      @tf.function
      def mean_over_replicas(value):
        per_replica = self.strategy.run(lambda: tf.identity(value))
        return self.strategy.reduce("MEAN", per_replica, axis=None)
      self._mean_over_workers_fn = mean_over_replicas
    return float(self._mean_over_workers_fn(tf.constant(value, tf.float32)))

  def _any_worker(self, flag: bool) -> bool:
    """True when `flag` is true on any worker (so that every worker stops at the same step)."""
    return self._mean_over_workers(1.0 if flag else 0.0) > 0

  def save(self) -> str:
    return self.checkpointer.save(int(self.step.numpy()))

  def _next_boundary(self, step: int, every: int, total: int) -> int:
    return total if not every else min(total, (step // every + 1) * every)

  def train(self) -> TrainResult:
    """Trains from the current step; see `_train`. A lost MWMS peer is a `TrainingError`."""
    try:
      return self._train()
    except tf.errors.OpError as error:
      lost = _lost_peers(error, self.strategy)
      if not lost:
        raise
      raise TrainingError(
          f"lost contact with {', '.join(lost)} at step {int(self.step.numpy())} "
          f"({type(error).__name__}); last checkpoint: {self.checkpointer.latest or 'none'}; "
          "relaunch every worker with the same model_dir to resume") from error

  def _train(self) -> TrainResult:
    """Trains from the current step to `train.steps` (or the time budget, or early stopping).

    Raises:
      DivergedError: the loss became NaN/Inf (no checkpoint written after the last good one).
      StopRequested: SIGTERM; a checkpoint of the current step was written first.
      checkpointing.CheckpointWriteError: a checkpoint could not be written.
    """
    tc = self.train_config
    total = tc.steps
    start_step = int(self.step.numpy())
    if self._train_loop_fn is None:
      self._train_loop_fn = self._build_train_loop()
    iterator = iter(self._distributed_dataset(self._train_dataset_fn, skip_steps=start_step))
    if self._startup is not None:
      self._startup.mark("dataset")
    budget_s = tc.time_budget_minutes * 60.0
    budget_spent_before = float(self.budget_seconds.numpy())
    stop_metric = tc.early_stopping
    all_losses: List[float] = []
    eval_metrics: Dict[str, float] = {}
    stop_reason = "steps"
    train_seconds, timed_tokens = 0.0, 0
    last_saved = start_step if self.checkpointer.latest else -1
    log_every = tc.log_every_steps or tc.steps_per_loop
    window_tokens, window_steps, window_seconds, window_losses, window_norms = 0, 0, 0.0, [], []

    train_started = self._clock()

    def budget_spent() -> float:
      # Wall-clock time of training, compilation included, over this run and resumed ones.
      return budget_spent_before + self._clock() - train_started

    def budget_fraction() -> float:
      # One collective a host call: the mean fraction over workers (their clocks differ by
      # their start-up skew), so that every worker sets the same learning rate and stops
      # after the same step.
      if not budget_s:
        return 0.0
      fraction = self._mean_over_workers(budget_spent() / budget_s)
      if self.budget_progress is not None:
        self.budget_progress.assign(min(1.0, fraction))
      return fraction

    if budget_fraction() >= 1.0:
      stop_reason = "time_budget"
      self._log(f"the {tc.time_budget_minutes:g}-minute time budget of {self.model_dir} was "
                "already spent: evaluating only (train again with a new --model_dir, or a "
                "larger config.train.time_budget_minutes)")
    with _StopSignal() as stop_signal:
      step = start_step
      while step < total and stop_reason == "steps":
        end = min(step + tc.steps_per_loop, total,
                  self._next_boundary(step, tc.checkpoint_every_steps, total),
                  self._next_boundary(step, tc.eval_every_steps if tc.eval_steps else 0, total),
                  self._next_boundary(step, log_every, total))
        started = self._clock()
        step_losses, norms, tokens = self._train_loop_fn(iterator,
                                                         tf.constant(end - step, tf.int32))
        step_losses, tokens = step_losses.numpy(), int(tokens.numpy())
        seconds = self._clock() - started
        if self._startup is not None and step == start_step:
          self._startup.mark(f"first call (compile + {end - step} steps)")
          self._log(self._startup.line())
        self.budget_seconds.assign(budget_spent())
        if not np.all(np.isfinite(step_losses)):
          bad = step + int(np.argmin(np.isfinite(step_losses))) + 1
          raise DivergedError(
              f"the training loss became {step_losses[bad - step - 1]} at step {bad}; stopped "
              f"without saving; last good checkpoint: {self.checkpointer.latest or 'none'} "
              "(lower config.train.optimizer.learning_rate or check the data)")
        # The first host call traces and compiles: keep it out of the throughput figures.
        if step > start_step or end - step == total - start_step:
          train_seconds += seconds
          timed_tokens += tokens
          window_seconds += seconds
          window_tokens += tokens
          window_steps += end - step
        step = end
        all_losses.extend(float(x) for x in step_losses)
        window_losses.extend(float(x) for x in step_losses)
        window_norms.extend(float(x) for x in norms.numpy())

        if step % log_every == 0 or step == total:
          self._report(step, total, window_losses, window_norms, window_tokens, window_steps,
                       window_seconds, (budget_spent(), budget_s) if budget_s else None)
          window_tokens, window_steps, window_seconds = 0, 0, 0.0
          window_losses, window_norms = [], []

        over_budget = budget_fraction() >= 1.0
        if over_budget:
          stop_reason = "time_budget"
        if tc.eval_every_steps and tc.eval_steps and step % tc.eval_every_steps == 0 \
            and step < total and not over_budget:
          eval_metrics = self.evaluate()
          self._log(_format_metrics(step, eval_metrics))
          if stop_metric.metric and self._early_stopping(eval_metrics, step):
            stop_reason = "early_stopping"
        if stop_reason != "steps" or step == total or (
            tc.checkpoint_every_steps and step % tc.checkpoint_every_steps == 0):
          self.save()
          last_saved = step
        if stop_reason != "steps":
          break
        if self._any_worker(stop_signal.received is not None):
          if last_saved != step:
            self.save()
          saved = os.path.join(checkpointing.checkpoint_dir(self.model_dir), f"ckpt-{step}")
          raise StopRequested(
              f"stopped by {stop_signal.received or 'a peer worker'} at step {step}; saved "
              f"{saved}; rerun with the same model_dir to resume")

    if step > last_saved:
      self.save()
    if tc.eval_steps and (not eval_metrics or stop_reason != "early_stopping"):
      eval_metrics = self.evaluate()
      if stop_metric.metric:
        self._early_stopping(eval_metrics, step)  # the last evaluation may be the best
    return TrainResult(step=step, losses=all_losses, eval_metrics=eval_metrics,
                       stop_reason=stop_reason, train_seconds=train_seconds,
                       tokens_per_second=timed_tokens / train_seconds if train_seconds else 0.0)

  def _early_stopping(self, metrics: Dict[str, float], step: int) -> bool:
    """Counts evaluation `metrics` of `step` in; a new best is saved as the best checkpoint.

    Returns:
      Whether `patience` evaluations in a row brought no improvement (stop now).
    """
    spec = self.train_config.early_stopping
    if spec.metric not in metrics:
      raise ConfigError(f"config.train.early_stopping.metric={spec.metric!r} is not an eval "
                        f"metric; evaluation reports: {', '.join(sorted(metrics))}")
    value = metrics[spec.metric]
    best = float(self.best_metric.numpy())
    sign = 1.0 if spec.mode == "min" else -1.0
    if np.isnan(best) or sign * (best - value) > spec.min_delta:
      self.best_metric.assign(value)
      self.evaluations_without_improvement.assign(0)
      path = self.checkpointer.save_best(step, spec.metric, spec.mode, value)
      self._log(f"best {spec.metric} so far: {value:.4f} at step {step}; kept in {path}")
      return False
    self.evaluations_without_improvement.assign_add(1)
    return int(self.evaluations_without_improvement.numpy()) >= spec.patience

  def _report(self, step, total, window_losses, norms, tokens, steps, seconds, budget=None):
    """The progress line and the train scalars of the steps since the last report.

    Args:
      norms: gradient norms of those steps.
      budget: `(seconds spent, seconds of the budget)` of a time-budgeted run, whose line
        shows the time against the budget (its `steps` is only a cap); None: a step-bounded
        run, whose line shows `step/total`.
    """
    loss = float(np.mean(window_losses))
    lr = float(self.optimizer.learning_rate)  # the schedule's value at the current step
    scalars = {"loss": loss, "learning_rate": lr, "grad_norm": float(np.mean(norms))}
    if budget is None:
      line = f"step {step}/{total}"
    else:
      spent, budget_s = budget
      line = f"time {_format_seconds(spent)}/{_format_seconds(budget_s)}  step {step}"
    line += f"  loss {loss:.4f}  lr {lr:.2e}"
    if seconds > 0:
      tps = tokens / seconds
      steps_per_s = steps / seconds
      scalars["tokens_per_second"] = tps
      eta = (total - step) / steps_per_s if steps_per_s else 0.0
      if budget is not None:  # the budget's end, or the step cap if that comes first
        eta = max(0.0, min(eta, budget[1] - budget[0]))
      line += f"  tokens/s {tps:,.0f}  ETA {_format_seconds(eta)}"
      if self._flops_per_token and self._peak_flops:
        mfu = flops.model_flops_utilization(tps, self._flops_per_token, self._peak_flops,
                                            self.strategy.num_replicas_in_sync)
        scalars["mfu"] = mfu
        line += f"  MFU {100 * mfu:.1f}%"
    for hook in self._step_hooks:
      scalars.update(hook.summary_scalars())
    with self._train_writer.as_default(step=step):
      for key, value in scalars.items():
        tf.summary.scalar(key, value)
    self._log(line)


def _lost_peers(error: tf.errors.OpError, strategy: tf.distribute.Strategy) -> List[str]:
  """The other workers a multi-worker op error names, as "worker 1 (host:port)"."""
  if _num_workers(strategy) == 1:
    return []
  spec = strategy.cluster_resolver.cluster_spec().as_dict()
  me = (strategy.cluster_resolver.task_type, strategy.cluster_resolver.task_id)
  found = []
  for job, task in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", str(error)):
    if (job, int(task)) == me:
      continue
    addresses = spec.get(job, [])
    address = addresses[int(task)] if int(task) < len(addresses) else "?"
    name = f"{job} {task} ({address})"
    if name not in found:
      found.append(name)
  if not found and isinstance(error, (tf.errors.UnavailableError,
                                      tf.errors.DeadlineExceededError)):
    found.append("a peer worker")
  return found


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s"


def _format_metrics(step: int, metrics: Dict[str, float]) -> str:
  parts = "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
  return f"eval at step {step}: {parts}"
