"""Rotary position embedding (RoPE, Su et al. 2021) as used by GPT-NeoX and Llama."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfllm")
class RotaryEmbedding(keras.layers.Layer):
  """Rotates query/key feature pairs by an angle proportional to their position.

  Pairs are (i, i + d/2) ("rotate half", the GPT-NeoX / Llama / `keras_hub.layers.
  RotaryEmbedding` convention), with frequencies `max_wavelength^(-2i/d)`. Angles are
  computed in float32: bfloat16 positions lose integer precision above 256.

  Args:
    max_wavelength: base of the frequencies.
    scaling_factor: positions are divided by it (linear position interpolation).

  Call arguments:
    inputs: `[batch, seq, heads, head_dim]` queries or keys; head_dim must be even.
    start_index: position of `inputs[:, 0]` (the cache index while decoding).

  Returns:
    The rotated tensor, same shape and dtype.

  Example:

  ```python
  import numpy as np
  from tfllm.layers import RotaryEmbedding

  queries = np.ones((2, 5, 4, 8), "float32")       # [batch, seq, heads, head_dim]
  rotated = RotaryEmbedding(max_wavelength=10000.0)(queries)
  assert rotated.shape == (2, 5, 4, 8)
  ```
  """

  def __init__(self, max_wavelength=10000.0, scaling_factor=1.0, **kwargs):
    super().__init__(**kwargs)
    self.max_wavelength = float(max_wavelength)
    self.scaling_factor = float(scaling_factor)

  def call(self, inputs, start_index=0):
    seq_length, head_dim = ops.shape(inputs)[1], inputs.shape[-1]
    positions = ops.cast(ops.arange(seq_length) + start_index, "float32") / self.scaling_factor
    inverse_freq = 1.0 / ops.power(
        self.max_wavelength, ops.cast(ops.arange(0, head_dim, 2), "float32") / head_dim)
    angles = positions[:, None] * inverse_freq[None, :]          # [seq, head_dim / 2]
    angles = ops.concatenate([angles, angles], axis=-1)[None, :, None, :]
    cos = ops.cast(ops.cos(angles), inputs.dtype)
    sin = ops.cast(ops.sin(angles), inputs.dtype)
    first, second = ops.split(inputs, 2, axis=-1)
    rotated_half = ops.concatenate([-second, first], axis=-1)
    return inputs * cos + rotated_half * sin

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(max_wavelength=self.max_wavelength, scaling_factor=self.scaling_factor)
    return config
