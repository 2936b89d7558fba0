"""`TagScores`: what a CRF tagging head returns in place of a logits tensor
(`tfllm.tagging.crf`)."""

from __future__ import annotations

import tensorflow as tf


class TagScores(tf.experimental.ExtensionType):
  """What a CRF tagging head returns.

  Attributes:
    emissions: float32 `[batch, seq, num_tags]` per word-piece tag scores (unnormalized; a
      word's are its first piece's).
    transitions: float32 `[num_tags, num_tags]`, score of tag `next` right after `previous`.
    start: float32 `[num_tags]`, score of each tag as a sentence's first.
  """
  emissions: tf.Tensor
  transitions: tf.Tensor
  start: tf.Tensor
