"""Tensor-parallel (Megatron-LM layout) variants of tfllm's layers, sharded over local devices.

A layer of degree `N` holds `N` shards, shard `i` created on and computed on `devices[i]`
(`tf.device`): the variables of shard `i` (and, colocated with them, their AdamW slots) live
on that device only, so each device holds `1/N` of every sharded kernel. The layout:

- attention: heads split into `N` groups; shard `i` owns query heads `i*H/N ...` and KV
  heads `i*K/N ...` (its slice of the fused QKV projection: column-parallel) and the rows
  of the output projection that read those heads (row-parallel);
- feed-forward: hidden units split into `N` groups: up (and SwiGLU's gate) column-parallel,
  down row-parallel;
- token embedding, tied logits and cross-entropy: vocabulary rows split into `N` ranges
  (vocab-parallel), so `[batch, seq, vocab]` logits are never formed on one device; a
  vocabulary `N` does not divide is padded with rows that never reach a logit
  (`padded_size`), so checkpoints hold the unpadded table.

A row-parallel projection is followed by the only communication of the forward pass: the
sum of the `N` partial outputs (`sum_partials`). The model runs as one program over the
devices of a tensor-parallel group (the gradient of that sum is the copy of the incoming
gradient to every device): no replica context, no mirrored variables, and one copy of each
replicated weight (norms, position tables, the row-parallel biases, added once). Why this
design and what was rejected: docs/distributed.md, "Tensor parallelism".
"""

from tfllm.layers.tensor_parallel.blocks import (TensorParallelAttention,
                                                 TensorParallelFeedForward,
                                                 TensorParallelTransformerBlock)
from tfllm.layers.tensor_parallel.sharding import (COLLECTIVE_SCOPE, ShardedLayer, check_degree,
                                                   local_devices, padded_size,
                                                   real_sizes, shard_value, split_sections,
                                                   sum_partials, tensor_parallel_devices,
                                                   unshard_values, variable_bytes_by_device,
                                                   vocabulary_fills_shards)
from tfllm.layers.tensor_parallel.vocab import (ShardedLogits, VocabParallelEmbedding,
                                                VocabParallelProjection, vocab_parallel_argmax,
                                                vocab_parallel_cross_entropy)

__all__ = [
    "COLLECTIVE_SCOPE", "ShardedLayer", "ShardedLogits", "TensorParallelAttention", "TensorParallelFeedForward",
    "TensorParallelTransformerBlock", "VocabParallelEmbedding", "VocabParallelProjection",
    "check_degree", "local_devices", "padded_size", "real_sizes", "shard_value", "split_sections",
    "sum_partials", "tensor_parallel_devices", "unshard_values", "variable_bytes_by_device",
    "vocab_parallel_argmax", "vocab_parallel_cross_entropy", "vocabulary_fills_shards",
]
