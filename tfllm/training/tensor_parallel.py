"""A tensor-parallel model in training: what it and its AdamW hold on each device
(tfllm-summary, the trainer's start-up log), the copy of model and optimizer state to and from
the unsharded layout (checkpoints that do not depend on the degree), and what `tfllm-train`
builds and accepts for `config.train.model_parallel > 1`: a copy of the model in each
tensor-parallel group of a machine's devices (`TensorParallelGroups`), data-parallel across
the groups in one replica a machine (TF's default strategy, or `multi_worker_mirrored` with a
replica a worker)."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from tfllm import models, precision
from tfllm.config import ConfigError
from tfllm.finetune.config import pruning_enabled
from tfllm.layers import tensor_parallel as tp
from tfllm.layers.tensor_parallel import ShardedLogits, variable_bytes_by_device
from tfllm.models import tensor_parallel as tp_models
from tfllm.training.optimizer import build_optimizer


def device_bytes(config, model: keras.Model, optimizer=None
                 ) -> Tuple[Dict[str, int], Dict[str, int]]:
  """(parameter bytes, AdamW bytes) per device, read from where the variables live.

  `optimizer`: the model's built AdamW (a training run's); None: the one `config.train`
  describes, built here for `model`'s trainable variables (its slots are created beside
  each variable).
  """
  if optimizer is None:
    optimizer = build_optimizer(config.train, model.trainable_variables)
    optimizer.build(model.trainable_variables)
  return variable_bytes_by_device(model.weights), variable_bytes_by_device(optimizer.variables)


def device_bytes_report(config, model: keras.Model, optimizer=None) -> str:
  """One line a device: its parameter and AdamW bytes, and the unsharded total
  (`optimizer`: as in `device_bytes`)."""
  parameters, optimizer = device_bytes(config, model, optimizer)
  groups = len(getattr(model, "models", [model]))
  layout = (f"{groups} data-parallel groups of {config.train.model_parallel} devices"
            if groups > 1 else f"{config.train.model_parallel} devices")
  lines = [f"tensor parallel over {layout}: bytes per device"]
  for device in sorted(set(parameters) | set(optimizer)):
    lines.append(f"  {device}: parameters {parameters.get(device, 0):,}  "
                 f"AdamW {optimizer.get(device, 0):,}")
  lines.append(f"  all devices: parameters {sum(parameters.values()):,}  "
               f"AdamW {sum(optimizer.values()):,}")
  return "\n".join(lines)


# AdamW's per-variable slots; Keras names each `{variable.path with "/" -> "_"}_{slot}`
# (`add_variable_from_reference` in keras/src/optimizers/base_optimizer.py).
ADAMW_SLOTS = ("momentum", "velocity")


def _slots_by_name(optimizer) -> Dict[str, keras.Variable]:
  return {variable.name: variable for variable in optimizer.variables}


def _slot(slots: Dict[str, keras.Variable], variable, slot: str) -> keras.Variable:
  name = f"{variable.path.replace('/', '_')}_{slot}"
  if name not in slots:
    raise ValueError(f"the optimizer has no {slot} for {variable.path}; build it for the "
                     "model's trainable variables first")
  return slots[name]


def _slot_layouts(layout, sharded_optimizer, unsharded_optimizer):
  """For each parameter and AdamW slot: the same `ShardedParameter` over the slots."""
  sharded_slots = _slots_by_name(sharded_optimizer)
  unsharded_slots = _slots_by_name(unsharded_optimizer)
  for param in layout:
    for slot in ADAMW_SLOTS:
      yield tp_models.ShardedParameter(
          _slot(unsharded_slots, param.unsharded, slot),
          [_slot(sharded_slots, shard, slot) for shard in param.shards],
          param.axis, param.sections)


def to_unsharded(sharded_model, sharded_optimizer, unsharded_model, unsharded_optimizer):
  """Copies a tensor-parallel model and its AdamW state into the unsharded model of the same
  config (built, e.g. on the host) and its AdamW: then an ordinary checkpoint or export of
  the unsharded pair holds the run whatever its degree."""
  layout = tp_models.parameter_layout(unsharded_model, sharded_model)
  for variable, value in tp_models.unsharded_values(
      layout + list(_slot_layouts(layout, sharded_optimizer, unsharded_optimizer))):
    variable.assign(value)
  unsharded_optimizer.iterations.assign(sharded_optimizer.iterations)


def from_unsharded(sharded_model, sharded_optimizer, unsharded_model, unsharded_optimizer):
  """The inverse of `to_unsharded`: resumes a run at any degree from the unsharded pair."""
  layout = tp_models.parameter_layout(unsharded_model, sharded_model)
  tp_models.load_unsharded(
      layout + list(_slot_layouts(layout, sharded_optimizer, unsharded_optimizer)))
  sharded_optimizer.iterations.assign(unsharded_optimizer.iterations)


# Where a tensor-parallel run keeps the unsharded model and AdamW its checkpoints hold.
HOST = "/device:CPU:0"
# The strategies `tfllm-train` accepts with `model_parallel > 1`: "mirrored" runs data
# parallelism over groups of `model_parallel` local devices, "multi_worker_mirrored" over
# each worker's groups and across the workers, the others one group.
STRATEGIES = ("mirrored", "multi_worker_mirrored", "off", "default")
# The precisions it trains in at `model_parallel > 1`.
PRECISIONS = ("float32", "mixed_bfloat16")


def data_parallel_groups(config, strategy_name: str, num_gpus: Optional[int] = None,
                         replicas: int = 1) -> int:
  """How many tensor-parallel groups of `config.train.model_parallel` devices train side by
  side on this machine (data parallelism across them): under `mirrored`, the local devices
  it would use (`num_gpus` of them, default all: GPUs, else logical CPUs) over the degree;
  under `multi_worker_mirrored`, each worker's devices over the degree; else 1.

  Args:
    replicas: the strategy's replicas (one a worker under `multi_worker_mirrored`), each
      running this many groups on its slice of the global batch.

  Raises:
    ConfigError: one line naming the numbers: the degree does not divide the devices, or
      the groups of all replicas do not divide `config.train.global_batch_size`.
  """
  degree = int(config.train.model_parallel)
  strategy_name = str(strategy_name).strip().lower()
  if strategy_name not in ("mirrored", "multi_worker_mirrored"):
    return 1
  available = len(tp.local_devices())
  devices = available if num_gpus is None or strategy_name != "mirrored" else int(num_gpus)
  if devices > available:
    raise ConfigError(f"num_gpus={devices} asks for more devices than this machine has: "
                      f"{available}; use at most {available}")
  if devices < degree or devices % degree:
    fitting = [d for d in range(1, devices + 1) if devices % d == 0]
    raise ConfigError(f"config.train.model_parallel={degree} does not divide the {devices} "
                      f"devices {strategy_name} trains on into groups; use one of: "
                      f"{', '.join(map(str, fitting))} (or num_gpus, --cpu_devices: a "
                      f"multiple of {degree})")
  groups = devices // degree
  batch, total = int(config.train.global_batch_size), groups * int(replicas)
  if batch % total:
    across = f" ({replicas} workers x {groups})" if replicas > 1 else ""
    raise ConfigError(f"config.train.global_batch_size={batch} is split over {total}{across} "
                      f"data-parallel groups of {degree} devices; use a multiple of {total}")
  return groups


def check_training(config, strategy_name: str, mixed_precision: str) -> None:
  """What this slice of tensor parallelism trains (after `tp_models.check_config`).

  Raises:
    ConfigError: one line naming the setting and what is accepted: a strategy other than
      `STRATEGIES` (`tpu`, `one_device`), a precision other than float32 or
      mixed_bfloat16 (`PRECISIONS`), `jit_compile=on` (one program over several devices is
      not one XLA cluster), or a fine-tuning feature
      the sharded model does not carry (pretrained init, LoRA/frozen layers, distillation,
      pruning, adversarial training).
  """
  degree = config.train.model_parallel
  key = f"config.train.model_parallel={degree}"
  if str(strategy_name).strip().lower() not in STRATEGIES:
    raise ConfigError(f"{key} trains tensor-parallel groups on this machine's devices; "
                      f"distribution_strategy={strategy_name!r} is not supported with it yet; "
                      f"use one of: {', '.join(STRATEGIES)}")
  if mixed_precision == "auto":   # float32 or mixed_bfloat16, by the hardware
    mixed_precision = precision.resolve_policy(mixed_precision)
  if mixed_precision not in PRECISIONS:
    # float16 needs loss scaling, which the host copy's AdamW does not carry yet.
    raise ConfigError(f"{key} trains in {' or '.join(PRECISIONS)}; mixed_precision="
                      f"{mixed_precision!r} is not supported yet; use one of: "
                      f"{', '.join(PRECISIONS)}")
  if config.train.jit_compile == "on":
    raise ConfigError(f"{key} runs one program over {degree} devices, which XLA cannot "
                      "compile as one cluster; config.train.jit_compile='on' is not accepted; "
                      "use 'auto' or 'off'")
  finetune = config.finetune
  unsupported = [
      ("config.finetune.init_checkpoint", finetune.init_checkpoint, "''"),
      ("config.finetune.strategy", finetune.strategy if finetune.strategy != "full" else "",
       "'full'"),
      ("config.finetune.distill.teacher_model_dir", finetune.distill.teacher_model_dir, "''"),
      ("config.finetune.adversarial.method", finetune.adversarial.method, "''"),
  ]
  if pruning_enabled(finetune.pruning):
    unsupported += [("config.finetune.pruning.target_sparsity",
                     finetune.pruning.target_sparsity, "0"),
                    ("config.finetune.pruning.structure",
                     finetune.pruning.structure if finetune.pruning.structure != "unstructured"
                     else "", "'unstructured'")]
  for name, value, accepted in unsupported:
    if value:
      raise ConfigError(f"{key} does not support {name}={value!r} yet; use {name}={accepted} "
                        "or model_parallel=1")


def split_batch(tensor: tf.Tensor, groups: int) -> List[tf.Tensor]:
  """`tensor` split along its first axis into `groups` consecutive parts, the first
  `batch % groups` one example larger (a batch need not divide)."""
  if groups == 1:
    return [tensor]
  batch = tf.shape(tensor)[0]
  sizes = batch // groups + tf.cast(tf.range(groups) < batch % groups, batch.dtype)
  return tf.split(tensor, sizes, num=groups)


class GroupedLogits(ShardedLogits):
  """The logits of a batch split over data-parallel tensor-parallel groups: each group's
  `ShardedLogits` for its consecutive part of the batch. The cross-entropy and argmax are
  each group's, from its own shards on its own devices; only the `[batch, seq]` results are
  joined, on the first group's first device.

  Args:
    parts: one `ShardedLogits` a group, in batch order.
  """

  def __init__(self, parts: Sequence[ShardedLogits]):
    self.parts = list(parts)
    super().__init__([s for part in self.parts for s in part.shards],
                     [d for part in self.parts for d in part.devices])

  def _joined(self, per_part) -> tf.Tensor:
    with tf.device(self.parts[0].devices[0]):
      return tf.concat(per_part, axis=0)

  def cross_entropy(self, labels: tf.Tensor) -> tf.Tensor:
    return self._joined([part.cross_entropy(part_labels) for part, part_labels
                         in zip(self.parts, split_batch(labels, len(self.parts)))])

  def argmax(self) -> tf.Tensor:
    return self._joined([part.argmax() for part in self.parts])


class TensorParallelGroups:
  """`G` copies of a `TensorParallelCausalLM`, copy `g` over tensor-parallel group `g`'s
  devices, as the trainer calls them: data parallelism across the groups, in one program.

  `model(features, training=...)` splits the batch into `G` consecutive parts (`split_batch`),
  runs part `g` on copy `g` and gives their `GroupedLogits` (the `ShardedLogits` of one
  copy when `G` = 1), which the loss and the eval metrics read from the shards
  (`tfllm.metrics.losses`). `trainable_variables` are every copy's, copy by copy in the same
  order: the trainer sums the `G` gradients of each weight and applies the sum to every copy
  (`Trainer(data_parallel_groups=G)`), so the copies stay equal. Every other attribute is
  the first copy's.

  Args:
    models: the built `TensorParallelCausalLM` of each group (the same config).
  """

  def __init__(self, models: Sequence[tp_models.TensorParallelCausalLM]):
    self.models = list(models)

  @property
  def model(self) -> tp_models.TensorParallelCausalLM:
    """The first group's copy (what checkpoints and reports read)."""
    return self.models[0]

  @property
  def trainable_variables(self):
    return [v for model in self.models for v in model.trainable_variables]

  @property
  def weights(self):
    return [v for model in self.models for v in model.weights]

  def __call__(self, features, training=None) -> ShardedLogits:
    groups = len(self.models)
    parts = [dict(zip(features, values)) for values in
             zip(*[split_batch(value, groups) for value in features.values()])]
    logits = [ShardedLogits(model(part, training=training), model.devices)
              for model, part in zip(self.models, parts)]
    return logits[0] if groups == 1 else GroupedLogits(logits)

  def __getattr__(self, name):
    if name == "models":   # not set yet (e.g. during a copy): no recursion
      raise AttributeError(name)
    return getattr(self.models[0], name)


