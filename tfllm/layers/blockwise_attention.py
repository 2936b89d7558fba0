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

The loops are two deep (query blocks, then key blocks), forward and backward; each loop body
is one module-level function of a `BlockPlan`, the static geometry and masks of one call.

Masking follows `tfllm.layers.masking.compute_attention_mask`, evaluated per key block,
and gives the same result as `MultiHeadSelfAttention`'s standard path, including its
finite masked score (a query row with no visible key attends uniformly, as there).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from keras import ops

from tfllm.layers.masking import MASKED_SCORE, compute_attention_mask

# Keys that exist only because the last block was padded to `block_size` score lower than
# masked real keys, so they get exactly zero weight even in a row whose real keys are all
# masked (which then stays uniform over the real keys, as in standard attention).
OUT_OF_RANGE_SCORE = 2.0 * MASKED_SCORE


@dataclasses.dataclass(frozen=True)
class BlockPlan:
  """The geometry and masks one `blockwise_attention` call shares among its block steps.

  Attributes:
    batch, q_len, k_len: batch size, query and key lengths (ints or scalar tensors).
    num_kv_heads, groups, head_dim: `K`, `H // K` and `d`.
    block_size, query_block: keys per key block and queries per query block.
    num_blocks, num_query_blocks: how many key and query blocks cover the padded inputs.
    causal, query_start: the causal rule and the absolute position of the first query.
    padding: `[batch, num_blocks * block_size]` bool, true at real keys, or None.
    attention: `[batch, padded queries, padded keys]` bool, or None.
  """
  batch: Any
  q_len: Any
  k_len: Any
  num_kv_heads: int
  groups: int
  head_dim: int
  block_size: int
  query_block: int
  num_blocks: Any
  num_query_blocks: Any
  causal: bool
  query_start: Any
  padding: Any
  attention: Any

  @property
  def stats_shape(self):
    """Shape `[b, K, G, query_block]` of one query block's softmax statistics."""
    return (self.batch, self.num_kv_heads, self.groups, self.query_block)

  @property
  def key_block_shape(self):
    """Shape `[b, block_size, K, d]` of one block of keys or values."""
    return (self.batch, self.block_size, self.num_kv_heads, self.head_dim)


