"""One Transformer layer: residual self-attention and feed-forward, pre- or post-norm."""

from __future__ import annotations

import keras

from tfllm.layers.adapter import ADAPTER_ACTIVATIONS, ADAPTER_PLACEMENTS, Adapter
from tfllm.layers.attention import MultiHeadSelfAttention
from tfllm.layers.feed_forward import FeedForward
from tfllm.layers.initializers import clone_initializer
from tfllm.layers.normalization import make_norm


@keras.saving.register_keras_serializable(package="tfllm")
class TransformerBlock(keras.layers.Layer):
  """Self-attention and feed-forward sublayers, each inside a residual connection.

  Pre-norm (GPT-2, Llama): `x + attn(norm(x))`, then `x + ffn(norm(x))`.
  Post-norm (BERT, the original Transformer): `norm(x + attn(x))`, then `norm(x + ffn(x))`.
  An encoder block attends bidirectionally; a decoder block (`causal=True`) attends only to
  earlier positions and can decode incrementally with a KV cache.

  Args:
    num_heads: attention heads.
    intermediate_dim: feed-forward width.
    head_dim: size of each head; None means `hidden // num_heads`.
    num_kv_heads: key/value heads for grouped-query attention; None means `num_heads`.
    activation: feed-forward activation (`gelu`, `gelu_approximate`, `relu`, `swiglu`).
    normalization: `layer_norm` or `rms_norm`.
    norm_epsilon: epsilon of the norms.
    norm_first: pre-norm if true, post-norm if false.
    causal: decoder (causal) or encoder (bidirectional) attention.
    use_bias: biases in the projections.
    dropout: dropout on each sublayer's output before the residual add.
    attention_dropout: dropout on the attention probabilities.
    rotary_max_wavelength: rotary embedding base inside attention, or None.
    kernel_initializer: initializer of every kernel (cloned for each: no two start equal).
    attention_block_size: > 0 computes attention block-wise (see `MultiHeadSelfAttention`).
    adapter_size: > 0 adds bottleneck `Adapter`s of this width (see `add_adapters`); 0 (the
      default) creates none, and the block's weights and `get_config` are those of a block
      without adapters.
    adapter_placement: `houlsby` (an adapter after attention and one after the
      feed-forward) or `pfeiffer` (after the feed-forward only); each sits on the
      sublayer's output, after its dropout and before the residual add.
    adapter_activation: the adapters' activation (`relu`, `gelu`, `swish`).

  Call arguments:
    inputs: `[batch, seq, hidden]`.
    padding_mask: `[batch, keys]`, true at real tokens.
    cache: `(keys, values)`, each `[batch, num_kv_heads, max_length, head_dim]`
      (`tfllm.layers.empty_kv_cache`), or None (decoder only).
    cache_update_index: position of `inputs` in the cache.
    training: enables dropout.

  Returns:
    `[batch, seq, hidden]`, and with a cache also the updated cache.

  Example:

  ```python
  import numpy as np
  from tfllm.layers import TransformerBlock

  block = TransformerBlock(num_heads=4, intermediate_dim=64, causal=True)
  inputs = np.zeros((2, 5, 32), "float32")
  padding = np.array([[True] * 5, [True] * 3 + [False] * 2])
  assert block(inputs, padding_mask=padding).shape == (2, 5, 32)
  ```
  """

  def __init__(self, num_heads, intermediate_dim, head_dim=None, num_kv_heads=None,
               activation="gelu", normalization="layer_norm", norm_epsilon=1e-5,
               norm_first=True, causal=False, use_bias=True, dropout=0.0,
               attention_dropout=0.0, rotary_max_wavelength=None,
               kernel_initializer="glorot_uniform", attention_block_size=0, adapter_size=0,
               adapter_placement="houlsby", adapter_activation="relu", **kwargs):
    super().__init__(**kwargs)
    self.num_heads = int(num_heads)
    self.intermediate_dim = int(intermediate_dim)
    self.head_dim = head_dim
    self.num_kv_heads = num_kv_heads
    self.activation = activation
    self.normalization = normalization
    self.norm_epsilon = float(norm_epsilon)
    self.norm_first = bool(norm_first)
    self.causal = bool(causal)
    self.use_bias = bool(use_bias)
    self.dropout = float(dropout)
    self.attention_dropout = float(attention_dropout)
    self.rotary_max_wavelength = rotary_max_wavelength
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.attention_block_size = int(attention_block_size)
    self.adapter_size = 0
    self.adapter_placement = adapter_placement
    self.adapter_activation = adapter_activation
    self.attention_adapter = None
    self.feed_forward_adapter = None
    if adapter_size:
      self._set_adapter_settings(adapter_size, adapter_placement, adapter_activation)

  def _set_adapter_settings(self, size, placement, activation):
    if isinstance(size, bool) or int(size) != size or size < 1:
      raise ValueError(f"adapter_size={size!r} is not accepted; use an integer >= 1")
    if placement not in ADAPTER_PLACEMENTS:
      raise ValueError(f"adapter_placement={placement!r} is not known; use one of: "
                       f"{', '.join(ADAPTER_PLACEMENTS)}")
    if activation not in ADAPTER_ACTIVATIONS:
      raise ValueError(f"adapter_activation={activation!r} is not known; use one of: "
                       f"{', '.join(ADAPTER_ACTIVATIONS)}")
    self.adapter_size = int(size)
    self.adapter_placement = placement
    self.adapter_activation = activation

  def _build_adapters(self, input_shape):
    def adapter(name):
      layer = Adapter(self.adapter_size, activation=self.adapter_activation,
                      kernel_initializer=clone_initializer(self.kernel_initializer),
                      dtype=self.dtype_policy, name=name)
      layer.build(input_shape)
      return layer
    if self.adapter_placement == "houlsby":
      self.attention_adapter = adapter("attention_adapter")
    self.feed_forward_adapter = adapter("feed_forward_adapter")

  def add_adapters(self, size, placement="houlsby", activation="relu"):
    """Adds bottleneck adapters to this block, built or not (a block of a pretrained model).

    Each adapter starts as the identity (`Adapter`), so the block's output is unchanged
    until they train. Their weights come after the block's own in `weights`.

    Args:
      size: the adapters' bottleneck width, >= 1.
      placement: `houlsby` or `pfeiffer` (see the class docstring).
      activation: `relu`, `gelu` or `swish`.

    Raises:
      ValueError: a bad argument, or the block already has adapters.
    """
    if self.adapter_size:
      raise ValueError(f"{self.name!r} already has adapters (size {self.adapter_size}); "
                       "add them once per block")
    self._set_adapter_settings(size, placement, activation)
    if self.built:
      # Keras 3 locks a built layer's state (docs/stack.md); adapters join a pretrained
      # block the way Keras' own `Dense.enable_lora` adds its weights: unlock, add, lock.
      self._tracker.unlock()  # pylint: disable=protected-access
      try:
        self._build_adapters(self._adapter_input_shape)
      finally:
        self._tracker.lock()  # pylint: disable=protected-access

  def build(self, input_shape):
    hidden = input_shape[-1]
    self._adapter_input_shape = (None, None, hidden)
    head_dim = self.head_dim or hidden // self.num_heads
    self.attention = self.make_attention(
        self.num_heads, head_dim, num_kv_heads=self.num_kv_heads, use_bias=self.use_bias,
        dropout=self.attention_dropout, rotary_max_wavelength=self.rotary_max_wavelength,
        kernel_initializer=clone_initializer(self.kernel_initializer),
        attention_block_size=self.attention_block_size, dtype=self.dtype_policy,
        name="attention")
    self.attention.build(input_shape)
    self.attention_norm = make_norm(self.normalization, self.norm_epsilon, "attention_norm")
    self.attention_norm.build(input_shape)
    self.feed_forward = self.make_feed_forward(
        self.intermediate_dim, activation=self.activation, use_bias=self.use_bias,
        kernel_initializer=clone_initializer(self.kernel_initializer), dtype=self.dtype_policy,
        name="feed_forward")
    self.feed_forward.build(input_shape)
    self.feed_forward_norm = make_norm(self.normalization, self.norm_epsilon,
                                       "feed_forward_norm")
    self.feed_forward_norm.build(input_shape)
    self.attention_output_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
    self.feed_forward_output_dropout = keras.layers.Dropout(self.dropout,
                                                            dtype=self.dtype_policy)
    if self.adapter_size:
      self._build_adapters(self._adapter_input_shape)
    self.built = True

  def make_attention(self, *args, **kwargs):
    """The attention sublayer (a tensor-parallel block returns a head-sharded one)."""
    return MultiHeadSelfAttention(*args, **kwargs)

  def make_feed_forward(self, *args, **kwargs):
    """The feed-forward sublayer (a tensor-parallel block returns a hidden-sharded one)."""
    return FeedForward(*args, **kwargs)

  def call(self, inputs, padding_mask=None, cache=None, cache_update_index=None,
           training=None):
    if cache is not None and not self.causal:
      raise ValueError("a KV cache is only meaningful for a causal (decoder) block")
    x = inputs
    attention_input = self.attention_norm(x) if self.norm_first else x
    attended = self.attention(attention_input, padding_mask=padding_mask,
                              use_causal_mask=self.causal, cache=cache,
                              cache_update_index=cache_update_index, training=training)
    if cache is not None:
      attended, cache = attended
    attended = self.attention_output_dropout(attended, training=training)
    if self.attention_adapter is not None:
      attended = self.attention_adapter(attended)
    x = x + attended
    if not self.norm_first:
      x = self.attention_norm(x)

    feed_forward_input = self.feed_forward_norm(x) if self.norm_first else x
    transformed = self.feed_forward_output_dropout(
        self.feed_forward(feed_forward_input, training=training), training=training)
    if self.feed_forward_adapter is not None:
      transformed = self.feed_forward_adapter(transformed)
    x = x + transformed
    if not self.norm_first:
      x = self.feed_forward_norm(x)
    return x if cache is None else (x, cache)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(
        num_heads=self.num_heads, intermediate_dim=self.intermediate_dim,
        head_dim=self.head_dim, num_kv_heads=self.num_kv_heads, activation=self.activation,
        normalization=self.normalization, norm_epsilon=self.norm_epsilon,
        norm_first=self.norm_first, causal=self.causal, use_bias=self.use_bias,
        dropout=self.dropout, attention_dropout=self.attention_dropout,
        rotary_max_wavelength=self.rotary_max_wavelength,
        kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        attention_block_size=self.attention_block_size)
    if self.adapter_size:
      config.update(adapter_size=self.adapter_size, adapter_placement=self.adapter_placement,
                    adapter_activation=self.adapter_activation)
    return config
