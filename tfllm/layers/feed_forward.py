"""Position-wise feed-forward network: a GELU/ReLU MLP or a SwiGLU gated unit."""

from __future__ import annotations

import keras
from keras import ops

from tfllm.layers.initializers import clone_initializer

ACTIVATIONS = ("gelu", "gelu_approximate", "relu", "swiglu")


@keras.saving.register_keras_serializable(package="tfllm")
class FeedForward(keras.layers.Layer):
  """`down(act(up(x)))`, or for SwiGLU `down(silu(gate(x)) * up(x))` (Shazeer, 2020).

  Args:
    intermediate_dim: width of the hidden layer.
    activation: `gelu` (exact, BERT), `gelu_approximate` (tanh form, GPT-2), `relu`, or
      `swiglu` (Llama; adds a gate projection).
    use_bias: whether the projections have biases.
    dropout: dropout rate on the output.
    kernel_initializer: initializer of the kernels (each kernel gets a clone: SwiGLU's gate
      never starts equal to its up projection).

  Call arguments:
    inputs: `[..., hidden]`.
    training: enables dropout.

  Returns:
    `[..., hidden]`.

  Example:

  ```python
  import numpy as np
  from tfllm.layers import FeedForward

  layer = FeedForward(intermediate_dim=64, activation="swiglu", use_bias=False)
  assert layer(np.zeros((2, 5, 32), "float32")).shape == (2, 5, 32)
  ```
  """

  # The down projection's bias; a tensor-parallel shard (`tfllm.layers.tensor_parallel`)
  # whose partial outputs are summed leaves it out on all shards but one.
  has_output_bias = True

  def __init__(self, intermediate_dim, activation="gelu", use_bias=True, dropout=0.0,
               kernel_initializer="glorot_uniform", **kwargs):
    super().__init__(**kwargs)
    if activation not in ACTIVATIONS:
      raise ValueError(f"activation={activation!r} is not known; use one of: "
                       f"{', '.join(ACTIVATIONS)}")
    self.intermediate_dim = int(intermediate_dim)
    self.activation = activation
    self.use_bias = bool(use_bias)
    self.dropout = float(dropout)
    self.kernel_initializer = keras.initializers.get(kernel_initializer)

  def _dense(self, units, name, use_bias=True):
    return keras.layers.Dense(units, use_bias=self.use_bias and use_bias, name=name,
                              kernel_initializer=clone_initializer(self.kernel_initializer),
                              dtype=self.dtype_policy)

  def build(self, input_shape):
    hidden = input_shape[-1]
    self.up = self._dense(self.intermediate_dim, "up")
    self.up.build(input_shape)
    self.gate = None
    if self.activation == "swiglu":
      self.gate = self._dense(self.intermediate_dim, "gate")
      self.gate.build(input_shape)
    self.down = self._dense(hidden, "down", use_bias=self.has_output_bias)
    self.down.build((*input_shape[:-1], self.intermediate_dim))
    self.output_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
    self.built = True

  def call(self, inputs, training=None):
    hidden = self.up(inputs)
    if self.activation == "swiglu":
      hidden = ops.silu(self.gate(inputs)) * hidden
    elif self.activation == "relu":
      hidden = ops.relu(hidden)
    else:
      hidden = ops.gelu(hidden, approximate=self.activation == "gelu_approximate")
    return self.output_dropout(self.down(hidden), training=training)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(intermediate_dim=self.intermediate_dim, activation=self.activation,
                  use_bias=self.use_bias, dropout=self.dropout,
                  kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
    return config
