"""Training FLOPs per token and model FLOPs utilization (MFU), shared by trainer and bench.

FLOPs per token of a training step (forward + backward) follow the PaLM paper's appendix B:
`6 N + 12 L H Q T`, N the parameter count, L layers, H heads, Q head size, T the sequence
length (the second term is attention's score and value matmuls, which N does not count).

The peak an MFU divides by is the one of the device *and* of the dtype its matmuls run in
(`peak_flops`): a float32 step on an H100 is held to the TF32 tensor-core peak (TF enables
TF32 by default), not to the bf16 one; a TPU runs float32 matmuls as bf16 passes by default.
`device_kind` names the device from what TF exposes; docs/benchmarks.md lists the table.
TensorFlow is imported where a device is asked about, so that the formula and the peak table
serve the JAX-backend benchmark (`tools/jax_train_bench.py`), where TF is absent.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import TYPE_CHECKING, Mapping, Optional

if TYPE_CHECKING:
  import tensorflow as tf

# Dense peak FLOP/s of one TensorFlow device (vendor datasheets, without sparsity), by the
# dtype its matmuls run in: "bf16" (also fp16 where the chip has the same rate), "fp16" where
# it differs, "tf32" (float32 with TensorFloat-32 on), "fp32" (float32, TF32 off or absent).
# A GPU is one device; a TPU v2/v3 chip is two TF devices (cores, half the chip's peak each),
# v4 and v5p chips are one (megacore), v5e and v6e chips have one core. CPUs are absent on
# purpose: their peak depends on cores, clocks and vector units; pass it explicitly.
# More specific names come first (the first name found in the description wins).
_PEAKS = (
    ("H200 NVL", dict(bf16=835e12, tf32=418e12, fp32=60e12)),
    ("H200", dict(bf16=989e12, tf32=495e12, fp32=67e12)),
    ("H100 NVL", dict(bf16=835e12, tf32=418e12, fp32=60e12)),
    ("H100 PCIE", dict(bf16=756e12, tf32=378e12, fp32=51e12)),
    ("H100", dict(bf16=989e12, tf32=495e12, fp32=67e12)),      # SXM ("H100 80GB HBM3")
    ("A100", dict(bf16=312e12, tf32=156e12, fp32=19.5e12)),
    ("L40S", dict(bf16=362e12, tf32=183e12, fp32=91.6e12)),
    ("L40", dict(bf16=181e12, tf32=90.5e12, fp32=90.5e12)),
    ("L4", dict(bf16=121e12, tf32=60e12, fp32=30.3e12)),
    ("A10", dict(bf16=125e12, tf32=62.5e12, fp32=31.2e12)),
    ("V100", dict(fp16=125e12, fp32=15.7e12)),                 # no bf16 or TF32 units
    ("T4", dict(fp16=65e12, fp32=8.1e12)),
    ("TPU v6e", dict(bf16=918e12)),
    ("TPU v6 lite", dict(bf16=918e12)),                        # v6e's PJRT device kind
    ("TPU v5p", dict(bf16=459e12)),
    ("TPU v5e", dict(bf16=197e12)),
    ("TPU v5 lite", dict(bf16=197e12)),                        # v5e's PJRT device kind
    ("TPU v4", dict(bf16=275e12)),
    ("TPU v3", dict(bf16=61.5e12)),                            # 123e12 a chip, 2 cores
    ("TPU v2", dict(bf16=22.5e12)),                            # 45e12 a chip, 2 cores
)
# Cloud TPU accelerator types ("v5litepod-8", "v4-32", "v6e-8", "v2-8") -> device kind.
_TPU_TYPE = re.compile(r"^(?:tpu[ _-]?)?(v\d+)(p|e|lite|litepod)?(?:-\d+)?$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Peak:
  """A device's peak FLOP/s for one compute dtype, and where the number comes from."""
  flops_per_second: Optional[float]
  source: str          # "table: <device> <dtype>", "given", "matmul peak measured", or why none
  device: str


def training_flops_per_token(num_params: int, num_layers: int, num_heads: int, head_dim: int,
                             sequence_length: int) -> float:
  """FLOPs of one training step per token: 6N + 12·L·H·Q·T."""
  return 6.0 * num_params + 12.0 * num_layers * num_heads * head_dim * sequence_length


def flops_parameter_count(model) -> int:
  """N of the FLOPs formula: the model's weights without position embedding tables.

  Position embeddings are a table lookup (no multiply-adds), so they do not count; a tied
  token embedding counts once (it is also the output projection). Recognizes tfllm's and
  KerasHub's position embedding layers (the bench measures both).
  """
  import keras_hub  # pylint: disable=import-outside-toplevel
  from tfllm.layers.embeddings import PositionEmbedding  # Keras layers: this module imports without them
  position_types = (PositionEmbedding, keras_hub.layers.PositionEmbedding)
  position = sum(math.prod(w.shape) for layer in model._flatten_layers()  # pylint: disable=protected-access
                 if isinstance(layer, position_types) for w in layer.weights)
  return int(model.count_params()) - position