def key_blocks_for(plan, query_index):
  """Key blocks query block `query_index` must visit: up to its last query's position."""
  if not plan.causal:
    return plan.num_blocks
  last_position = plan.query_start + (query_index + 1) * plan.query_block - 1
  return ops.minimum(plan.num_blocks, last_position // plan.block_size + 1)


def query_slice(plan, tensor, query_index):
  """Query block `query_index` of `[b, q, K, G, d]` grouped queries."""
  return ops.slice(tensor, (0, query_index * plan.query_block, 0, 0, 0),
                   (plan.batch, plan.query_block, plan.num_kv_heads, plan.groups, plan.head_dim))


def key_block_slice(plan, tensor, start):
  """The key (or value) block starting at key `start` of `[b, k, K, d]`."""
  return ops.slice(tensor, (0, start, 0, 0), plan.key_block_shape)


def block_scores(plan, q, kp, query_index, index):
  """Masked float32 scores `[b, K, G, query_block, block]` of one query and key block.

  Returns:
    `(scores, mask, in_range, start, key_block)`: `mask` is the block's boolean mask (or
    None), `in_range` is true at real (not block-padding) keys, `start` the block's first key.
  """
  block_size = plan.block_size
  start = index * block_size
  offset = query_index * plan.query_block
  key_block = key_block_slice(plan, kp, start)
  scores = ops.cast(ops.einsum("bqkgd,bskd->bkgqs", q, key_block), "float32")
  block_padding = None
  if plan.padding is not None:
    block_padding = ops.slice(plan.padding, (0, start),
                              (ops.shape(plan.padding)[0], block_size))
  block_attention = None
  if plan.attention is not None:
    block_attention = ops.slice(plan.attention, (0, offset, start),
                                (ops.shape(plan.attention)[0], plan.query_block, block_size))
  # Key j of this block sits at absolute position start + j: shifting the queries' start
  # by -start lets the whole-sequence mask rule serve one block.
  mask = compute_attention_mask(
      plan.query_block, block_size, query_start=plan.query_start + offset - start,
      padding_mask=block_padding, attention_mask=block_attention, causal=plan.causal)
  if mask is not None:
    scores = ops.where(mask[:, None, None, :, :], scores, MASKED_SCORE)
  in_range = (ops.arange(block_size) + start) < plan.k_len
  scores = ops.where(in_range, scores, OUT_OF_RANGE_SCORE)
  return scores, mask, in_range, start, key_block


def forward_key_step(plan, q_block, kp, vp, query_index, index, carry):
  """One key block of the online softmax: updates the running max, sum and accumulator."""
  running_max, running_sum, accumulator = carry
  scores, _, _, start, _ = block_scores(plan, q_block, kp, query_index, index)
  new_max = ops.maximum(running_max, ops.max(scores, axis=-1))
  correction = ops.exp(running_max - new_max)
  weights = ops.exp(scores - new_max[..., None])
  running_sum = running_sum * correction + ops.sum(weights, axis=-1)
  block_out = ops.einsum("bkgqs,bskd->bkgqd", ops.cast(weights, vp.dtype),
                         key_block_slice(plan, vp, start))
  accumulator = accumulator * correction[..., None] + ops.cast(block_out, "float32")
  return new_max, running_sum, accumulator


def forward_query_step(plan, q, kp, vp, value_mean, query_index, outputs):
  """One query block's output and softmax statistics, written into the full buffers."""
  out_buffer, max_buffer, sum_buffer = outputs
  q_block = query_slice(plan, q, query_index)
  stats_shape = plan.stats_shape
  init = (ops.full(stats_shape, 2.0 * OUT_OF_RANGE_SCORE, "float32"),
          ops.zeros(stats_shape, "float32"),
          ops.zeros((*stats_shape, plan.head_dim), "float32"))
  running_max, running_sum, accumulator = ops.fori_loop(
      0, key_blocks_for(plan, query_index),
      lambda index, carry: forward_key_step(plan, q_block, kp, vp, query_index, index, carry),
      init)
  fully_masked = running_max <= 0.5 * MASKED_SCORE
  out = ops.where(fully_masked[..., None], value_mean,
                  accumulator / running_sum[..., None])                # [b, K, G, qb, d]
  offset = query_index * plan.query_block
  out_buffer = ops.slice_update(out_buffer, (0, 0, 0, offset, 0), out)
  max_buffer = ops.slice_update(max_buffer, (0, 0, 0, offset), running_max)
  sum_buffer = ops.slice_update(sum_buffer, (0, 0, 0, offset), running_sum)
  return out_buffer, max_buffer, sum_buffer


def forward(plan, q, kp, vp):
  """The forward pass: `(out [b, K, G, q, d], running_max, running_sum)`, all float32."""
  # A query row that sees no real key (all masked) is uniform over all keys in standard
  # attention: its output is the mean of all values, whatever blocks were skipped (the
  # padded keys' values are zeros, so the sum over `vp` is the sum over real keys).
  value_mean = (ops.sum(ops.cast(vp, "float32"), axis=1)
                / ops.cast(plan.k_len, "float32"))[:, :, None, None, :]            # [b,K,1,1,d]
  padded_q = plan.num_query_blocks * plan.query_block
  full_stats = (plan.batch, plan.num_kv_heads, plan.groups, padded_q)
  return ops.fori_loop(
      0, plan.num_query_blocks,
      lambda query_index, outputs: forward_query_step(plan, q, kp, vp, value_mean,
                                                      query_index, outputs),
      (ops.zeros((*full_stats, plan.head_dim), "float32"), ops.zeros(full_stats, "float32"),
       ops.ones(full_stats, "float32")))


def backward_key_step(plan, q_block, kp, vp, query_index, rows, index, inner):
  """One key block of the backward pass: its probabilities recomputed, gradients added.

  `rows` is the query block's `(d_out, running_max, inverse_sum, correction)`.
  """
  d_query_block, d_key, d_value = inner
  block_d_out, block_max, block_inverse_sum, block_correction = rows
  scores, mask, in_range, start, key_block = block_scores(plan, q_block, kp, query_index,
                                                          index)
  probabilities = (ops.exp(scores - block_max[..., None])
                   * block_inverse_sum[..., None])
  d_value_block = ops.einsum("bkgqs,bkgqd->bskd", probabilities, block_d_out)
  d_prob = ops.einsum("bkgqd,bskd->bkgqs", block_d_out,
                      ops.cast(key_block_slice(plan, vp, start), "float32"))
  d_scores = probabilities * (d_prob - block_correction[..., None])
  # Masked and padded scores are constants in the forward pass: no gradient.
  keep = in_range if mask is None else ops.logical_and(mask[:, None, None, :, :], in_range)
  d_scores = ops.where(keep, d_scores, 0.0)
  d_query_block = d_query_block + ops.einsum("bkgqs,bskd->bqkgd", d_scores,
                                             ops.cast(key_block, "float32"))
  d_key_block = ops.einsum("bkgqs,bqkgd->bskd", d_scores, ops.cast(q_block, "float32"))
  block_shape = plan.key_block_shape
  d_key = ops.slice_update(d_key, (0, start, 0, 0),
                           ops.slice(d_key, (0, start, 0, 0), block_shape) + d_key_block)
  d_value = ops.slice_update(d_value, (0, start, 0, 0),
                             ops.slice(d_value, (0, start, 0, 0), block_shape)
                             + d_value_block)
  return d_query_block, d_key, d_value


def backward_query_step(plan, q, kp, vp, statistics, query_index, carry):
  """One query block's gradients; `statistics` is the whole `(d_out, max, 1/sum, correction)`."""
  d_query, d_key, d_value = carry
  offset = query_index * plan.query_block
  q_block = query_slice(plan, q, query_index)
  d_out = statistics[0]
  block_d_out = ops.slice(d_out, (0, 0, 0, offset, 0),
                          (plan.batch, plan.num_kv_heads, plan.groups, plan.query_block,
                           plan.head_dim))
  rows = (block_d_out,) + tuple(ops.slice(t, (0, 0, 0, offset), plan.stats_shape)
                                for t in statistics[1:])
  d_query_block, d_key, d_value = ops.fori_loop(
      0, key_blocks_for(plan, query_index),
      lambda index, inner: backward_key_step(plan, q_block, kp, vp, query_index, rows,
                                             index, inner),
      (ops.zeros(ops.shape(q_block), "float32"), d_key, d_value))
  d_query = ops.slice_update(d_query, (0, offset, 0, 0, 0), d_query_block)
  return d_query, d_key, d_value


def backward(plan, q, kp, vp, out, running_max, running_sum, upstream):
  """Gradients `(d_q, d_kp, d_vp)` of the forward pass for the `[b, q, K, G, d]` upstream."""
  # The max and sum stay apart: folded into a log-sum-exp, a row of masked scores (-1e9)
  # loses log(sum) to float32 rounding.
  inverse_sum = 1.0 / running_sum
  fully_masked = running_max <= 0.5 * MASKED_SCORE                    # [b, K, G, q]
  d_out = ops.cast(ops.transpose(upstream, (0, 2, 3, 1, 4)), "float32")   # [b,K,G,q,d]
  # Fully masked rows: the mean of all values, so d_value gets d_out / k from them, and
  # their scores (constants) nothing.
  masked_rows = ops.where(fully_masked[..., None], d_out, 0.0)
  d_out = ops.where(fully_masked[..., None], 0.0, d_out)
  uniform = ops.sum(masked_rows, axis=(2, 3)) / ops.cast(plan.k_len, "float32")  # [b, K, d]
  # rowsum(dO * O): the softmax Jacobian's correction term, one number per query.
  correction = ops.sum(d_out * out, axis=-1)
  statistics = (d_out, running_max, inverse_sum, correction)
  init_grads = (ops.zeros(ops.shape(q), "float32"), ops.zeros(ops.shape(kp), "float32"),
                ops.zeros(ops.shape(vp), "float32"))
  d_query, d_key, d_value = ops.fori_loop(
      0, plan.num_query_blocks,
      lambda query_index, carry: backward_query_step(plan, q, kp, vp, statistics,
                                                     query_index, carry),
      init_grads)
  real_key = (ops.arange(ops.shape(vp)[1]) < plan.k_len)[None, :, None, None]
  d_value = d_value + ops.where(real_key, uniform[:, None, :, :], 0.0)
  return (ops.cast(d_query, q.dtype), ops.cast(d_key, kp.dtype), ops.cast(d_value, vp.dtype))


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

  Example:

  ```python
  import numpy as np
  from tfllm.layers.blockwise_attention import blockwise_attention

  rng = np.random.default_rng(0)
  query = rng.normal(size=(1, 10, 4, 8)).astype("float32")
  key = rng.normal(size=(1, 10, 2, 8)).astype("float32")
  value = rng.normal(size=(1, 10, 2, 8)).astype("float32")
  output = blockwise_attention(query, key, value, block_size=4, causal=True)
  assert output.shape == (1, 10, 4, 8)
  ```
  """
  plan, query_p, key_p, value_p = _plan(query, key, value, block_size, causal, query_start,
                                        padding_mask, attention_mask)

  # `attend` reads the tensors it differentiates only from its arguments: JAX's custom
  # gradient must not close over a value being differentiated outside it (docs/stack.md).
  @ops.custom_gradient
  def attend(q, kp, vp):
    out, running_max, running_sum = forward(plan, q, kp, vp)

    def grad(*args, upstream=None):
      if upstream is None:
        (upstream,) = args
      return backward(plan, q, kp, vp, out, running_max, running_sum, upstream)

    result = ops.cast(ops.transpose(out, (0, 3, 1, 2, 4)), vp.dtype)   # [b, q, K, G, d]
    return result, grad

  output = attend(query_p, key_p, value_p)[:, :plan.q_len]
  return ops.reshape(output, (plan.batch, plan.q_len, plan.num_kv_heads * plan.groups,
                              plan.head_dim))


def _plan(query, key, value, block_size, causal, query_start, padding_mask, attention_mask):
  """Validates the arguments; returns the `BlockPlan` and the padded, grouped, scaled inputs."""
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
  plan = BlockPlan(batch=batch, q_len=q_len, k_len=k_len, num_kv_heads=num_kv_heads,
                   groups=groups, head_dim=head_dim, block_size=block_size,
                   query_block=query_block, num_blocks=num_blocks,
                   num_query_blocks=num_query_blocks, causal=causal, query_start=query_start,
                   padding=padding_p, attention=attention_p)
  return plan, query_p, key_p, value_p
