"""What a tensor-parallel model and its AdamW hold on each device (tfllm-summary; the trainer
will log it at start)."""

from __future__ import annotations

from typing import Dict, Tuple

import keras

from tfllm.layers.tensor_parallel import variable_bytes_by_device
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
