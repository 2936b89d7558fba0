"""The one loader of a training run's directory: config, trained model, tokenizer.

`load_trained_model` is the inverse of `tfllm.finetune.prepare_model` (without the pretrained
load, which the checkpoint overwrites): the model of `config.json`, every weight of the
checkpoint `checkpoint_to_use` names, LoRA adapters merged into the kernels (bottleneck
adapters, which cannot be merged, stay in the model), pruning masks folded in. Export,
prediction, generation, distillation teachers and post-training int8 all load through here.
"""

from __future__ import annotations

from typing import Any, Tuple

import keras
import ml_collections
import tensorflow as tf

from tfllm import config as config_lib
from tfllm import model_dir as model_dir_lib
from tfllm import models
from tfllm.artifacts.checkpoints import restore_model
from tfllm.data import tokenizers
from tfllm.finetune.lora import merge_lora
from tfllm.finetune.pruning import fold_masks, is_enabled
from tfllm.finetune.quantization import quantize_int8
from tfllm.finetune.strategies import apply_strategy, lora_enabled


def load_config(model_dir: str) -> ml_collections.ConfigDict:
  """The config a training run saved in `model_dir/config.json`.

  Raises:
    FileNotFoundError: `model_dir` holds no `config.json`.
  """
  path = model_dir_lib.config_path(model_dir)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path} is missing; model_dir={model_dir!r} is not a tfllm "
                            "training directory (train it with tfllm-train)")
  with tf.io.gfile.GFile(path) as f:
    return config_lib.from_json(f.read())


def load_trained_model(model_dir: str) -> Tuple[keras.Model, Any]:
  """The trained model of a tfllm `model_dir`, ready to use (see the module docstring).

  Returns:
    `(model, config)`.

  Raises:
    FileNotFoundError: no `config.json` or no checkpoint in `model_dir`.
    ValueError: the checkpoint does not match the config's model.
  """
  config = load_config(model_dir)
  model = models.build(config)
  apply_strategy(model, config.finetune)
  path = restore_model(model, model_dir)
  if is_enabled(config.finetune.pruning):
    fold_masks(model, config, path)   # exact zeros; the model holds no mask variable
  if lora_enabled(model):
    model = merge_lora(model)
  return model, config


def load_trained(model_dir: str):
  """The model, tokenizer and config a training run left in `model_dir`.

  The model comes from `load_trained_model`, int8-quantized when the run's
  `finetune.quantize` says so; the tokenizer from `model_dir/tokenizer/`.

  Returns:
    `(model, tokenizer, config)`.

  Raises:
    FileNotFoundError: `model_dir` is missing, or has no config, checkpoint or tokenizer.
    ValueError: its checkpoint does not match its config.
  """
  if not model_dir or not tf.io.gfile.isdir(model_dir):
    raise FileNotFoundError(f"model_dir={model_dir!r} does not exist; pass the directory a "
                            "training run wrote")
  tokenizer_dir = model_dir_lib.tokenizer_dir(model_dir)
  if tf.io.gfile.exists(model_dir_lib.config_path(model_dir)) and not (
      tokenizers.is_saved_tokenizer(tokenizer_dir)):
    raise FileNotFoundError(f"{tokenizer_dir} holds no saved tokenizer; the export needs the "
                            "training vocabulary (tfllm.data.tokenizers.save_tokenizer)")
  model, config = load_trained_model(model_dir)
  if config.finetune.quantize == "int8":
    # Deterministic from the float weights: the same model the run evaluated and saved.
    quantize_int8(model)
  return model, tokenizers.load_tokenizer(tokenizer_dir), config
