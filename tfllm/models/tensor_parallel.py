"""Tensor-parallel backbone and causal LM, built from the same config as the unsharded ones.

`build_tensor_parallel(config)` returns a `TensorParallelCausalLM` sharded over
`config.train.model_parallel` local devices (`tfllm.layers.tensor_parallel`). Its weights
map one-to-one onto the unsharded `CausalLM` of the same config (`parameter_layout`):
`load_unsharded` shards an unsharded model's values into it, `unsharded_values` gathers
them back, the basis of checkpoints that do not depend on the degree.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import keras
import ml_collections
import numpy as np
import tensorflow as tf

from tfllm import config as config_lib
from tfllm.config import ConfigError
from tfllm.layers import tensor_parallel as tp
from tfllm.layers import empty_kv_cache
from tfllm.models.backbone import TransformerBackbone
from tfllm.models.build import build_backbone as build_unsharded_backbone


@keras.saving.register_keras_serializable(package="tfllm")
class TensorParallelBackbone(TransformerBackbone):
  """`TransformerBackbone` with attention, feed-forward and token embedding sharded over
  `model_parallel` local devices (`tfllm.layers.tensor_parallel.tensor_parallel_devices`).

  Args:
    model_parallel: the tensor-parallel degree `N` (divides `num_heads`, `num_kv_heads` and
      `intermediate_dim`; the vocabulary is padded to a multiple of `N`).
    group: which `N` local devices: `[group * N, (group + 1) * N)` (data parallelism runs
      one copy of the model per group).
    **kwargs: as in `TransformerBackbone`.

  Call arguments and returns: as `TransformerBackbone` (hidden states `[batch, seq,
  hidden_dim]` on the group's first device).

  Example:

  ```python
  import numpy as np
  from tfllm.models.tensor_parallel import TensorParallelBackbone

  backbone = TensorParallelBackbone(model_parallel=1, vocab_size=16, num_layers=1,
                                    hidden_dim=8, num_heads=2, intermediate_dim=16)
  assert backbone({"token_ids": np.zeros((1, 3), "int32")}).shape == (1, 3, 8)
  ```
  """

  def __init__(self, model_parallel=1, group=0, **kwargs):
    # The make_* hooks run inside TransformerBackbone.__init__ and need the devices.
    object.__setattr__(self, "model_parallel", int(model_parallel))
    object.__setattr__(self, "group", int(group))
    object.__setattr__(self, "devices", tp.tensor_parallel_devices(model_parallel, group))
    super().__init__(**kwargs)

  def build(self, input_shape=None):
    # The replicated weights (norms, position tables) on the group's first device.
    with tf.device(self.devices[0]):
      super().build(input_shape)

  def make_token_embedding(self, vocab_size, hidden_dim, embeddings_initializer, name):
    return tp.VocabParallelEmbedding(vocab_size, hidden_dim, devices=self.devices,
                                     embeddings_initializer=embeddings_initializer, name=name)

  def make_block(self, num_heads, intermediate_dim, **kwargs):
    return tp.TensorParallelTransformerBlock(num_heads, intermediate_dim, devices=self.devices,
                                             **kwargs)

  def init_cache(self, batch_size, max_length=None, dtype=None):
    """A zero KV cache sharded with the heads: for each layer, a list of `N` shard caches
    `(keys, values)`, each `[batch, num_kv_heads / N, max_length, head_dim]`, shard `i`'s on
    device `i`."""
    max_length = self.max_sequence_length if max_length is None else max_length
    local_kv_heads = self.num_kv_heads // self.model_parallel
    caches = []
    for _ in self.blocks:
      layer = []
      for device in self.devices:
        with tf.device(device):
          layer.append(empty_kv_cache(batch_size, local_kv_heads, max_length, self.head_dim,
                                      dtype or self.compute_dtype))
      caches.append(layer)
    return caches

  def call_with_cache(self, token_ids, cache, cache_update_index, padding_mask=None):
    """As `TransformerBackbone.call_with_cache`, with the cache of `init_cache` (nested
    lists: layers, then shards)."""
    if not self.causal:
      raise ValueError("call_with_cache needs a causal backbone (causal=True)")
    x = self.embed(token_ids, start_index=cache_update_index)
    updated = []
    for block, layer_cache in zip(self.blocks, cache):
      x, layer_cache = block(x, padding_mask=padding_mask, cache=layer_cache,
                             cache_update_index=cache_update_index)
      updated.append(list(layer_cache))
    return (self.final_norm(x) if self.final_norm is not None else x), updated

  def get_config(self):
    config = super().get_config()
    config.update(model_parallel=self.model_parallel, group=self.group)
    return config


@keras.saving.register_keras_serializable(package="tfllm")
class TensorParallelCausalLM(keras.Model):
  """Next-token prediction on a `TensorParallelBackbone`; logits stay vocabulary-sharded.

  Args:
    backbone: a causal `TensorParallelBackbone`.
    tie_embeddings: logits from the token embedding's shards (GPT-2) or from a separate
      `VocabParallelProjection` (Llama).

  Call arguments:
    inputs: the features dict (`token_ids`, optional `padding_mask`).
    training: enables dropout.

  Returns:
    A list of `N` float32 logits `[batch, seq, vocab / N]`, shard `i`'s on device `i`;
    `cross_entropy_sums` turns them into the loss without joining them.

  Example:

  ```python
  import numpy as np
  from tfllm.models.tensor_parallel import TensorParallelBackbone, TensorParallelCausalLM

  backbone = TensorParallelBackbone(model_parallel=1, vocab_size=16, num_layers=1,
                                    hidden_dim=8, num_heads=2, intermediate_dim=16)
  model = TensorParallelCausalLM(backbone)
  shard_logits = model({"token_ids": np.zeros((1, 3), "int32")})
  assert [tuple(logits.shape) for logits in shard_logits] == [(1, 3, 16)]
  ```
  """

  def __init__(self, backbone: TensorParallelBackbone, tie_embeddings=True, **kwargs):
    super().__init__(**kwargs)
    if not backbone.causal:
      raise ValueError("TensorParallelCausalLM needs a causal backbone (config.model.causal)")
    self.backbone = backbone
    self.tie_embeddings = bool(tie_embeddings)
    self.projection = None
    if not self.tie_embeddings:
      self.projection = tp.VocabParallelProjection(backbone.vocab_size, backbone.devices,
                                                   name="projection")

  @property
  def devices(self) -> List[str]:
    return self.backbone.devices

  def build(self, input_shape=None):
    if not self.backbone.built:
      self.backbone.build()
    if self.projection is not None:
      self.projection.build((None, None, self.backbone.hidden_dim))
    self.built = True

  def call(self, inputs, training=None):
    # What no shard places (embedding sums, norms, residuals) runs on the group's first
    # device rather than on the machine's default one, which belongs to group 0.
    with tf.device(self.devices[0]):
      return self.shard_logits(self.backbone(inputs, training=training))

  def shard_logits(self, hidden) -> List[tf.Tensor]:
    """The `N` float32 logits `[..., vocab / N]` of hidden states `[..., hidden_dim]`."""
    if self.projection is None:
      return self.backbone.token_embedding(hidden, reverse=True)
    return self.projection(hidden)

  def call_with_cache(self, token_ids, cache, cache_update_index, padding_mask=None):
    """One incremental decoding step (`tfllm.models.generation` calls it).

    Returns:
      `(logits [batch, seq, vocab] float32, hidden, updated cache)`: the logits of the few
      decoded positions are joined on the first device for sampling.
    """
    hidden, cache = self.backbone.call_with_cache(token_ids, cache, cache_update_index,
                                                  padding_mask=padding_mask)
    with tf.device(self.devices[0]):
      logits = tf.concat(self.shard_logits(hidden), axis=-1)
    return logits, hidden, cache

  def cross_entropy_sums(self, shard_logits, labels, sample_weight=None
                         ) -> Tuple[tf.Tensor, tf.Tensor]:
    """(sum of weight * cross-entropy, sum of weights), float32, as
    `tfllm.metrics.losses.cross_entropy_sums` computes them from joined logits."""
    ce = tp.vocab_parallel_cross_entropy(shard_logits, labels, self.devices)
    with tf.device(self.devices[0]):
      weights = (tf.ones(tf.shape(labels), tf.float32) if sample_weight is None
                 else tf.cast(sample_weight, tf.float32))
      return tf.reduce_sum(ce * weights), tf.reduce_sum(weights)

  def get_config(self):
    return dict(name=self.name, backbone=keras.saving.serialize_keras_object(self.backbone),
                tie_embeddings=self.tie_embeddings)

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    backbone = keras.saving.deserialize_keras_object(config.pop("backbone"))
    return cls(backbone, **config)


def check_config(config) -> int:
  """Validates a config for tensor parallelism; returns its degree `N`.

  Raises:
    ConfigError: one line naming the numbers: `N` does not divide the heads, KV heads or
      hidden units, leaves a vocabulary shard without a real row, asks for more devices than there are, or the task is
      not one tensor parallelism supports yet.
  """
  config_lib.validate(config)
  degree = int(config.train.model_parallel)
  if degree == 1:
    return degree
  if config.task.name != "causal_lm":
    raise ConfigError(f"config.train.model_parallel={degree} supports "
                      f"config.task.name='causal_lm' only (got {config.task.name!r}); use "
                      "model_parallel=1")
  model = config.model
  tp.check_degree(degree, model.num_heads, model.num_kv_heads or model.num_heads,
                  model.intermediate_dim, model.vocab_size)
  tp.tensor_parallel_devices(degree)
  return degree


def build_backbone(model, degree: int, group: int = 0) -> TensorParallelBackbone:
  """A `TensorParallelBackbone` from the `model` config section, on group `group`'s
  devices."""
  unsharded = build_unsharded_backbone(model).get_config()
  unsharded.pop("name")
  return TensorParallelBackbone(model_parallel=degree, group=group, name="backbone",
                                **unsharded)


def build_tensor_parallel(config, group: int = 0) -> TensorParallelCausalLM:
  """The tensor-parallel causal LM of `config` (`config.train.model_parallel` devices of
  group `group`), built; validates the config first (`check_config`)."""
  degree = check_config(config)
  model = TensorParallelCausalLM(build_backbone(config.model, degree, group),
                                 tie_embeddings=config.model.tie_embeddings,
                                 **(dict(name=f"tensor_parallel_causal_lm_group_{group}")
                                    if group else {}))
  model.build()
  return model


def shard_trained(model: keras.Model, config, degree: int) -> TensorParallelCausalLM:
  """The tensor-parallel copy, over `degree` local devices, of a trained unsharded causal LM
  (`model`, of `config`): e.g. to decode with the KV cache sharded with the heads.

  Raises:
    ConfigError: as `check_config`, for `degree`.
  """
  config = config_lib.validate(ml_collections.ConfigDict(config.to_dict()))
  config.train.model_parallel = int(degree)
  sharded = build_tensor_parallel(config)
  load_unsharded(parameter_layout(model, sharded))
  return sharded


@dataclasses.dataclass
class ShardedParameter:
  """One unsharded variable and the variables that hold it in a tensor-parallel model.

  `axis` None: `shards` is one variable holding the whole value (replicated weights, and
  a row-parallel bias kept on shard 0 only). Otherwise the value is split along `axis`
  (`tp.shard_value`, with `sections` for the fused QKV columns).
  """
  unsharded: keras.Variable
  shards: List[keras.Variable]
  axis: Optional[int] = None
  sections: Optional[Sequence[int]] = None


def _same(unsharded_layer, sharded_layer) -> List[ShardedParameter]:
  if unsharded_layer is None:
    return []
  pairs = list(zip(unsharded_layer.weights, sharded_layer.weights))
  if len(unsharded_layer.weights) != len(sharded_layer.weights):
    raise ValueError(f"{unsharded_layer.name}: the unsharded and tensor-parallel layers "
                     "hold different weights")
  return [ShardedParameter(a, [b]) for a, b in pairs]


def _dense(unsharded, shards, axis, sections=None, bias_once=False) -> List[ShardedParameter]:
  """A kernel split along `axis` (1 column-, 0 row-parallel) and its bias."""
  layout = [ShardedParameter(unsharded.kernel, [s.kernel for s in shards], axis, sections)]
  if unsharded.bias is not None:
    if bias_once:
      layout.append(ShardedParameter(unsharded.bias, [shards[0].bias]))
    else:
      layout.append(ShardedParameter(unsharded.bias, [s.bias for s in shards], 0, sections))
  return layout


def backbone_layout(dense: TransformerBackbone,
                    sharded: TensorParallelBackbone) -> List[ShardedParameter]:
  """Every variable of an unsharded backbone and where the tensor-parallel one holds it."""
  layout = [ShardedParameter(dense.token_embedding.embeddings,
                             [s.embeddings for s in sharded.token_embedding.shards], 0)]
  for name in ("position_encoding", "token_type_embedding", "embedding_norm", "final_norm"):
    layout += _same(getattr(dense, name), getattr(sharded, name))
  q_width = dense.num_heads * dense.head_dim
  kv_width = dense.num_kv_heads * dense.head_dim
  for dense_block, block in zip(dense.blocks, sharded.blocks):
    layout += _same(dense_block.attention_norm, block.attention_norm)
    layout += _same(dense_block.feed_forward_norm, block.feed_forward_norm)
    attention = block.attention.shards
    layout += _dense(dense_block.attention.qkv, [s.qkv for s in attention], 1,
                     (q_width, kv_width, kv_width))
    layout += _dense(dense_block.attention.output_projection,
                     [s.output_projection for s in attention], 0, bias_once=True)
    ffn, dense_ffn = block.feed_forward.shards, dense_block.feed_forward
    layout += _dense(dense_ffn.up, [s.up for s in ffn], 1)
    if dense_ffn.gate is not None:
      layout += _dense(dense_ffn.gate, [s.gate for s in ffn], 1)
    layout += _dense(dense_ffn.down, [s.down for s in ffn], 0, bias_once=True)
  return layout


def parameter_layout(unsharded_model: keras.Model,
                     tp_model: TensorParallelCausalLM) -> List[ShardedParameter]:
  """Every variable of the unsharded `CausalLM` and where the tensor-parallel one holds it."""
  layout = backbone_layout(unsharded_model.backbone, tp_model.backbone)
  if tp_model.projection is not None:
    layout.append(ShardedParameter(unsharded_model.head.projection.kernel,
                                   [s.kernel for s in tp_model.projection.shards], 1))
  return layout


def load_unsharded(layout: Sequence[ShardedParameter]) -> None:
  """Assigns each unsharded variable's value to its shards (`parameter_layout`)."""
  for param in layout:
    value = keras.ops.convert_to_numpy(param.unsharded)
    if param.axis is None:
      param.shards[0].assign(value)
      continue
    for shard, part in zip(param.shards,
                           tp.shard_value(value, len(param.shards), param.axis,
                                          param.sections)):
      shard.assign(part)


def gather(param: ShardedParameter, shard_values: Sequence) -> np.ndarray:
  """The unsharded value of `param` from values of its shards (weights or gradients)."""
  shard_values = [keras.ops.convert_to_numpy(value) for value in shard_values]
  if param.axis is None:
    return shard_values[0]
  return tp.unshard_values(shard_values, param.axis, param.sections,
                           size=param.unsharded.shape[param.axis])


def unsharded_values(layout: Sequence[ShardedParameter]
                     ) -> List[Tuple[keras.Variable, np.ndarray]]:
  """(unsharded variable, its value gathered from the shards), for every parameter."""
  return [(param.unsharded, gather(param, param.shards)) for param in layout]
