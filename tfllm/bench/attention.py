"""Block-wise vs standard attention: speed and peak memory of one attention layer.

Two `MultiHeadSelfAttention` layers of the config's width and heads, one with
`attention_block_size`, sharing the same weights, each run forward + backward (gradients of
a sum of the output with respect to the input and the weights) under XLA on a
`[batch, seq, hidden]` input, causal as the config says. Timed alternately; the peak memory
of each call is recorded (the TF allocator's peak, XLA's temporary buffers included, see
`measure.PeakMemory`).
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfllm.bench import measure
from tfllm.layers.attention import MultiHeadSelfAttention


def _layer(model, block_size):
  head_dim = model.head_dim or model.hidden_dim // model.num_heads
  layer = MultiHeadSelfAttention(model.num_heads, head_dim,
                                 num_kv_heads=model.num_kv_heads or None,
                                 use_bias=model.use_bias, attention_block_size=block_size)
  layer.build((None, None, model.hidden_dim))
  return layer


def benchmark_attention(config, sequence_lengths: Sequence[int] = (4096, 8192),
                        block_size: int = 512, batch_size: int = 1, repeats: int = 3,
                        jit_compile: bool = True, forward_only: bool = False,
                        log: Callable[[str], None] = print) -> Dict:
  """Times standard and block-wise attention at each sequence length.

  Args:
    config: full config; `model` gives width, heads, KV heads and causality.
    sequence_lengths: lengths to measure.
    block_size: keys per block of the block-wise layer (> 0).
    batch_size: sequences per call.
    repeats: timed rounds per length.
    jit_compile: XLA-compile both.
    forward_only: time the forward pass alone (inference) instead of forward + backward.

  Returns:
    A JSON-ready dict: per length, per variant ("standard", "blockwise"), seconds and
    memory, and the block-wise / standard ratios of time and memory.
  """
  if block_size < 1:
    raise ValueError(f"block_size={block_size} must be > 0 for the block-wise variant")
  model = config.model
  standard = _layer(model, 0)
  blockwise = _layer(model, block_size)
  blockwise.set_weights(standard.get_weights())
  causal = bool(model.causal)

  def compiled(layer):
    @tf.function(jit_compile=jit_compile)
    def call(x):
      if forward_only:
        return tf.reduce_sum(layer(x, use_causal_mask=causal))
      with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x, use_causal_mask=causal))
      gradients = tape.gradient(loss, [x] + layer.trainable_variables)
      return loss + sum(tf.reduce_sum(g) for g in gradients)
    return call

  functions = dict(standard=compiled(standard), blockwise=compiled(blockwise))
  memory = measure.PeakMemory()
  per_length = {}
  rng = np.random.default_rng(0)
  for length in sequence_lengths:
    x = tf.constant(rng.normal(size=(batch_size, length, model.hidden_dim)), tf.float32)
    runners = {name: (lambda f=f: f(x).numpy()) for name, f in functions.items()}
    first_call = {}
    for name, runner in runners.items():
      log(f"[attention] seq {length}: {name} compiling and warming up")
      memory.reset()
      runner()
      first_call[name] = memory.read()
    checksum = float(runners["standard"]())
    difference = abs(checksum - float(runners["blockwise"]()))
    log(f"[attention] seq {length}: timing {repeats} rounds, alternating {list(runners)}")
    timings = measure.time_alternately(runners, repeats, memory=memory)
    # Loss plus every gradient's sum, both ways: a cheap check that both compute the same.
    entry = {"checksum": checksum, "checksum_difference": difference}
    for name, timing in timings.items():
      entry[name] = dict(seconds=measure.summarize(timing["seconds"]),
                         memory=measure.max_memory(timing["memory"]),
                         memory_first_call=first_call[name])
    entry["ratio seconds blockwise/standard"] = measure.ratio_summary(
        timings["blockwise"]["seconds"], timings["standard"]["seconds"])
    for key in ("peak_bytes", "increase_bytes"):
      standard_memory = entry["standard"]["memory"].get(key)
      blockwise_memory = entry["blockwise"]["memory"].get(key)
      if standard_memory and blockwise_memory is not None:
        entry[f"ratio memory {key} blockwise/standard"] = blockwise_memory / standard_memory
    per_length[str(length)] = entry
  return dict(mode="attention", block_size=block_size, batch_size=batch_size,
              causal=causal, passes="forward" if forward_only else "forward+backward",
              hidden_dim=model.hidden_dim, num_heads=model.num_heads, repeats=repeats,
              jit_compile=bool(jit_compile),
              dtype_policy=keras.mixed_precision.global_policy().name,
              sequence_lengths=per_length)
