"""Tensor-parallel groundwork: the group's devices, weight (un)sharding, the partial-sum
reduce and `ShardedLayer`, the base of every sharded layer (layout: the package docstring)."""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfllm.config import ConfigError


def local_devices() -> List[str]:
  """This process's devices a tensor-parallel model is placed on: its GPUs, or its logical
  CPU devices on a machine without GPUs. (In a multi-worker job TF also lists every other
  worker's devices: those are left out.)"""
  here = tf.DeviceSpec.from_string(tf.constant(0).device)
  def mine(devices):
    specs = [(name, tf.DeviceSpec.from_string(name)) for name in devices]
    return [name for name, spec in specs   # (a name without a job is this process's)
            if all(getattr(spec, part) in (None, getattr(here, part))
                   for part in ("job", "replica", "task"))]
  gpus = mine(device.name for device in tf.config.list_logical_devices("GPU"))
  return gpus or mine(device.name for device in tf.config.list_logical_devices("CPU"))


def tensor_parallel_devices(degree: int, group: int = 0) -> List[str]:
  """The `degree` local devices of tensor-parallel group `group`: devices
  `[group * degree, (group + 1) * degree)` of `local_devices()` (group 0: the first GPUs).

  Raises:
    ConfigError: `degree` < 1, or more devices than this machine has.
  """
  degree, group = int(degree), int(group)
  if degree < 1:
    raise ConfigError(f"config.train.model_parallel={degree} must be >= 1")
  devices = local_devices()
  needed = (group + 1) * degree
  if needed > len(devices):
    kind = ("GPUs" if "GPU" in devices[0]
            else "logical CPU devices (no GPUs; split the CPU into more)")
    groups = f" ({group + 1} groups of {degree})" if group else ""
    raise ConfigError(f"config.train.model_parallel={degree} needs {needed} devices{groups} "
                      f"but this machine has {len(devices)} {kind}")
  return devices[group * degree:needed]


def check_degree(degree: int, num_heads: int, num_kv_heads: int, intermediate_dim: int,
                 vocab_size: int) -> None:
  """Raises a one-line `ConfigError` when `degree` does not divide a sharded dimension, or
  leaves a vocabulary shard without a real row.

  The vocabulary need not divide: it is padded to a multiple of `degree`
  (`padded_size`), as Megatron-LM pads it; the padding rows sit at the end of the last
  shards and never reach a logit. A degree that leaves a whole shard of padding is refused.
  """
  for key, size in (("num_heads", num_heads), ("num_kv_heads", num_kv_heads),
                    ("intermediate_dim", intermediate_dim)):
    if int(size) % int(degree):
      divisors = [d for d in range(1, int(size) + 1) if size % d == 0 and d <= 64]
      raise ConfigError(f"config.train.model_parallel={degree} does not divide "
                        f"config.model.{key}={size}; use one of: "
                        f"{', '.join(map(str, divisors))}")
  if not vocabulary_fills_shards(vocab_size, degree):
    fitting = [d for d in range(1, min(int(vocab_size), 64) + 1)
               if vocabulary_fills_shards(vocab_size, d)]
    raise ConfigError(f"config.train.model_parallel={degree} splits config.model.vocab_size="
                      f"{vocab_size} into shards of {padded_size(vocab_size, degree) // degree} "
                      f"rows and leaves the last without a real one; use one of: "
                      f"{', '.join(map(str, fitting))}")


