"""Numerics of tfllm layers against independent references with copied weights (1e-5)."""

import keras
import keras_hub
import numpy as np
import pytest

from tests.layers.reference_weights import copy_keras_hub_block, copy_mha_into_attention
from tfllm import layers

B, T, D, H = 2, 7, 32, 4
ATOL = 1e-5


def _x(seed=0, shape=(B, T, D)):
  return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _padding_mask():
  mask = np.ones((B, T), bool)
  mask[1, 4:] = False
  return mask


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_keras_multi_head_attention(causal):
  x, mask = _x(), _padding_mask()
  reference = keras.layers.MultiHeadAttention(H, D // H)
  reference(x, x)
  attention = layers.MultiHeadSelfAttention(H, D // H)
  attention(x)
  copy_mha_into_attention(reference, attention)
  expected = reference(x, x, attention_mask=mask[:, None, :] & np.ones((B, T, 1), bool),
                       use_causal_mask=causal)
  actual = attention(x, padding_mask=mask, use_causal_mask=causal)
  # Padded queries are not compared: their rows are masked everywhere (both layers output
  # something meaningless there, and nothing downstream reads it).
  np.testing.assert_allclose(np.asarray(actual)[mask], np.asarray(expected)[mask], atol=ATOL)


def test_grouped_kv_heads_equal_full_heads_with_repeated_keys_and_values():
  x = _x()
  head_dim, kv_heads = D // H, 2
  grouped = layers.MultiHeadSelfAttention(H, head_dim, num_kv_heads=kv_heads)
  grouped(x)
  full = layers.MultiHeadSelfAttention(H, head_dim)
  full(x)
  kernel, bias = grouped.qkv.get_weights()
  q_width, kv_width = H * head_dim, kv_heads * head_dim

  def repeat_heads(columns):  # [..., K * d] -> [..., H * d]: query head h reads KV head h // G
    shaped = columns.reshape(*columns.shape[:-1], kv_heads, head_dim)
    return np.repeat(shaped, H // kv_heads, axis=-2).reshape(*columns.shape[:-1], q_width)

  def expand(w):
    q, k, v = w[..., :q_width], w[..., q_width:q_width + kv_width], w[..., q_width + kv_width:]
    return np.concatenate([q, repeat_heads(k), repeat_heads(v)], axis=-1)

  full.qkv.set_weights([expand(kernel), expand(bias)])
  full.output_projection.set_weights(grouped.output_projection.get_weights())
  np.testing.assert_allclose(grouped(x, use_causal_mask=True), full(x, use_causal_mask=True),
                             atol=ATOL)


def test_post_norm_block_matches_keras_hub_transformer_encoder():
  x, mask = _x(), _padding_mask()
  reference = keras_hub.layers.TransformerEncoder(64, H, activation="gelu",
                                                  layer_norm_epsilon=1e-5)
  reference(x)
  block = layers.TransformerBlock(H, 64, activation="gelu", norm_first=False, causal=False)
  block(x)
  copy_keras_hub_block(reference, block)
  expected = reference(x, padding_mask=mask)
  actual = block(x, padding_mask=mask)
  np.testing.assert_allclose(np.asarray(actual)[mask], np.asarray(expected)[mask], atol=ATOL)


def test_pre_norm_causal_block_matches_keras_hub_transformer_decoder():
  x = _x()
  reference = keras_hub.layers.TransformerDecoder(64, H, activation="gelu",
                                                  normalize_first=True, layer_norm_epsilon=1e-5)
  reference(x)
  block = layers.TransformerBlock(H, 64, activation="gelu", norm_first=True, causal=True)
  block(x)
  copy_keras_hub_block(reference, block)
  np.testing.assert_allclose(block(x), reference(x), atol=ATOL)


def test_rotary_matches_keras_hub_rotary_embedding():
  x = _x(shape=(B, T, H, 8))
  expected = keras_hub.layers.RotaryEmbedding(max_wavelength=10000)(x, start_index=3)
  np.testing.assert_allclose(layers.RotaryEmbedding(10000.0)(x, start_index=3), expected,
                             atol=ATOL)


def test_rotary_rotates_pairs_by_position_times_frequency():
  x = _x(shape=(1, 3, 1, 4))
  out = np.asarray(layers.RotaryEmbedding(100.0)(x))
  for position in range(3):
    for i, freq in enumerate([1.0, 100.0 ** -0.5]):
      angle = position * freq
      a, b = x[0, position, 0, i], x[0, position, 0, i + 2]
      np.testing.assert_allclose(out[0, position, 0, i], a * np.cos(angle) - b * np.sin(angle),
                                 atol=ATOL)
      np.testing.assert_allclose(out[0, position, 0, i + 2],
                                 b * np.cos(angle) + a * np.sin(angle), atol=ATOL)


def test_sinusoidal_matches_keras_hub_sine_position_encoding_and_the_paper():
  x = _x(shape=(1, 50, D))
  ours = np.asarray(layers.SinusoidalPositionEncoding()(x))[0]
  np.testing.assert_allclose(ours, np.asarray(keras_hub.layers.SinePositionEncoding()(x))[0],
                             atol=ATOL)
  positions, i = np.arange(50)[:, None], np.arange(D // 2)[None, :]
  angles = positions / 10000 ** (2 * i / D)
  np.testing.assert_allclose(ours[:, 0::2], np.sin(angles), atol=ATOL)
  np.testing.assert_allclose(ours[:, 1::2], np.cos(angles), atol=ATOL)


def test_rms_norm_numerics():
  x = _x()
  layer = layers.RMSNorm(epsilon=1e-6)
  layer(x)
  scale = np.random.default_rng(1).normal(size=(D,)).astype("float32")
  layer.set_weights([scale])
  expected = x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + 1e-6) * scale
  np.testing.assert_allclose(layer(x), expected, atol=ATOL)


def test_swiglu_feed_forward_numerics():
  x = _x()
  layer = layers.FeedForward(48, activation="swiglu", use_bias=False)
  layer(x)
  up, gate, down = (layer.up.get_weights()[0], layer.gate.get_weights()[0],
                    layer.down.get_weights()[0])
  g = x @ gate
  expected = ((g / (1 + np.exp(-g))) * (x @ up)) @ down
  np.testing.assert_allclose(layer(x), expected, atol=ATOL)


def test_token_embedding_reverse_is_tied_projection_in_float32():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  embedding = layers.TokenEmbedding(11, D)
  ids = np.array([[1, 2, 3]])
  hidden = embedding(ids)
  logits = embedding(hidden, reverse=True)
  assert logits.dtype == "float32" and tuple(logits.shape) == (1, 3, 11)
  table = np.asarray(embedding.embeddings)
  expected = np.asarray(keras.ops.cast(hidden, "float32")) @ table.T
  np.testing.assert_allclose(logits, expected, rtol=2e-2, atol=2e-2)  # bf16 matmul
