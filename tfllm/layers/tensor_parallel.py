"""Tensor-parallel (Megatron-LM layout) variants of tfllm's layers, sharded over local devices.

A layer of degree `N` holds `N` shards, shard `i` created on and computed on `devices[i]`
(`tf.device`): the variables of shard `i` (and, colocated with them, their AdamW slots) live
on that device only, so each device holds `1/N` of every sharded kernel. The layout:

- attention: heads split into `N` groups; shard `i` owns query heads `i*H/N ...` and KV
  heads `i*K/N ...` (its slice of the fused QKV projection: column-parallel) and the rows
  of the output projection that read those heads (row-parallel);
- feed-forward: hidden units split into `N` groups: up (and SwiGLU's gate) column-parallel,
  down row-parallel;
- token embedding, tied logits and cross-entropy: vocabulary rows split into `N` ranges
  (vocab-parallel), so `[batch, seq, vocab]` logits are never formed on one device.

A row-parallel projection is followed by the only communication of the forward pass: the
sum of the `N` partial outputs (`sum_partials`). The model runs as one program over the
devices of a tensor-parallel group (the gradient of that sum is the copy of the incoming
gradient to every device): no replica context, no mirrored variables, and one copy of each
replicated weight (norms, position tables, the row-parallel biases, added once). Why this
design and what was rejected: docs/distributed.md, "Tensor parallelism".
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfllm.config import ConfigError
from tfllm.layers.attention import MultiHeadSelfAttention
from tfllm.layers.feed_forward import FeedForward
from tfllm.layers.initializers import clone_initializer
from tfllm.layers.transformer_block import TransformerBlock


def tensor_parallel_devices(degree: int) -> List[str]:
  """The first `degree` local GPUs, or logical CPU devices on a machine without GPUs.

  Raises:
    ConfigError: `degree` < 1, or more devices than this machine has.
  """
  degree = int(degree)
  if degree < 1:
    raise ConfigError(f"config.train.model_parallel={degree} must be >= 1")
  gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
  devices = gpus or [device.name for device in tf.config.list_logical_devices("CPU")]
  if degree > len(devices):
    kind = "GPUs" if gpus else "logical CPU devices (no GPUs; split the CPU into more)"
    raise ConfigError(f"config.train.model_parallel={degree} needs {degree} devices but this "
                      f"machine has {len(devices)} {kind}")
  return devices[:degree]


def check_degree(degree: int, num_heads: int, num_kv_heads: int, intermediate_dim: int,
                 vocab_size: int) -> None:
  """Raises a one-line `ConfigError` when `degree` does not divide a sharded dimension."""
  for key, size in (("num_heads", num_heads), ("num_kv_heads", num_kv_heads),
                    ("intermediate_dim", intermediate_dim), ("vocab_size", vocab_size)):
    if int(size) % int(degree):
      divisors = [d for d in range(1, int(size) + 1) if size % d == 0 and d <= 64]
      raise ConfigError(f"config.train.model_parallel={degree} does not divide "
                        f"config.model.{key}={size}; use one of: "
                        f"{', '.join(map(str, divisors))}")


def sum_partials(partials: Sequence[tf.Tensor], device: str) -> tf.Tensor:
  """The sum of the shards' partial outputs, formed on `device` (the group's first).

  This is the all-reduce of a row-parallel layer, done as a reduce onto one device; each
  shard's next column-parallel layer reads the result from there (TF copies it over).
  """
  with tf.device(device):
    return tf.add_n(list(partials))


def variable_bytes_by_device(variables) -> Dict[str, int]:
  """Bytes of `variables` per device they actually live on (`variable.value.device`)."""
  totals: Dict[str, int] = {}
  for variable in variables:
    value = getattr(variable, "value", variable)
    device = tf.DeviceSpec.from_string(value.device).to_string() or "unplaced"
    size = math.prod(int(d) for d in variable.shape) * tf.as_dtype(variable.dtype).size
    totals[device] = totals.get(device, 0) + size
  return totals


def _split_sections(size: int, sections: Sequence[int] | None) -> List[int]:
  return list(sections) if sections else [size]


def shard_value(value: np.ndarray, degree: int, axis: int,
                sections: Sequence[int] | None = None) -> List[np.ndarray]:
  """Splits an unsharded weight into `degree` shards along `axis`.

  `sections` are the sizes of consecutive parts of that axis that are split separately
  (the fused QKV kernel's `[Q | K | V]` columns): shard `i` is the concatenation of the
  `i`-th piece of every section.
  """
  value = np.asarray(value)
  parts = np.split(value, np.cumsum(_split_sections(value.shape[axis], sections))[:-1], axis)
  pieces = [np.split(part, degree, axis) for part in parts]
  return [np.concatenate([piece[i] for piece in pieces], axis) for i in range(degree)]


def unshard_values(shards: Sequence[np.ndarray], axis: int,
                   sections: Sequence[int] | None = None) -> np.ndarray:
  """The inverse of `shard_value`: the unsharded weight from its shards."""
  degree = len(shards)
  size = sum(np.asarray(shard).shape[axis] for shard in shards)
  local = [s // degree for s in _split_sections(size, sections)]
  split_shards = [np.split(np.asarray(shard), np.cumsum(local)[:-1], axis) for shard in shards]
  return np.concatenate([np.concatenate([parts[s] for parts in split_shards], axis)
                         for s in range(len(local))], axis)


class _ShardedLayer(keras.layers.Layer):
  """Holds `devices`; subclasses build one sublayer per device in `self.shards`."""

  def __init__(self, devices, **kwargs):
    super().__init__(**kwargs)
    self.devices = [str(device) for device in devices]
    if not self.devices:
      raise ValueError("a tensor-parallel layer needs at least one device")

  @property
  def degree(self) -> int:
    return len(self.devices)

  def _divide(self, name: str, size: int) -> int:
    if size % self.degree:
      raise ValueError(f"{self.name}: {self.degree} devices do not divide {name}={size}")
    return size // self.degree

  def _build_shards(self, make_shard, input_shape):
    """`self.shards[i] = make_shard(i)`, built on `devices[i]` (its variables live there)."""
    self.shards = []
    for i, device in enumerate(self.devices):
      shard = make_shard(i)
      with tf.device(device):
        shard.build(input_shape)
      self.shards.append(shard)

  def get_config(self):
    config = super().get_config()
    config.update(devices=list(self.devices))
    return config


@keras.saving.register_keras_serializable(package="tfllm")
class TensorParallelAttention(_ShardedLayer):
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
    cache: None, or a list of `N` per-shard caches `[batch, 2, max_length, K / N, d]` (the
      KV cache sharded with the heads).

  Returns:
    `[batch, seq, hidden]`, and with a cache also the list of updated shard caches.

  Example:

  >>> layer = TensorParallelAttention(4, 8, devices=["/CPU:0", "/CPU:0"], num_kv_heads=2)
  >>> layer(np.zeros((2, 5, 32), "float32"), use_causal_mask=True).shape
  TensorShape([2, 5, 32])
  """

  def __init__(self, num_heads, head_dim, devices, num_kv_heads=None, use_bias=True,
               dropout=0.0, rotary_max_wavelength=None, kernel_initializer="glorot_uniform",
               attention_block_size=0, **kwargs):
    super().__init__(devices, **kwargs)
    self.num_heads = int(num_heads)
    self.num_kv_heads = int(num_kv_heads or num_heads)
    self.local_heads = self._divide("num_heads", self.num_heads)
    self.local_kv_heads = self._divide("num_kv_heads", self.num_kv_heads)
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
    self._build_shards(make_shard, input_shape)
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
class TensorParallelFeedForward(_ShardedLayer):
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

  >>> layer = TensorParallelFeedForward(64, devices=["/CPU:0", "/CPU:0"], activation="swiglu")
  >>> layer(np.zeros((2, 5, 32), "float32")).shape
  TensorShape([2, 5, 32])
  """

  def __init__(self, intermediate_dim, devices, activation="gelu", use_bias=True, dropout=0.0,
               kernel_initializer="glorot_uniform", **kwargs):
    super().__init__(devices, **kwargs)
    self.intermediate_dim = int(intermediate_dim)
    self.local_dim = self._divide("intermediate_dim", self.intermediate_dim)
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
    self._build_shards(make_shard, input_shape)
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
class VocabParallelEmbedding(_ShardedLayer):
  """Token embedding with its vocabulary rows split over `devices`; also the tied logits.

  Shard `i` is a `keras.layers.Embedding` of rows `i*V/N ... (i+1)*V/N - 1` on `devices[i]`
  (its variable is named `embeddings`, so AdamW's embedding rules apply to it as to the
  unsharded table). A lookup takes each id's row from the shard that owns it (zeros from
  the others) and sums the shards' results; the reverse projection returns the shards'
  logits unjoined, for `vocab_parallel_cross_entropy`.

  Args:
    input_dim: vocabulary size `V` (divisible by `N`).
    output_dim: hidden size.
    devices: the `N` device names of the tensor-parallel group.
    embeddings_initializer: initializer of the table (each shard gets a clone).

  Call arguments:
    inputs: int `[batch, seq]` token ids, or with `reverse=True` hidden states
      `[..., output_dim]`.
    reverse: if True, returns a list of `N` float32 logits `[..., V / N]`, shard `i`'s on
      `devices[i]`.

  Returns:
    `[batch, seq, output_dim]` embeddings, or the list of shard logits.

  Example:

  >>> layer = VocabParallelEmbedding(10, 4, devices=["/CPU:0", "/CPU:0"])
  >>> layer(np.array([[1, 7]])).shape
  TensorShape([1, 2, 4])
  >>> [logits.shape for logits in layer(np.zeros((1, 2, 4), "float32"), reverse=True)]
  [TensorShape([1, 2, 5]), TensorShape([1, 2, 5])]
  """

  def __init__(self, input_dim, output_dim, devices, embeddings_initializer="uniform",
               **kwargs):
    super().__init__(devices, **kwargs)
    self.input_dim = int(input_dim)
    self.output_dim = int(output_dim)
    self.local_vocab = self._divide("input_dim (vocab_size)", self.input_dim)
    self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

  def build(self, input_shape=None):
    self._build_shards(lambda i: keras.layers.Embedding(
        self.local_vocab, self.output_dim,
        embeddings_initializer=clone_initializer(self.embeddings_initializer),
        dtype=self.dtype_policy, name=f"shard_{i}"), (None, None))
    self.built = True

  def call(self, inputs, reverse=False):
    if reverse:
      return self.logits(inputs)
    token_ids = tf.cast(inputs, tf.int32)
    partials = []
    for i, (shard, device) in enumerate(zip(self.shards, self.devices)):
      with tf.device(device):
        local = token_ids - i * self.local_vocab
        owned = tf.logical_and(local >= 0, local < self.local_vocab)
        rows = tf.gather(tf.cast(shard.embeddings, self.compute_dtype),
                         tf.where(owned, local, 0))
        partials.append(rows * tf.cast(owned, self.compute_dtype)[..., None])
    return sum_partials(partials, self.devices[0])

  def logits(self, hidden) -> List[tf.Tensor]:
    """Tied logits `[..., V / N]` per shard, float32 (matmul in the compute dtype)."""
    outputs = []
    for shard, device in zip(self.shards, self.devices):
      with tf.device(device):
        table = tf.cast(shard.embeddings, self.compute_dtype)
        outputs.append(tf.cast(tf.matmul(tf.cast(hidden, self.compute_dtype), table,
                                         transpose_b=True), tf.float32))
    return outputs

  def compute_output_shape(self, input_shape, reverse=False):
    if reverse:
      return [(*input_shape[:-1], self.local_vocab)] * self.degree
    return (*input_shape, self.output_dim)

  def get_config(self):
    config = super().get_config()
    config.update(input_dim=self.input_dim, output_dim=self.output_dim,
                  embeddings_initializer=keras.initializers.serialize(
                      self.embeddings_initializer))
    return config


@keras.saving.register_keras_serializable(package="tfllm")
class VocabParallelProjection(_ShardedLayer):
  """An untied, bias-free vocabulary projection (Llama's) split by output columns.

  Args:
    units: vocabulary size `V` (divisible by `N`).
    devices: the `N` device names of the tensor-parallel group.
    kernel_initializer: initializer of the kernel (each shard gets a clone).

  Call arguments:
    inputs: `[..., hidden]`.

  Returns:
    A list of `N` float32 logits `[..., V / N]`, shard `i`'s on `devices[i]`.

  Example:

  >>> layer = VocabParallelProjection(10, devices=["/CPU:0", "/CPU:0"])
  >>> [logits.shape for logits in layer(np.zeros((1, 2, 4), "float32"))]
  [TensorShape([1, 2, 5]), TensorShape([1, 2, 5])]
  """

  def __init__(self, units, devices, kernel_initializer="glorot_uniform", **kwargs):
    super().__init__(devices, **kwargs)
    self.units = int(units)
    self.local_units = self._divide("units (vocab_size)", self.units)
    self.kernel_initializer = keras.initializers.get(kernel_initializer)

  def build(self, input_shape):
    self._build_shards(lambda i: keras.layers.Dense(
        self.local_units, use_bias=False, dtype=self.dtype_policy,
        kernel_initializer=clone_initializer(self.kernel_initializer), name=f"shard_{i}"),
                       input_shape)
    self.built = True

  def call(self, inputs):
    outputs = []
    for shard, device in zip(self.shards, self.devices):
      with tf.device(device):
        outputs.append(tf.cast(shard(inputs), tf.float32))
    return outputs

  def get_config(self):
    config = super().get_config()
    config.update(units=self.units,
                  kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
    return config


def vocab_parallel_cross_entropy(shard_logits: Sequence[tf.Tensor], labels: tf.Tensor,
                                 devices: Sequence[str]) -> tf.Tensor:
  """Sparse softmax cross-entropy over vocabulary-sharded logits, never joining them.

  Each shard reduces its own logits to three numbers per position (its max, its sum of
  `exp(logit - max)`, and the label's logit when it owns the label); only those
  `[batch, seq]` tensors are combined, on `devices[0]`:
  `ce = log(sum_i sumexp_i) + max - logit[label]`. The max is a constant for the gradient
  (it cancels out of the loss), so the gradient is exactly `softmax - onehot` per shard.

  Args:
    shard_logits: `N` float logits `[..., V / N]`, shard `i` on `devices[i]`.
    labels: int `[...]` in `[0, V)`.
    devices: the `N` devices.

  Returns:
    float32 `[...]` per-position cross-entropy, on `devices[0]`.
  """
  labels = tf.cast(labels, tf.int32)
  local_vocab = shard_logits[0].shape[-1]
  batch_dims = labels.shape.rank
  maxes, sums, targets = [], [], []
  for logits, device in zip(shard_logits, devices):
    with tf.device(device):
      maxes.append(tf.reduce_max(tf.stop_gradient(tf.cast(logits, tf.float32)), axis=-1))
  with tf.device(devices[0]):
    global_max = tf.reduce_max(tf.stack(maxes), axis=0)
  for i, (logits, device) in enumerate(zip(shard_logits, devices)):
    with tf.device(device):
      logits = tf.cast(logits, tf.float32)
      sums.append(tf.reduce_sum(tf.exp(logits - global_max[..., None]), axis=-1))
      local = labels - i * local_vocab
      owned = tf.logical_and(local >= 0, local < local_vocab)
      picked = tf.gather(logits, tf.where(owned, local, 0), batch_dims=batch_dims)
      targets.append(tf.where(owned, picked, 0.0))
  with tf.device(devices[0]):
    return tf.math.log(tf.add_n(sums)) + global_max - tf.add_n(targets)


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
  `N` per-shard caches `[batch, 2, max_length, num_kv_heads / N, head_dim]`.

  Example:

  >>> block = TensorParallelTransformerBlock(4, 64, devices=["/CPU:0", "/CPU:0"], causal=True)
  >>> block(np.zeros((2, 5, 32), "float32")).shape
  TensorShape([2, 5, 32])
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
