"""Vocabulary-parallel layers: the token embedding, the tied or untied logits projection and
the cross-entropy over sharded logits, so `[batch, seq, vocab]` logits never meet on one device."""

from __future__ import annotations

from typing import List, Sequence

import keras
import tensorflow as tf

from tfllm.layers.initializers import clone_initializer
from tfllm.layers.tensor_parallel.sharding import COLLECTIVE_SCOPE, ShardedLayer, sum_partials


@keras.saving.register_keras_serializable(package="tfllm")
class VocabParallelEmbedding(ShardedLayer):
  """Token embedding with its vocabulary rows split over `devices`; also the tied logits.

  The table is padded to `V' = ceil(V / N) * N` rows (`padded_size`): shard `i` is a
  `keras.layers.Embedding` of rows `i*V'/N ... (i+1)*V'/N - 1` on `devices[i]` (its variable
  is named `embeddings`, so AdamW's embedding rules apply to it as to the unsharded table).
  A lookup takes each id's row from the shard that owns it (zeros from the others) and sums
  the shards' results; the reverse projection returns the shards' logits unjoined, for
  `vocab_parallel_cross_entropy`, each shard's over its real rows only, so padding rows never
  reach a logit (and get no gradient).

  Args:
    input_dim: vocabulary size `V` (any size that leaves every shard a real row).
    output_dim: hidden size.
    devices: the `N` device names of the tensor-parallel group.
    embeddings_initializer: initializer of the table (each shard gets a clone).

  Call arguments:
    inputs: int `[batch, seq]` token ids, or with `reverse=True` hidden states
      `[..., output_dim]`.
    reverse: if True, returns a list of `N` float32 logits `[..., V_i]`, shard `i`'s on
      `devices[i]` (`V_i` its real rows: `V / N` when `N` divides `V`; together `V`).

  Returns:
    `[batch, seq, output_dim]` embeddings, or the list of shard logits.

  Example:

  ```python
  import numpy as np
  from tfllm.layers.tensor_parallel import VocabParallelEmbedding

  layer = VocabParallelEmbedding(9, 4, devices=["/CPU:0", "/CPU:0"])
  assert layer(np.array([[1, 7]])).shape == (1, 2, 4)
  shard_logits = layer(np.zeros((1, 2, 4), "float32"), reverse=True)
  assert [tuple(logits.shape) for logits in shard_logits] == [(1, 2, 5), (1, 2, 4)]
  ```
  """

  def __init__(self, input_dim, output_dim, devices, embeddings_initializer="uniform",
               **kwargs):
    super().__init__(devices, **kwargs)
    self.input_dim = int(input_dim)
    self.output_dim = int(output_dim)
    self.local_vocab, self.real_rows = self.padded_local_sizes("input_dim (vocab_size)",
                                                               self.input_dim)
    self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

  def build(self, input_shape=None):
    self.build_shards(lambda i: keras.layers.Embedding(
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
    """Tied logits `[..., V_i]` per shard (its real rows), float32 (matmul in the compute
    dtype)."""
    return real_logits(hidden, [shard.embeddings[:rows] for shard, rows in
                                zip(self.shards, self.real_rows)],
                       self.devices, self.compute_dtype, transpose=True)

  def compute_output_shape(self, input_shape, reverse=False):
    if reverse:
      return [(*input_shape[:-1], rows) for rows in self.real_rows]
    return (*input_shape, self.output_dim)

  def get_config(self):
    config = super().get_config()
    config.update(input_dim=self.input_dim, output_dim=self.output_dim,
                  embeddings_initializer=keras.initializers.serialize(
                      self.embeddings_initializer))
    return config


@keras.saving.register_keras_serializable(package="tfllm")
class VocabParallelProjection(ShardedLayer):
  """An untied, bias-free vocabulary projection (Llama's) split by output columns.

  The columns are padded to a multiple of `N`, as `VocabParallelEmbedding`'s rows are; each
  shard returns its real columns only.

  Args:
    units: vocabulary size `V` (any size that leaves every shard a real column).
    devices: the `N` device names of the tensor-parallel group.
    kernel_initializer: initializer of the kernel (each shard gets a clone).

  Call arguments:
    inputs: `[..., hidden]`.

  Returns:
    A list of `N` float32 logits `[..., V_i]`, shard `i`'s on `devices[i]` (together `V`).

  Example:

  ```python
  import numpy as np
  from tfllm.layers.tensor_parallel import VocabParallelProjection

  layer = VocabParallelProjection(9, devices=["/CPU:0", "/CPU:0"])
  shard_logits = layer(np.zeros((1, 2, 4), "float32"))
  assert [tuple(logits.shape) for logits in shard_logits] == [(1, 2, 5), (1, 2, 4)]
  ```
  """

  def __init__(self, units, devices, kernel_initializer="glorot_uniform", **kwargs):
    super().__init__(devices, **kwargs)
    self.units = int(units)
    self.local_units, self.real_units = self.padded_local_sizes("units (vocab_size)",
                                                                self.units)
    self.kernel_initializer = keras.initializers.get(kernel_initializer)

  def build(self, input_shape):
    self.build_shards(lambda i: keras.layers.Dense(
        self.local_units, use_bias=False, dtype=self.dtype_policy,
        kernel_initializer=clone_initializer(self.kernel_initializer), name=f"shard_{i}"),
                       input_shape)
    self.built = True

  def call(self, inputs):
    # The shards' kernels, not their `Dense` calls: a padded shard multiplies by its real
    # columns only.
    return real_logits(inputs, [shard.kernel[:, :units] for shard, units in
                                zip(self.shards, self.real_units)],
                       self.devices, self.compute_dtype)

  def get_config(self):
    config = super().get_config()
    config.update(units=self.units,
                  kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
    return config


def real_logits(hidden, weights: Sequence, devices: Sequence[str], compute_dtype,
                transpose: bool = False) -> List[tf.Tensor]:
  """Each shard's float32 logits `hidden @ weights[i]` (`weights[i]` transposed for a tied
  table `[V_i, hidden]`), on `devices[i]`, the matmul in `compute_dtype`; the weights are the
  shards' real rows or columns, so padding costs no work."""
  outputs = []
  for weight, device in zip(weights, devices):
    with tf.device(device):
      outputs.append(tf.cast(tf.matmul(tf.cast(hidden, compute_dtype),
                                       tf.cast(weight, compute_dtype), transpose_b=transpose),
                             tf.float32))
  return outputs


def vocab_parallel_cross_entropy(shard_logits: Sequence[tf.Tensor], labels: tf.Tensor,
                                 devices: Sequence[str]) -> tf.Tensor:
  """Sparse softmax cross-entropy over vocabulary-sharded logits, never joining them.

  Each shard reduces its own logits to three numbers per position (its max, its sum of
  `exp(logit - max)`, and the label's logit when it owns the label); only those
  `[batch, seq]` tensors are combined, on `devices[0]`:
  `ce = log(sum_i sumexp_i) + max - logit[label]`. The max is a constant for the gradient
  (it cancels out of the loss), so the gradient is exactly `softmax - onehot` per shard.

  Args:
    shard_logits: `N` float logits `[..., V_i]`, shard `i` on `devices[i]`; every shard but
      the last as wide as the first (a padded vocabulary's last shard is narrower).
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
  with tf.device(devices[0]), tf.name_scope(COLLECTIVE_SCOPE):
    global_max = tf.reduce_max(tf.stack(maxes), axis=0)
  for i, (logits, device) in enumerate(zip(shard_logits, devices)):
    with tf.device(device):
      logits = tf.cast(logits, tf.float32)
      sums.append(tf.reduce_sum(tf.exp(logits - global_max[..., None]), axis=-1))
      local = labels - i * local_vocab
      owned = tf.logical_and(local >= 0, local < local_vocab)
      picked = tf.gather(logits, tf.where(owned, local, 0), batch_dims=batch_dims)
      targets.append(tf.where(owned, picked, 0.0))
  with tf.device(devices[0]), tf.name_scope(COLLECTIVE_SCOPE):
    return tf.math.log(tf.add_n(sums)) + global_max - tf.add_n(targets)


def vocab_parallel_argmax(shard_logits: Sequence[tf.Tensor],
                          devices: Sequence[str]) -> tf.Tensor:
  """`argmax` over vocabulary-sharded logits, never joining them: each shard gives its max
  and the vocabulary index of it; the first shard holding the overall max wins, so ties go to
  the lowest index, as `tf.argmax` of the joined logits does.

  Args:
    shard_logits: `N` float logits `[..., V_i]`, shard `i` on `devices[i]` (as for
      `vocab_parallel_cross_entropy`).
    devices: the `N` devices.

  Returns:
    int32 `[...]` vocabulary indices, on `devices[0]`.
  """
  local_vocab = shard_logits[0].shape[-1]
  maxes, indices = [], []
  for i, (logits, device) in enumerate(zip(shard_logits, devices)):
    with tf.device(device):
      maxes.append(tf.reduce_max(logits, axis=-1))
      indices.append(tf.argmax(logits, axis=-1, output_type=tf.int32) + i * local_vocab)
  with tf.device(devices[0]):
    best_shard = tf.argmax(tf.stack(maxes, axis=-1), axis=-1, output_type=tf.int32)
    return tf.gather(tf.stack(indices, axis=-1), best_shard[..., None],
                     batch_dims=best_shard.shape.rank)[..., 0]


class ShardedLogits:
  """A tensor-parallel model's vocabulary-sharded logits, as the loss and the metrics read
  them (`tfllm.metrics.losses.cross_entropy_sums`, `predictions`): the cross-entropy and the
  argmax come from the shards, so `[batch, seq, vocab]` is never formed on one device.

  Args:
    shards: `N` float logits `[..., V_i]`, shard `i` on `devices[i]` (the last one narrower
      for a padded vocabulary).
    devices: the `N` devices of the tensor-parallel group.

  Example:

  ```python
  import numpy as np
  from tfllm.layers.tensor_parallel import ShardedLogits

  logits = ShardedLogits([np.array([[0., 3.]], "float32"), np.array([[1., 2.]], "float32")],
                         ["/CPU:0", "/CPU:0"])
  assert int(logits.argmax()[0]) == 1
  ```
  """

  def __init__(self, shards: Sequence[tf.Tensor], devices: Sequence[str]):
    self.shards = list(shards)
    self.devices = list(devices)

  def cross_entropy(self, labels: tf.Tensor) -> tf.Tensor:
    """float32 `[...]` per-position cross-entropy (`vocab_parallel_cross_entropy`)."""
    return vocab_parallel_cross_entropy(self.shards, labels, self.devices)

  def argmax(self) -> tf.Tensor:
    """int32 `[...]` predicted indices (`vocab_parallel_argmax`)."""
    return vocab_parallel_argmax(self.shards, self.devices)
