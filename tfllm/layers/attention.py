"""Multi-head self-attention with a fused QKV projection, grouped KV heads and a KV cache."""

from __future__ import annotations

import math

import keras
from keras import ops

from tfllm.layers.blockwise_attention import blockwise_attention
from tfllm.layers.initializers import clone_initializer
from tfllm.layers.masking import MASKED_SCORE, compute_attention_mask
from tfllm.layers.rotary import RotaryEmbedding


def empty_kv_cache(batch_size, num_kv_heads, max_length, head_dim, dtype):
  """A zero KV cache of one attention layer: `(keys, values)`, each
  `[batch, num_kv_heads, max_length, head_dim]` (`MultiHeadSelfAttention`'s `cache`)."""
  return tuple(ops.zeros((batch_size, num_kv_heads, max_length, head_dim), dtype=dtype)
               for _ in range(2))


@keras.saving.register_keras_serializable(package="tfllm")
class MultiHeadSelfAttention(keras.layers.Layer):
  """Scaled dot-product self-attention, `softmax(Q K^T / sqrt(d)) V`, over several heads.

  Queries, keys and values come from one fused projection (one matmul instead of three).
  With `num_kv_heads < num_heads`, each group of `num_heads // num_kv_heads` query heads
  shares one key/value head (grouped-query attention; 1 = multi-query). Scores and softmax
  are computed in float32 under any mixed-precision policy.

  Args:
    num_heads: number of query heads `H`.
    head_dim: size `d` of each head.
    num_kv_heads: number of key/value heads `K` (divides `H`); None means `H`.
    use_bias: whether the projections have biases.
    dropout: dropout rate on the attention probabilities.
    rotary_max_wavelength: if set, queries and keys are rotated by a `RotaryEmbedding`
      with this base (Llama); else positions must come from the embeddings.
    kernel_initializer: initializer of the projection kernels (each kernel gets a clone,
      `tfllm.layers.initializers.clone_initializer`: the two never start equal).
    attention_block_size: if > 0, attention is computed over key/value blocks of this size
      with an online softmax (`tfllm.layers.blockwise_attention`): memory linear in the
      sequence length instead of quadratic; same outputs. Needs `dropout=0`.

  Call arguments:
    inputs: `[batch, seq, hidden]`.
    padding_mask: `[batch, keys]`, true at real tokens (`keys` = seq, or the cache length
      when a cache is given).
    attention_mask: `[batch, seq, keys]` boolean, true where attending is allowed.
    use_causal_mask: mask keys after each query's position.
    cache: `(keys, values)`, each `[batch, K, max_length, d]` (`empty_kv_cache`): keys and
      values of earlier positions, or None. Heads come before positions so that decoding
      attends over the cache as it is and writes only the new positions (no copy of the
      cache a step: docs/benchmarks.md, "Generation").
    cache_update_index: position (scalar int) at which `inputs` are written into the cache.
    training: enables dropout.

  Returns:
    `[batch, seq, hidden]`, and with a cache also the updated `(keys, values)`.

  Example:

  ```python
  import numpy as np
  from tfllm.layers import MultiHeadSelfAttention, empty_kv_cache

  layer = MultiHeadSelfAttention(num_heads=4, head_dim=8, num_kv_heads=2)
  inputs = np.random.default_rng(0).normal(size=(2, 5, 32)).astype("float32")
  padding = np.array([[True] * 5, [True] * 3 + [False] * 2])
  outputs = layer(inputs, padding_mask=padding, use_causal_mask=True)
  assert outputs.shape == (2, 5, 32)

  # Incremental decoding: write the 5 positions into a cache of 8, then attend from there.
  cache = empty_kv_cache(2, num_kv_heads=2, max_length=8, head_dim=8, dtype="float32")
  outputs, (keys, values) = layer(inputs, cache=cache, cache_update_index=0,
                                  use_causal_mask=True)
  assert keys.shape == (2, 2, 8, 8)
  ```
  """

  # The output projection's bias; a tensor-parallel shard (`tfllm.layers.tensor_parallel`)
  # whose partial outputs are summed leaves it out on all shards but one.
  has_output_bias = True

  def __init__(self, num_heads, head_dim, num_kv_heads=None, use_bias=True, dropout=0.0,
               rotary_max_wavelength=None, kernel_initializer="glorot_uniform",
               attention_block_size=0, **kwargs):
    super().__init__(**kwargs)
    self.num_heads = int(num_heads)
    self.head_dim = int(head_dim)
    self.num_kv_heads = int(num_kv_heads or num_heads)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}")
    self.use_bias = bool(use_bias)
    self.dropout = float(dropout)
    self.rotary_max_wavelength = rotary_max_wavelength
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.attention_block_size = int(attention_block_size)
    if self.attention_block_size < 0:
      raise ValueError(f"attention_block_size={self.attention_block_size} must be >= 0 "
                       "(0 = standard attention)")
    if self.attention_block_size and self.dropout:
      raise ValueError(f"attention_block_size={self.attention_block_size} (block-wise "
                       f"attention) does not support attention dropout={self.dropout}; use 0")

  def build(self, input_shape):
    hidden = input_shape[-1]
    qkv_width = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    self.qkv = keras.layers.Dense(qkv_width, use_bias=self.use_bias, name="qkv",
                                  kernel_initializer=clone_initializer(self.kernel_initializer),
                                  dtype=self.dtype_policy)
    self.qkv.build(input_shape)
    self.output_projection = keras.layers.Dense(
        hidden, use_bias=self.use_bias and self.has_output_bias, name="output",
        kernel_initializer=clone_initializer(self.kernel_initializer), dtype=self.dtype_policy)
    self.output_projection.build((*input_shape[:-1], self.num_heads * self.head_dim))
    self.rotary = None
    if self.rotary_max_wavelength:
      self.rotary = RotaryEmbedding(self.rotary_max_wavelength, dtype=self.dtype_policy,
                                    name="rotary")
    self.probability_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
    self.built = True

  def call(self, inputs, padding_mask=None, attention_mask=None, use_causal_mask=False,
           cache=None, cache_update_index=None, training=None):
    batch, seq = ops.shape(inputs)[0], ops.shape(inputs)[1]
    q_width = self.num_heads * self.head_dim
    kv_width = self.num_kv_heads * self.head_dim
    qkv = self.qkv(inputs)
    query = ops.reshape(qkv[..., :q_width], (batch, seq, self.num_heads, self.head_dim))
    key = ops.reshape(qkv[..., q_width:q_width + kv_width],
                      (batch, seq, self.num_kv_heads, self.head_dim))
    value = ops.reshape(qkv[..., q_width + kv_width:],
                        (batch, seq, self.num_kv_heads, self.head_dim))

    start = 0 if cache_update_index is None else cache_update_index
    if self.rotary is not None:
      query = self.rotary(query, start_index=start)
      key = self.rotary(key, start_index=start)

    heads_major = cache is not None
    if cache is not None:
      if cache_update_index is None:
        raise ValueError("a cache needs cache_update_index, the position of `inputs`")
      cached_keys, cached_values = cache
      # Only the new positions move; the cache is updated in place inside a compiled loop.
      key = ops.slice_update(cached_keys, (0, 0, start, 0),
                             ops.transpose(ops.cast(key, cached_keys.dtype), (0, 2, 1, 3)))
      value = ops.slice_update(cached_values, (0, 0, start, 0),
                               ops.transpose(ops.cast(value, cached_values.dtype), (0, 2, 1, 3)))
      cache = (key, value)

    mask_parts = dict(query_start=start, padding_mask=padding_mask,
                      attention_mask=attention_mask, causal=use_causal_mask)
    if self.attention_block_size:
      if heads_major:
        key, value = (ops.transpose(t, (0, 2, 1, 3)) for t in (key, value))
      # Each key block builds its own mask: the whole [q, k] mask never exists either.
      output = blockwise_attention(query, key, value, self.attention_block_size,
                                           **mask_parts)
    else:
      keys_length = ops.shape(key)[2 if heads_major else 1]
      output = self._attend(query, key, value,
                            compute_attention_mask(seq, keys_length, **mask_parts),
                            training, heads_major)
    output = self.output_projection(ops.reshape(output, (batch, seq, q_width)))
    return output if cache is None else (output, cache)

  def _attend(self, query, key, value, mask, training, heads_major=False):
    """Attention of `[b, q, H, d]` queries over `[b, k, K, d]` keys/values (`[b, K, k, d]`
    when `heads_major`, the cache's layout) -> `[b, q, H, d]`."""
    batch, q_len = ops.shape(query)[0], ops.shape(query)[1]
    groups = self.num_heads // self.num_kv_heads
    # Grouping queries as [b, q, K, G, d] lets G query heads share a KV head without
    # materializing repeated keys and values.
    query = ops.reshape(query, (batch, q_len, self.num_kv_heads, groups, self.head_dim))
    query = query * ops.cast(1.0 / math.sqrt(self.head_dim), query.dtype)
    keys = "bksd" if heads_major else "bskd"
    scores = ops.einsum(f"bqkgd,{keys}->bkgqs", query, ops.cast(key, query.dtype))
    scores = ops.cast(scores, "float32")
    if mask is not None:
      scores = ops.where(mask[:, None, None, :, :], scores, MASKED_SCORE)
    probabilities = ops.cast(ops.softmax(scores, axis=-1), self.compute_dtype)
    probabilities = self.probability_dropout(probabilities, training=training)
    output = ops.einsum(f"bkgqs,{keys}->bqkgd", probabilities,
                        ops.cast(value, self.compute_dtype))
    return ops.reshape(output, (batch, q_len, self.num_heads, self.head_dim))

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(num_heads=self.num_heads, head_dim=self.head_dim,
                  num_kv_heads=self.num_kv_heads, use_bias=self.use_bias, dropout=self.dropout,
                  rotary_max_wavelength=self.rotary_max_wavelength,
                  kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                  attention_block_size=self.attention_block_size)
    return config
