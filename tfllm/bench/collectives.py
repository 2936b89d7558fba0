"""The share of a tensor-parallel step's op time spent in communication, from TF's profiler.

A tensor-parallel step communicates by the copies of tensors between devices that TF
inserts where one device reads another's output (`_Send`/`_Recv`, `_HostSend`/`_HostRecv`),
and combines the shards' results in ops under the `COLLECTIVE_SCOPE` name scope
(`tfllm.layers.tensor_parallel`: the partial sums, the vocabulary-parallel loss's max and
sums). This module profiles a few calls of a step function and sums the durations the
profiler records for those ops against those of every TF op. Grappler's arithmetic
optimizer fuses a partial sum with the residual add after it into one `AddN` named in the
block's scope, so those few adds (one a position and hidden unit) count as computation; the
copies they read are counted.

What the share means: devices run their ops concurrently, so it is a share of the op time
summed over the devices (the work), not of the wall time; a `_Recv` that waits for its
producer counts its wait. On logical CPU devices a copy is a memory copy in one process; on
GPUs the same ops are PCIe/NVLink transfers, so measure there before drawing conclusions.
"""

from __future__ import annotations

import glob
import os
import tempfile
from typing import Callable, Dict

import tensorflow as tf

from tfllm.layers.tensor_parallel import COLLECTIVE_SCOPE

# The op types TF inserts to move a tensor between devices of one program.
TRANSFER_OPS = ("_Send", "_Recv", "_HostSend", "_HostRecv")


def op_times(xspace) -> Dict[str, int]:
  """Picoseconds per TF op `name:type` in a profiler `XSpace` (the host plane's op events:
  their metadata names are `node name:op type`)."""
  totals: Dict[str, int] = {}
  for plane in xspace.planes:
    metadata = plane.event_metadata
    for line in plane.lines:
      for event in line.events:
        name = metadata[event.metadata_id].name
        node, _, op_type = name.rpartition(":")
        # (The executor's own events are named like `ExecutorState::Process`.)
        if node and op_type and " " not in name and "::" not in name:
          totals[name] = totals.get(name, 0) + event.duration_ps
  return totals


def is_collective(name: str) -> bool:
  """Whether op `node name:op type` is communication (the module docstring)."""
  node, _, op_type = name.rpartition(":")
  return op_type in TRANSFER_OPS or f"{COLLECTIVE_SCOPE}/" in f"{node}/"


def collective_share(step: Callable[[], tf.Tensor], calls: int = 3) -> Dict[str, float]:
  """Profiles `calls` calls of `step` (already traced: warm it up first).

  Returns:
    dict: `collective_ms` and `op_ms` (summed over the calls and the devices), `share`
    (their ratio), `transfer_ms` (the copies alone) and `calls`.
  """
  with tempfile.TemporaryDirectory(prefix="tfllm-profile-") as directory:
    tf.profiler.experimental.start(directory)
    try:
      for _ in range(calls):
        step().numpy()
    finally:
      tf.profiler.experimental.stop()
    # pylint: disable=g-import-not-at-top  (TF's profiler proto; loaded only when profiling)
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    totals: Dict[str, int] = {}
    for path in glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True):
      xspace = xplane_pb2.XSpace()
      with open(path, "rb") as f:
        xspace.ParseFromString(f.read())
      for name, picoseconds in op_times(xspace).items():
        totals[name] = totals.get(name, 0) + picoseconds
  op_ps = sum(totals.values())
  collective_ps = sum(ps for name, ps in totals.items() if is_collective(name))
  transfer_ps = sum(ps for name, ps in totals.items()
                    if name.rpartition(":")[2] in TRANSFER_OPS)
  return dict(collective_ms=collective_ps / 1e9, op_ms=op_ps / 1e9,
              transfer_ms=transfer_ps / 1e9,
              share=collective_ps / op_ps if op_ps else 0.0, calls=calls)
