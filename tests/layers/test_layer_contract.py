"""The contract every tfllm layer keeps: shapes, config round trip, `.keras` save/load,
XLA compilation, and mixed precision (float32 variables, half-precision compute)."""

import numpy as np
import pytest

from tests.testing import run_layer_test
from tfllm import layers

BATCH, SEQ, HIDDEN = 2, 6, 16


def _float_inputs():
  return np.random.default_rng(0).normal(size=(BATCH, SEQ, HIDDEN)).astype("float32")


def _int_inputs():
  return np.random.default_rng(0).integers(0, 50, size=(BATCH, SEQ)).astype("int32")


# name -> (class, constructor arguments, inputs, output shape, trainable weights)
LAYERS = {
    "token_embedding": (layers.TokenEmbedding, dict(input_dim=50, output_dim=HIDDEN),
                        _int_inputs, (BATCH, SEQ, HIDDEN), 1),
    "position_embedding": (layers.PositionEmbedding, dict(max_sequence_length=32), _float_inputs,
                           (1, SEQ, HIDDEN), 1),
    "sinusoidal": (layers.SinusoidalPositionEncoding, {}, _float_inputs, (1, SEQ, HIDDEN), 0),
    "rotary": (layers.RotaryEmbedding, {}, lambda: _float_inputs().reshape(BATCH, SEQ, 4, 4),
               (BATCH, SEQ, 4, 4), 0),
    # qkv and output projections, kernel and bias each.
    "attention": (layers.MultiHeadSelfAttention, dict(num_heads=4, head_dim=4, num_kv_heads=2,
                                                      dropout=0.1),
                  _float_inputs, (BATCH, SEQ, HIDDEN), 4),
    "feed_forward_gelu": (layers.FeedForward, dict(intermediate_dim=32, activation="gelu"),
                          _float_inputs, (BATCH, SEQ, HIDDEN), 4),
    # gate, up and down kernels, no biases.
    "feed_forward_swiglu": (layers.FeedForward, dict(intermediate_dim=32, activation="swiglu",
                                                     use_bias=False),
                            _float_inputs, (BATCH, SEQ, HIDDEN), 3),
    "rms_norm": (layers.RMSNorm, {}, _float_inputs, (BATCH, SEQ, HIDDEN), 1),
    # attention 4 + feed-forward 4 + two LayerNorms (scale, bias) 4.
    "block_post_norm": (layers.TransformerBlock, dict(num_heads=4, intermediate_dim=32,
                                                      norm_first=False),
                        _float_inputs, (BATCH, SEQ, HIDDEN), 12),
    "adapter": (layers.Adapter, dict(bottleneck_dim=4, activation="gelu"), _float_inputs,
                (BATCH, SEQ, HIDDEN), 4),
    # The block's 12 and two adapters of 4.
    "block_houlsby_adapters": (layers.TransformerBlock, dict(num_heads=4, intermediate_dim=32,
                                                             norm_first=False, adapter_size=4),
                               _float_inputs, (BATCH, SEQ, HIDDEN), 20),
    # attention 2 + SwiGLU 3 + two RMSNorms 2.
    "block_llama": (layers.TransformerBlock, dict(
        num_heads=4, intermediate_dim=32, num_kv_heads=1, activation="swiglu",
        normalization="rms_norm", causal=True, use_bias=False, rotary_max_wavelength=10000.0),
        _float_inputs, (BATCH, SEQ, HIDDEN), 7),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_contract(name):
  """Shape, float32 output, weight counts, config and `.keras` round trips, XLA, and
  float32 variables with half-precision outputs under both mixed policies."""
  layer_cls, init_kwargs, make_inputs, shape, trainable = LAYERS[name]
  run_layer_test(layer_cls, init_kwargs, make_inputs(), shape,
                 expected_num_trainable_weights=trainable)
