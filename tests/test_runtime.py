"""Thread sizing, per-thread CPU accounting and the start-up timer (`tfllm.runtime`)."""

import os
import threading
import time

import ml_collections
import pytest
import tensorflow as tf

from tfllm import config as config_lib
from tfllm import runtime


def _section(**values):
  section = ml_collections.ConfigDict(runtime.SCHEMAS["runtime"].defaults())
  section.update(values)
  return section


def test_default_plan_sizes_pools_from_the_cores():
  plan = runtime.plan_threads(_section(), cores=8)
  assert (plan.intra_op, plan.inter_op, plan.data) == (8, 2, 8)
  plan = runtime.plan_threads(_section(), cores=1)
  assert (plan.intra_op, plan.inter_op, plan.data) == (1, 1, 1)
  assert 1 <= runtime.plan_threads(_section()).cores <= len(os.sched_getaffinity(0))


def test_cgroup_quota_caps_the_cores(tmp_path):
  path = tmp_path / "cpu.max"
  path.write_text("150000 100000\n")
  assert runtime.cgroup_cpu_limit(str(path)) == 2
  path.write_text("max 100000\n")
  assert runtime.cgroup_cpu_limit(str(path)) is None
  assert runtime.cgroup_cpu_limit(str(tmp_path / "absent")) is None


def test_plan_takes_counts_and_tf_defaults():
  plan = runtime.plan_threads(_section(intra_op_threads=3, inter_op_threads=-1,
                                       data_threads=-1), cores=2)
  assert (plan.intra_op, plan.inter_op, plan.data) == (3, None, None)
  assert "intra-op 3, inter-op TF default, tf.data TF default (2 cores" in plan.describe()


def test_bad_thread_count_is_a_config_error_naming_the_key():
  config = config_lib.default_config()
  config.runtime.intra_op_threads = -2
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.runtime.intra_op_threads=-2 is out of range"):
    config_lib.validate(config)


def test_pools_cannot_change_after_the_runtime_started():
  tf.constant(1.0) + 1.0  # the test session's runtime is initialized
  current = tf.config.threading.get_intra_op_parallelism_threads()
  same = runtime.ThreadPlan(cores=2, intra_op=current,
                            inter_op=tf.config.threading.get_inter_op_parallelism_threads(),
                            data=None)
  assert runtime.configure_threads(same) is None
  note = runtime.configure_threads(runtime.ThreadPlan(cores=2, intra_op=current + 3,
                                                      inter_op=None, data=None))
  assert note.startswith("threads: the TF runtime had already initialized") and \
      f"intra-op {current + 3}" in note


def test_dataset_options_give_the_pipeline_a_private_pool():
  plan = runtime.ThreadPlan(cores=2, intra_op=2, inter_op=2, data=3)
  dataset = tf.data.Dataset.range(4).with_options(runtime.dataset_options(plan))
  options = dataset.options()
  assert options.threading.private_threadpool_size == 3
  assert options.threading.max_intra_op_parallelism == 1
  assert list(dataset.as_numpy_iterator()) == [0, 1, 2, 3]
  default = runtime.dataset_options(runtime.ThreadPlan(cores=2, intra_op=None, inter_op=None,
                                                       data=None))
  assert default.threading.private_threadpool_size is None


def test_thread_cpu_seconds_counts_a_busy_thread():
  def total(totals):
    return sum(user + system for _, user, system in totals.values())

  seen = {}

  def spin():
    end = time.thread_time() + 0.5   # this thread's own CPU time
    while time.thread_time() < end:
      pass
    seen.update(runtime.thread_cpu_seconds())   # read while this thread still lives

  before = total(runtime.thread_cpu_seconds())
  worker = threading.Thread(target=spin)
  worker.start()
  worker.join()
  assert total(seen) - before >= 0.4   # clock ticks: 0.01 s each
  assert sum(n for n, _, _ in seen.values()) >= 2   # this thread and the worker at least
  line = runtime.describe_thread_cpu(seen)
  assert line.startswith("CPU time: user ") and "% kernel) over" in line


def test_stat_fields_read_names_with_spaces_and_parentheses(tmp_path):
  path = tmp_path / "stat"
  path.write_text("42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 120 30 0 0 20 0 1 0 500 0\n")
  name, fields = runtime.stat_fields(str(path))
  assert name == "a (b) c"
  assert (fields[0], fields[11], fields[12], fields[19]) == ("S", "120", "30", "500")


def test_startup_timer_lists_its_phases():
  now = [10.0]
  timer = runtime.StartupTimer(since_process_start=False, clock=lambda: now[0])
  now[0] = 12.5
  timer.mark("strategy")
  now[0] = 13.0
  timer.mark("first call")
  assert timer.line() == "time to first step 3.0 s: strategy 2.5, first call 0.5"
  launched = runtime.StartupTimer()
  assert launched.phases[0][0] == "launch" and launched.phases[0][1] > 0
