"""Token and position embeddings."""

from __future__ import annotations

import math

import keras
from keras import ops

from tfllm.layers.initializers import clone_initializer


@keras.saving.register_keras_serializable(package="tfllm")
class TokenEmbedding(keras.layers.Embedding):
  """Token embedding whose table also projects hidden states back to vocabulary logits.

  Tying the output projection to the input table (GPT-2, BERT) saves `vocab * hidden`
  parameters and is what the published checkpoints do.

  Args:
    input_dim: vocabulary size.
    output_dim: embedding (hidden) size.
    **kwargs: passed to `keras.layers.Embedding` (initializer, regularizer, name, dtype).

  Call arguments:
    inputs: int tensor `[batch, seq]` of token ids, or with `reverse=True` a float tensor
      `[..., output_dim]` of hidden states.
    reverse: if True, returns logits `[..., input_dim]` in float32 (computed in the compute
      dtype, then cast: under mixed precision the matmul runs in bf16/fp16 like every other
      matmul, and the softmax/loss that follow see float32).

  Example:

  ```python
  import numpy as np
  from tfllm.layers import TokenEmbedding

  embedding = TokenEmbedding(50, 8)
  hidden = embedding(np.array([[1, 2, 3]]))        # [1, 3, 8]
  logits = embedding(hidden, reverse=True)         # [1, 3, 50], through the same table
  assert hidden.shape == (1, 3, 8) and logits.shape == (1, 3, 50)
  ```
  """

  def call(self, inputs, reverse=False):
    if not reverse:
      return super().call(inputs)
    table = ops.cast(self.embeddings, self.compute_dtype)
    logits = ops.matmul(ops.cast(inputs, self.compute_dtype), ops.transpose(table))
    return ops.cast(logits, "float32")

  def compute_output_shape(self, input_shape, reverse=False):
    if reverse:
      return (*input_shape[:-1], self.input_dim)
    return super().compute_output_shape(input_shape)


@keras.saving.register_keras_serializable(package="tfllm")
class PositionEmbedding(keras.layers.Layer):
  """Learned absolute position embedding (GPT-2, BERT).

  Args:
    max_sequence_length: number of positions the table holds.
    initializer: initializer of the `[max_sequence_length, hidden]` table.

  Call arguments:
    inputs: float tensor `[batch, seq, hidden]` (only its shape is read).
    start_index: position of the first element of `inputs` (non-zero while decoding with a
      KV cache).

  Returns:
    `[1, seq, hidden]` position embeddings, broadcastable onto `inputs`.

  Example:

  ```python
  import numpy as np
  from tfllm.layers import PositionEmbedding

  positions = PositionEmbedding(max_sequence_length=32)
  table = positions(np.zeros((2, 5, 8), "float32"))   # one row per position, broadcast over batch
  assert table.shape == (1, 5, 8)
  ```
  """

  def __init__(self, max_sequence_length, initializer="glorot_uniform", **kwargs):
    super().__init__(**kwargs)
    self.max_sequence_length = int(max_sequence_length)
    self.initializer = keras.initializers.get(initializer)

  def build(self, input_shape):
    self.position_embeddings = self.add_weight(
        name="embeddings", shape=(self.max_sequence_length, input_shape[-1]),
        initializer=clone_initializer(self.initializer))
    self.built = True

  def call(self, inputs, start_index=0):
    seq_length = ops.shape(inputs)[1]
    table = ops.convert_to_tensor(self.position_embeddings)
    positions = ops.slice(table, (start_index, 0), (seq_length, ops.shape(table)[-1]))
    return ops.expand_dims(ops.cast(positions, self.compute_dtype), 0)

  def compute_output_shape(self, input_shape):
    return (1, *input_shape[1:])

  def get_config(self):
    config = super().get_config()
    config.update(max_sequence_length=self.max_sequence_length,
                  initializer=keras.initializers.serialize(self.initializer))
    return config


@keras.saving.register_keras_serializable(package="tfllm")
class SinusoidalPositionEncoding(keras.layers.Layer):
  """The original Transformer's fixed sin/cos position encoding (Vaswani et al., 3.5).

  `PE[pos, 2i] = sin(pos / max_wavelength^(2i/d))`, `PE[pos, 2i+1] = cos(...)`: sines and
  cosines interleaved, as in the paper and `keras_hub.layers.SinePositionEncoding`
  (tensor2tensor and Model Garden concatenate all sines then all cosines instead).

  Args:
    max_wavelength: the base of the geometric progression of wavelengths.

  Call arguments:
    inputs: float tensor `[batch, seq, hidden]` (only its shape is read; hidden must be even).
    start_index: position of the first element.

  Returns:
    `[1, seq, hidden]` encodings in the compute dtype (computed in float32).

  Example:

  ```python
  import numpy as np
  from tfllm.layers import SinusoidalPositionEncoding

  encoding = SinusoidalPositionEncoding()(np.zeros((2, 5, 8), "float32"), start_index=3)
  assert encoding.shape == (1, 5, 8)               # positions 3..7, no weights
  ```
  """

  def __init__(self, max_wavelength=10000.0, **kwargs):
    super().__init__(**kwargs)
    self.max_wavelength = float(max_wavelength)

  def call(self, inputs, start_index=0):
    seq_length, hidden = ops.shape(inputs)[1], inputs.shape[-1]
    positions = ops.cast(ops.arange(seq_length) + start_index, "float32")
    pair_index = ops.cast(ops.arange(hidden) // 2, "float32")
    inverse_wavelengths = ops.exp(-math.log(self.max_wavelength) * 2.0 * pair_index / hidden)
    angles = positions[:, None] * inverse_wavelengths[None, :]
    is_odd = ops.cast(ops.arange(hidden) % 2, "float32")
    encoding = ops.sin(angles) * (1.0 - is_odd) + ops.cos(angles) * is_odd
    return ops.expand_dims(ops.cast(encoding, self.compute_dtype), 0)

  def compute_output_shape(self, input_shape):
    return (1, *input_shape[1:])

  def get_config(self):
    config = super().get_config()
    config.update(max_wavelength=self.max_wavelength)
    return config
