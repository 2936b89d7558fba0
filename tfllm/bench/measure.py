"""Timing side by side in one process, summary statistics, and peak memory.

Machines are shared and noisy: candidates are timed alternately (one repeat of each, then
the next round, the order rotating every round), so a slow spell hits all of them, and every
figure is reported as min / median / max over the repeats.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import tensorflow as tf


def summarize(values: Sequence[float]) -> Dict[str, float]:
  """min / median / max (and the count) of `values`."""
  values = [float(v) for v in values]
  if not values:
    raise ValueError("no values to summarize: run at least one repeat")
  return dict(min=min(values), median=statistics.median(values), max=max(values),
              n=len(values))


class PeakMemory:
  """Peak memory while a block of work runs.

  `peak_bytes`: the TF allocator's peak on the first GPU, else on `CPU:0`
  (`tf.config.experimental.get_memory_info` after `reset_memory_stats`): tensors and XLA's
  temporary buffers, what a model's memory use is made of. `increase_bytes`: that peak
  minus what the allocator held at the reset (the memory the measured work added). On CPU
  also `rss_peak_bytes` (and `peak_bytes` when the allocator of `CPU:0` saw nothing, e.g.
  on a CPU split into logical devices): the process's resident-set high-water mark
  (`VmHWM`, reset by writing 5 to `/proc/self/clear_refs`); freed memory often stays in the
  process, so it is an upper bound for the whole process, not a per-call figure.
  """

  def __init__(self):
    gpus = tf.config.list_logical_devices("GPU")
    self.device = (gpus[0].name if gpus else "/device:CPU:0").replace("/device:", "")
    self.kind = "tf_allocator_peak"
    self._baseline = self._rss_baseline = 0
    try:
      tf.config.experimental.get_memory_info(self.device)
    except (ValueError, tf.errors.OpError):
      self.device = None
      self.kind = "process_rss_peak"

  def reset(self) -> None:
    if self.device:
      tf.config.experimental.reset_memory_stats(self.device)
      self._baseline = tf.config.experimental.get_memory_info(self.device)["current"]
    if not self.device or self.device.startswith("CPU"):
      try:
        with open("/proc/self/clear_refs", "w") as f:
          f.write("5")
      except OSError:
        pass  # Not resettable here (not Linux, or not permitted): the peak is since start.
      self._rss_baseline = _proc_status_bytes("VmRSS") or 0
      if not self.device:
        self._baseline = self._rss_baseline

  def read(self) -> Dict[str, Optional[int]]:
    """`{"kind", "peak_bytes", "increase_bytes"[, "rss_peak_bytes"]}` since `reset`."""
    kind = self.kind
    peak = tf.config.experimental.get_memory_info(self.device)["peak"] if self.device else 0
    baseline = self._baseline
    if not peak and (not self.device or self.device.startswith("CPU")):
      # Work placed on another (logical) CPU device leaves CPU:0's allocator untouched.
      kind, peak = "process_rss_peak", _proc_status_bytes("VmHWM")
      baseline = self._rss_baseline
    increase = None if peak is None else max(0, peak - baseline)
    reading = dict(kind=kind, peak_bytes=peak, increase_bytes=increase)
    if not self.device or self.device.startswith("CPU"):
      reading["rss_peak_bytes"] = _proc_status_bytes("VmHWM")
    return reading


def _proc_status_bytes(field: str) -> Optional[int]:
  try:
    with open(f"/proc/{os.getpid()}/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) * 1024
  except OSError:
    return None
  return None


def time_alternately(runners: Dict[str, Callable[[], None]], repeats: int,
                     memory: Optional[PeakMemory] = None) -> Dict[str, Dict[str, List]]:
  """Runs every runner once per round, `repeats` rounds, rotating the order each round.

  Args:
    runners: name -> a callable doing one timed unit of work and returning once it is done
      (fetch a result to the host so that asynchronous work is inside the timing).
    repeats: rounds.
    memory: if given, the peak memory of each call is recorded too.

  Returns:
    name -> {"seconds": [wall seconds per round], "cpu_seconds": [this process's CPU time
    per round, all threads: on a shared machine it moves less than wall time when other
    work takes the cores], "memory": [per round `PeakMemory.read()`]}.
  """
  if repeats < 1:
    raise ValueError(f"repeats={repeats} must be >= 1")
  names = list(runners)
  results = {name: dict(seconds=[], cpu_seconds=[], memory=[]) for name in names}
  for round_index in range(repeats):
    shift = round_index % len(names)
    for name in names[shift:] + names[:shift]:
      if memory is not None:
        memory.reset()
      start, cpu_start = time.perf_counter(), time.process_time()
      runners[name]()
      results[name]["seconds"].append(time.perf_counter() - start)
      results[name]["cpu_seconds"].append(time.process_time() - cpu_start)
      if memory is not None:
        results[name]["memory"].append(memory.read())
  return results


def max_memory(readings: Sequence[Dict]) -> Dict[str, Optional[int]]:
  """The largest of each figure over several `PeakMemory.read()` results."""
  if not readings:
    return {}
  merged = dict(kind=readings[0]["kind"])
  for key in readings[0]:
    if key != "kind":
      values = [r[key] for r in readings if r.get(key) is not None]
      merged[key] = max(values) if values else None
  return merged


def ratio_summary(numerator: Sequence[float], denominator: Sequence[float]) -> Dict[str, float]:
  """min / median / max of the per-round ratios `numerator[i] / denominator[i]`."""
  return summarize([n / d for n, d in zip(numerator, denominator)])
