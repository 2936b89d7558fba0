"""Which variables fine-tuning trains: all, the top N blocks, LoRA or bottleneck adapters.

Each strategy edits a task model (a backbone plus head) in place before the optimizer is
built; the head always trains. `trainable_parameter_count` reports what is left to train.
"""

from __future__ import annotations

from typing import List

import keras
import numpy as np

from tfllm.config import ConfigError
from tfllm.models.backbone import TransformerBackbone

STRATEGIES = ("full", "top_layers", "lora", "adapters")


def backbone_of(model: keras.Model) -> TransformerBackbone:
  """The `TransformerBackbone` of a task model (or the model itself if it is one)."""
  if isinstance(model, TransformerBackbone):
    return model
  backbone = getattr(model, "backbone", None)
  if not isinstance(backbone, TransformerBackbone):
    raise ValueError(f"{type(model).__name__} {model.name!r} has no TransformerBackbone; "
                     "fine-tuning strategies act on tfllm task models")
  return backbone


def trainable_parameter_count(model: keras.Model) -> int:
  """Number of scalars the optimizer updates."""
  return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def _embedding_layers(backbone: TransformerBackbone) -> List[keras.layers.Layer]:
  layers = [backbone.token_embedding, backbone.position_encoding,
            backbone.token_type_embedding, backbone.embedding_norm]
  return [layer for layer in layers if layer is not None]


def freeze_all_but_top(model: keras.Model, num_layers: int) -> None:
  """Trains only the top `num_layers` blocks (and the final norm and the head).

  The embeddings and the lower blocks are frozen (`trainable = False`, so dropout still
  runs in them during training: only their variables stop changing).

  Args:
    model: a task model or backbone, built.
    num_layers: blocks to keep trainable, `0 <= num_layers <= backbone.num_layers`; 0 trains
      the head alone.
  """
  backbone = backbone_of(model)
  if not 0 <= num_layers <= backbone.num_layers:
    raise ConfigError(f"num_layers={num_layers} is out of range; accepted: 0 to "
                      f"{backbone.num_layers} (the backbone's blocks)")
  frozen = _embedding_layers(backbone) + backbone.blocks[:backbone.num_layers - num_layers]
  for layer in frozen:
    layer.trainable = False


def lora_target_layers(model: keras.Model) -> List[keras.layers.Dense]:
  """The attention (`qkv`, `output`) and feed-forward (`up`, `gate`, `down`) projections."""
  targets = []
  for block in backbone_of(model).blocks:
    feed_forward = block.feed_forward
    targets += [block.attention.qkv, block.attention.output_projection, feed_forward.up]
    targets += [feed_forward.gate] if feed_forward.gate is not None else []
    targets += [feed_forward.down]
  return targets


def lora_enabled(model: keras.Model) -> bool:
  return any(getattr(layer, "lora_enabled", False) for layer in lora_target_layers(model))


def enable_lora(model: keras.Model, rank: int, alpha: float | None = None) -> None:
  """Freezes the backbone and adds rank-`rank` LoRA adapters to its projections.

  `W x` becomes `W x + (alpha / rank) B A x` (Hu et al., 2021) through Keras 3's
  `Dense.enable_lora`: `A` (`[in, rank]`) starts random, `B` (`[rank, out]`) at zero, so the
  model starts as the pretrained one. Every other backbone variable (biases, norms,
  embeddings) is frozen; the head still trains.

  Args:
    model: a built task model or backbone.
    rank: adapter rank, >= 1.
    alpha: scale numerator; None means `rank` (a scale of 1).
  """
  if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
    raise ValueError(f"LoRA rank={rank!r} is not accepted; use an integer >= 1")
  if lora_enabled(model):
    raise ValueError(f"LoRA is already enabled on {model.name!r}; enable it once per model")
  backbone = backbone_of(model)
  for variable in backbone.weights:
    variable.trainable = False
  for layer in lora_target_layers(model):
    layer.enable_lora(int(rank), lora_alpha=alpha)


def norm_layers(backbone: TransformerBackbone) -> List[keras.layers.Layer]:
  """Every normalization layer of `backbone`: the embedding and final norms, each block's."""
  norms = [backbone.embedding_norm, backbone.final_norm]
  for block in backbone.blocks:
    norms += [block.attention_norm, block.feed_forward_norm]
  return [layer for layer in norms if layer is not None]


def adapters_enabled(model: keras.Model) -> bool:
  """Whether the blocks of `model` carry bottleneck adapters."""
  return any(getattr(block, "adapter_size", 0) for block in backbone_of(model).blocks)


def enable_adapters(model: keras.Model, size: int, placement: str = "houlsby",
                    activation: str = "relu") -> None:
  """Freezes the backbone but its norms and adds bottleneck adapters to every block.

  Houlsby et al. (2019): an `Adapter` (`x + up(act(down(x)))`, up-projection zero, so the
  model starts as the pretrained one) on the attention output and on the feed-forward output
  (`houlsby`), or on the feed-forward output only (`pfeiffer`). The adapters, every layer
  norm and the head train; everything else in the backbone is frozen.

  Args:
    model: a built task model or backbone.
    size: the adapters' bottleneck width, >= 1.
    placement: `houlsby` or `pfeiffer`.
    activation: `relu`, `gelu` or `swish`.
  """
  if adapters_enabled(model):
    raise ValueError(f"adapters are already enabled on {model.name!r}; enable them once per "
                     "model")
  backbone = backbone_of(model)
  for block in backbone.blocks:   # the first block refuses bad arguments before any change
    block.add_adapters(size, placement=placement, activation=activation)
  adapters = [adapter for block in backbone.blocks
              for adapter in (block.attention_adapter, block.feed_forward_adapter)
              if adapter is not None]
  trained = {id(v) for layer in adapters + norm_layers(backbone) for v in layer.weights}
  for variable in backbone.weights:
    variable.trainable = id(variable) in trained


def adapter_bottleneck(finetune, hidden_dim: int) -> int:
  """The bottleneck width `config.finetune` asks for on a backbone of width `hidden_dim`."""
  if finetune.adapter_size:
    return finetune.adapter_size
  size = hidden_dim // finetune.adapter_reduction_factor
  if size < 1:
    raise ConfigError(f"config.finetune.adapter_reduction_factor="
                      f"{finetune.adapter_reduction_factor} leaves no bottleneck of a "
                      f"{hidden_dim}-wide model; accepted: 1 to {hidden_dim}, or set "
                      "config.finetune.adapter_size")
  return size


def apply_strategy(model: keras.Model, finetune) -> None:
  """Applies `config.finetune`'s strategy (`full`, `top_layers`, `lora`, `adapters`) to
  `model`."""
  if finetune.strategy == "top_layers":
    freeze_all_but_top(model, finetune.train_top_layers)
  elif finetune.strategy == "lora":
    enable_lora(model, finetune.lora_rank, alpha=finetune.lora_alpha or None)
  elif finetune.strategy == "adapters":
    enable_adapters(model, adapter_bottleneck(finetune, backbone_of(model).hidden_dim),
                    placement=finetune.adapter_placement,
                    activation=finetune.adapter_activation)
  elif finetune.strategy != "full":
    raise ValueError(f"fine-tuning strategy {finetune.strategy!r} is not known; use one of: "
                     f"{', '.join(STRATEGIES)}")