class UnshardedState:
  """The unsharded model and AdamW of the same config, on the host: what a tensor-parallel
  run's checkpoints hold (the trainer's `checkpoint_state`), so that a checkpoint is an
  ordinary one, resumes at any degree and exports unchanged.

  Args:
    config: the run's config.
    sharded_models: the tensor-parallel model of each data-parallel group (equal copies).
    sharded_optimizer: their built AdamW (one, over every copy's variables).
  """

  def __init__(self, config, sharded_models, sharded_optimizer):
    self.sharded_models = list(sharded_models)
    self.sharded_optimizer = sharded_optimizer
    with tf.device(HOST):
      self.model = models.build(config)
      self.optimizer = build_optimizer(config.train, self.model.trainable_variables)
      self.optimizer.build(self.model.trainable_variables)
    # The sharded optimizer's step when the two pairs last held the same values: only an
    # optimizer step changes the shards, so a copy at the same step would copy nothing new
    # (the end of a run saves, then the report reads the unsharded model).
    self._same_at_step: Optional[int] = None

  @property
  def sharded_model(self):
    """The first group's copy (every group's holds the same values)."""
    return self.sharded_models[0]

  def before_save(self):
    """Copies the shards and their AdamW state into the unsharded pair (unless no step has
    run since they were last the same)."""
    step = int(self.sharded_optimizer.iterations.numpy())
    if step != self._same_at_step:
      to_unsharded(self.sharded_model, self.sharded_optimizer, self.model, self.optimizer)
      self._same_at_step = step

  def after_restore(self):
    """Shards the restored unsharded pair into every group's tensor-parallel model and its
    AdamW state."""
    for sharded_model in self.sharded_models:
      from_unsharded(sharded_model, self.sharded_optimizer, self.model, self.optimizer)
    self._same_at_step = int(self.sharded_optimizer.iterations.numpy())


def build_models(config, budget_progress: Optional[tf.Variable],
                 log: Callable[[str], None] = print, groups: int = 1):
  """`(model for the trainer, its AdamW, UnshardedState)` of a tensor-parallel run over
  `groups` data-parallel groups (`TensorParallelGroups`); logs the bytes per device.

  Every group's copy starts from the same values: the first group's initial values are
  copied into the others.
  """
  sharded = [tp_models.build_tensor_parallel(config, group) for group in range(groups)]
  for copy in sharded[1:]:
    for source, target in zip(sharded[0].weights, copy.weights):
      target.assign(source)
  model = TensorParallelGroups(sharded)
  optimizer = build_optimizer(config.train, model.trainable_variables,
                              budget_progress=budget_progress, placed_variables=True)
  optimizer.build(model.trainable_variables)
  log(device_bytes_report(config, model, optimizer))
  return model, optimizer, UnshardedState(config, sharded, optimizer)