def tpu_kind(accelerator_type: str) -> Optional[str]:
  """"TPU v5e" for a Cloud TPU accelerator type such as "v5litepod-8" (None if not one)."""
  match = _TPU_TYPE.match(accelerator_type.strip())
  if not match:
    return None
  version, variant = match.group(1).lower(), (match.group(2) or "").lower()
  variant = "e" if variant.startswith("lite") else variant
  return f"TPU {version}{variant}"


def device_kind(strategy: Optional[tf.distribute.Strategy] = None,
                environ: Optional[Mapping[str, str]] = None) -> str:
  """What the devices a run uses are: e.g. "NVIDIA H100 80GB HBM3", "TPU v5e", or "CPU".

  GPUs: `tf.config.experimental.get_device_details` (empty for TPUs). TPUs: the accelerator
  type of the TPU strategy's Cloud TPU (a named TPU), else the `TPU_ACCELERATOR_TYPE`
  variable Cloud TPU VMs and GKE set; "TPU" when neither says which generation.

  Args:
    strategy: the run's strategy (a `TPUStrategy` means TPU); None: the local devices.
    environ: the environment to read (default `os.environ`).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel,redefined-outer-name
  environ = os.environ if environ is None else environ
  is_tpu = isinstance(strategy, tf.distribute.TPUStrategy) or (
      strategy is None and bool(tf.config.list_logical_devices("TPU")))
  if is_tpu:
    resolver = getattr(strategy, "cluster_resolver", None)
    client = getattr(resolver, "_cloud_tpu_client", None)  # pylint: disable=protected-access
    candidates = []
    if client is not None:
      try:
        candidates.append(client.accelerator_type() or "")
      except Exception:  # pylint: disable=broad-except  (the Cloud TPU API may be unreachable)
        pass
    candidates.append(environ.get("TPU_ACCELERATOR_TYPE", ""))
    for candidate in candidates:
      kind = tpu_kind(candidate)
      if kind:
        return kind
    return "TPU"
  gpus = tf.config.list_physical_devices("GPU")
  if gpus:
    try:
      details = tf.config.experimental.get_device_details(gpus[0])
    except (ValueError, RuntimeError):
      details = {}
    return details.get("device_name") or "GPU"
  return "CPU"


def _dtype_key(compute_dtype: str, tf32: bool) -> str:
  if compute_dtype == "float32":
    return "tf32" if tf32 else "fp32"
  if compute_dtype in ("bfloat16", "float16"):
    return {"bfloat16": "bf16", "float16": "fp16"}[compute_dtype]
  raise ValueError(f"compute dtype {compute_dtype!r} has no peak table; use float32, bfloat16 "
                   "or float16")


def peak_flops(device: str, compute_dtype: str = "bfloat16",
               tf32: Optional[bool] = None) -> Optional[float]:
  """Dense peak FLOP/s of one device (`device_kind`'s description) for `compute_dtype`.

  Args:
    device: e.g. "NVIDIA H100 80GB HBM3", "TPU v4".
    compute_dtype: the dtype the matmuls run in: "float32", "bfloat16" or "float16" (a Keras
      policy's `compute_dtype`).
    tf32: whether float32 matmuls use TensorFloat-32 (GPUs) / bf16 passes (TPUs); None: TF's
      current setting (`tf.config.experimental.tensor_float_32_execution_enabled`).

  Returns:
    The peak, or None: an unknown device, or a dtype the table has no number for.
  """
  if tf32 is None:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel,redefined-outer-name
    tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
  key = _dtype_key(compute_dtype, tf32)
  text = device.upper()
  for name, peaks in _PEAKS:
    if name.upper() in text:
      if name.startswith("TPU") and key == "tf32":
        key = "bf16"      # TPUs run float32 matmuls as bfloat16 passes by default
      if key == "fp16" and "fp16" not in peaks:
        key = "bf16"      # the same tensor-core rate
      if key == "tf32" and "tf32" not in peaks:
        key = "fp32"      # Volta and Turing have no TF32 units
      return peaks.get(key)
  return None


def device_peak(compute_dtype: str, strategy: Optional[tf.distribute.Strategy] = None,
                override: Optional[float] = None,
                environ: Optional[Mapping[str, str]] = None) -> Peak:
  """The peak an MFU divides by: `override`, else the table for the device and dtype.

  Args:
    compute_dtype: the dtype the model computes in (the Keras policy's `compute_dtype`).
    strategy: the run's strategy (see `device_kind`).
    override: a peak per device given by the user (`config.train.peak_flops_per_device`).
    environ: see `device_kind`.
  """
  device = device_kind(strategy, environ)
  if override:
    return Peak(float(override), "given", device)
  value = peak_flops(device, compute_dtype)
  if value:
    return Peak(value, f"table: {device} {compute_dtype}", device)
  return Peak(None, f"no {compute_dtype} peak known for {device}", device)


def model_flops_utilization(tokens_per_second: float, flops_per_token: float,
                            peak_flops_per_device: float, num_devices: int) -> float:
  """Achieved training FLOP/s over the devices' peak (0..1)."""
  return tokens_per_second * flops_per_token / (peak_flops_per_device * num_devices)
