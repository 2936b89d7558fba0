"""Peak FLOP/s of the device a benchmark runs on, and the FLOPs a model's training step does.

Model FLOPs utilization (MFU) = achieved training FLOP/s / the device's peak FLOP/s, where
training FLOPs per token are `6 N + 12 L H Q T` (`tfllm.training.flops`, the one
implementation the trainer uses too) and N excludes position embeddings (PaLM appendix B,
nanoGPT's `estimate_mfu`). Peaks come from the vendor table for accelerators (dense, without
sparsity, by device and compute dtype: `tfllm.training.flops.peak_flops`, the trainer's too)
and, on a CPU, from a matrix multiplication measured at the start of the run ("matmul peak
measured"): a CPU's datasheet peak depends on cores, clocks and vector units that a process
cannot see reliably.
"""

from __future__ import annotations

import time
from typing import Optional

import keras
import tensorflow as tf

from tfllm.training import flops

FORMULA = "FLOPs/token = 6*N + 12*L*H*Q*T (N: parameters without position embeddings)"

# The peak of a device and dtype, and the device's name: one table, in the trainer's module.
Peak = flops.Peak
device_description = flops.device_kind


def table_peak_flops(description: str, dtype: str) -> Optional[float]:
  """Peak FLOP/s from the vendor table for `dtype` ("float32", "bfloat16", "float16")."""
  return flops.peak_flops(description, dtype)


def measure_matmul_peak(size: int = 1024, dtype: str = "float32", repeats: int = 20,
                        chain: int = 4) -> float:
  """FLOP/s of the best of `repeats` XLA-compiled chains of `size`x`size` matmuls.

  A chain of `chain` dependent products (2 size^3 FLOPs each) per call keeps the call
  overhead small against the arithmetic.
  """
  a = tf.random.normal((size, size), dtype=dtype) / size ** 0.5
  b = tf.random.normal((size, size), dtype=dtype) / size ** 0.5

  @tf.function(jit_compile=True)
  def products(x, y):
    for _ in range(chain):
      x = tf.matmul(x, y)
    return x

  products(a, b).numpy()  # compile
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    products(a, b).numpy()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size ** 3 * chain / best


def device_peak(dtype: str = "float32", measure_cpu: bool = True,
                override: Optional[float] = None) -> Peak:
  """The peak to divide by: `override`, else the table, else (CPU) a measured matmul."""
  peak = flops.device_peak(dtype, override=override)
  if peak.flops_per_second is None and peak.device == "CPU" and measure_cpu:
    return Peak(measure_matmul_peak(dtype=dtype), "matmul peak measured", peak.device)
  return peak


flops_parameter_count = flops.flops_parameter_count


def training_flops_per_token(model: keras.Model, num_layers: int, num_heads: int,
                             head_dim: int, sequence_length: int) -> float:
  """`tfllm.training.flops.training_flops_per_token` with N from `flops_parameter_count`."""
  return flops.training_flops_per_token(flops_parameter_count(model), num_layers, num_heads,
                                        head_dim, sequence_length)
