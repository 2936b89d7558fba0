"""Copies weights from Keras / KerasHub reference layers into tfllm layers."""

import numpy as np


def copy_mha_into_attention(mha, attention):
  """`keras.layers.MultiHeadAttention` (separate q/k/v EinsumDense) -> fused QKV attention."""
  q_kernel, q_bias = mha._query_dense.get_weights()
  k_kernel, k_bias = mha._key_dense.get_weights()
  v_kernel, v_bias = mha._value_dense.get_weights()
  out_kernel, out_bias = mha._output_dense.get_weights()
  hidden = q_kernel.shape[0]
  kernel = np.concatenate([w.reshape(hidden, -1) for w in (q_kernel, k_kernel, v_kernel)], -1)
  bias = np.concatenate([b.reshape(-1) for b in (q_bias, k_bias, v_bias)])
  attention.qkv.set_weights([kernel, bias])
  attention.output_projection.set_weights([out_kernel.reshape(-1, hidden), out_bias])


def copy_keras_hub_block(reference, block):
  """`keras_hub.layers.TransformerEncoder/Decoder` (self-attention only) -> TransformerBlock."""
  copy_mha_into_attention(reference._self_attention_layer, block.attention)
  block.attention_norm.set_weights(reference._self_attention_layer_norm.get_weights())
  block.feed_forward.up.set_weights(reference._feedforward_intermediate_dense.get_weights())
  block.feed_forward.down.set_weights(reference._feedforward_output_dense.get_weights())
  block.feed_forward_norm.set_weights(reference._feedforward_layer_norm.get_weights())
