"""A linear-chain CRF over a tagging head's words: learned tag-transition scores, trained by
the sentence's log-likelihood and decoded by Viterbi (`config.task.decoding = "crf"`).

The head scores each word's tags on its own (emissions); the CRF adds a learned score for
each pair of consecutive tags (`transitions[previous, next]`) and for the first tag
(`start`), and models the whole sentence's tags:
`p(y | x) = exp(sum_i emissions[i, y_i] + start[y_0] + sum_i transitions[y_i-1, y_i]) / Z`.
Training maximizes `log p` of the gold tags (`crf_log_likelihood`; `Z` by the forward
algorithm, in log space). Decoding takes the best sequence by Viterbi over the learned
scores with IOB2's invalid steps forbidden as `iob2_viterbi` does
(`tfllm.tagging.decoding`): the fixed table of that decoding plus what training learned.
Training itself is not constrained, so gold tags that break IOB2 (noisy data) cost a finite
loss rather than an unbounded one.

A CRF head returns `TagScores` instead of a logits tensor; the loss, the metrics, the
served signatures, LiteRT and ensembles read it where they read logits.
"""

from __future__ import annotations

import tensorflow as tf

from tfllm.tagging.scores import TagScores


def _forward_scan(emissions, active, transitions, start):
  """log Z of each row: the log-sum over all tag sequences of its active steps (in order;
  the others are skipped) of their scores (forward algorithm). `emissions` float32
  `[batch, steps, tags]`, `active` bool `[batch, steps]`."""
  # One more, never active step: the scan then runs over at least one element (a scan over
  # none fails to stack when the batch size is unknown, as in a serving signature).
  emissions = tf.pad(emissions, [[0, 0], [0, 1], [0, 0]])
  active = tf.pad(active, [[0, 0], [0, 1]])
  steps = tf.transpose(emissions, [1, 0, 2])                 # [steps, batch, tags]
  step_active = tf.transpose(active)                         # [steps, batch]

  def forward(state, inputs):
    alpha, started = state
    step_emissions, keep = inputs
    chained = tf.reduce_logsumexp(alpha[:, :, None] + transitions[None], axis=1)
    new = tf.where(started[:, None], chained, start[None]) + step_emissions
    return tf.where(keep[:, None], new, alpha), tf.logical_or(started, keep)

  initial = (tf.zeros_like(steps[0]), tf.zeros_like(step_active[0]))
  alpha = tf.scan(forward, (steps, step_active), initializer=initial)[0][-1]
  return tf.reduce_logsumexp(alpha, axis=-1)


def _log_likelihood(emissions, tags, word_mask, transitions, start):
  """`log p(tags | emissions)` of each row's words, the steps where `word_mask` is True, in
  order, read where they sit: `emissions` float `[batch, steps, num_tags]`, `tags` int
  `[batch, steps]`, `word_mask` bool `[batch, steps]`. A row without words scores 0.

  The words are not gathered to the front of their rows: under XLA on CPU, a sort on the
  differentiable path made the MiniLM NER training step 3x slower (docs/finetuning.md, CRF
  tagging)."""
  emissions = tf.cast(emissions, tf.float32)
  transitions = tf.cast(transitions, tf.float32)
  start = tf.cast(start, tf.float32)
  tags = tf.cast(tags, tf.int32)
  word_mask = tf.cast(word_mask, tf.bool)
  mask = tf.cast(word_mask, tf.float32)
  unary = tf.reduce_sum(tf.gather(emissions, tags, batch_dims=2) * mask, axis=1)
  # Each step's previous word: the last word step before it (-1: none).
  positions = tf.range(tf.shape(tags)[1])
  earlier = word_mask[:, None, :] & (positions[None, :, None] > positions[None, None, :])
  previous = tf.reduce_max(tf.where(earlier, positions[None, None, :], -1), axis=2)
  follows = word_mask & (previous >= 0)
  previous_tags = tf.gather(tags, tf.maximum(previous, 0), batch_dims=1)
  pairs = tf.stack([previous_tags, tags], axis=-1)
  binary = tf.reduce_sum(tf.gather_nd(transitions, pairs) * tf.cast(follows, tf.float32),
                         axis=1)
  first = tf.reduce_sum(tf.gather(start, tags) * tf.cast(word_mask & ~follows, tf.float32),
                        axis=1)
  log_z = _forward_scan(emissions, word_mask, transitions, start)
  return tf.where(tf.reduce_any(word_mask, axis=1), unary + binary + first - log_z, 0.0)


def crf_log_likelihood(emissions: tf.Tensor, tags: tf.Tensor, lengths: tf.Tensor,
                       transitions: tf.Tensor, start: tf.Tensor) -> tf.Tensor:
  """`log p(tags | emissions)` of each row's first `lengths` steps.

  Args:
    emissions: float `[batch, steps, num_tags]`, the words of each row at its front.
    tags: int `[batch, steps]` gold tag ids (read over the first `lengths` steps).
    lengths: int `[batch]` words of each row (0: the row scores 0).
    transitions: float `[num_tags, num_tags]` (previous, next).
    start: float `[num_tags]`.

  Returns:
    float32 `[batch]` log-likelihoods (<= 0).
  """
  return _log_likelihood(emissions, tags, tf.sequence_mask(lengths, tf.shape(emissions)[1]),
                         transitions, start)


def crf_negative_log_likelihood_sums(scores: TagScores, labels: tf.Tensor,
                                     weights: tf.Tensor):
  """The CRF loss of one batch as the trainer's sums: `(sum over rows of -log p(gold tags),
  sum of weights)`, so that the loss the trainer averages is per word, like the
  cross-entropy it replaces.

  Args:
    scores: the head's `TagScores`.
    labels: int `[batch, seq]` tag ids, read where `weights > 0`.
    weights: float `[batch, seq]`, > 0 at the pieces that carry a word's tag (the first);
      a row's words are those positions in order (weight-0 rows, e.g. evaluation padding,
      add nothing).
  """
  log_likelihood = _log_likelihood(scores.emissions, labels, weights > 0, scores.transitions,
                                   scores.start)
  return -tf.reduce_sum(log_likelihood), tf.reduce_sum(weights)
