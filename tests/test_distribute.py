"""Tests of tfllm.distribute: strategies by name, their one-line errors, TF_CONFIG helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from tests.launch.helpers import load_script
from tfllm import distribute
from tfllm.config import ConfigError


def _tf_config(index=0, task_type="worker", cluster=None):
  cluster = cluster or {"worker": ["127.0.0.1:1111", "127.0.0.1:2222"]}
  return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


@pytest.mark.parametrize("name,kwargs,strategy_type,replicas", [
    ("off", {}, type(tf.distribute.get_strategy()), 1),
    ("default", {}, type(tf.distribute.get_strategy()), 1),
    ("ONE_DEVICE", {}, tf.distribute.OneDeviceStrategy, 1),
    ("mirrored", {}, tf.distribute.MirroredStrategy, 2),  # The 2 logical CPUs of conftest.
    ("mirrored", {"num_gpus": 1}, tf.distribute.MirroredStrategy, 1),
    ("mirrored", {"num_gpus": 0}, tf.distribute.MirroredStrategy, 1),
])
def test_strategy_builds_and_reports_its_replicas(name, kwargs, strategy_type, replicas):
  strategy = distribute.get_strategy(name, **kwargs)
  assert type(strategy) is strategy_type  # pylint: disable=unidiomatic-typecheck
  assert distribute.num_replicas(strategy) == replicas
  assert distribute.is_chief(strategy)
  assert distribute.task_type_and_id(strategy) == (None, None)
  with strategy.scope():
    variable = tf.Variable(1.0)
  total = strategy.reduce("SUM", strategy.run(lambda: variable * 2.0), axis=None)
  assert float(total) == 2.0 * replicas


def test_mirrored_uses_the_logical_cpus_without_gpus():
  strategy = distribute.get_strategy("mirrored", num_gpus=2)
  assert sorted(strategy.extended.worker_devices) == [
      "/job:localhost/replica:0/task:0/device:CPU:0",
      "/job:localhost/replica:0/task:0/device:CPU:1"]


def test_successive_mirrored_strategies_keep_their_all_reduces_apart():
  """A plain second MirroredStrategy in one process fails: "Shape mismatch in the collective"."""
  for width in (3, 5):
    strategy = distribute.get_strategy("mirrored")

    @tf.function
    def replica_sum(width=width):
      return tf.distribute.get_replica_context().all_reduce("SUM", tf.ones([width]))

    for result in strategy.experimental_local_results(strategy.run(replica_sum)):
      assert result.numpy().tolist() == [2.0] * width


@pytest.mark.parametrize("name,kwargs,message", [
    ("horovod", {}, "'horovod' is not known; use one of: off, default, one_device, mirrored, "
                    "multi_worker_mirrored, tpu"),
    ("mirrored", {"num_gpus": 3}, "num_gpus=3 asks for more replicas than this machine has: "
                                  "2 logical CPU devices"),
    ("mirrored", {"num_gpus": -1}, "num_gpus=-1 is negative"),
    ("one_device", {"num_gpus": 2}, "one_device runs on one device but num_gpus=2"),
    ("mirrored", {"all_reduce": "ring"}, "all_reduce='ring' is not accepted with mirrored; "
                                         "use one of: auto, nccl, hierarchical_copy"),
    ("one_device", {"all_reduce": "nccl"}, "all_reduce='nccl' is not accepted with one_device"),
])
def test_bad_requests_are_one_line_config_errors(name, kwargs, message):
  with pytest.raises(ConfigError) as error:
    distribute.get_strategy(name, **kwargs)
  assert message in str(error.value)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("tpu", [None, "local"])
def test_tpu_without_a_tpu_is_a_one_line_runtime_error(tpu):
  with pytest.raises(RuntimeError, match=r"tpu: no usable TPU at tpu='local' \(TPUs not found") \
      as error:
    distribute.get_strategy("tpu", tpu=tpu)
  assert "\n" not in str(error.value)


def test_tpu_grpc_address_with_nothing_listening_fails_within_the_bound():
  with pytest.raises(RuntimeError, match=r"nothing answers at grpc://127.0.0.1:9 within 1 s"):
    distribute.get_strategy("tpu", tpu="grpc://127.0.0.1:9", tpu_timeout_s=1)


def test_read_tf_config_without_tf_config_is_a_config_error():
  # get_strategy("multi_worker_mirrored") without TF_CONFIG is one local worker instead
  # (trained in tests/cli/test_train.py: building it here would set up this process's runtime).
  with pytest.raises(ConfigError, match="needs the TF_CONFIG environment variable"):
    distribute.read_tf_config({})


@pytest.mark.parametrize("tf_config,message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ("[1, 2]", 'TF_CONFIG has no "cluster" object'),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), 'TF_CONFIG has no "task" object'),
    (_tf_config(cluster={"worker": ["hostonly"]}), "must be a non-empty list of \"host:port\""),
    (_tf_config(cluster={"worker": []}), "must be a non-empty list"),
    (_tf_config(index=2), "task index 2 is out of range for the 2 worker address(es)"),
    (_tf_config(index="0"), "task index '0' is out of range"),
    (_tf_config(task_type="ps"), "task type 'ps' is not accepted"),
    (_tf_config(task_type="chief"), "task type 'chief' is not accepted"),  # No chief job.
])
def test_malformed_tf_config_is_a_one_line_config_error(monkeypatch, tf_config, message):
  monkeypatch.setenv("TF_CONFIG", tf_config)
  with pytest.raises(ConfigError) as error:
    distribute.get_strategy("multi_worker_mirrored")
  assert message in str(error.value)
  assert "\n" not in str(error.value)


def test_tf_config_for_a_host_list():
  config = json.loads(distribute.tf_config_for(["node-a", "node-b:3000"], "worker", 1))
  assert config == {"cluster": {"worker": ["node-a:2222", "node-b:3000"]},
                    "task": {"type": "worker", "index": 1}}
  with pytest.raises(ValueError, match="task index 2 is out of range"):
    distribute.tf_config_for(["a", "b"], "worker", 2)


@pytest.mark.parametrize("cluster,task_type,index,chief", [
    ({"worker": ["a:1", "b:1"]}, "worker", 0, True),
    ({"worker": ["a:1", "b:1"]}, "worker", 1, False),
    ({"chief": ["c:1"], "worker": ["a:1"]}, "chief", 0, True),
    ({"chief": ["c:1"], "worker": ["a:1"]}, "worker", 0, False),
])
def test_chief_and_task_from_tf_config(monkeypatch, tmp_path, cluster, task_type, index, chief):
  monkeypatch.setenv("TF_CONFIG", _tf_config(index, task_type, cluster))
  assert distribute.task_type_and_id() == (task_type, index)
  assert distribute.is_chief() == chief
  write_dir = distribute.worker_temp_dir(str(tmp_path))
  if chief:
    assert write_dir == str(tmp_path)
  else:
    assert write_dir != str(tmp_path) and os.path.isdir(write_dir) and not os.listdir(write_dir)
    assert not write_dir.startswith(str(tmp_path))


@pytest.mark.slow
def test_worker_temp_dir_is_removed_when_the_process_exits(tmp_path):
  code = textwrap.dedent(f"""
      import os
      from tfllm import distribute
      path = distribute.worker_temp_dir({str(tmp_path)!r})
      open(os.path.join(path, "ckpt"), "w").write("x")
      print(path)
  """)
  env = dict(os.environ, TF_CONFIG=_tf_config(index=1))
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
  path = result.stdout.strip().splitlines()[-1]
  assert "tfllm-worker1-" in path
  assert not os.path.exists(path)


_LONE_WORKER = textwrap.dedent("""
    import sys
    from tfllm import distribute
    try:
      distribute.get_strategy("multi_worker_mirrored", worker_timeout_s=5)
    except RuntimeError as e:
      print("ERROR", e)
      sys.exit(1)
""")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_multi_worker_mirrored_peer_that_never_comes_is_named(tmp_path):
  """Worker 0 (the leader) and worker 1 each alone in their cluster: both fail in bound."""
  ports = load_script("local_multiworker").free_ports(4)
  workers = []
  for index in (0, 1):  # Two clusters: in each only the task `index` is started.
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports[2 * index:2 * index + 2]]}
    env = dict(os.environ, TF_CONFIG=_tf_config(index, cluster=cluster))
    workers.append((1 - index, cluster["worker"][1 - index], subprocess.Popen(
        [sys.executable, "-c", _LONE_WORKER], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)))
  for missing, missing_address, process in workers:
    try:
      output, _ = process.communicate(timeout=90)
    finally:
      process.kill()
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    assert process.returncode == 1 and errors, output
    assert "the cluster did not form within 5 s" in errors[0]
    assert f"not reachable: worker {missing} at {missing_address}" in errors[0]
