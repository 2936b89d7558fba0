"""`build_experiment(...)`: everything a training job trains, built from the config.

The model (and what training optimizes through it), the optimizer, the dataset functions, the
eval metrics, the tokenizer and the precision policy: what `tfllm.training.job.run` hands the
`Trainer`, built in one place so that the job reads config -> strategy -> experiment ->
controller -> report.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, List, Optional, Sequence

import keras
import ml_collections
import tensorflow as tf

from tfllm import config as config_lib
from tfllm import finetune, models, precision, runtime
from tfllm.artifacts.loader import load_trained_model
from tfllm.data import pipelines, service, tokenizers, train_subset
from tfllm.finetune import adversarial
from tfllm.finetune.multitask_data import multitask_dataset
from tfllm.metrics.base import EvalMetric
from tfllm.metrics.tables import eval_metrics
from tfllm.model_dir import config_path, write_atomically
from tfllm.training import flops
from tfllm.training import optimizer as optimizer_lib
from tfllm.training import tensor_parallel
from tfllm.training.saved_config import compare_with_model_dir


@dataclasses.dataclass
class Experiment:
  """What one training job trains and evaluates (the `Trainer`'s arguments, and the rest).

  `model` gives the training loss; `trained_model` is what checkpoints hold and evaluation
  runs (the same model, except in distillation, where `model` is the teacher-student pair).
  """
  model: keras.Model
  trained_model: keras.Model
  optimizer: keras.optimizers.Optimizer
  train_data: Callable[[tf.distribute.InputContext], tf.data.Dataset]
  eval_data: Callable[[tf.distribute.InputContext], tf.data.Dataset]
  metrics: Sequence[EvalMetric]
  tokenizer: Any
  policy: str
  objective: Optional[Callable] = None     # None: the heads' cross-entropy
  gradients: Optional[Callable] = None     # None: one forward and backward pass
  step_hooks: List[Any] = dataclasses.field(default_factory=list)
  pruning: Any = None                      # `tfllm.finetune.pruning.Pruning`, or None
  budget_progress: Optional[tf.Variable] = None
  flops_per_token: float = 0.0
  peak: Optional[flops.Peak] = None
  changed_settings: List[str] = dataclasses.field(default_factory=list)
  # Tensor parallelism: the unsharded pair its checkpoints hold (the trainer's
  # `checkpoint_state`, `tfllm.training.tensor_parallel.UnshardedState`); None otherwise.
  checkpoint_state: Any = None
  # Tensor parallelism: the data-parallel groups `model` runs (the trainer's argument).
  data_parallel_groups: int = 1


def build_experiment(config: ml_collections.ConfigDict, strategy: tf.distribute.Strategy,
                     model_dir: str, mixed_precision: str, threads: runtime.ThreadPlan,
                     chief: bool = True, worker_dir: Optional[str] = None,
                     log: Callable[[str], None] = print,
                     startup: Optional[runtime.StartupTimer] = None,
                     tensor_parallel_groups: int = 1) -> Experiment:
  """Builds the experiment of `config` under `strategy` (model and optimizer in its scope).

  Sets `config.model.vocab_size` from the tokenizer and (chief) writes the config and the
  low-resource subset's positions into `model_dir`: `config` must be the job's own copy.

  Args:
    config: the validated config.
    model_dir: the run's directory (the tokenizer is read or written there).
    mixed_precision: see `tfllm.precision.set_policy`.
    threads: the thread plan (the datasets' options follow it).
    chief, worker_dir: whether this worker writes; a non-chief worker's scratch directory.
    log: the chief's log; startup: marks the tokenizer and model phases.
    tensor_parallel_groups: with `train.model_parallel > 1`, the data-parallel groups of
      that many devices (`tfllm.training.tensor_parallel.data_parallel_groups`).
  """
  gradients = adversarial.gradients_fn(config, config.model.hidden_dim)
  policy = precision.set_policy(mixed_precision, strategy=strategy)
  tokenizer = tokenizers.get_tokenizer(config, model_dir if chief else worker_dir)
  config.model.vocab_size = int(tokenizer.vocabulary_size())
  if startup:
    startup.mark("tokenizer")
  changed = compare_with_model_dir(config, model_dir, ignore=())
  if chief:
    write_atomically(config_path(model_dir), config_lib.to_json(config))
    if config.data.get("train_examples", 0):   # the low-resource subset's positions
      write_atomically(os.path.join(model_dir, train_subset.INDICES_FILE),
                       train_subset.describe(config.data))
  build_seed = models.build_seed(config.train)
  keras.utils.set_random_seed(build_seed)
  if config.train.model_parallel > 1:
    # Outside the scope: a strategy would turn each shard into a variable mirrored on its
    # own devices; the shards are plain variables on theirs (the trainer sums gradients).
    experiment = _build_tensor_parallel(config, policy, tokenizer, log, tensor_parallel_groups)
  else:
    with strategy.scope():
      experiment = _build_models(config, policy, tokenizer, log)
  if build_seed != config.train.seed:
    # Only then: a run whose init_seed is its train.seed draws exactly as before the option.
    keras.utils.set_random_seed(config.train.seed)
    log(f"model built with init_seed {build_seed}; train.seed {config.train.seed} draws the rest")
  if startup:
    startup.mark("model")
  experiment.gradients = gradients
  if gradients is not None:
    log(f"adversarial training: {adversarial.describe(config.finetune.adversarial)}")
  experiment.train_data, experiment.eval_data = _dataset_fns(config, tokenizer, threads,
                                                            model_dir)
  if isinstance(experiment.train_data, service.ServiceInput):
    log(experiment.train_data.describe())
  experiment.metrics = eval_metrics(config, tokenizer)
  experiment.flops_per_token = _flops_per_token(config, experiment.trained_model)
  experiment.peak = mfu_peak(config, strategy, policy)
  experiment.changed_settings = changed or []
  return experiment


def _build_models(config, policy: str, tokenizer, log) -> Experiment:
  """The model, its fine-tuning preparation, pruning, distillation and the optimizer (called
  inside the strategy's scope)."""
  model = models.build(config)
  prepared = finetune.prepare_model(model, config)  # pretrained init, frozen layers, LoRA
  if config.finetune.init_checkpoint or config.finetune.strategy != "full":
    log(f"fine-tuning ({config.finetune.strategy}) from "
        f"{config.finetune.init_checkpoint or 'scratch'}: "
        f"{prepared['trainable_parameters']:,} trainable parameters")
  trained_model, objective = model, None
  pruning = finetune.build_pruning(model, config)  # None unless finetune.pruning is on
  if pruning:
    log(pruning.describe())
  if config.finetune.distill.teacher_model_dir:
    # The loss needs the teacher's logits; checkpoints and evaluation keep to the student.
    finetune.check_student(config)
    teacher, teacher_config = load_trained_model(config.finetune.distill.teacher_model_dir)
    model, objective = finetune.pair_with_teacher(trained_model, config, teacher, teacher_config)
    log(f"distilling from the teacher in {config.finetune.distill.teacher_model_dir} "
        f"(temperature {config.finetune.distill.temperature}, "
        f"alpha {config.finetune.distill.alpha})")
  # With a time budget the schedule decays over the budget as well as over the steps.
  budget_progress = (optimizer_lib.time_budget_progress()
                     if config.train.time_budget_minutes else None)
  optimizer = optimizer_lib.build_optimizer(config.train, model.trainable_variables,
                                            budget_progress=budget_progress)
  optimizer = precision.wrap_optimizer(optimizer, policy)
  optimizer.build(model.trainable_variables)
  return Experiment(model=model, trained_model=trained_model, optimizer=optimizer,
                    train_data=None, eval_data=None, metrics=(), tokenizer=tokenizer,
                    policy=policy, objective=objective, pruning=pruning,
                    step_hooks=[pruning] if pruning else [], budget_progress=budget_progress)


def _build_tensor_parallel(config, policy: str, tokenizer, log, groups: int) -> Experiment:
  """The sharded causal LM over `config.train.model_parallel` devices (a copy in each of
  `groups` data-parallel groups), trained on `ShardedLogits` and checkpointed unsharded
  (`tfllm.training.tensor_parallel`)."""
  budget_progress = (optimizer_lib.time_budget_progress()
                     if config.train.time_budget_minutes else None)
  model, optimizer, state = tensor_parallel.build_models(config, budget_progress, log, groups)
  return Experiment(model=model, trained_model=model, optimizer=optimizer, train_data=None,
                    eval_data=None, metrics=(), tokenizer=tokenizer, policy=policy,
                    budget_progress=budget_progress, checkpoint_state=state,
                    data_parallel_groups=groups)


def _dataset_fns(config, tokenizer, threads, model_dir: str):
  """`(train_data, eval_data)`: `InputContext -> tf.data.Dataset` of the config's task
  (training input on the tf.data service when `data.service_address` is set)."""
  data_options = runtime.dataset_options(threads)

  def data(context, which: str, training: bool, config=config, options=data_options):
    if config.task.name == "multi_task":
      dataset = multitask_dataset(config, which, tokenizer, context, training)
    else:
      split = config.data.train_split if training else config.data.eval_split
      dataset = pipelines.make_dataset(config, split, tokenizer, input_context=context,
                                       training=training)
    return dataset.with_options(options)

  train_data = lambda context: data(context, "train", True)  # noqa: E731
  if config.data.service_address:
    # The service workers run the pipeline with their own threads, not this host's plan.
    train_data = service.ServiceInput(
        lambda context, seed: data(context, "train", True, service.with_data_seed(config, seed),
                                   tf.data.Options()),
        config.data.service_address, config.data.service_job_name or service.job_name(model_dir),
        seed=config.data.seed)
  return train_data, lambda context: data(context, "eval", False)


def _flops_per_token(config, model) -> float:
  m = config.model
  head_dim = m.head_dim or m.hidden_dim // m.num_heads
  return flops.training_flops_per_token(flops.flops_parameter_count(model), m.num_layers,
                                        m.num_heads, head_dim, config.data.sequence_length)


def mfu_peak(config, strategy, policy: str) -> flops.Peak:
  """The per-device peak MFU divides by: the override, else the table for the device and the
  policy's compute dtype (float32, bfloat16 or float16)."""
  compute_dtype = keras.DTypePolicy(policy).compute_dtype
  return flops.device_peak(compute_dtype, strategy,
                           override=config.train.peak_flops_per_device or None)
