"""Block-wise (online-softmax) attention equals standard attention, values and gradients."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.testing import tiny_config
from tfllm import config as config_lib
from tfllm.layers.attention import MultiHeadSelfAttention, compute_attention_mask
from tfllm.layers.blockwise_attention import blockwise_attention
from tfllm.models import build

BATCH, LENGTH, HEADS, HEAD_DIM = 2, 37, 4, 8


def _inputs(num_kv_heads, seed=0):
  rng = np.random.default_rng(seed)
  query = rng.normal(size=(BATCH, LENGTH, HEADS, HEAD_DIM)).astype("float32")
  key = rng.normal(size=(BATCH, LENGTH, num_kv_heads, HEAD_DIM)).astype("float32")
  value = rng.normal(size=(BATCH, LENGTH, num_kv_heads, HEAD_DIM)).astype("float32")
  return [tf.constant(x) for x in (query, key, value)]


def _padding_mask():
  # Row 0 left-padded (with causal masking its first queries see no real key at all),
  # row 1 right-padded.
  mask = np.ones((BATCH, LENGTH), bool)
  mask[0, :5] = False
  mask[1, 30:] = False
  return mask


def _value_and_grads(fn, tensors, jit_compile):
  compiled = tf.function(fn, jit_compile=jit_compile)
  with tf.GradientTape() as tape:
    tape.watch(tensors)
    output = compiled(*tensors)
    # A non-linear loss so that every output element gets a different upstream gradient.
    loss = tf.reduce_sum(output * tf.sin(output))
  return output.numpy(), [g.numpy() for g in tape.gradient(loss, tensors)]


@pytest.mark.parametrize("causal,padded,num_kv_heads", [
    (True, True, 2), (True, False, 4), (False, True, 4)])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_matches_standard_attention_and_its_gradients(causal, padded, num_kv_heads,
                                                       jit_compile):
  tensors = _inputs(num_kv_heads)
  padding_mask = _padding_mask() if padded else None
  layer = MultiHeadSelfAttention(HEADS, HEAD_DIM, num_kv_heads=num_kv_heads)
  layer.build((None, None, HEADS * HEAD_DIM))

  def standard(query, key, value):
    mask = compute_attention_mask(LENGTH, LENGTH, padding_mask=padding_mask, causal=causal)
    return layer._attend(query, key, value, mask, training=False)

  def blockwise(query, key, value):
    # 8 does not divide 37: the last block is padded and must not change the result.
    return blockwise_attention(query, key, value, 8, causal=causal, padding_mask=padding_mask)

  expected, expected_grads = _value_and_grads(standard, tensors, jit_compile)
  actual, actual_grads = _value_and_grads(blockwise, tensors, jit_compile)
  np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)
  for name, got, want in zip(("query", "key", "value"), actual_grads, expected_grads):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f"d/d{name}")


def test_decoding_against_a_cache_with_explicit_mask_matches():
  """One query at position 9 over a 16-key cache, an explicit attention mask on top."""
  rng = np.random.default_rng(1)
  query = tf.constant(rng.normal(size=(BATCH, 1, HEADS, HEAD_DIM)), tf.float32)
  key = tf.constant(rng.normal(size=(BATCH, 16, 2, HEAD_DIM)), tf.float32)
  value = tf.constant(rng.normal(size=(BATCH, 16, 2, HEAD_DIM)), tf.float32)
  attention_mask = rng.random((BATCH, 1, 16)) > 0.3
  attention_mask[:, :, 0] = True
  layer = MultiHeadSelfAttention(HEADS, HEAD_DIM, num_kv_heads=2)
  layer.build((None, None, HEADS * HEAD_DIM))
  parts = dict(query_start=9, attention_mask=attention_mask, causal=True)
  expected = layer._attend(query, key, value, compute_attention_mask(1, 16, **parts), False)
  actual = blockwise_attention(query, key, value, 4, **parts)
  np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)
  # The KV cache's heads-major layout attends to the same result.
  heads_major = [tf.transpose(t, (0, 2, 1, 3)) for t in (key, value)]
  np.testing.assert_allclose(
      layer._attend(query, *heads_major, compute_attention_mask(1, 16, **parts), False,
                    heads_major=True), expected, atol=1e-6, rtol=0)


def test_rejects_a_non_positive_block_size():
  query, key, value = _inputs(4)
  with pytest.raises(ValueError, match="block_size=0"):
    blockwise_attention(query, key, value, 0)


def test_layer_rejects_attention_dropout_with_blocks():
  with pytest.raises(ValueError, match="dropout"):
    MultiHeadSelfAttention(HEADS, HEAD_DIM, dropout=0.1, attention_block_size=16)


def _causal_lm_config(**model):
  return tiny_config("gpt2", vocab_size=50, max_sequence_length=24, **model)


def test_model_option_gives_the_same_logits_and_serializes():
  standard = build(_causal_lm_config())
  blockwise = build(_causal_lm_config(attention_block_size=8))
  blockwise.set_weights(standard.get_weights())
  rng = np.random.default_rng(2)
  features = {"token_ids": rng.integers(0, 50, size=(2, 20)).astype("int32"),
              "padding_mask": np.arange(20)[None, :] < np.array([[20], [13]])}
  np.testing.assert_allclose(blockwise(features), standard(features), atol=1e-5, rtol=0)
  block_config = blockwise.backbone.blocks[0].attention.get_config()
  assert block_config["attention_block_size"] == 8
  restored = keras.saving.deserialize_keras_object(
      keras.saving.serialize_keras_object(blockwise.backbone))
  assert restored.blocks[1].attention_block_size == 8


def test_config_rejects_a_negative_block_size():
  with pytest.raises(config_lib.ConfigError, match="attention_block_size"):
    config_lib.validate(_causal_lm_config(attention_block_size=-1))
