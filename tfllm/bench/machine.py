"""The machine a benchmark ran on: CPU model, usable cores (`runtime.available_cores`: the
affinity set capped by a container's CPU quota), load average before and after, and the
share of the machine's CPU time that other work took meanwhile.

Two runs of the same command differ several-fold between CPUs (AVX-512 against AVX2) and
between an idle and a shared machine, so every figure is kept with the CPU's name and what
else ran. The 1-minute load average lags: right after one job ends it still reads about that
job's load, so a run started straight after another looks busy by load alone. The other-work
share does not lag: it is the machine's busy CPU time over the measurement (Linux
`/proc/stat`, hypervisor steal included) less this process's and its finished children's,
as a fraction of all CPU time that passed (inside a container `/proc/stat` counts the
host's CPUs, so the share is of the host). At `BUSY_SHARE` or more the run is marked busy,
and only figures timed side by side in it compare. Where `/proc/stat` is missing the
load-before rule decides instead.

Example:

  before = machine.describe()            # {"cpu": "AMD EPYC", "cores": 2, "load_before": 0.1}
  ...                                     # time something
  after = machine.finish(before)          # adds "load_after", "other_work", "busy"
  print(machine.summary(after))
  # "machine: AMD EPYC, 2 cores, load average 0.10 -> 1.95, other work 2% of the CPU time"
"""

from __future__ import annotations

import os
import platform
from typing import Dict, Optional, Tuple

from tfllm import runtime

try:
  import resource
except ImportError:        # not on Windows, which has no /proc/stat either
  resource = None

# Where the other-work share cannot be measured: a 1-minute load average at or above this
# fraction of the cores before a benchmark starts marks it busy.
BUSY_FRACTION = 0.5
# Other work took at least this share of the machine's CPU time during the measurement.
BUSY_SHARE = 0.25
# The private key of `describe()`'s CPU-time snapshot, which `finish()` consumes.
_START = "_cpu_start"


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


def machine_cpu_seconds() -> Optional[Tuple[float, float]]:
  """`(busy, total)` CPU seconds of every CPU since boot, from `/proc/stat` (busy: user, nice,
  system, irq, softirq and steal; total adds idle and iowait); None where it cannot be read."""
  try:
    with open("/proc/stat", encoding="utf-8") as f:
      fields = [float(value) for value in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
  except (OSError, ValueError):
    return None
  tick = float(os.sysconf("SC_CLK_TCK"))
  busy = user + nice + system + irq + softirq + steal
  return busy / tick, (busy + idle + iowait) / tick


def own_cpu_seconds() -> float:
  """CPU seconds of this process and of the children it has waited for."""
  return sum(usage.ru_utime + usage.ru_stime for usage in
             (resource.getrusage(resource.RUSAGE_SELF),
              resource.getrusage(resource.RUSAGE_CHILDREN)))


def other_work_share(start: Optional[Tuple[float, float, float]],
                     end: Optional[Tuple[float, float, float]]) -> Optional[float]:
  """The share of all CPU time between two `(machine busy, machine total, own)` snapshots
  that other work took, in [0, 1]; None without both snapshots or with no time passed."""
  if start is None or end is None or end[1] <= start[1]:
    return None
  other = (end[0] - start[0]) - (end[2] - start[2])
  return round(min(1.0, max(0.0, other / (end[1] - start[1]))), 3)


def _cpu_snapshot() -> Optional[Tuple[float, float, float]]:
  seconds = machine_cpu_seconds()
  if seconds is None or resource is None:
    return None
  return (*seconds, own_cpu_seconds())


def describe() -> Dict:
  """`{cpu, cores, load_before}`, taken before a benchmark (with a private CPU-time snapshot
  that `finish` consumes)."""
  return {"cpu": cpu_model(), "cores": runtime.available_cores(),
          "load_before": load_average(), _START: _cpu_snapshot()}


def finish(before: Dict) -> Dict:
  """`before` with `load_after`, `other_work` (the share of the machine's CPU time other work
  took since `describe`, None where unmeasured) and `busy` (`other_work` reached `BUSY_SHARE`;
  unmeasured: the load before reached `BUSY_FRACTION` of the cores)."""
  result = {key: value for key, value in before.items() if key != _START}
  other = other_work_share(before.get(_START), _cpu_snapshot())
  if other is not None:
    busy = other >= BUSY_SHARE
  else:
    load = before.get("load_before")
    busy = bool(load is not None and load >= BUSY_FRACTION * before["cores"])
  return dict(result, load_after=load_average(), other_work=other, busy=busy)


def summary(machine: Dict) -> str:
  """One line: CPU, cores, load before -> after, and a warning when the machine was busy."""
  load = lambda value: "?" if value is None else f"{value:.2f}"   # noqa: E731
  line = (f"machine: {machine['cpu']}, {machine['cores']} cores, load average "
          f"{load(machine.get('load_before'))}")
  if "load_after" in machine:
    line += f" -> {load(machine['load_after'])}"
  if machine.get("other_work") is not None:
    line += f", other work {machine['other_work']:.0%} of the CPU time"
  if machine.get("busy"):
    line += (" (busy: other work shared the cores; compare only figures timed side by side "
             "in this run)")
  return line
