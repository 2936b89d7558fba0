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

from tfllm.tagging.decoding import words_first_order
from tfllm.tagging.scores import TagScores


def _forward_scan(emissions, active, transitions, start):
  """log Z of each row: the log-sum over all tag sequences of their scores (forward
  algorithm). `emissions` float32 `[batch, steps, tags]`, `active` bool `[batch, steps]`."""
  # One more, never active step: the scan then runs over at least one element (a scan over
  # none fails to stack when the batch size is unknown, as in a serving signature).
  emissions = tf.pad(emissions, [[0, 0], [0, 1], [0, 0]])
  active = tf.pad(active, [[0, 0], [0, 1]])
  steps = tf.transpose(emissions, [1, 0, 2])                 # [steps, batch, tags]
  step_active = tf.transpose(active)                         # [steps, batch]

  def forward(alpha, inputs):
    step_emissions, keep = inputs
    new = tf.reduce_logsumexp(alpha[:, :, None] + transitions[None], axis=1) + step_emissions
    return tf.where(keep[:, None], new, alpha)

  first = steps[0] + start[None]
  alpha = tf.scan(forward, (steps[1:], step_active[1:]), initializer=first)[-1]
  return tf.reduce_logsumexp(alpha, axis=-1)


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
  emissions = tf.cast(emissions, tf.float32)
  transitions = tf.cast(transitions, tf.float32)
  start = tf.cast(start, tf.float32)
  tags = tf.cast(tags, tf.int32)
  active = tf.sequence_mask(lengths, tf.shape(emissions)[1])
  mask = tf.cast(active, tf.float32)
  unary = tf.reduce_sum(tf.gather(emissions, tags, batch_dims=2) * mask, axis=1)
  first = tf.gather(start, tags[:, 0])
  pairs = tf.stack([tags[:, :-1], tags[:, 1:]], axis=-1)
  binary = tf.reduce_sum(tf.gather_nd(transitions, pairs) * mask[:, 1:], axis=1)
  has_words = tf.cast(lengths, tf.int32) > 0
  score = unary + binary + first
  log_z = _forward_scan(emissions, active, transitions, start)
  return tf.where(has_words, score - log_z, 0.0)


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
  word_mask = weights > 0
  order = words_first_order(word_mask)
  emissions = tf.gather(tf.cast(scores.emissions, tf.float32), order, batch_dims=1)
  tags = tf.gather(tf.cast(labels, tf.int32), order, batch_dims=1)
  lengths = tf.reduce_sum(tf.cast(word_mask, tf.int32), axis=1)
  log_likelihood = crf_log_likelihood(emissions, tags, lengths, scores.transitions,
                                      scores.start)
  return -tf.reduce_sum(log_likelihood), tf.reduce_sum(weights)
