"""Bottleneck adapters: the `Adapter` layer against NumPy, and their placement inside
`TransformerBlock` (identity at the start, Houlsby vs Pfeiffer, nothing changed without)."""

import math

import keras
import numpy as np
import pytest

from tfllm import layers
from tfllm.models import TransformerBackbone

HIDDEN = 16


def _inputs(seed=0, shape=(2, 5, HIDDEN)):
  return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _randomize(layer, seed=3):
  """Every weight of `layer` random (the up-projection starts at zero otherwise)."""
  rng = np.random.default_rng(seed)
  layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                     for w in layer.get_weights()])


def _reference_adapter(x, down_kernel, down_bias, up_kernel, up_bias, activation):
  """x + up(act(down(x))) in NumPy, written from the definition."""
  hidden = x @ down_kernel + down_bias
  if activation == "relu":
    hidden = np.maximum(hidden, 0.0)
  elif activation == "gelu":
    erf = np.vectorize(math.erf)
    hidden = 0.5 * hidden * (1.0 + erf(hidden / np.sqrt(2.0)))
  else:
    hidden = hidden / (1.0 + np.exp(-hidden))
  return x + hidden @ up_kernel + up_bias


@pytest.mark.parametrize("activation", ["relu", "gelu", "swish"])
def test_adapter_matches_numpy(activation):
  adapter = layers.Adapter(3, activation=activation)
  x = _inputs()
  adapter(x)
  _randomize(adapter)
  expected = _reference_adapter(
      x.astype("float64"), *[np.asarray(v, "float64") for v in (
          adapter.down.kernel, adapter.down.bias, adapter.up.kernel, adapter.up.bias)],
      activation)
  np.testing.assert_allclose(np.asarray(adapter(x)), expected, atol=1e-5)


def test_a_new_adapter_is_the_identity_and_counts_its_parameters():
  adapter = layers.Adapter(24)
  x = _inputs(shape=(2, 3, 384))
  np.testing.assert_array_equal(np.asarray(adapter(x)), x)
  # MiniLM-L6's width at bottleneck 24: 384 * 24 + 24 + 24 * 384 + 384.
  assert adapter.count_params() == 18_840
  assert [tuple(w.shape) for w in adapter.weights] == [(384, 24), (24,), (24, 384), (384,)]


@pytest.mark.parametrize("kwargs,message", [
    (dict(bottleneck_dim=0), "bottleneck_dim=0 is not accepted; use an integer >= 1"),
    (dict(bottleneck_dim=2.5), "bottleneck_dim=2.5 is not accepted"),
    (dict(bottleneck_dim=4, activation="tanh"), "activation='tanh' is not known; use one of: "
                                                "relu, gelu, swish"),
])
def test_adapter_arguments_are_checked(kwargs, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    layers.Adapter(**kwargs)


def _block(**kwargs):
  keras.utils.set_random_seed(0)
  block = layers.TransformerBlock(2, 32, norm_first=False, **kwargs)
  block(_inputs())
  return block


@pytest.mark.parametrize("placement,adapters", [("houlsby", 2), ("pfeiffer", 1)])
def test_zero_up_projection_leaves_the_block_output_bit_identical(placement, adapters):
  x = _inputs()
  plain = _block()
  expected = np.asarray(plain(x))
  added = _block()                       # the same weights (same seed), adapters added later
  added.add_adapters(4, placement=placement)
  np.testing.assert_array_equal(np.asarray(added(x)), expected)
  built_with = _block(adapter_size=4, adapter_placement=placement)
  built_with.set_weights(added.get_weights())
  np.testing.assert_array_equal(np.asarray(built_with(x)), expected)
  present = [a for a in (added.attention_adapter, added.feed_forward_adapter) if a is not None]
  assert len(present) == adapters
  assert len(added.weights) == len(plain.weights) + 4 * adapters
  # A nonzero up-projection does change the output: the adapters are in the path.
  for adapter in present:
    _randomize(adapter)
  assert not np.allclose(np.asarray(added(x)), expected, atol=1e-3)


def test_houlsby_adapters_sit_on_each_sublayer_output_before_the_residual_add():
  """Post-norm block: norm(x + A1(attn(x))), then norm(h + A2(ffn(h))), from its parts."""
  block = _block(adapter_size=3)
  for adapter in (block.attention_adapter, block.feed_forward_adapter):
    _randomize(adapter)
  x = _inputs()
  h = block.attention_norm(x + block.attention_adapter(block.attention(x)))
  expected = block.feed_forward_norm(h + block.feed_forward_adapter(block.feed_forward(h)))
  np.testing.assert_allclose(np.asarray(block(x)), np.asarray(expected), atol=1e-6)


def test_a_block_refuses_a_second_set_of_adapters_and_bad_settings():
  block = _block()
  with pytest.raises(ValueError, match="adapter_placement='middle' is not known; use one of: "
                                       "houlsby, pfeiffer"):
    block.add_adapters(4, placement="middle")
  assert block.adapter_size == 0 and block.attention_adapter is None
  block.add_adapters(4)
  with pytest.raises(ValueError, match="already has adapters"):
    block.add_adapters(4)


def test_without_adapters_weights_and_config_are_those_of_before():
  """The weights and config keys a block-without-adapters had before adapters existed
  (printed from the previous commit), so existing checkpoints and configs still load."""
  backbone = TransformerBackbone(vocab_size=50, num_layers=1, hidden_dim=HIDDEN, num_heads=2,
                                 intermediate_dim=32, num_token_types=2, norm_first=False,
                                 causal=False, name="backbone")
  backbone.build()
  block = "backbone/block_0/"
  assert [v.path for v in backbone.weights] == [
      "backbone/token_embedding/embeddings", "backbone/position_embedding/embeddings",
      "backbone/token_type_embedding/embeddings", "backbone/embedding_norm/gamma",
      "backbone/embedding_norm/beta"] + [block + name for name in (
          "attention/qkv/kernel", "attention/qkv/bias", "attention/output/kernel",
          "attention/output/bias", "attention_norm/gamma", "attention_norm/beta",
          "feed_forward/up/kernel", "feed_forward/up/bias", "feed_forward/down/kernel",
          "feed_forward/down/bias", "feed_forward_norm/gamma", "feed_forward_norm/beta")]
  assert sorted(backbone.blocks[0].get_config()) == [
      "activation", "attention_block_size", "attention_dropout", "causal", "dropout", "dtype",
      "head_dim", "intermediate_dim", "kernel_initializer", "name", "norm_epsilon",
      "norm_first", "normalization", "num_heads", "num_kv_heads", "rotary_max_wavelength",
      "trainable", "use_bias"]
