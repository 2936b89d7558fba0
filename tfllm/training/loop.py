"""The trainer: the compiled train and eval steps, `steps_per_loop` of them per host call.

Not `model.fit`: Keras 3's `fit` fails under `MultiWorkerMirroredStrategy` (docs/stack.md), and a
custom loop gives the same code path on every strategy (Model Garden's Orbit loops do the same).

One optimizer step, per replica:
  1. take `grad_accum_steps` micro-batches; all-reduce the sum of their sample weights, so the
     loss is `sum(weight * cross-entropy) / global sum of weights` whatever the split;
  2. sum the gradients of the micro-batches (and of a tensor-parallel run's data-parallel
     groups: `data_parallel_groups`), all-reduce them (sum over replicas);
  3. clip them by their global norm, and apply AdamW (which does not all-reduce again).
The step function is XLA-compiled where that works. What happens between host calls
(checkpoints, evaluation, summaries, the progress line, stop requests, the NaN guard) is the
controller's (`tfllm.training.controller`) and its actions' (`tfllm.training.actions`).
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import keras
import ml_collections
import numpy as np
import tensorflow as tf

from tfllm.config import ConfigError
from tfllm.metrics import losses
from tfllm.training import checkpointing
from tfllm.training.actions import default_actions
from tfllm.training.controller import Controller, TrainResult
from tfllm.training.devices import (default_jit_compile, distributed_dataset, lost_peers,
                                    num_workers)
from tfllm.training.errors import TrainingError
from tfllm.metrics.base import EvalMetric

# An eval step's total sample weight: 0 once every replica is past its data.
_EVALUATED_WEIGHT = "_evaluated/weight"


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
      `after_update(step)` runs in replica context right after each optimizer update, in the
      training loop's graph as a compiled function of its own (`step`: the updates done,
      that one included); `checkpoint_items()`
      gives trackables saved with the checkpoint; `summary_scalars()` gives host-side train
      scalars written with each progress report.
    checkpoint_state: None, or what a tensor-parallel run checkpoints instead of its sharded
      model and optimizer: an object with the unsharded `model` and `optimizer` and the
      `before_save()` / `after_restore()` that copy the shards to and from them
      (`tfllm.training.tensor_parallel.UnshardedState`), so checkpoints do not depend on the
      degree.
    data_parallel_groups: `G` > 1 when `model` runs data parallelism inside one replica
      (`tfllm.training.tensor_parallel.TensorParallelGroups`): its trainable variables are
      `G` equal copies of the weights, copy by copy, each given the gradient of its part of
      the batch. The step sums the `G` gradients of each weight (then over replicas), clips
      that global gradient, and applies it to every copy.
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
               checkpoint_state=None,
               data_parallel_groups: int = 1,
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
    self.log = log if is_chief else (lambda line: None)
    self._loss_weights = losses.head_loss_weights(config.task)
    self.flops_per_token = flops_per_token
    self.peak_flops = peak_flops_per_device or None
    self.jit_compile = default_jit_compile(strategy) if jit_compile is None else jit_compile
    # TPUStrategy compiles every step with XLA itself; the step functions take no flag there.
    self._function_jit_compile = (None if isinstance(strategy, tf.distribute.TPUStrategy)
                                  else self.jit_compile)
    self._check_batch_size()
    self.budget_progress = budget_progress
    self.clock = clock
    self.startup = startup  # a `tfllm.runtime.StartupTimer`: phases up to the first step
    self._objective = objective or self._cross_entropy
    self._gradients = gradients or self._plain_gradients
    self.trained_model = model if trained_model is None else trained_model
    self.step_hooks = list(step_hooks)
    self.checkpoint_state = checkpoint_state
    self.data_parallel_groups = int(data_parallel_groups)
    self.checkpointer = self._build_checkpointer(worker_dir)
    self._train_loop_fn = None
    self._eval_step_fns: Dict[int, Callable] = {}
    self._mean_over_workers_fn = None
    if is_chief:
      self.train_writer = tf.summary.create_file_writer(f"{model_dir}/train")
      self.eval_writer = tf.summary.create_file_writer(f"{model_dir}/eval")
    else:
      self.train_writer = self.eval_writer = tf.summary.create_noop_writer()

  def _build_checkpointer(self, worker_dir: Optional[str]) -> checkpointing.Checkpointer:
    """The checkpoint of the model, optimizer, step, budget spent, step hooks' items and (with
    early stopping) its count; `self.checkpoint` is the `tf.train.Checkpoint`."""
    with self.strategy.scope():
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    # Host-side only (never read in a step): wall-clock seconds of the time budget spent.
    self.budget_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                      name="budget_seconds")
    model, optimizer = self.trained_model, self.optimizer
    if self.checkpoint_state is not None:  # a tensor-parallel run saves the unsharded pair
      model, optimizer = self.checkpoint_state.model, self.checkpoint_state.optimizer
    state = dict(model=model, optimizer=optimizer, step=self.step,
                 budget_seconds=self.budget_seconds)
    for hook in self.step_hooks:
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
    return checkpointing.Checkpointer(
        self.checkpoint, self.model_dir, is_chief=self.is_chief, worker_dir=worker_dir,
        max_to_keep=self.train_config.keep_checkpoints, required=required,
        sync=self.checkpoint_state)

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
    grads = self._sum_over_groups(grads, variables)
    grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    scale = self._loss_scale()
    clip_norm = self.train_config.optimizer.clip_norm
    if clip_norm > 0:
      # Gradients are loss-scaled under float16: clip at the scaled threshold.
      grads, norm = tf.clip_by_global_norm(grads, clip_norm * scale)
    else:
      norm = tf.linalg.global_norm(grads)
    self.optimizer.apply(grads * self.data_parallel_groups, variables)
    # Positions run, padding included: batch x length varies with `data.bucket_lengths`.
    tokens = tf.add_n([tf.cast(tf.size(features["token_ids"]), tf.float32)
                       for features, _, _ in micro_batches])
    return tf.stack([loss, tokens]), norm / scale

  def _sum_over_groups(self, grads, variables):
    """The gradient of each weight summed over the `data_parallel_groups` copies (formed on
    the first copy's device; each copy's update reads it from there)."""
    groups = self.data_parallel_groups
    if groups == 1:
      return grads
    size = len(variables) // groups
    summed = []
    for i in range(size):
      with tf.device(variables[i].value.device):
        summed.append(tf.add_n([grads[g * size + i] for g in range(groups)]))
    return summed

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
    logits, labels, weights = losses.batch_heads(logits, labels, sample_weight)
    total = tf.constant(0.0)
    for name, loss_weight in self._loss_weights.items():
      ce_sum, _ = losses.cross_entropy_sums(logits[name], labels[name], weights.get(name))
      total += loss_weight * ce_sum / global_weights[name]
    return total

  def _replica_after_update(self, step):
    """The step hooks after an optimizer update. They are a compiled function of their own:
    inside the step's XLA program, pruning's `tf.cond` ran its mask rule (a sort of every
    pruned kernel) at every step, due or not, and training ran 4.7x slower
    (docs/finetuning.md, "Magnitude pruning")."""
    for hook in self.step_hooks:
      hook.after_update(step)

  def _build_train_loop(self):
    accum = self.train_config.grad_accum_steps
    replica_step = tf.function(self._replica_train_step,
                               jit_compile=self._function_jit_compile)
    after_update = (tf.function(self._replica_after_update,
                                jit_compile=self._function_jit_compile)
                    if self.step_hooks else None)

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
        if after_update is not None:
          self.strategy.run(after_update, args=(self.step.read_value(),))
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
    batches = distributed_dataset(self.strategy, self._eval_dataset_fn, take_steps=num_steps,
                                  fill=True)
    for batch in batches:
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
    with self.eval_writer.as_default(step=step):
      for key, value in results.items():
        tf.summary.scalar(summary_prefix + key, value)
    self.eval_writer.flush()
    return results

  # ---------------------------------------------------------------- training

  def mean_over_workers(self, value: float) -> float:
    """The mean of `value` over all replicas of all workers: the same number on every worker.

    (`tf.distribute.ReduceOp` has only SUM and MEAN.)"""
    if num_workers(self.strategy) == 1:
      return value
    if self._mean_over_workers_fn is None:
      @tf.function
      def mean_over_replicas(value):
        per_replica = self.strategy.run(lambda: tf.identity(value))
        return self.strategy.reduce("MEAN", per_replica, axis=None)
      self._mean_over_workers_fn = mean_over_replicas
    return float(self._mean_over_workers_fn(tf.constant(value, tf.float32)))

  def any_worker(self, flag: bool) -> bool:
    """True when `flag` is true on any worker (so that every worker stops at the same step)."""
    return self.mean_over_workers(1.0 if flag else 0.0) > 0

  def save(self) -> str:
    return self.checkpointer.save(int(self.step.numpy()))

  def train_iterator(self, start_step: int):
    """The iterator of training batches from `start_step` on (builds the compiled loop first)."""
    if self._train_loop_fn is None:
      self._train_loop_fn = self._build_train_loop()
    return iter(distributed_dataset(
        self.strategy, self._train_dataset_fn, skip_steps=start_step,
        batches_per_step=self.train_config.grad_accum_steps))

  def run_steps(self, iterator, num_steps: int) -> Tuple[np.ndarray, np.ndarray, int]:
    """One host call: `num_steps` optimizer steps; their losses, gradient norms, and the
    token positions they ran."""
    step_losses, norms, tokens = self._train_loop_fn(iterator, tf.constant(num_steps, tf.int32))
    return step_losses.numpy(), norms.numpy(), int(tokens.numpy())

  def train(self, actions: Optional[Sequence] = None) -> TrainResult:
    """Trains from the current step to `train.steps` (or the time budget, or early stopping):
    a `Controller` running `actions` (default `tfllm.training.actions.default_actions`).

    Raises:
      DivergedError: the loss became NaN/Inf (no checkpoint written after the last good one).
      StopRequested: SIGTERM; a checkpoint of the current step was written first.
      TrainingError: a multi-worker peer was lost.
      checkpointing.CheckpointWriteError: a checkpoint could not be written.
    """
    actions = default_actions(self) if actions is None else actions
    try:
      return Controller(self, actions).run()
    except tf.errors.OpError as error:
      lost = lost_peers(error, self.strategy)
      if not lost:
        raise
      raise TrainingError(
          f"lost contact with {', '.join(lost)} at step {int(self.step.numpy())} "
          f"({type(error).__name__}); last checkpoint: {self.checkpointer.latest or 'none'}; "
          "relaunch every worker with the same model_dir to resume") from error
