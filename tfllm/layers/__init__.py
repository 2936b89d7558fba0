"""Keras layers of tfllm's Transformers, one concept a module."""

from tfllm.layers.adapter import Adapter
from tfllm.layers.attention import MultiHeadSelfAttention, empty_kv_cache
from tfllm.layers.embeddings import PositionEmbedding, SinusoidalPositionEncoding, TokenEmbedding
from tfllm.layers.feed_forward import FeedForward
from tfllm.layers.initializers import clone_initializer
from tfllm.layers.masking import MASKED_SCORE, compute_attention_mask
from tfllm.layers.normalization import RMSNorm
from tfllm.layers.rotary import RotaryEmbedding
from tfllm.layers.transformer_block import TransformerBlock

__all__ = [
    "Adapter", "FeedForward", "MASKED_SCORE", "MultiHeadSelfAttention", "PositionEmbedding", "RMSNorm", "RotaryEmbedding",
    "SinusoidalPositionEncoding", "TokenEmbedding", "TransformerBlock", "clone_initializer",
    "compute_attention_mask", "empty_kv_cache",
]