def padded_size(size: int, degree: int) -> int:
  """`size` rounded up to a multiple of `degree` (a vocabulary split over `degree` shards)."""
  return -(-int(size) // int(degree)) * int(degree)


def real_sizes(size: int, degree: int) -> List[int]:
  """How many of the `padded_size(size, degree) / degree` positions of each shard are real
  (the rest is padding): `[local, ..., local, size - (degree - 1) * local]` or fewer."""
  local = padded_size(size, degree) // int(degree)
  return [max(0, min(local, int(size) - i * local)) for i in range(int(degree))]


def vocabulary_fills_shards(size: int, degree: int) -> bool:
  """True when every one of the `degree` shards of a padded axis holds a real position."""
  return min(real_sizes(size, degree)) > 0


# The name scope of the ops that combine the shards' results (the partial sums, the
# vocabulary-parallel loss's combines): how a profile tells communication from computation
# (`tfllm.bench.collectives`).
COLLECTIVE_SCOPE = "tensor_parallel_collective"


def sum_partials(partials: Sequence[tf.Tensor], device: str) -> tf.Tensor:
  """The sum of the shards' partial outputs, formed on `device` (the group's first).

  This is the all-reduce of a row-parallel layer, done as a reduce onto one device; each
  shard's next column-parallel layer reads the result from there (TF copies it over).
  """
  with tf.device(device), tf.name_scope(COLLECTIVE_SCOPE):
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


def split_sections(size: int, sections: Sequence[int] | None) -> List[int]:
  """The sizes of the separately split parts of an axis of `size`: `sections`, or all of it."""
  return list(sections) if sections else [size]


def shard_value(value: np.ndarray, degree: int, axis: int,
                sections: Sequence[int] | None = None) -> List[np.ndarray]:
  """Splits an unsharded weight into `degree` shards along `axis`.

  `sections` are the sizes of consecutive parts of that axis that are split separately
  (the fused QKV kernel's `[Q | K | V]` columns): shard `i` is the concatenation of the
  `i`-th piece of every section. An axis without sections that `degree` does not divide
  (the vocabulary) is padded with zeros at its end to `padded_size` first.
  """
  value = np.asarray(value)
  size = value.shape[axis]
  if not sections and size % degree:
    padding = [(0, 0)] * value.ndim
    padding[axis] = (0, padded_size(size, degree) - size)
    value = np.pad(value, padding)
  parts = np.split(value, np.cumsum(split_sections(value.shape[axis], sections))[:-1], axis)
  pieces = [np.split(part, degree, axis) for part in parts]
  return [np.concatenate([piece[i] for piece in pieces], axis) for i in range(degree)]


def unshard_values(shards: Sequence[np.ndarray], axis: int,
                   sections: Sequence[int] | None = None,
                   size: int | None = None) -> np.ndarray:
  """The inverse of `shard_value`: the unsharded weight from its shards; `size` is the
  unsharded length of `axis` (the padding `shard_value` added is dropped)."""
  degree = len(shards)
  total = sum(np.asarray(shard).shape[axis] for shard in shards)
  local = [s // degree for s in split_sections(total, sections)]
  split_shards = [np.split(np.asarray(shard), np.cumsum(local)[:-1], axis) for shard in shards]
  value = np.concatenate([np.concatenate([parts[s] for parts in split_shards], axis)
                          for s in range(len(local))], axis)
  if size is not None and size < total:
    value = np.take(value, np.arange(size), axis)
  return value


class ShardedLayer(keras.layers.Layer):
  """Base of the sharded layers: holds `devices`; subclasses build one sublayer per device.

  Args:
    devices: the `N` device names of the tensor-parallel group (shard `i` lives on
      `devices[i]`).

  Example:

  ```python
  from tfllm.layers.tensor_parallel import ShardedLayer

  layer = ShardedLayer(devices=["/CPU:0", "/CPU:0"])
  assert layer.degree == 2 and layer.local_size("num_heads", 8) == 4
  ```
  """

  def __init__(self, devices, **kwargs):
    super().__init__(**kwargs)
    self.devices = [str(device) for device in devices]
    if not self.devices:
      raise ValueError("a tensor-parallel layer needs at least one device")

  @property
  def degree(self) -> int:
    return len(self.devices)

  def local_size(self, name: str, size: int) -> int:
    """`size / N`, the part of dimension `name` one shard holds; `N` must divide it."""
    if size % self.degree:
      raise ValueError(f"{self.name}: {self.degree} devices do not divide {name}={size}")
    return size // self.degree

  def padded_local_sizes(self, name: str, size: int) -> Tuple[int, List[int]]:
    """`(rows a shard holds, real rows of each shard)` of dimension `name` padded to a
    multiple of `N` (`padded_size`); every shard must hold a real row."""
    if not vocabulary_fills_shards(size, self.degree):
      raise ValueError(f"{self.name}: {self.degree} devices leave a shard of {name}={size} "
                       "without a real row")
    return padded_size(size, self.degree) // self.degree, real_sizes(size, self.degree)

  def build_shards(self, make_shard, input_shape):
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
