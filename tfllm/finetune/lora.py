"""LoRA adapters: save and load them without the frozen backbone; merge them for export.

An adapter file holds the variables a LoRA fine-tuning changed: every `lora_kernel_a/b` and
the head (everything trainable), keyed by layer path below the model (`variable_keys`), as a
NumPy `.npz` (`tfllm.finetune.trainable_weights`). With the pretrained
checkpoint it rebuilds the fine-tuned model; for MiniLM it is about 1% of the full weights.
"""

from __future__ import annotations

from typing import Dict

import keras
import numpy as np

from tfllm.finetune.strategies import adapters_enabled, lora_enabled, lora_target_layers
from tfllm.finetune.trainable_weights import (load_trainable_weights, save_trainable_weights,
                                              trainable_weights, variable_keys)

_LORA_VARIABLES = ("lora_kernel_a", "lora_kernel_b")


def _require_lora(model: keras.Model) -> None:
  if not lora_enabled(model):
    raise ValueError(f"{model.name!r} has no LoRA adapters; call enable_lora(model, rank) "
                     "first")


def lora_weights(model: keras.Model) -> Dict[str, np.ndarray]:
  """The adapter weights (LoRA matrices and head) of a LoRA-enabled model by key."""
  _require_lora(model)
  return trainable_weights(model)


def save_lora_weights(model: keras.Model, path: str) -> str:
  """Writes the adapter weights to `path` (`.npz`, any TF filesystem) atomically.

  Returns:
    The path written.
  """
  _require_lora(model)
  return save_trainable_weights(model, path, "LoRA weights")


def load_lora_weights(model: keras.Model, path: str) -> None:
  """Loads adapter weights saved by `save_lora_weights` into a LoRA-enabled `model`.

  The model must have the pretrained backbone weights and the same LoRA rank and head as
  the one saved.

  Raises:
    ValueError: a variable missing from the file, one the model lacks, or a shape mismatch.
  """
  _require_lora(model)
  load_trainable_weights(model, path, "LoRA rank or head")


def _build_like(model: keras.Model) -> None:
  """Builds a fresh copy of a tfllm task model with a tiny batch of the right inputs."""
  backbone = model.backbone
  features = {"token_ids": np.zeros((1, 2), "int32"), "padding_mask": np.ones((1, 2), bool),
              "mask_positions": np.zeros((1, 1), "int32")}
  if backbone.num_token_types:
    features["token_type_ids"] = np.zeros((1, 2), "int32")
  model(features)


def merge_lora(model: keras.Model) -> keras.Model:
  """A copy of `model` without adapters: each kernel is `W + (alpha / rank) A B`.

  The result has the original architecture (plain `Dense` layers), so it exports, quantizes
  and serves like a fully fine-tuned model; `model` is left unchanged.

  Raises:
    ValueError: `model` has no LoRA adapters, or has bottleneck adapters (`strategy=adapters`),
      which no kernel can absorb.
  """
  if adapters_enabled(model):
    raise ValueError(f"{model.name!r} has bottleneck adapters, which cannot be merged into the "
                     "base weights (x + up(act(down(x))) is a nonlinear function of x): export "
                     "and serve the model with its adapters")
  _require_lora(model)
  merged = model.__class__.from_config(model.get_config())
  _build_like(merged)
  override = {id(layer._kernel): layer.kernel for layer in lora_target_layers(model)}  # pylint: disable=protected-access
  source = [v for v in model.weights if v.path.rsplit("/", 1)[-1] not in _LORA_VARIABLES]
  if len(source) != len(merged.weights):
    raise ValueError(f"cannot merge {model.name!r}: {len(source)} variables besides the "
                     f"adapters, but its architecture rebuilds with {len(merged.weights)}")
  source_keys, merged_keys = variable_keys(model), variable_keys(merged)
  for src, dst in zip(source, merged.weights):
    src_key, dst_key = source_keys[id(src)], merged_keys[id(dst)]
    if src_key != dst_key or tuple(src.shape) != tuple(dst.shape):
      raise ValueError(f"cannot merge {model.name!r}: variable {src_key!r} "
                       f"{tuple(src.shape)} does not line up with {dst_key!r}")
    dst.assign(override.get(id(src), src))
  return merged
