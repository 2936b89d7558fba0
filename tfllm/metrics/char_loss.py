"""Validation loss per character: comparable across tokenizers, unlike per-token perplexity.

    nats_per_char = sum over target tokens of weight * (-log p(token))
                    / sum over target tokens of weight * characters(token)
    bits_per_char = nats_per_char / ln 2

`characters(token)` is `tfllm.data.char_counts.characters_per_token(tokenizer)[token]`: the
characters the token adds to the decoded text, so that the characters of the targets of packed
blocks add up to the text they decode to (each block's targets are distinct tokens of the
stream; nothing is counted twice or dropped). End-of-document tokens count 0 characters and
their loss is kept: predicting where a document ends is part of modelling the text.

Every `causal_lm` evaluation reports it (`tfllm.metrics.tables.TASK_METRICS`).
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import ml_collections
import numpy as np
import tensorflow as tf

from tfllm.data import char_counts
from tfllm.metrics import losses
from tfllm.metrics.base import EvalMetric

_NATS = "char_loss/nats"
_CHARACTERS = "char_loss/characters"


class CharacterLoss(EvalMetric):
  """Sums the targets' negative log-likelihood and characters; reports loss per character.

  Args:
    characters_per_token: `[vocab]` characters each token id stands for
      (`tfllm.data.char_counts.characters_per_token`); None reports nothing (an evaluation
      without a tokenizer, e.g. on synthetic ids).

  Reports `nats_per_char`, `bits_per_char` and `characters` (characters of the evaluated
  targets: how much text the figures cover).
  """

  def __init__(self, characters_per_token: Optional[np.ndarray]):
    self._table = None
    if characters_per_token is not None:
      self._table = np.asarray(characters_per_token, np.float32).reshape(-1)

  def sums(self, features, logits, labels, sample_weight) -> Dict[str, tf.Tensor]:
    del features
    if self._table is None:
      return {}
    nats, _ = losses.cross_entropy_sums(logits, labels, sample_weight)
    characters = tf.gather(tf.constant(self._table), tf.cast(labels, tf.int32))
    weights = losses.head_weights(labels, sample_weight)
    return {_NATS: nats, _CHARACTERS: tf.reduce_sum(characters * weights)}

  def result(self, totals) -> Dict[str, float]:
    if self._table is None:
      return {}
    characters = totals[_CHARACTERS]
    if characters <= 0:
      raise ValueError("the evaluated targets decode to 0 characters; per-character loss is "
                       "undefined (is the eval split empty or all special tokens?)")
    nats_per_char = totals[_NATS] / characters
    return {"nats_per_char": nats_per_char, "bits_per_char": nats_per_char / math.log(2.0),
            "characters": characters}


def character_loss(config: ml_collections.ConfigDict, tokenizer=None) -> CharacterLoss:
  """The table's factory: per-character loss of a causal LM evaluated with `tokenizer`."""
  del config
  if tokenizer is None:
    return CharacterLoss(None)
  return CharacterLoss(char_counts.characters_per_token(tokenizer))

