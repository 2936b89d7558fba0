"""The machine a benchmark ran on: CPU model, usable cores (`runtime.available_cores`: the
affinity set capped by a container's CPU quota), load average before and after.

Two runs of the same command differ several-fold between CPUs (AVX-512 against AVX2) and
between an idle and a shared machine, so every figure is kept with the CPU's name and the
load it was timed under; a load near the core count before a run started means other work
shared the cores, and only figures timed side by side in that run compare.

Example:

  before = machine.describe()            # {"cpu": "AMD EPYC", "cores": 2, "load_before": 0.1}
  ...                                     # time something
  after = machine.finish(before)          # adds "load_after"
  print(machine.summary(after))  # "machine: AMD EPYC, 2 cores, load average 0.10 -> 1.95"
"""

from __future__ import annotations

import os
import platform
from typing import Dict, Optional

from tfllm import runtime

# A 1-minute load average at or above this fraction of the cores before a benchmark starts:
# other work held the cores, and the benchmark says so.
BUSY_FRACTION = 0.5


def cpu_model() -> str:
  """`lscpu`'s "Model name" (read from /proc/cpuinfo), else what `platform` knows."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "unknown"


def load_average() -> Optional[float]:
  """The 1-minute load average (None where the platform has none)."""
  try:
    return round(os.getloadavg()[0], 2)
  except (AttributeError, OSError):
    return None


def describe() -> Dict:
  """`{cpu, cores, load_before}`, taken before a benchmark."""
  return dict(cpu=cpu_model(), cores=runtime.available_cores(), load_before=load_average())


def finish(before: Dict) -> Dict:
  """`before` with `load_after` and `busy` (the load before reached `BUSY_FRACTION` of the
  cores)."""
  load = before.get("load_before")
  return dict(before, load_after=load_average(),
              busy=bool(load is not None and load >= BUSY_FRACTION * before["cores"]))


def summary(machine: Dict) -> str:
  """One line: CPU, cores, load before -> after, and a warning when the machine was busy."""
  load = lambda value: "?" if value is None else f"{value:.2f}"   # noqa: E731
  line = (f"machine: {machine['cpu']}, {machine['cores']} cores, load average "
          f"{load(machine.get('load_before'))}")
  if "load_after" in machine:
    line += f" -> {load(machine['load_after'])}"
  if machine.get("busy"):
    line += (" (busy before the start: other work shared the cores; compare only figures "
             "timed side by side in this run)")
  return line
