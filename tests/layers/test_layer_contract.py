"""The contract every tfllm layer keeps: shapes, config round trip, `.keras` save/load,
XLA compilation, and mixed precision (float32 variables, half-precision compute)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfllm import layers

BATCH, SEQ, HIDDEN = 2, 6, 16


def _float_inputs():
  return np.random.default_rng(0).normal(size=(BATCH, SEQ, HIDDEN)).astype("float32")


def _int_inputs():
  return np.random.default_rng(0).integers(0, 50, size=(BATCH, SEQ)).astype("int32")


# name -> (factory, inputs, expected output shape, output dtype under float32)
LAYERS = {
    "token_embedding": (lambda: layers.TokenEmbedding(50, HIDDEN), _int_inputs,
                        (BATCH, SEQ, HIDDEN)),
    "position_embedding": (lambda: layers.PositionEmbedding(32), _float_inputs,
                           (1, SEQ, HIDDEN)),
    "sinusoidal": (lambda: layers.SinusoidalPositionEncoding(), _float_inputs,
                   (1, SEQ, HIDDEN)),
    "rotary": (lambda: layers.RotaryEmbedding(), lambda: _float_inputs().reshape(
        BATCH, SEQ, 4, 4), (BATCH, SEQ, 4, 4)),
    "attention": (lambda: layers.MultiHeadSelfAttention(4, 4, num_kv_heads=2, dropout=0.1),
                  _float_inputs, (BATCH, SEQ, HIDDEN)),
    "feed_forward_gelu": (lambda: layers.FeedForward(32, activation="gelu"), _float_inputs,
                          (BATCH, SEQ, HIDDEN)),
    "feed_forward_swiglu": (lambda: layers.FeedForward(32, activation="swiglu",
                                                       use_bias=False), _float_inputs,
                            (BATCH, SEQ, HIDDEN)),
    "rms_norm": (lambda: layers.RMSNorm(), _float_inputs, (BATCH, SEQ, HIDDEN)),
    "block_post_norm": (lambda: layers.TransformerBlock(4, 32, norm_first=False),
                        _float_inputs, (BATCH, SEQ, HIDDEN)),
    "adapter": (lambda: layers.Adapter(4, activation="gelu"), _float_inputs,
                (BATCH, SEQ, HIDDEN)),
    "block_houlsby_adapters": (lambda: layers.TransformerBlock(4, 32, norm_first=False,
                                                               adapter_size=4),
                               _float_inputs, (BATCH, SEQ, HIDDEN)),
    "block_llama": (lambda: layers.TransformerBlock(
        4, 32, num_kv_heads=1, activation="swiglu", normalization="rms_norm", causal=True,
        use_bias=False, rotary_max_wavelength=10000.0), _float_inputs, (BATCH, SEQ, HIDDEN)),
}


@pytest.fixture(params=sorted(LAYERS))
def layer_case(request):
  factory, make_inputs, shape = LAYERS[request.param]
  return factory, make_inputs(), shape


def test_output_shape_and_dtype(layer_case):
  factory, inputs, shape = layer_case
  outputs = factory()(inputs)
  assert tuple(outputs.shape) == shape
  assert outputs.dtype == tf.float32


def test_config_round_trip(layer_case):
  factory, inputs, _ = layer_case
  layer = factory()
  layer(inputs)
  clone = layer.__class__.from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()
  clone(inputs)
  clone.set_weights(layer.get_weights())
  np.testing.assert_allclose(clone(inputs), layer(inputs), atol=1e-6)


def test_keras_file_save_load_gives_identical_outputs(layer_case, tmp_path):
  factory, inputs, _ = layer_case
  model = keras.Sequential([keras.Input(inputs.shape[1:], dtype=inputs.dtype), factory()])
  expected = model(inputs)
  path = str(tmp_path / "layer.keras")
  model.save(path)
  restored = keras.saving.load_model(path)
  np.testing.assert_array_equal(restored(inputs), expected)


def test_runs_under_xla(layer_case):
  factory, inputs, _ = layer_case
  layer = factory()
  eager = layer(inputs)
  compiled = tf.function(lambda x: layer(x), jit_compile=True)(tf.constant(inputs))
  np.testing.assert_allclose(compiled, eager, atol=1e-5)


@pytest.mark.parametrize("policy,compute", [("mixed_bfloat16", tf.bfloat16),
                                            ("mixed_float16", tf.float16)])
def test_mixed_precision_keeps_float32_variables(layer_case, policy, compute):
  factory, inputs, _ = layer_case
  keras.mixed_precision.set_global_policy(policy)
  layer = factory()
  outputs = layer(inputs)
  assert all(v.dtype == tf.float32 for v in layer.weights)
  assert layer.compute_dtype == compute.name
  assert outputs.dtype == compute
  assert np.all(np.isfinite(np.asarray(tf.cast(outputs, tf.float32))))
