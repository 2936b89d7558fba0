"""A sample continuation from a causal LM, to show what a training run learned.

Deliberately small: one fixed-shape `[1, sequence_length]` forward pass per new token (no KV
cache), so it compiles once and runs on any strategy's variables. The generation module of
the export/generate apps is the fast path.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf


def sample_continuation(model, prompt_ids: Sequence[int], num_tokens: int, sequence_length: int,
                        temperature: float = 0.8, seed: int = 0) -> list:
  """Extends `prompt_ids` by `num_tokens` tokens sampled from `model`.

  Args:
    model: a causal LM: `model({"token_ids", "padding_mask"})` -> logits `[1, seq, vocab]`.
    prompt_ids: the prompt's token ids (at least one).
    num_tokens: tokens to add.
    sequence_length: the model's context; longer texts keep their last tokens.
    temperature: softmax temperature; 0 = greedy (argmax).
    seed: sampling seed.

  Returns:
    The new token ids (a list of ints, without the prompt).
  """
  if not len(prompt_ids):
    raise ValueError("sample_continuation needs a prompt of at least one token")

  @tf.function
  def next_logits(token_ids, length):
    # Right padding is invisible to a causal model at positions before `length`.
    padding_mask = tf.range(sequence_length)[tf.newaxis, :] < length
    logits = model({"token_ids": token_ids, "padding_mask": padding_mask}, training=False)
    return logits[0, length - 1]

  rng = np.random.default_rng(seed)
  tokens = [int(t) for t in prompt_ids]
  new_tokens = []
  for _ in range(num_tokens):
    window = tokens[-sequence_length:]
    padded = np.zeros((1, sequence_length), np.int32)
    padded[0, :len(window)] = window
    logits = next_logits(tf.constant(padded), tf.constant(len(window))).numpy().astype(np.float64)
    if temperature <= 0:
      token = int(np.argmax(logits))
    else:
      probs = np.exp((logits - logits.max()) / temperature)
      token = int(rng.choice(len(probs), p=probs / probs.sum()))
    tokens.append(token)
    new_tokens.append(token)
  return new_tokens
