"""Block-wise attention: softmax attention over key/value blocks with an online softmax.

Standard attention materializes the `[queries, keys]` score matrix (per batch row and head),
so its memory grows with the square of the sequence length. Here the keys and values are
visited one block of `block_size` at a time inside a loop, keeping per query only a running
maximum `m`, a running sum `l` of `exp(score - m)` and a running weighted sum of values
(Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"; the same
recurrence as FlashAttention, Dao et al. 2022). Queries are tiled into blocks of the same
size, so live memory is one `[block_size, block_size]` score block per head: linear in the
sequence length. Under a causal mask a query block stops at the diagonal, skipping the key
blocks masked for all its queries (about half the work of a long sequence).

The gradient is custom as well: the backward pass recomputes each block's probabilities
from the saved softmax statistics instead of keeping every block's scores for back-propagation,
so training memory is linear too (FlashAttention's backward, algorithm 2).

Masking follows `tfllm.layers.attention.compute_attention_mask`, evaluated per key block,
and gives the same result as `MultiHeadSelfAttention`'s standard path, including its
finite masked score (a query row with no visible key attends uniformly, as there).
"""

from __future__ import annotations

import math

from keras import ops

# A module import (not `from ... import name`): `attention` imports this module to dispatch
# to it, so names are read from it at call time.
from tfllm.layers import attention as attention_lib


