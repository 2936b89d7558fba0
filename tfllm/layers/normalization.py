"""Root-mean-square layer normalization (Zhang & Sennrich, 2019), as in Llama."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfllm")
class RMSNorm(keras.layers.Layer):
  """Scales features by the reciprocal of their root mean square; no centering, no bias.

  `y = x / sqrt(mean(x^2, axis=-1) + epsilon) * scale`, computed in float32 under any policy
  (the mean of squares overflows float16 and loses precision in bfloat16), returned in the
  compute dtype.

  Args:
    epsilon: added to the mean square for numerical stability.

  Call arguments:
    inputs: float tensor `[..., hidden]`.

  Returns:
    A tensor of the same shape.

  Example:

  ```python
  import numpy as np
  from tfllm.layers import RMSNorm

  outputs = np.asarray(RMSNorm()(np.full((1, 2, 4), 3.0, "float32")))
  np.testing.assert_allclose(outputs, 1.0, rtol=1e-5)   # 3 / rms(3) with scale 1
  ```
  """

  def __init__(self, epsilon=1e-6, **kwargs):
    super().__init__(**kwargs)
    self.epsilon = float(epsilon)

  def build(self, input_shape):
    self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")
    self.built = True

  def call(self, inputs):
    x = ops.cast(inputs, "float32")
    x = x * ops.rsqrt(ops.mean(ops.square(x), axis=-1, keepdims=True) + self.epsilon)
    return ops.cast(x * ops.cast(self.scale, "float32"), self.compute_dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(epsilon=self.epsilon)
    return config


def make_norm(normalization, epsilon, name=None):
  """A LayerNorm or RMSNorm by config name; both compute in float32 and return the compute
  dtype (Keras' LayerNormalization upcasts internally, as `RMSNorm` does)."""
  if normalization == "layer_norm":
    return keras.layers.LayerNormalization(epsilon=epsilon, name=name)
  if normalization == "rms_norm":
    return RMSNorm(epsilon=epsilon, name=name)
  raise ValueError(f"normalization={normalization!r} is not known; use 'layer_norm' or 'rms_norm'")
