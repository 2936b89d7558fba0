"""LoRA adapters: save and load them without the frozen backbone; merge them for export.

An adapter file holds the variables a LoRA fine-tuning changed: every `lora_kernel_a/b` and
the head (everything trainable), keyed by layer path below the model (`variable_keys`), as a
NumPy `.npz`. With the pretrained
checkpoint it rebuilds the fine-tuned model; for MiniLM it is about 1% of the full weights.
"""

from __future__ import annotations

import io
import os
from typing import Dict

import keras
import numpy as np
import tensorflow as tf

from tfllm import model_dir as model_dir_lib
from tfllm.finetune.strategies import lora_enabled, lora_target_layers

_LORA_VARIABLES = ("lora_kernel_a", "lora_kernel_b")


def variable_keys(model: keras.Model) -> Dict[int, str]:
  """`id(variable)` -> its layer path below the model and its name
  (`backbone/block_0/attention/qkv/lora_kernel_a`).

  Built from the layer tree, not `variable.path`: Keras names a variable by the scopes active
  when it was created, which for LoRA weights added after building is the Dense layer's name
  alone (`qkv/lora_kernel_a`, the same in every block).
  """
  keys = {}

  def walk(layer, prefix):
    for variable in layer._trainable_variables + layer._non_trainable_variables:  # pylint: disable=protected-access
      keys.setdefault(id(variable), f"{prefix}{variable.name}")
    for child in layer._flatten_layers(include_self=False, recursive=False):  # pylint: disable=protected-access
      walk(child, f"{prefix}{child.name}/")

  walk(model, "")
  return keys


def _require_lora(model: keras.Model) -> None:
  if not lora_enabled(model):
    raise ValueError(f"{model.name!r} has no LoRA adapters; call enable_lora(model, rank) "
                     "first")


def lora_weights(model: keras.Model) -> Dict[str, np.ndarray]:
  """The adapter weights (LoRA matrices and head) of a LoRA-enabled model by key."""
  _require_lora(model)
  keys = variable_keys(model)
  return {keys[id(v)]: np.asarray(v.numpy()) for v in model.trainable_variables}


def save_lora_weights(model: keras.Model, path: str) -> str:
  """Writes the adapter weights to `path` (`.npz`, any TF filesystem) atomically.

  Returns:
    The path written.
  """
  path = os.fspath(path)
  if not path.endswith(".npz"):
    raise ValueError(f"LoRA weights path {path!r} must end with .npz")
  weights = lora_weights(model)
  data = io.BytesIO()
  np.savez(data, **weights)
  return model_dir_lib.write_atomically(path, data.getvalue())


def load_lora_weights(model: keras.Model, path: str) -> None:
  """Loads adapter weights saved by `save_lora_weights` into a LoRA-enabled `model`.

  The model must have the pretrained backbone weights and the same LoRA rank and head as
  the one saved.

  Raises:
    ValueError: a variable missing from the file, one the model lacks, or a shape mismatch.
  """
  _require_lora(model)
  with tf.io.gfile.GFile(os.fspath(path), "rb") as f:
    data = io.BytesIO(f.read())
  with np.load(data) as stored:
    stored = {key: stored[key] for key in stored.files}
  keys = variable_keys(model)
  variables = {keys[id(v)]: v for v in model.trainable_variables}
  for key, variable in variables.items():
    if key not in stored:
      raise ValueError(f"{path}: no weights for {key!r} (LoRA rank or head differ from the "
                       "saved model?)")
    if tuple(stored[key].shape) != tuple(variable.shape):
      raise ValueError(f"{path}: {key!r} has shape {stored[key].shape}; the model expects "
                       f"{tuple(variable.shape)} (a different LoRA rank or head?)")
  unexpected = sorted(set(stored) - set(variables))
  if unexpected:
    raise ValueError(f"{path}: unexpected weights {unexpected[0]!r} (the model has no such "
                     "trainable variable)")
  for key, variable in variables.items():
    variable.assign(stored[key])


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
  """
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
