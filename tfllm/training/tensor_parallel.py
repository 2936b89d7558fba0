"""A tensor-parallel model's AdamW: what it holds on each device (tfllm-summary), and the
copy of model and optimizer state to and from the unsharded layout (checkpoints that do not
depend on the degree)."""

from __future__ import annotations

from typing import Dict, Tuple

import keras

from tfllm.layers.tensor_parallel import variable_bytes_by_device
from tfllm.models import tensor_parallel as tp_models
from tfllm.training.optimizer import build_optimizer


def device_bytes(config, model: keras.Model) -> Tuple[Dict[str, int], Dict[str, int]]:
  """(parameter bytes, AdamW bytes) per device, read from where the variables live.

  The optimizer is the one `config.train` describes, built for `model`'s trainable variables
  (its slots are created beside each variable).
  """
  optimizer = build_optimizer(config.train, model.trainable_variables)
  optimizer.build(model.trainable_variables)
  return variable_bytes_by_device(model.weights), variable_bytes_by_device(optimizer.variables)


def device_bytes_report(config, model: keras.Model) -> str:
  """One line a device: its parameter and AdamW bytes, and the unsharded total."""
  parameters, optimizer = device_bytes(config, model)
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
