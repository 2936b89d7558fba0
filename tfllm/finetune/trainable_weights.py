"""A model's trainable variables as one `.npz` file, keyed by layer path.

Parameter-efficient fine-tuning (LoRA, bottleneck adapters) changes few variables: those and
the head are everything trainable, and the pretrained checkpoint gives the rest. These
helpers save and load exactly that set; `tfllm.finetune.lora` and `tfllm.finetune.adapters`
name what it holds.
"""

from __future__ import annotations

import io
import os
from typing import Dict

import keras
import numpy as np
import tensorflow as tf

from tfllm import model_dir as model_dir_lib


def variable_keys(model: keras.Model) -> Dict[int, str]:
  """`id(variable)` -> its layer path below the model and its name
  (`backbone/block_0/attention/qkv/lora_kernel_a`).

  Built from the layer tree, not `variable.path`: Keras names a variable by the scopes active
  when it was created, which for weights added after building (LoRA, adapters) is the new
  layer's own name alone (`qkv/lora_kernel_a`, the same in every block).
  """
  keys = {}

  def walk(layer, prefix):
    for variable in layer._trainable_variables + layer._non_trainable_variables:  # pylint: disable=protected-access
      keys.setdefault(id(variable), f"{prefix}{variable.name}")
    for child in layer._flatten_layers(include_self=False, recursive=False):  # pylint: disable=protected-access
      walk(child, f"{prefix}{child.name}/")

  walk(model, "")
  return keys


def trainable_weights(model: keras.Model) -> Dict[str, np.ndarray]:
  """Every trainable variable of `model`, by `variable_keys` key."""
  keys = variable_keys(model)
  return {keys[id(v)]: np.asarray(v.numpy()) for v in model.trainable_variables}


def save_trainable_weights(model: keras.Model, path: str, what: str) -> str:
  """Writes `trainable_weights(model)` to `path` (`.npz`, any TF filesystem) atomically.

  Args:
    what: what the file holds, for the error message (`LoRA weights`).

  Returns:
    The path written.
  """
  path = os.fspath(path)
  if not path.endswith(".npz"):
    raise ValueError(f"{what} path {path!r} must end with .npz")
  data = io.BytesIO()
  np.savez(data, **trainable_weights(model))
  return model_dir_lib.write_atomically(path, data.getvalue())


def load_trainable_weights(model: keras.Model, path: str, differ: str) -> None:
  """Assigns a file of `save_trainable_weights` to `model`'s trainable variables.

  Every trainable variable must be in the file with its shape, and nothing else; nothing is
  assigned unless all of them are.

  Args:
    differ: what probably differs when they do not match (`LoRA rank or head`).

  Raises:
    ValueError: a variable missing from the file, one the model lacks, or a shape mismatch.
  """
  with tf.io.gfile.GFile(os.fspath(path), "rb") as f:
    data = io.BytesIO(f.read())
  with np.load(data) as stored:
    stored = {key: stored[key] for key in stored.files}
  keys = variable_keys(model)
  variables = {keys[id(v)]: v for v in model.trainable_variables}
  for key, variable in variables.items():
    if key not in stored:
      raise ValueError(f"{path}: no weights for {key!r} ({differ} differ from the saved "
                       "model?)")
    if tuple(stored[key].shape) != tuple(variable.shape):
      raise ValueError(f"{path}: {key!r} has shape {stored[key].shape}; the model expects "
                       f"{tuple(variable.shape)} (a different {differ}?)")
  unexpected = sorted(set(stored) - set(variables))
  if unexpected:
    raise ValueError(f"{path}: unexpected weights {unexpected[0]!r} (the model has no such "
                     "trainable variable)")
  for key, variable in variables.items():
    variable.assign(stored[key])
