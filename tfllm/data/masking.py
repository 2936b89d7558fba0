"""BERT's dynamic masking as a stateless function of a seed (masked LM pretraining)."""

from __future__ import annotations

import tensorflow as tf

# BERT's split of the selected tokens: 80% become [MASK], 10% a random token, 10% stay.
MASK_TOKEN_RATE, RANDOM_TOKEN_RATE = 0.8, 0.1


def _select_positions(token_ids, order_seed, selection_rate: float, max_predictions: int,
                      unselectable_ids):
  """Positions to predict: `(positions, used, width)`, `[rows, width]` each, increasing
  positions with unused slots (0) last; `width = min(max_predictions, length)`."""
  rows = tf.shape(token_ids)[0]
  # A static length keeps the outputs' widths static (compiled steps need static shapes).
  length = token_ids.shape[1] if token_ids.shape[1] is not None else tf.shape(token_ids)[1]
  selectable = tf.ones_like(token_ids, tf.bool)
  for unselectable in unselectable_ids:
    selectable &= tf.not_equal(token_ids, unselectable)
  # A random priority per token, unselectable ones last; the first `count` by priority win.
  priority = tf.random.stateless_uniform([rows, length], order_seed)
  priority = tf.where(selectable, priority, 2.0)
  width = (min(max_predictions, length) if isinstance(length, int)
           else tf.minimum(max_predictions, length))
  _, candidates = tf.math.top_k(-priority, k=width)
  selectable_count = tf.reduce_sum(tf.cast(selectable, tf.float32), axis=1)
  count = tf.cast(tf.minimum(tf.math.ceil(selection_rate * selectable_count),
                             tf.cast(width, tf.float32)), tf.int32)
  used = tf.range(width)[None, :] < count[:, None]
  # Increasing positions, unused slots last (sorted after every real position).
  positions = tf.sort(tf.where(used, candidates, length), axis=1)
  used = positions < length
  return tf.where(used, positions, 0), used, width


def mask_tokens(token_ids, seed, vocabulary_size: int, mask_id: int, selection_rate: float,
                max_predictions: int, unselectable_ids=()):
  """BERT's dynamic masking as a stateless function of `seed`: same seed, same masks.

  Each row gets `min(ceil(selection_rate * selectable), max_predictions)` positions, drawn
  uniformly among its selectable tokens (those not in `unselectable_ids`), the rule of
  keras-hub's `MaskedLMMaskGenerator`; of these, 80% become `mask_id`, 10% a token drawn
  uniformly from the vocabulary and 10% keep their id. Stateless random ops make the masks
  independent of which parallel call computes them and in what order (a stateful generator
  is read in whatever order the calls run), so a pipeline repeats itself exactly.

  Args:
    token_ids: int32 `[rows, length]`.
    seed: int `[2]` tensor, e.g. `tf.random.experimental.stateless_fold_in(base, batch)`.
    vocabulary_size: random replacements are drawn from `[0, vocabulary_size)`.
    mask_id: the `[MASK]` token.
    selection_rate: share of the selectable tokens to predict.
    max_predictions: `P`, predictions a row at most (the width of the outputs).
    unselectable_ids: token ids never selected (special tokens).

  Returns:
    dict: `token_ids` int32 `[rows, length]` (masked), `mask_positions` int32 `[rows, P]`
    (increasing, then 0 in unused slots), `mask_ids` int32 `[rows, P]` (the original ids,
    0 in unused slots), `mask_weights` float32 `[rows, P]` (1 on used slots).

  Example:

  >>> ids = tf.constant([[1, 5, 6, 7, 8, 2]])
  >>> out = mask_tokens(ids, tf.constant([0, 7]), 10, 3, 0.5, 4, unselectable_ids=(1, 2))
  >>> int(out["mask_weights"].numpy().sum())  # ceil(0.5 x 4 selectable)
  2
  """
  token_ids = tf.convert_to_tensor(token_ids, tf.int32)
  rows = tf.shape(token_ids)[0]
  order_seed, kind_seed, token_seed = tf.unstack(
      tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3))
  positions, used, width = _select_positions(token_ids, order_seed, selection_rate,
                                             max_predictions, unselectable_ids)
  original = tf.gather(token_ids, positions, batch_dims=1)
  kind = tf.random.stateless_uniform([rows, width], kind_seed)
  random_ids = tf.random.stateless_uniform([rows, width], token_seed, minval=0,
                                           maxval=vocabulary_size, dtype=tf.int32)
  replacement = tf.where(kind < MASK_TOKEN_RATE, mask_id,
                         tf.where(kind < MASK_TOKEN_RATE + RANDOM_TOKEN_RATE, random_ids,
                                  original))
  row_index = tf.broadcast_to(tf.range(rows)[:, None], [rows, width])
  updates = tf.boolean_mask(tf.stack([row_index, positions], axis=-1), used)
  masked = tf.tensor_scatter_nd_update(token_ids, updates, tf.boolean_mask(replacement, used))

  def to_predictions(values):
    padded = tf.pad(values, [[0, 0], [0, max_predictions - width]])
    return tf.ensure_shape(padded, [token_ids.shape[0], max_predictions])

  return {"token_ids": masked,
          "mask_positions": to_predictions(positions),
          "mask_ids": to_predictions(tf.where(used, original, 0)),
          "mask_weights": to_predictions(tf.cast(used, tf.float32))}