def blockwise_attention(query, key, value, block_size, causal=False, query_start=0,
                        padding_mask=None, attention_mask=None):
  """`softmax(Q K^T / sqrt(d)) V` computed over key/value blocks of `block_size`.

  Args:
    query: `[batch, q, H, d]` queries (not yet scaled).
    key: `[batch, k, K, d]` keys; `K` divides `H` (grouped-query attention: each group of
      `H // K` query heads shares one key/value head).
    value: `[batch, k, K, d]` values.
    block_size: keys per block (> 0). `k` need not be a multiple: the last block is padded.
    causal: query at absolute position `query_start + i` attends keys at positions `<= it`.
    query_start: absolute position of the first query (the cache index while decoding).
    padding_mask: `[batch, k]`, true at real keys.
    attention_mask: `[batch, q, k]`, true where attending is allowed.

  Returns:
    `[batch, q, H, d]` in the dtype of `value`. Scores, the softmax statistics and the
    accumulator are float32 under any precision policy.
  """
  masked_score = attention_lib._MASKED_SCORE
  # Keys that exist only because the last block was padded to `block_size` score lower than
  # masked real keys, so they get exactly zero weight even in a row whose real keys are all
  # masked (which then stays uniform over the real keys, as in standard attention).
  out_of_range_score = 2.0 * masked_score
  block_size = int(block_size)
  if block_size < 1:
    raise ValueError(f"block_size={block_size} must be a positive number of keys")
  num_heads, head_dim = query.shape[2], query.shape[3]
  num_kv_heads = key.shape[2]
  if num_heads % num_kv_heads:
    raise ValueError(f"key/value heads ({num_kv_heads}) must divide query heads ({num_heads})")
  batch, q_len = ops.shape(query)[0], ops.shape(query)[1]
  k_len = ops.shape(key)[1]
  groups = num_heads // num_kv_heads
  if key.shape[1] is not None:
    block_size = min(block_size, key.shape[1])

  # [b, q, K, G, d]: G query heads share one KV head without repeating keys and values.
  grouped = ops.reshape(query, (batch, q_len, num_kv_heads, groups, head_dim))
  grouped = grouped * ops.cast(1.0 / math.sqrt(head_dim), grouped.dtype)
  key = ops.cast(key, grouped.dtype)
  value = ops.cast(value, grouped.dtype)

  # Queries are tiled too, so that under a causal mask each query block stops at the
  # diagonal: the key blocks after it are masked for all its queries and are skipped.
  query_block = block_size if query.shape[1] is None else min(block_size, query.shape[1])
  num_blocks = (k_len + block_size - 1) // block_size
  num_query_blocks = (q_len + query_block - 1) // query_block
  pad = num_blocks * block_size - k_len
  query_pad = num_query_blocks * query_block - q_len
  key_p = ops.pad(key, ((0, 0), (0, pad), (0, 0), (0, 0)))
  value_p = ops.pad(value, ((0, 0), (0, pad), (0, 0), (0, 0)))
  query_p = ops.pad(grouped, ((0, 0), (0, query_pad), (0, 0), (0, 0), (0, 0)))
  padding_p = None
  if padding_mask is not None:
    padding_p = ops.pad(ops.cast(padding_mask, "bool"), ((0, 0), (0, pad)))
  attention_p = None
  if attention_mask is not None:
    attention_p = ops.pad(ops.cast(attention_mask, "bool"),
                          ((0, 0), (0, query_pad), (0, pad)))

  def key_blocks_for(query_index):
    """Key blocks query block `query_index` must visit: up to its last query's position."""
    if not causal:
      return num_blocks
    last_position = query_start + (query_index + 1) * query_block - 1
    return ops.minimum(num_blocks, last_position // block_size + 1)

  def query_slice(tensor, query_index):
    return ops.slice(tensor, (0, query_index * query_block, 0, 0, 0),
                     (batch, query_block, num_kv_heads, groups, head_dim))

  def block_scores(q, kp, query_index, index):
    """Masked float32 scores `[b, K, G, query_block, block]` of one query and key block."""
    start = index * block_size
    offset = query_index * query_block
    key_block = ops.slice(kp, (0, start, 0, 0), (batch, block_size, num_kv_heads, head_dim))
    scores = ops.cast(ops.einsum("bqkgd,bskd->bkgqs", q, key_block), "float32")
    block_padding = None
    if padding_p is not None:
      block_padding = ops.slice(padding_p, (0, start), (ops.shape(padding_p)[0], block_size))
    block_attention = None
    if attention_p is not None:
      block_attention = ops.slice(attention_p, (0, offset, start),
                                  (ops.shape(attention_p)[0], query_block, block_size))
    # Key j of this block sits at absolute position start + j: shifting the queries' start
    # by -start lets the whole-sequence mask rule serve one block.
    mask = attention_lib.compute_attention_mask(
        query_block, block_size, query_start=query_start + offset - start,
        padding_mask=block_padding, attention_mask=block_attention, causal=causal)
    if mask is not None:
      scores = ops.where(mask[:, None, None, :, :], scores, masked_score)
    in_range = (ops.arange(block_size) + start) < k_len
    scores = ops.where(in_range, scores, out_of_range_score)
    return scores, mask, in_range, start, key_block

  def value_block(vp, start):
    return ops.slice(vp, (0, start, 0, 0), (batch, block_size, num_kv_heads, head_dim))

  stats_shape = (batch, num_kv_heads, groups, query_block)

  # `attend` reads the tensors it differentiates only from its arguments: JAX's custom
  # gradient must not close over a value being differentiated outside it (docs/stack.md).
  @ops.custom_gradient
  def attend(q, kp, vp):
    # A query row that sees no real key (all masked) is uniform over all keys in standard
    # attention: its output is the mean of all values, whatever blocks were skipped (the
    # padded keys' values are zeros, so the sum over `vp` is the sum over real keys).
    value_mean = (ops.sum(ops.cast(vp, "float32"), axis=1)
                  / ops.cast(k_len, "float32"))[:, :, None, None, :]            # [b,K,1,1,d]

    def forward_query_block(query_index, outputs):
      out_buffer, max_buffer, sum_buffer = outputs
      q_block = query_slice(q, query_index)

      def forward_block(index, carry):
        running_max, running_sum, accumulator = carry
        scores, _, _, start, _ = block_scores(q_block, kp, query_index, index)
        new_max = ops.maximum(running_max, ops.max(scores, axis=-1))
        correction = ops.exp(running_max - new_max)
        weights = ops.exp(scores - new_max[..., None])
        running_sum = running_sum * correction + ops.sum(weights, axis=-1)
        block_out = ops.einsum("bkgqs,bskd->bkgqd", ops.cast(weights, vp.dtype),
                               value_block(vp, start))
        accumulator = accumulator * correction[..., None] + ops.cast(block_out, "float32")
        return new_max, running_sum, accumulator

      init = (ops.full(stats_shape, 2.0 * out_of_range_score, "float32"),
              ops.zeros(stats_shape, "float32"),
              ops.zeros((*stats_shape, head_dim), "float32"))
      running_max, running_sum, accumulator = ops.fori_loop(
          0, key_blocks_for(query_index), forward_block, init)
      fully_masked = running_max <= 0.5 * masked_score
      out = ops.where(fully_masked[..., None], value_mean,
                      accumulator / running_sum[..., None])            # [b, K, G, qb, d]
      offset = query_index * query_block
      out_buffer = ops.slice_update(out_buffer, (0, 0, 0, offset, 0), out)
      max_buffer = ops.slice_update(max_buffer, (0, 0, 0, offset), running_max)
      sum_buffer = ops.slice_update(sum_buffer, (0, 0, 0, offset), running_sum)
      return out_buffer, max_buffer, sum_buffer

    padded_q = num_query_blocks * query_block
    full_stats = (batch, num_kv_heads, groups, padded_q)
    out, running_max, running_sum = ops.fori_loop(
        0, num_query_blocks, forward_query_block,
        (ops.zeros((*full_stats, head_dim), "float32"), ops.zeros(full_stats, "float32"),
         ops.ones(full_stats, "float32")))
    # The backward pass needs max and sum apart: folded into a log-sum-exp, a row of masked
    # scores (-1e9) loses log(sum) to float32 rounding.
    inverse_sum = 1.0 / running_sum
    fully_masked = running_max <= 0.5 * masked_score                  # [b, K, G, q]

    def grad(*args, upstream=None):
      if upstream is None:
        (upstream,) = args
      d_out = ops.cast(ops.transpose(upstream, (0, 2, 3, 1, 4)), "float32")   # [b,K,G,q,d]
      # Fully masked rows: the mean of all values, so d_value gets d_out / k from them, and
      # their scores (constants) nothing.
      masked_rows = ops.where(fully_masked[..., None], d_out, 0.0)
      d_out = ops.where(fully_masked[..., None], 0.0, d_out)
      uniform = ops.sum(masked_rows, axis=(2, 3)) / ops.cast(k_len, "float32")  # [b, K, d]
      # rowsum(dO * O): the softmax Jacobian's correction term, one number per query.
      correction = ops.sum(d_out * out, axis=-1)

      def backward_query_block(query_index, carry):
        d_query, d_key, d_value = carry
        offset = query_index * query_block
        q_block = query_slice(q, query_index)
        rows = lambda t: ops.slice(t, (0, 0, 0, offset), (batch, num_kv_heads, groups,  # noqa: E731
                                                          query_block))
        block_d_out = ops.slice(d_out, (0, 0, 0, offset, 0),
                                (batch, num_kv_heads, groups, query_block, head_dim))
        block_max, block_inverse_sum, block_correction = (
            rows(running_max), rows(inverse_sum), rows(correction))

        def backward_block(index, inner):
          d_query_block, d_key, d_value = inner
          scores, mask, in_range, start, key_block = block_scores(q_block, kp, query_index,
                                                                  index)
          probabilities = (ops.exp(scores - block_max[..., None])
                           * block_inverse_sum[..., None])
          d_value_block = ops.einsum("bkgqs,bkgqd->bskd", probabilities, block_d_out)
          d_prob = ops.einsum("bkgqd,bskd->bkgqs", block_d_out,
                              ops.cast(value_block(vp, start), "float32"))
          d_scores = probabilities * (d_prob - block_correction[..., None])
          # Masked and padded scores are constants in the forward pass: no gradient.
          keep = in_range if mask is None else ops.logical_and(mask[:, None, None, :, :],
                                                               in_range)
          d_scores = ops.where(keep, d_scores, 0.0)
          d_query_block = d_query_block + ops.einsum("bkgqs,bskd->bqkgd", d_scores,
                                                     ops.cast(key_block, "float32"))
          d_key_block = ops.einsum("bkgqs,bqkgd->bskd", d_scores,
                                   ops.cast(q_block, "float32"))
          block_shape = (batch, block_size, num_kv_heads, head_dim)
          d_key = ops.slice_update(d_key, (0, start, 0, 0),
                                   ops.slice(d_key, (0, start, 0, 0), block_shape)
                                   + d_key_block)
          d_value = ops.slice_update(d_value, (0, start, 0, 0),
                                     ops.slice(d_value, (0, start, 0, 0), block_shape)
                                     + d_value_block)
          return d_query_block, d_key, d_value

        d_query_block, d_key, d_value = ops.fori_loop(
            0, key_blocks_for(query_index), backward_block,
            (ops.zeros(ops.shape(q_block), "float32"), d_key, d_value))
        d_query = ops.slice_update(d_query, (0, offset, 0, 0, 0), d_query_block)
        return d_query, d_key, d_value

      init_grads = (ops.zeros(ops.shape(q), "float32"), ops.zeros(ops.shape(kp), "float32"),
                    ops.zeros(ops.shape(vp), "float32"))
      d_query, d_key, d_value = ops.fori_loop(0, num_query_blocks, backward_query_block,
                                              init_grads)
      real_key = (ops.arange(ops.shape(vp)[1]) < k_len)[None, :, None, None]
      d_value = d_value + ops.where(real_key, uniform[:, None, :, :], 0.0)
      return (ops.cast(d_query, q.dtype), ops.cast(d_key, kp.dtype),
              ops.cast(d_value, vp.dtype))

    result = ops.cast(ops.transpose(out, (0, 3, 1, 2, 4)), vp.dtype)   # [b, q, K, G, d]
    return result, grad

  output = attend(query_p, key_p, value_p)[:, :q_len]
  return ops.reshape(output, (batch, q_len, num_heads, head_dim))

