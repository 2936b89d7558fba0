"""Bottleneck adapter: a small residual MLP inserted into a frozen Transformer block."""

from __future__ import annotations

import keras
from keras import ops

ADAPTER_ACTIVATIONS = ("relu", "gelu", "swish")
ADAPTER_PLACEMENTS = ("houlsby", "pfeiffer")


@keras.saving.register_keras_serializable(package="tfllm")
class Adapter(keras.layers.Layer):
  """`x + up(act(down(x)))` (Houlsby et al., 2019), starting as the identity.

  The down-projection maps the hidden width to a small `bottleneck_dim`, the up-projection
  maps back; both have biases. The up-projection's kernel and bias start at zero, so a new
  adapter returns its input exactly and a pretrained model with fresh adapters computes what
  it computed without them; training then moves the up-projection away from zero.

  Args:
    bottleneck_dim: width of the bottleneck, >= 1 (MiniLM-L6's 384 at 24 is
      `384 * 24 + 24 + 24 * 384 + 384 = 18,840` parameters).
    activation: `relu`, `gelu` (exact) or `swish` (SiLU) between the projections.
    kernel_initializer: initializer of the down-projection kernel.

  Call arguments:
    inputs: `[..., hidden]`.

  Returns:
    `[..., hidden]`, the input plus the bottleneck's output, in the compute dtype.

  Example:

  ```python
  import numpy as np
  from tfllm.layers import Adapter

  inputs = np.random.default_rng(0).normal(size=(2, 5, 32)).astype("float32")
  adapter = Adapter(bottleneck_dim=4)
  np.testing.assert_allclose(adapter(inputs), inputs)   # the identity until trained
  ```
  """

  def __init__(self, bottleneck_dim, activation="relu", kernel_initializer="glorot_uniform",
               **kwargs):
    super().__init__(**kwargs)
    if isinstance(bottleneck_dim, bool) or int(bottleneck_dim) != bottleneck_dim or (
        bottleneck_dim < 1):
      raise ValueError(f"bottleneck_dim={bottleneck_dim!r} is not accepted; use an "
                       "integer >= 1")
    if activation not in ADAPTER_ACTIVATIONS:
      raise ValueError(f"activation={activation!r} is not known; use one of: "
                       f"{', '.join(ADAPTER_ACTIVATIONS)}")
    self.bottleneck_dim = int(bottleneck_dim)
    self.activation = activation
    self.kernel_initializer = keras.initializers.get(kernel_initializer)

  def build(self, input_shape):
    hidden = input_shape[-1]
    self.down = keras.layers.Dense(self.bottleneck_dim, kernel_initializer=self.kernel_initializer,
                                   dtype=self.dtype_policy, name="down")
    self.down.build(input_shape)
    self.up = keras.layers.Dense(hidden, kernel_initializer="zeros", bias_initializer="zeros",
                                 dtype=self.dtype_policy, name="up")
    self.up.build((*input_shape[:-1], self.bottleneck_dim))
    self.built = True

  def call(self, inputs):
    hidden = self.down(inputs)
    if self.activation == "relu":
      hidden = ops.relu(hidden)
    elif self.activation == "gelu":
      hidden = ops.gelu(hidden, approximate=False)
    else:
      hidden = ops.silu(hidden)
    return inputs + self.up(hidden)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(bottleneck_dim=self.bottleneck_dim, activation=self.activation,
                  kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
    return config
