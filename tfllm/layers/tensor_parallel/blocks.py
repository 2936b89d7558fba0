"""Head- and hidden-unit-parallel layers: attention, feed-forward and the Transformer block
built from them (Megatron-LM's column-parallel then row-parallel projections)."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfllm.layers.attention import MultiHeadSelfAttention
from tfllm.layers.feed_forward import FeedForward
from tfllm.layers.initializers import clone_initializer
from tfllm.layers.tensor_parallel.sharding import ShardedLayer, sum_partials
from tfllm.layers.transformer_block import TransformerBlock


@keras.saving.register_keras_serializable(package="tfllm")
class TensorParallelAttention(ShardedLayer):
  """`MultiHeadSelfAttention` with its heads split over `devices` (Megatron-LM layout).

  Shard `i` is a `MultiHeadSelfAttention` of `num_heads / N` query heads and
  `num_kv_heads / N` KV heads on `devices[i]`: its QKV kernel `[hidden, (H + 2K) d / N]`
  holds columns `[Q_i | K_i | V_i]` of the fused kernel (column-parallel, no communication)
  and its output kernel `[H d / N, hidden]` the matching rows (row-parallel); the partial
  outputs are summed (`sum_partials`) and the output bias is added once (shard 0's).
  Grouped KV heads, RoPE and block-wise attention work as in the unsharded layer, because
  every query head and its KV head sit on the same shard.

  Args:
    num_heads: query heads `H` (divisible by `N = len(devices)`).
    head_dim: size `d` of each head.
    devices: the `N` device names of the tensor-parallel group.
    num_kv_heads: KV heads `K` (divisible by `N`); None means `H`.
    use_bias, dropout, rotary_max_wavelength, kernel_initializer, attention_block_size: as
      in `MultiHeadSelfAttention`.

  Call arguments:
    inputs: `[batch, seq, hidden]`.
    padding_mask, attention_mask, use_causal_mask, cache_update_index, training: as in
      `MultiHeadSelfAttention`.
    cache: None, or a list of `N` per-shard caches `(keys, values)`, each
      `[batch, K / N, max_length, d]` (the KV cache sharded with the heads).

  Returns:
    `[batch, seq, hidden]`, and with a cache also the list of updated shard caches.

  Example:

  ```python
  import numpy as np
  from tfllm.layers.tensor_parallel import TensorParallelAttention

  layer = TensorParallelAttention(4, 8, devices=["/CPU:0", "/CPU:0"], num_kv_heads=2)
  assert layer(np.zeros((2, 5, 32), "float32"), use_causal_mask=True).shape == (2, 5, 32)
  ```
  """

  def __init__(self, num_heads, head_dim, devices, num_kv_heads=None, use_bias=True,
               dropout=0.0, rotary_max_wavelength=None, kernel_initializer="glorot_uniform",
               attention_block_size=0, **kwargs):
    super().__init__(devices, **kwargs)
    self.num_heads = int(num_heads)
    self.num_kv_heads = int(num_kv_heads or num_heads)
    self.local_heads = self.local_size("num_heads", self.num_heads)
    self.local_kv_heads = self.local_size("num_kv_heads", self.num_kv_heads)
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    # The arguments every shard shares with the unsharded layer (and get_config returns).
    self.shared_args = dict(head_dim=int(head_dim), use_bias=bool(use_bias),
                            dropout=float(dropout), rotary_max_wavelength=rotary_max_wavelength,
                            attention_block_size=int(attention_block_size))

  def build(self, input_shape):
    def make_shard(i):
      shard = MultiHeadSelfAttention(
          self.local_heads, num_kv_heads=self.local_kv_heads,
          kernel_initializer=clone_initializer(self.kernel_initializer),
          dtype=self.dtype_policy, name=f"shard_{i}", **self.shared_args)
      shard.has_output_bias = i == 0
      return shard
    self.build_shards(make_shard, input_shape)
    self.built = True

  def call(self, inputs, padding_mask=None, attention_mask=None, use_causal_mask=False,
           cache=None, cache_update_index=None, training=None):
    partials, caches = [], []
    for i, (shard, device) in enumerate(zip(self.shards, self.devices)):
      with tf.device(device):
        output = shard(inputs, padding_mask=padding_mask, attention_mask=attention_mask,
                       use_causal_mask=use_causal_mask,
                       cache=None if cache is None else cache[i],
                       cache_update_index=cache_update_index, training=training)
      if cache is not None:
        output, shard_cache = output
        caches.append(shard_cache)
      partials.append(output)
    output = sum_partials(partials, self.devices[0])
    return output if cache is None else (output, caches)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(self.shared_args, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                  kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
    return config


@keras.saving.register_keras_serializable(package="tfllm")
class TensorParallelFeedForward(ShardedLayer):
  """`FeedForward` with its hidden units split over `devices` (Megatron-LM layout).

  Shard `i` is a `FeedForward` of `intermediate_dim / N` units on `devices[i]`: up (and
  SwiGLU's gate) column-parallel, down row-parallel; the partial outputs are summed, the
  down bias is added once (shard 0's), and dropout applies to the sum.

  Args:
    intermediate_dim: hidden units of the unsharded layer (divisible by `N`).
    devices: the `N` device names of the tensor-parallel group.
    activation, use_bias, dropout, kernel_initializer: as in `FeedForward`.

  Call arguments:
    inputs: `[..., hidden]`.
    training: enables dropout.

  Returns:
    `[..., hidden]`.

  Example:

  ```python
  import numpy as np
  from tfllm.layers.tensor_parallel import TensorParallelFeedForward

  layer = TensorParallelFeedForward(64, devices=["/CPU:0", "/CPU:0"], activation="swiglu")
  assert layer(np.zeros((2, 5, 32), "float32")).shape == (2, 5, 32)
  ```
  """

  def __init__(self, intermediate_dim, devices, activation="gelu", use_bias=True, dropout=0.0,
               kernel_initializer="glorot_uniform", **kwargs):
    super().__init__(devices, **kwargs)
    self.intermediate_dim = int(intermediate_dim)
    self.local_dim = self.local_size("intermediate_dim", self.intermediate_dim)
    self.dropout = float(dropout)
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    # The arguments every shard shares with the unsharded layer (and get_config returns).
    self.shared_args = dict(activation=activation, use_bias=bool(use_bias))

  def build(self, input_shape):
    def make_shard(i):
      shard = FeedForward(self.local_dim,
                          kernel_initializer=clone_initializer(self.kernel_initializer),
                          dtype=self.dtype_policy, name=f"shard_{i}", **self.shared_args)
      shard.has_output_bias = i == 0
      return shard
    self.build_shards(make_shard, input_shape)
    self.output_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
    self.built = True

  def call(self, inputs, training=None):
    partials = []
    for shard, device in zip(self.shards, self.devices):
      with tf.device(device):
        partials.append(shard(inputs, training=training))
    output = sum_partials(partials, self.devices[0])
    return self.output_dropout(output, training=training)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(self.shared_args, intermediate_dim=self.intermediate_dim,
                  dropout=self.dropout,
                  kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
    return config


@keras.saving.register_keras_serializable(package="tfllm")
class TensorParallelTransformerBlock(TransformerBlock):
  """`TransformerBlock` whose attention and feed-forward are sharded over `devices`.

  Norms, residual adds and dropout run once, on the tensor-parallel group's first device;
  attention (`TensorParallelAttention`) and the feed-forward (`TensorParallelFeedForward`)
  run on every device of the group.

  Args:
    devices: the `N` device names of the tensor-parallel group.
    *args, **kwargs: as in `TransformerBlock` (`num_heads`, `num_kv_heads` and
      `intermediate_dim` divisible by `N`).

  Call arguments and returns: as `TransformerBlock`, except that a cache is the list of
  `N` per-shard caches `(keys, values)`, each
  `[batch, num_kv_heads / N, max_length, head_dim]`.

  Example:

  ```python
  import numpy as np
  from tfllm.layers.tensor_parallel import TensorParallelTransformerBlock

  block = TensorParallelTransformerBlock(4, 64, devices=["/CPU:0", "/CPU:0"], causal=True)
  assert block(np.zeros((2, 5, 32), "float32")).shape == (2, 5, 32)
  ```
  """

  def __init__(self, num_heads, intermediate_dim, devices, **kwargs):
    super().__init__(num_heads, intermediate_dim, **kwargs)
    self.devices = [str(device) for device in devices]

  def make_attention(self, *args, **kwargs):
    return TensorParallelAttention(*args, devices=self.devices, **kwargs)

  def make_feed_forward(self, *args, **kwargs):
    return TensorParallelFeedForward(*args, devices=self.devices, **kwargs)

  def get_config(self):
    config = super().get_config()
    config.update(devices=list(self.devices))
    return config
