"""A tensor-parallel model in training: what it and its AdamW hold on each device
(tfllm-summary, the trainer's start-up log), the copy of model and optimizer state to and from
the unsharded layout (checkpoints that do not depend on the degree), and what `tfllm-train`
builds and accepts for `config.train.model_parallel > 1`: one tensor-parallel group, under the
default strategy (one replica whose program spans the group's devices)."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import keras
import tensorflow as tf

from tfllm import models, precision
from tfllm.config import ConfigError
from tfllm.finetune.config import pruning_enabled
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
  lines = [f"tensor parallel over {config.train.model_parallel} devices: bytes per device"]
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
# The strategies `tfllm-train` accepts with `model_parallel > 1`: each means one group.
ONE_GROUP_STRATEGIES = ("mirrored", "off", "default")
# The precisions it trains in at `model_parallel > 1`.
PRECISIONS = ("float32", "mixed_bfloat16")


def check_training(config, strategy_name: str, mixed_precision: str) -> None:
  """What this slice of tensor parallelism trains (after `tp_models.check_config`).

  Raises:
    ConfigError: one line naming the setting and what is accepted: data x tensor
      parallelism (another strategy), a precision other than float32 or mixed_bfloat16
      (`PRECISIONS`), `jit_compile=on`
      (one program over several devices is not one XLA cluster), or a fine-tuning feature
      the sharded model does not carry (pretrained init, LoRA/frozen layers, distillation,
      pruning, adversarial training).
  """
  degree = config.train.model_parallel
  key = f"config.train.model_parallel={degree}"
  if str(strategy_name).strip().lower() not in ONE_GROUP_STRATEGIES:
    raise ConfigError(f"{key} trains one tensor-parallel group on this machine; "
                      f"distribution_strategy={strategy_name!r} (data x tensor parallelism) is "
                      f"not supported yet; use one of: {', '.join(ONE_GROUP_STRATEGIES)}")
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


class ShardedOutputModel:
  """A `TensorParallelCausalLM` as the trainer calls it: `model(features, training=...)` gives
  `ShardedLogits`, which the loss and the eval metrics read from the shards
  (`tfllm.metrics.losses`); every other attribute is the wrapped model's.

  Args:
    model: the built `TensorParallelCausalLM`.
  """

  def __init__(self, model: tp_models.TensorParallelCausalLM):
    self.model = model

  def __call__(self, features, training=None) -> ShardedLogits:
    return ShardedLogits(self.model(features, training=training), self.model.devices)

  def __getattr__(self, name):
    if name == "model":   # not set yet (e.g. during a copy): no recursion
      raise AttributeError(name)
    return getattr(self.model, name)


class UnshardedState:
  """The unsharded model and AdamW of the same config, on the host: what a tensor-parallel
  run's checkpoints hold (the trainer's `checkpoint_state`), so that a checkpoint is an
  ordinary one, resumes at any degree and exports unchanged.

  Args:
    config: the run's config.
    sharded_model, sharded_optimizer: the tensor-parallel model and its built AdamW.
  """

  def __init__(self, config, sharded_model, sharded_optimizer):
    self.sharded_model = sharded_model
    self.sharded_optimizer = sharded_optimizer
    with tf.device(HOST):
      self.model = models.build(config)
      self.optimizer = build_optimizer(config.train, self.model.trainable_variables)
      self.optimizer.build(self.model.trainable_variables)
    # The sharded optimizer's step when the two pairs last held the same values: only an
    # optimizer step changes the shards, so a copy at the same step would copy nothing new
    # (the end of a run saves, then the report reads the unsharded model).
    self._same_at_step: Optional[int] = None

  def before_save(self):
    """Copies the shards and their AdamW state into the unsharded pair (unless no step has
    run since they were last the same)."""
    step = int(self.sharded_optimizer.iterations.numpy())
    if step != self._same_at_step:
      to_unsharded(self.sharded_model, self.sharded_optimizer, self.model, self.optimizer)
      self._same_at_step = step

  def after_restore(self):
    """Shards the restored unsharded pair into the tensor-parallel model and its AdamW."""
    from_unsharded(self.sharded_model, self.sharded_optimizer, self.model, self.optimizer)
    self._same_at_step = int(self.sharded_optimizer.iterations.numpy())


def build_models(config, budget_progress: Optional[tf.Variable],
                 log: Callable[[str], None] = print):
  """`(model for the trainer, its AdamW, UnshardedState)` of a tensor-parallel run; logs the
  bytes per device."""
  model = tp_models.build_tensor_parallel(config)
  optimizer = build_optimizer(config.train, model.trainable_variables,
                              budget_progress=budget_progress)
  optimizer.build(model.trainable_variables)
  log(device_bytes_report(config, model, optimizer))
  return ShardedOutputModel(model), optimizer, UnshardedState(config, model, optimizer)
