"""Backbones, task models and `build(config)`."""

from tfllm.models.backbone import TransformerBackbone
from tfllm.models.build import build, build_backbone, build_seed, example_features
from tfllm.models.heads import (CausalLMHead, MaskedLMHead, SequenceClassificationHead,
                                TokenClassificationHead, make_head)
from tfllm.models.task_models import (CausalLM, MaskedLM, MultiTaskModel, SequenceClassifier,
                                      TokenClassifier)

__all__ = [
    "CausalLM", "CausalLMHead", "MaskedLM", "MaskedLMHead", "MultiTaskModel",
    "SequenceClassificationHead", "SequenceClassifier", "TokenClassificationHead",
    "TokenClassifier", "TransformerBackbone", "build", "build_backbone", "build_seed",
    "example_features", "make_head",
]
