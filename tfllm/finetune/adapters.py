"""Bottleneck adapters: save and load them without the frozen backbone.

An adapter file holds the variables an adapter fine-tuning (`strategy=adapters`) changed:
every block's `Adapter` weights, the layer norms and the head (everything trainable), keyed
by layer path below the model, as a NumPy `.npz` (`tfllm.finetune.trainable_weights`). With
the pretrained checkpoint it rebuilds the fine-tuned model.

Adapters cannot be merged into the base weights (`x + up(act(down(x)))` is a nonlinear
function of `x`): an adapter model is exported and served with its adapters
(`tfllm.finetune.merge_lora` says so when asked).
"""

from __future__ import annotations

from typing import Dict

import keras
import numpy as np

from tfllm.finetune.strategies import adapters_enabled
from tfllm.finetune.trainable_weights import (load_trainable_weights, save_trainable_weights,
                                              trainable_weights)


def _require_adapters(model: keras.Model) -> None:
  if not adapters_enabled(model):
    raise ValueError(f"{model.name!r} has no bottleneck adapters; call "
                     "enable_adapters(model, size) first")


def adapter_weights(model: keras.Model) -> Dict[str, np.ndarray]:
  """The trained weights (adapters, layer norms, head) of an adapter model, by key."""
  _require_adapters(model)
  return trainable_weights(model)


def save_adapter_weights(model: keras.Model, path: str) -> str:
  """Writes `adapter_weights(model)` to `path` (`.npz`, any TF filesystem) atomically.

  Returns:
    The path written.
  """
  _require_adapters(model)
  return save_trainable_weights(model, path, "adapter weights")


def load_adapter_weights(model: keras.Model, path: str) -> None:
  """Loads weights saved by `save_adapter_weights` into an adapter `model`.

  The model must have the pretrained backbone weights and the same adapter size, placement
  and head as the one saved.

  Raises:
    ValueError: a variable missing from the file, one the model lacks, or a shape mismatch.
  """
  _require_adapters(model)
  load_trainable_weights(model, path, "adapter size, placement or head")
