"""`build(config)`: the task model a config describes, with its variables created."""

from __future__ import annotations

import keras
import numpy as np

from tfllm import config as config_lib
from tfllm.models.backbone import TransformerBackbone
from tfllm.models.config import num_classes, tag_decoding
from tfllm.models.task_models import (CausalLM, MaskedLM, MultiTaskModel, SequenceClassifier,
                                      TokenClassifier)


def build_backbone(model) -> TransformerBackbone:
  """A `TransformerBackbone` from the `model` config section."""
  return TransformerBackbone(
      vocab_size=model.vocab_size, num_layers=model.num_layers, hidden_dim=model.hidden_dim,
      num_heads=model.num_heads, intermediate_dim=model.intermediate_dim,
      num_kv_heads=model.num_kv_heads or None, head_dim=model.head_dim or None,
      max_sequence_length=model.max_sequence_length,
      position_embedding=model.position_embedding,
      rope_max_wavelength=model.rope_max_wavelength, num_token_types=model.num_token_types,
      normalization=model.normalization, norm_epsilon=model.norm_epsilon,
      norm_first=model.norm_first, activation=model.activation, causal=model.causal,
      use_bias=model.use_bias, dropout=model.dropout, attention_dropout=model.attention_dropout,
      initializer_range=model.initializer_range,
      attention_block_size=model.attention_block_size, name="backbone")


def build_seed(train) -> int:
  """The seed a run's model build draws from (the new head's initial weights, the dropout
  layers' seed generators): `train.init_seed`, or `train.seed` when it is -1.

  Args:
    train: the `train` config section.
  """
  return train.init_seed if train.init_seed >= 0 else train.seed


def build(config, backbone: TransformerBackbone | None = None) -> keras.Model:
  """Validates `config` and returns its task model, built (variables exist).

  Call inside `strategy.scope()` to place the variables for a distribution strategy.

  Args:
    config: a full tfllm ConfigDict (`tfllm.config.default_config()` and overrides).
    backbone: an existing backbone to put the head on (e.g. one converted from a
      pretrained checkpoint); by default a new one from `config.model`.
  """
  config_lib.validate(config)
  task = config.task
  backbone = backbone or build_backbone(config.model)
  if task.name == "causal_lm":
    model = CausalLM(backbone, tie_embeddings=config.model.tie_embeddings)
  elif task.name == "masked_lm":
    model = MaskedLM(backbone)
  elif task.name == "sequence_classification":
    model = SequenceClassifier(backbone, num_classes=num_classes(task), pooling=task.pooling,
                               dropout=task.dropout)
  elif task.name == "token_classification":
    model = TokenClassifier(backbone, num_classes=num_classes(task), dropout=task.dropout,
                            **crf_option(task))
  else:
    heads = {name: dict(task=head.task, num_classes=num_classes(head), pooling=head.pooling,
                        dropout=head.dropout, **crf_option(head))
             for name, head in task.heads.items()}
    model = MultiTaskModel(backbone, heads)
  model(example_features(config.task.name, config.model, heads=task.heads))
  return model


def crf_option(section):
  """`{"crf": True}` for a tagging task or head decoded by `crf` (its head then learns the
  transitions), else `{}` (so other models' configs stay as they were)."""
  return {"crf": True} if tag_decoding(section) == "crf" else {}


def example_features(task_name, model, batch_size=1, sequence_length=2, heads=None):
  """A tiny features dict of the right keys and dtypes, for building or tracing a model."""
  features = {
      "token_ids": np.zeros((batch_size, sequence_length), "int32"),
      "padding_mask": np.ones((batch_size, sequence_length), "bool"),
  }
  if model.num_token_types:
    features["token_type_ids"] = np.zeros((batch_size, sequence_length), "int32")
  head_tasks = [head.task for head in (heads or {}).values()]
  if task_name == "masked_lm" or "masked_lm" in head_tasks:
    features["mask_positions"] = np.zeros((batch_size, 1), "int32")
  return features
