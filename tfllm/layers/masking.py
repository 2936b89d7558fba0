"""Attention masks: one boolean mask from causal, padding and explicit parts, and the masked score.

Standard attention (`tfllm.layers.attention`) and block-wise attention
(`tfllm.layers.blockwise_attention`) both mask with these, so their outputs agree; neither
module imports the other.
"""

from __future__ import annotations

from keras import ops

# Masked scores are set to this before the float32 softmax: large enough that exp() is 0,
# finite so that a fully masked row (a padded query) gives a uniform row, not NaN.
MASKED_SCORE = -1e9


def compute_attention_mask(query_length, key_length, query_start=0, padding_mask=None,
                           attention_mask=None, causal=False):
  """Merges causal, padding and explicit masks into one boolean mask `[batch|1, q, k]`.

  Args:
    query_length: number of queries `q` (static or a scalar tensor).
    key_length: number of keys `k`.
    query_start: absolute position of the first query (the cache index while decoding); key
      `j` is at position `j`.
    padding_mask: `[batch, k]`, true (or 1) at real keys; padded keys are never attended.
    attention_mask: `[batch, q, k]`, true where query `i` may attend key `j`.
    causal: if true, query at position `p` attends only keys at positions `<= p`.

  Returns:
    A boolean tensor broadcastable to `[batch, q, k]`, or None when nothing is masked.

  Example:

  ```python
  import numpy as np
  from tfllm.layers.masking import compute_attention_mask

  padding = np.array([[True, True, False]])
  mask = compute_attention_mask(3, 3, padding_mask=padding, causal=True)
  assert mask.shape == (1, 3, 3)
  assert not bool(mask[0, 2, 2])  # the padded key is never attended
  ```
  """
  mask = None
  if causal:
    query_positions = ops.arange(query_length) + query_start
    mask = (ops.arange(key_length)[None, :] <= query_positions[:, None])[None, :, :]
  if padding_mask is not None:
    key_mask = ops.cast(padding_mask, "bool")[:, None, :]
    mask = key_mask if mask is None else ops.logical_and(mask, key_mask)
  if attention_mask is not None:
    explicit = ops.cast(attention_mask, "bool")
    mask = explicit if mask is None else ops.logical_and(mask, explicit)
  return mask
