"""Post-training int8 weight quantization of a (fine-tuned) model, and how to persist it.

`model.quantize("int8")` (Keras 3) replaces every `Dense` kernel by int8 values with a
per-output-channel scale and quantizes the activations dynamically; embeddings, norms and
the rest stay float. Keras 3.15 cannot reload a quantized model with attention layers from
`.keras` (docs/stack.md: `expected 1 variables, but received 2`), so a quantized model is
persisted as weights (`save_quantized_weights`), restored by rebuilding the float model,
quantizing it, then loading (`load_quantized_weights`), or exported as a SavedModel.
"""

from __future__ import annotations

import os
import warnings

import keras

from tfllm import model_dir as model_dir_lib
from tfllm.finetune.strategies import lora_enabled


def quantization_mode(model: keras.Model):
  """The quantization mode of the first quantized layer of `model`, or None."""
  for layer in model._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
    mode = getattr(layer, "quantization_mode", None)
    if mode:
      return mode
  return None


def quantize_int8(model: keras.Model) -> keras.Model:
  """Quantizes `model`'s Dense kernels to int8 in place and returns it.

  Raises:
    ValueError: the model is already quantized, or carries LoRA adapters (merge them first
      with `tfllm.finetune.merge_lora`).
  """
  mode = quantization_mode(model)
  if mode:
    raise ValueError(f"{model.name!r} is already quantized ({mode}); quantize a float model "
                     "once (rebuild it and load its float weights to quantize again)")
  if getattr(model, "backbone", None) is not None and lora_enabled(model):
    raise ValueError(f"{model.name!r} has LoRA adapters; merge them first "
                     "(tfllm.finetune.merge_lora) and quantize the merged model")
  with warnings.catch_warnings():
    # Keras warns for every layer type without int8 kernels (norms, dropout, embeddings).
    warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
    model.quantize("int8")
  return model


def save_quantized_weights(model: keras.Model, path: str) -> str:
  """Writes a quantized model's weights to `path` (`*.weights.h5`, any TF filesystem) atomically.

  Keras' h5 writer needs a local file: written locally, then copied into place.
  """
  path = os.fspath(path)
  if not path.endswith(".weights.h5"):
    raise ValueError(f"quantized weights path {path!r} must end with .weights.h5")
  if not quantization_mode(model):
    raise ValueError(f"{model.name!r} is not quantized; call quantize_int8 first")
  return model_dir_lib.write_with_local_writer(path, model.save_weights)


def load_quantized_weights(model: keras.Model, path: str) -> keras.Model:
  """Quantizes a freshly built float `model` (same architecture) and loads `path` into it."""
  quantize_int8(model)
  with model_dir_lib.local_copy(path) as local:
    model.load_weights(local)
  return model
