"""Converters from published checkpoints to tfllm backbones."""

from tfllm.models.convert.hf_bert import (CheckpointError, hf_bert_backbone_kwargs,
                                          load_hf_bert, load_hf_bert_weights)

__all__ = ["CheckpointError", "hf_bert_backbone_kwargs", "load_hf_bert", "load_hf_bert_weights"]
