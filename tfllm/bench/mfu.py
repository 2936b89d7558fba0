"""Peak FLOP/s of the device a benchmark runs on, and the FLOPs a model's training step does.

Model FLOPs utilization (MFU) = achieved training FLOP/s / the device's peak FLOP/s, where
training FLOPs per token are `6 N + 12 L H Q T` (`tfllm.training.flops`, the one
implementation the trainer uses too) and N excludes position embeddings (PaLM appendix B,
nanoGPT's `estimate_mfu`). Peaks come from vendor tables for accelerators (dense, without
sparsity) and, on a CPU, from a matrix multiplication measured at the start of the run
("matmul peak measured"): a CPU's datasheet peak depends on cores, clocks and vector units
that a process cannot see reliably.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import keras
import tensorflow as tf

from tfllm.training import flops

FORMULA = "FLOPs/token = 6*N + 12*L*H*Q*T (N: parameters without position embeddings)"

# float32 (no tensor cores / TF32 off) dense peaks, vendor datasheets. bf16/fp16 peaks are
# `tfllm.training.flops.peak_flops`. TPUs compute float32 matmuls as several bf16 passes:
# no float32 peak is stated for them.
_FLOAT32_PEAK_FLOPS = (
    ("H200", 67e12),
    ("H100", 67e12),
    ("A100", 19.5e12),
    ("L4", 30.3e12),
    ("A10", 31.2e12),
    ("V100", 15.7e12),
    ("T4", 8.1e12),
)


@dataclasses.dataclass
class Peak:
  """A device's peak FLOP/s and where the number comes from."""
  flops_per_second: Optional[float]
  source: str          # "table: <device> <dtype>", "matmul peak measured", or why none
  device: str


def device_description() -> str:
  """The first accelerator's name (e.g. "NVIDIA H100 80GB HBM3"), or "CPU"."""
  for kind in ("GPU", "TPU"):
    devices = tf.config.list_physical_devices(kind)
    if devices:
      try:
        details = tf.config.experimental.get_device_details(devices[0])
      except (ValueError, RuntimeError):
        details = {}
      return details.get("device_name", kind)
  return "CPU"


def table_peak_flops(description: str, dtype: str) -> Optional[float]:
  """Peak FLOP/s from the vendor tables for `dtype` ("float32", "bfloat16", "float16")."""
  if dtype in ("bfloat16", "float16"):
    return flops.peak_flops(description)
  if dtype == "float32":
    text = description.upper()
    for name, value in _FLOAT32_PEAK_FLOPS:
      if name in text:
        return value
    return None
  raise ValueError(f"dtype={dtype!r} has no peak table; use float32, bfloat16 or float16")


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
  description = device_description()
  if override:
    return Peak(float(override), "given", description)
  table = table_peak_flops(description, dtype) if description != "CPU" else None
  if table:
    return Peak(table, f"table: {description} {dtype}", description)
  if description == "CPU" and measure_cpu:
    return Peak(measure_matmul_peak(dtype=dtype), "matmul peak measured", description)
  return Peak(None, f"no {dtype} peak known for {description}", description)


flops_parameter_count = flops.flops_parameter_count


def training_flops_per_token(model: keras.Model, num_layers: int, num_heads: int,
                             head_dim: int, sequence_length: int) -> float:
  """`tfllm.training.flops.training_flops_per_token` with N from `flops_parameter_count`."""
  return flops.training_flops_per_token(flops_parameter_count(model), num_layers, num_heads,
                                        head_dim, sequence_length)
