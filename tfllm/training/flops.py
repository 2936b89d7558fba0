"""Training FLOPs per token and model FLOPs utilization (MFU), shared by trainer and bench.

FLOPs per token of a training step (forward + backward) follow the PaLM paper's appendix B:
`6 N + 12 L H Q T`, N the parameter count, L layers, H heads, Q head size, T the sequence
length (the second term is attention's score and value matmuls, which N does not count).
"""

from __future__ import annotations

import math
from typing import Optional

# Dense bf16/fp16 peak FLOP/s per device (vendor datasheets, without sparsity). CPUs are absent
# on purpose: their peak depends on cores, clock and vector units; pass it explicitly.
_PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("V100", 125e12),
    ("T4", 65e12),
    ("TPU v5p", 459e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v4", 275e12),
    ("TPU v3", 123e12),
    ("TPU v2", 45e12),
)


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
  from tfllm.layers.embeddings import PositionEmbedding  # pylint: disable=import-outside-toplevel
  position_types = (PositionEmbedding, keras_hub.layers.PositionEmbedding)
  position = sum(math.prod(w.shape) for layer in model._flatten_layers()  # pylint: disable=protected-access
                 if isinstance(layer, position_types) for w in layer.weights)
  return int(model.count_params()) - position


def peak_flops(device_description: str) -> Optional[float]:
  """Peak FLOP/s of one device from its description (e.g. "NVIDIA H100 80GB HBM3"), or None."""
  text = device_description.upper()
  for name, flops in _PEAK_FLOPS:
    if name.upper() in text:
      return flops
  return None


def model_flops_utilization(tokens_per_second: float, flops_per_token: float,
                            peak_flops_per_device: float, num_devices: int) -> float:
  """Achieved training FLOP/s over the devices' peak (0..1)."""
  return tokens_per_second * flops_per_token / (peak_flops_per_device * num_devices)
