"""Backbone behaviour in every style: causality, padding, KV cache, precision, XLA."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.testing import STYLES, tiny_config
from tfllm import models

T = 10


def _tokens(seed=0, batch=2, length=T):
  return np.random.default_rng(seed).integers(1, 97, size=(batch, length)).astype("int32")


def _backbone(style, **overrides):
  return models.build(tiny_config(style, task="causal_lm" if style != "bert" else "masked_lm",
                                  **overrides)).backbone


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_changing_later_tokens_never_changes_earlier_outputs(style):
  backbone = _backbone(style)
  tokens = _tokens()
  changed = tokens.copy()
  changed[:, 6:] = _tokens(seed=1)[:, 6:]
  a, b = np.asarray(backbone(tokens)), np.asarray(backbone(changed))
  np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)
  assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-3  # and later positions do see the change


def test_bidirectional_encoder_sees_later_tokens():
  backbone = _backbone("bert")
  tokens = _tokens()
  changed = tokens.copy()
  changed[:, -1] = (changed[:, -1] + 1) % 97
  a, b = np.asarray(backbone(tokens)), np.asarray(backbone(changed))
  assert np.abs(a[:, 0] - b[:, 0]).max() > 1e-4


@pytest.mark.parametrize("style", STYLES)
def test_padded_positions_never_change_real_positions(style):
  backbone = _backbone(style)
  tokens = _tokens()
  mask = np.ones_like(tokens, bool)
  mask[:, 7:] = False
  other = tokens.copy()
  other[:, 7:] = _tokens(seed=2)[:, 7:]
  a = np.asarray(backbone({"token_ids": tokens, "padding_mask": mask}))
  b = np.asarray(backbone({"token_ids": other, "padding_mask": mask}))
  np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-6)


@pytest.mark.parametrize("style,overrides", [
    ("gpt2", {}), ("llama", {}), ("gpt2", {"position_embedding": "sinusoidal"}),
    ("llama", {"num_kv_heads": 1}),
])
def test_greedy_decoding_with_kv_cache_matches_full_forward(style, overrides):
  model = models.build(tiny_config(style, **overrides))
  prompt = _tokens(batch=2, length=3)
  max_length = 12
  cache = model.backbone.init_cache(2, max_length)
  logits, _, cache = model.call_with_cache(prompt, cache, 0)
  np.testing.assert_allclose(logits, model(prompt), atol=1e-5)
  sequence = prompt
  for index in range(3, max_length):
    next_token = np.argmax(np.asarray(logits)[:, -1], axis=-1).astype("int32")[:, None]
    sequence = np.concatenate([sequence, next_token], axis=1)
    logits, _, cache = model.call_with_cache(next_token, cache, index)
    full = np.asarray(model(sequence))[:, -1:]
    np.testing.assert_allclose(logits, full, atol=1e-5)


def test_cache_with_left_padding_matches_unpadded_prompt():
  model = models.build(tiny_config("gpt2", position_embedding="none"))
  prompt = _tokens(batch=1, length=4)
  padded = np.concatenate([np.zeros((1, 2), "int32"), prompt], axis=1)
  mask = np.ones((1, 8), bool)
  mask[:, :2] = False
  cache = model.backbone.init_cache(1, 8)
  logits, _, _ = model.call_with_cache(padded, cache, 0, padding_mask=mask)
  np.testing.assert_allclose(np.asarray(logits)[:, -1], np.asarray(model(prompt))[:, -1],
                             atol=1e-5)


def test_encoder_refuses_a_cache():
  backbone = _backbone("bert")
  with pytest.raises(ValueError, match="causal"):
    backbone.call_with_cache(_tokens(), backbone.init_cache(2, 16), 0)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("style", STYLES)
def test_mixed_precision_variables_float32_logits_float32(style, policy):
  keras.mixed_precision.set_global_policy(policy)
  task = "masked_lm" if style == "bert" else "causal_lm"
  model = models.build(tiny_config(style, task=task))
  features = {"token_ids": _tokens(), "padding_mask": np.ones((2, T), bool),
              "mask_positions": np.array([[1, 3], [2, 5]], "int32")}
  logits = model(features)
  assert logits.dtype == tf.float32
  assert model.backbone(features).dtype == keras.mixed_precision.global_policy().compute_dtype
  assert all(v.dtype == tf.float32 for v in model.weights)
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("style", STYLES)
def test_forward_compiles_with_xla(style):
  task = "masked_lm" if style == "bert" else "causal_lm"
  model = models.build(tiny_config(style, task=task))
  features = {"token_ids": tf.constant(_tokens()), "padding_mask": tf.ones((2, T), tf.bool),
              "mask_positions": tf.constant([[1, 3], [2, 5]])}
  compiled = tf.function(lambda f: model(f), jit_compile=True)
  np.testing.assert_allclose(compiled(features), model(features), atol=1e-5)
