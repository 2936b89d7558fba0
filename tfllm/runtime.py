"""The process's runtime: thread pools sized from the cores it may use, and where its time goes.

The `runtime` config section sizes TensorFlow's thread pools from the cores this process may
run on (`os.sched_getaffinity`, a container's or `taskset`'s CPU set, capped by a cgroup CPU
quota; TensorFlow itself counts the affinity set only):

  intra_op_threads   TF's intra-op pool: one op's parallel work (XLA's own pool stays idle
                     in a training run: the compiled step runs on TF's threads, docs/stack.md)
  inter_op_threads   TF's inter-op pool: independent ops run side by side
  data_threads       tf.data's private pool for the input pipelines (parallel maps, prefetch)

Each is 0 (size from the cores: intra-op = data = cores, inter-op = min(2, cores)), -1
(leave TensorFlow's own default) or a count. They take effect only before the TF runtime
initializes (the first op, device listing or strategy); `configure_threads` says when a
request came too late instead of failing.

`thread_cpu_seconds` reads each thread's user and kernel CPU time from `/proc` (Linux), and
`StartupTimer` times the phases from process start to the first training step.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Dict, List, Optional, Tuple

from tfllm.config import SectionSchema

# 0 sizes a pool from the cores; -1 leaves TensorFlow's default.
FROM_CORES, TF_DEFAULT = 0, -1


def _runtime_defaults():
  return dict(
      intra_op_threads=FROM_CORES,   # 0: the cores this process may use; -1: TF's default
      inter_op_threads=FROM_CORES,   # 0: min(2, cores); -1: TF's default
      data_threads=FROM_CORES,       # tf.data private pool; 0: the cores; -1: TF's default
  )


SCHEMAS = {
    "runtime": SectionSchema(
        _runtime_defaults,
        ranges={"intra_op_threads": (-1, None), "inter_op_threads": (-1, None),
                "data_threads": (-1, None)}),
}


def cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> Optional[int]:
  """CPUs a cgroup v2 quota allows (`cpu.max` "quota period", rounded up), or None (none)."""
  try:
    with open(path, encoding="utf-8") as f:
      quota, period = f.read().split()[:2]
  except (OSError, ValueError):
    return None
  if quota == "max":
    return None
  return max(1, -(-int(quota) // int(period)))


def available_cores() -> int:
  """The CPUs this process may use: its affinity set (else `os.cpu_count()`), capped by a
  cgroup CPU quota (a container's `--cpus`), which the affinity set does not show."""
  try:
    cores = len(os.sched_getaffinity(0))
  except (AttributeError, OSError):  # not Linux
    cores = os.cpu_count() or 1
  limit = cgroup_cpu_limit()
  return max(1, min(cores, limit) if limit else cores)


@dataclasses.dataclass(frozen=True)
class ThreadPlan:
  """Thread-pool sizes; None leaves TensorFlow's default."""
  cores: int
  intra_op: Optional[int]
  inter_op: Optional[int]
  data: Optional[int]

  def describe(self) -> str:
    size = lambda n: "TF default" if n is None else str(n)
    return (f"threads: intra-op {size(self.intra_op)}, inter-op {size(self.inter_op)}, "
            f"tf.data {size(self.data)} ({self.cores} cores available)")


def plan_threads(section, cores: Optional[int] = None) -> ThreadPlan:
  """The pool sizes `section` (a `runtime` config section) asks for on `cores` CPUs."""
  cores = available_cores() if cores is None else cores

  def size(value: int, from_cores: int) -> Optional[int]:
    if value == TF_DEFAULT:
      return None
    return from_cores if value == FROM_CORES else int(value)

  return ThreadPlan(cores=cores, intra_op=size(section.intra_op_threads, cores),
                    inter_op=size(section.inter_op_threads, min(2, cores)),
                    data=size(section.data_threads, cores))


def configure_threads(plan: ThreadPlan) -> Optional[str]:
  """Sets TF's intra- and inter-op pools to `plan`, before the runtime initializes.

  Returns:
    None when the pools are as planned; else one line saying which could not be set (the
    runtime had initialized with other sizes, e.g. in a test session or a second job in the
    same process): the run goes on with the pools it has.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  late = []
  for name, wanted, getter, setter in (
      ("intra-op", plan.intra_op, tf.config.threading.get_intra_op_parallelism_threads,
       tf.config.threading.set_intra_op_parallelism_threads),
      ("inter-op", plan.inter_op, tf.config.threading.get_inter_op_parallelism_threads,
       tf.config.threading.set_inter_op_parallelism_threads)):
    if wanted is None or getter() == wanted:
      continue
    try:
      setter(wanted)
    except RuntimeError:  # the runtime already initialized: sizes are fixed for the process
      late.append(f"{name} {wanted} (has {getter() or 'TF default'})")
  if late:
    return ("threads: the TF runtime had already initialized; kept its pools instead of "
            + ", ".join(late))
  return None


def dataset_options(plan: ThreadPlan):
  """`tf.data.Options` giving a pipeline `plan.data` private threads (none: TF's default).

  One op of a pipeline runs on one thread (`max_intra_op_parallelism = 1`): the pipeline's
  parallelism is its parallel maps, and a map's op fanning out over the pool too would only
  contend with them and with the training step for the same cores.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  options = tf.data.Options()
  if plan.data is not None:
    options.threading.private_threadpool_size = plan.data
    options.threading.max_intra_op_parallelism = 1
  return options


# ---------------------------------------------------------------- where the time goes

def _clock_ticks() -> float:
  return float(os.sysconf("SC_CLK_TCK"))


def stat_fields(path: str) -> Tuple[str, List[str]]:
  """(thread name, fields after the name) of a `/proc/.../stat` file."""
  with open(path, encoding="utf-8", errors="replace") as f:
    text = f.read()
  # The name is in parentheses and may itself hold spaces or parentheses.
  name = text[text.index("(") + 1:text.rindex(")")]
  return name, text[text.rindex(")") + 2:].split()


def thread_cpu_seconds(pid: Optional[int] = None) -> Dict[str, Tuple[int, float, float]]:
  """Per thread name: (threads, user CPU seconds, kernel CPU seconds) of process `pid`.

  Read from `/proc/<pid>/task/*/stat` (fields utime and stime); threads of one name (a
  pool's workers) are summed. Empty where `/proc` is not there.
  """
  pid = os.getpid() if pid is None else pid
  task_dir = f"/proc/{pid}/task"
  totals: Dict[str, Tuple[int, float, float]] = {}
  if not os.path.isdir(task_dir):
    return totals
  ticks = _clock_ticks()
  for tid in os.listdir(task_dir):
    try:
      name, fields = stat_fields(os.path.join(task_dir, tid, "stat"))
    except OSError:  # the thread ended meanwhile
      continue
    # After the name: state is field 0, utime field 11, stime field 12 (proc(5) fields 14, 15).
    user, system = int(fields[11]) / ticks, int(fields[12]) / ticks
    count, total_user, total_system = totals.get(name, (0, 0.0, 0.0))
    totals[name] = (count + 1, total_user + user, total_system + system)
  return totals


def describe_thread_cpu(totals: Dict[str, Tuple[int, float, float]], top: int = 4) -> str:
  """One line: the process's user and kernel CPU seconds and the busiest thread groups."""
  if not totals:
    return "CPU time: not available (no /proc)"
  user = sum(u for _, u, _ in totals.values())
  system = sum(s for _, _, s in totals.values())
  threads = sum(n for n, _, _ in totals.values())
  busiest = sorted(totals.items(), key=lambda item: -(item[1][1] + item[1][2]))[:top]
  groups = ", ".join(f"{name} x{n} {u:.1f}+{s:.1f}" for name, (n, u, s) in busiest)
  share = 100.0 * system / (user + system) if user + system else 0.0
  return (f"CPU time: user {user:.1f} s, kernel {system:.1f} s ({share:.0f}% kernel) over "
          f"{threads} threads; busiest (user+kernel s): {groups}")


def process_age_seconds() -> Optional[float]:
  """Seconds since this process started (Linux `/proc`), or None elsewhere."""
  try:
    _, fields = stat_fields("/proc/self/stat")
    with open("/proc/uptime", encoding="utf-8") as f:
      uptime = float(f.read().split()[0])
  except (OSError, ValueError, IndexError):
    return None
  # After the name, starttime (proc(5) field 22) is field 19, in clock ticks since boot.
  return uptime - int(fields[19]) / _clock_ticks()


class StartupTimer:
  """Times the phases from process start to the first training step.

  `mark(phase)` closes the phase that ends now; `line()` is one line of them, e.g.
  `time to first step 14.2 s: launch 1.1, import 6.1, strategy 0.4, ... first call 3.0`.

  Args:
    since_process_start: start with a phase "launch" from the process's start (the
      interpreter, flag parsing) to the timer's creation: what a command-line app reports.
      False (a job run inside a longer process): phases start at the timer's creation.
    clock: seconds since an arbitrary origin.
  """

  def __init__(self, since_process_start: bool = True, clock=time.monotonic):
    self._clock = clock
    self._last = clock()
    age = process_age_seconds() if since_process_start else None
    self.phases: List[Tuple[str, float]] = [("launch", age)] if age is not None else []

  def mark(self, phase: str) -> None:
    now = self._clock()
    self.phases.append((phase, now - self._last))
    self._last = now

  def line(self) -> str:
    total = sum(seconds for _, seconds in self.phases)
    parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.phases)
    return f"time to first step {total:.1f} s: {parts}"
