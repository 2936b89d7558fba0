"""Distribution strategies by name, and the cluster (`TF_CONFIG`) helpers around them.

`get_strategy(name, ...)` takes the names of Model Garden's `--distribution_strategy` flag
and turns every impossible request into one line naming the bad value, instead of TF's
raw errors or a hang:

  off / default          the default (no-op) strategy: one device, no replicas
  one_device             `OneDeviceStrategy` on GPU:0, or CPU:0 when there is no GPU
  mirrored               `MirroredStrategy` over the local GPUs, or the logical CPUs
  multi_worker_mirrored  `MultiWorkerMirroredStrategy` over the cluster in `TF_CONFIG`
                         (without it: one worker over the local devices)
  tpu                    `TPUStrategy` on a local TPU VM or a grpc:// TPU worker

Two hangs of the stack are bounded here (docs/stack.md): a MWMS worker waits forever for a
peer that never comes, and a grpc:// TPU address with nothing listening never answers.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import shutil
import socket
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from tfllm.config import ConfigError

STRATEGIES = ("off", "default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
# The `all_reduce` values each strategy accepts ("auto" lets TF pick by device topology).
ALL_REDUCE = {
    "mirrored": ("auto", "nccl", "hierarchical_copy"),
    "multi_worker_mirrored": ("auto", "ring", "nccl"),
}
# Task types a MWMS cluster may run this program as (worker 0, or the chief, is the chief).
TASK_TYPES = ("chief", "worker")
DEFAULT_PORT = 2222
# Numbers the MirroredStrategy instances of this process (see `_mirrored`).
_mirrored_instances = itertools.count()


def get_strategy(name: str = "off", tpu: Optional[str] = None, num_gpus: Optional[int] = None,
                 all_reduce: str = "auto", worker_timeout_s: float = 300.0,
                 tpu_timeout_s: float = 60.0,
                 one_replica_per_worker: bool = False) -> tf.distribute.Strategy:
  """Returns the `tf.distribute.Strategy` called `name`.

  Call it first thing in a program: `multi_worker_mirrored` must configure the runtime
  before anything initializes it.

  Args:
    name: one of `STRATEGIES` (case-insensitive).
    tpu: for `tpu`: "local" (a Cloud TPU VM; also when None or ""), a TPU name, or a
      "grpc://host:port" worker address.
    num_gpus: for `one_device` and `mirrored`: how many local devices to use: GPUs when the
      machine has them, else logical CPUs (0 means CPU:0). None: all of them.
    all_reduce: cross-device reduction, see `ALL_REDUCE` ("auto" everywhere).
    worker_timeout_s: for `multi_worker_mirrored`: how long to wait for every worker in
      `TF_CONFIG` to join before failing with the addresses of the missing ones.
    tpu_timeout_s: for a grpc:// `tpu`: how long to wait for its port to accept a connection.
    one_replica_per_worker: for `multi_worker_mirrored`: one replica a worker, on its CPU,
      whatever GPUs it has (a tensor-parallel program places its shards on the worker's
      devices itself; the replicas' all-reduce then runs between the workers' CPUs).

  Returns:
    The strategy; `off` returns the default strategy, so `strategy.scope()` and
    `strategy.run` work the same for every name.

  Raises:
    ConfigError (a ValueError): an unknown name or `all_reduce`, a bad `num_gpus`, a
      malformed `TF_CONFIG`.
    RuntimeError: no TPU where one was asked for; a MWMS peer did not join in time.
  """
  key = str(name).strip().lower()
  if key not in STRATEGIES:
    raise ConfigError(f"distribution strategy {name!r} is not known; use one of: "
                      f"{', '.join(STRATEGIES)}")
  if num_gpus is not None and num_gpus < 0:
    raise ConfigError(f"num_gpus={num_gpus} is negative; use 0 (CPU), N > 0, or None (all)")
  accepted = ALL_REDUCE.get(key, ("auto",))
  if all_reduce not in accepted:
    raise ConfigError(f"all_reduce={all_reduce!r} is not accepted with {key}; use one of: "
                      f"{', '.join(accepted)}")

  if key in ("off", "default"):
    _local_devices(key, num_gpus, most=1)
    return tf.distribute.get_strategy()
  if key == "one_device":
    return tf.distribute.OneDeviceStrategy(_local_devices(key, num_gpus, most=1)[0])
  if key == "mirrored":
    cross_device_ops = None
    if all_reduce == "nccl":
      cross_device_ops = tf.distribute.NcclAllReduce()
    elif all_reduce == "hierarchical_copy":
      cross_device_ops = tf.distribute.HierarchicalCopyAllReduce()
    return _mirrored(_local_devices(key, num_gpus), cross_device_ops)
  if key == "multi_worker_mirrored":
    return _multi_worker_mirrored(all_reduce, worker_timeout_s, one_replica_per_worker)
  return _tpu_strategy(tpu, tpu_timeout_s)


def num_replicas(strategy: tf.distribute.Strategy) -> int:
  """Replicas that each take a slice of the global batch (all workers together)."""
  return strategy.num_replicas_in_sync


def _mirrored(devices: List[str], cross_device_ops) -> tf.distribute.MirroredStrategy:
  """`MirroredStrategy` whose all-reduces have keys no earlier strategy of this process used.

  Every MirroredStrategy numbers its collective all-reduces from the same keys, and TF's
  runtime remembers a key's tensor shape for the life of the process: a second strategy in
  one process (tests, notebooks) fails with "Shape mismatch in the collective instance".
  TF's own tests avoid it by giving each strategy its own `_collective_key_base`.
  """
  cls = tf.distribute.MirroredStrategy
  cls._collective_key_base = 10_000 * next(_mirrored_instances)  # pylint: disable=protected-access
  try:
    return cls(devices=devices, cross_device_ops=cross_device_ops)
  finally:
    cls._collective_key_base = 0  # pylint: disable=protected-access


def _local_devices(name: str, num_gpus: Optional[int], most: Optional[int] = None) -> List[str]:
  """The first `num_gpus` local GPUs, or logical CPUs on a machine without GPUs."""
  gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
  devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
  if num_gpus == 0:
    return [tf.config.list_logical_devices("CPU")[0].name]
  wanted = len(devices) if num_gpus is None else num_gpus
  if most is not None and wanted > most:
    if num_gpus is None:  # "all devices" for a one-device strategy means the first one.
      return devices[:most]
    raise ConfigError(f"{name} runs on one device but num_gpus={num_gpus}; use mirrored (one "
                      "machine) or multi_worker_mirrored (several) for more")
  if wanted > len(devices):
    kind = "GPUs" if gpus else "logical CPU devices (no GPUs)"
    raise ConfigError(f"{name}: num_gpus={num_gpus} asks for more replicas than this machine "
                      f"has: {len(devices)} {kind}")
  return devices[:wanted]


# ----------------------------------------------------------------------------- TF_CONFIG


def read_tf_config(environ: Optional[Dict[str, str]] = None) -> dict:
  """Returns the validated `TF_CONFIG` of a MWMS worker as a dict.

  Raises:
    ConfigError (a ValueError): it is missing, not JSON, lacks `cluster` or `task`, or the
      task is not one of the cluster's (each with one line saying what is wrong).
  """
  raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
  if not raw:
    raise ConfigError("multi_worker_mirrored needs the TF_CONFIG environment variable (the "
                      "cluster's JSON); launch/local_multiworker.py or launch/tf_config.py "
                      "writes it")
  try:
    config = json.loads(raw)
  except json.JSONDecodeError as e:
    raise ConfigError(f"TF_CONFIG is not valid JSON ({e.msg} at character {e.pos}): "
                      f"{raw[:80]!r}") from None
  if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
    raise ConfigError(f"TF_CONFIG has no \"cluster\" object (job name -> list of host:port): "
                      f"{raw[:80]!r}")
  if not isinstance(config.get("task"), dict):
    raise ConfigError(f"TF_CONFIG has no \"task\" object ({{\"type\": \"worker\", \"index\": "
                      f"0}}): {raw[:80]!r}")
  cluster, task = config["cluster"], config["task"]
  for job, addresses in cluster.items():
    if (not isinstance(addresses, list) or not addresses
        or not all(isinstance(a, str) and _split_address(a) for a in addresses)):
      raise ConfigError(f"TF_CONFIG cluster[{job!r}] must be a non-empty list of \"host:port\" "
                        f"strings, got {addresses!r}")
  task_type, index = task.get("type"), task.get("index")
  if task_type not in TASK_TYPES or task_type not in cluster:
    raise ConfigError(f"TF_CONFIG task type {task_type!r} is not accepted; use one of the "
                      f"cluster's jobs among {', '.join(TASK_TYPES)} (cluster has "
                      f"{', '.join(sorted(cluster))})")
  if not isinstance(index, int) or isinstance(index, bool) or not (
      0 <= index < len(cluster[task_type])):
    raise ConfigError(f"TF_CONFIG task index {index!r} is out of range for the "
                      f"{len(cluster[task_type])} {task_type} address(es) of its cluster")
  return config


def tf_config_for(hosts: Sequence[str], task_type: str = "worker", index: int = 0,
                  port: int = DEFAULT_PORT) -> str:
  """The `TF_CONFIG` JSON of task `index` in a cluster of workers at `hosts`.

  Worker 0 is the chief (it writes checkpoints and summaries).

  Args:
    hosts: "host" or "host:port" of each worker, in task order; `port` is added where
      none is given.
    task_type: this task's job, "worker".
    index: this task's position in `hosts`.
    port: the port of hosts given without one.

  Returns:
    The JSON string to put in the `TF_CONFIG` environment variable.
  """
  addresses = [h if _split_address(h) else f"{h}:{port}" for h in (h.strip() for h in hosts)]
  config = json.dumps({"cluster": {"worker": addresses},
                       "task": {"type": task_type, "index": index}})
  read_tf_config({"TF_CONFIG": config})  # The same checks as the workers will make.
  return config


def _split_address(address: str) -> Optional[Tuple[str, int]]:
  """("host", port) of "host:port" (or "grpc://host:port"); None if it has no port."""
  host, _, port = address.split("://")[-1].rpartition(":")
  return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def task_type_and_id(strategy: Optional[tf.distribute.Strategy] = None
                     ) -> Tuple[Optional[str], Optional[int]]:
  """(task type, task index) of this process; (None, None) outside a MWMS cluster.

  Read from a `MultiWorkerMirroredStrategy`'s cluster resolver, or from `TF_CONFIG` when no
  strategy is given. Other strategies run as one process: (None, None).
  """
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return strategy.cluster_resolver.task_type, strategy.cluster_resolver.task_id
  if strategy is None and os.environ.get("TF_CONFIG", "").strip():
    task = read_tf_config()["task"]
    return task["type"], task["index"]
  return None, None


def is_chief(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
  """Whether this process writes the run's files: the chief, else worker 0, or a lone process."""
  task_type, task_id = task_type_and_id(strategy)
  if task_type is None:
    return True
  if strategy is None:
    jobs = read_tf_config()["cluster"]
  else:
    jobs = strategy.cluster_resolver.cluster_spec().jobs
  return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in jobs)


def worker_temp_dir(model_dir: str, strategy: Optional[tf.distribute.Strategy] = None) -> str:
  """Where this process writes: `model_dir` on the chief, a private temp dir elsewhere.

  MWMS checkpoints and summaries are collective: every worker must write, but only the
  chief's copy is kept (TF's multi-worker guide). Other workers write to a fresh local
  directory that is removed when the process exits (the caller may remove it sooner).
  """
  if is_chief(strategy):
    return model_dir
  task_type, task_id = task_type_and_id(strategy)
  path = tempfile.mkdtemp(prefix=f"tfllm-{task_type}{task_id}-")
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  return path


# ----------------------------------------------------------------------------- MWMS


def _multi_worker_mirrored(all_reduce: str, timeout_s: float,
                           one_replica_per_worker: bool = False) -> tf.distribute.Strategy:
  """`MultiWorkerMirroredStrategy` that fails after `timeout_s` if a peer does not join.

  Without `TF_CONFIG` it is one worker over the local devices (TF's own behaviour): the same
  program then runs alone, e.g. to try a multi-worker config on one machine.
  `one_replica_per_worker`: see `get_strategy`.
  """
  implementation = {
      "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
      "ring": tf.distribute.experimental.CommunicationImplementation.RING,
      "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
  }[all_reduce]
  options = tf.distribute.experimental.CommunicationOptions(implementation=implementation)
  resolver = None
  if one_replica_per_worker:
    # MWMS makes a replica of each local GPU it is told of (TF_CONFIG's resolver: all of
    # them); a resolver that names no accelerator gives the worker's CPU alone.
    tf_config = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf_config.cluster_spec(), task_type=tf_config.task_type, task_id=tf_config.task_id,
        rpc_layer=tf_config.rpc_layer or "grpc", num_accelerators={})
  if not os.environ.get("TF_CONFIG", "").strip():
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                     communication_options=options)
  config = read_tf_config()
  cluster, task = config["cluster"], config["task"]
  _bound_cluster_registration(cluster, timeout_s)
  try:
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                     communication_options=options)
  except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as e:
    me = cluster[task["type"]][task["index"]]
    peers = {f"{job} {i} at {address}": address for job, addresses in cluster.items()
             for i, address in enumerate(addresses) if address != me}
    # Name the peers that do not answer; if all answer, one is up but not in the cluster.
    missing = [name for name, address in peers.items() if not _port_open(address, 1.0)]
    raise RuntimeError(
        f"multi_worker_mirrored: the cluster did not form within {timeout_s:g} s "
        f"(this is {task['type']} {task['index']} at {me}); not reachable: "
        f"{', '.join(missing or peers)} ({type(e).__name__})") from None


def _bound_cluster_registration(cluster: dict, timeout_s: float) -> None:
  """Makes MWMS construction fail after `timeout_s` instead of waiting forever.

  MWMS configures TF's coordination service with no registration timeout unless one is
  configured already; configuring it here the way MWMS would, plus a timeout and a
  registration barrier, bounds the wait on every task (the leader waits at the barrier;
  others fail to register with it). Every task must use the same settings.
  """
  # pylint: disable=g-import-not-at-top  (private modules: no public API sets these)
  from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
  from tensorflow.python.eager import context
  leader = "chief" if "chief" in cluster else "worker"
  jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
          for job in TASK_TYPES if job in cluster]
  context.context().configure_coordination_service(
      service_type="standalone", service_leader=f"/job:{leader}/replica:0/task:0",
      cluster_register_timeout_in_ms=max(1, int(timeout_s * 1000)), coordinated_jobs=jobs)
  context.context().coordination_service.cluster_register_with_barrier = True


def _port_open(address: str, timeout_s: float) -> bool:
  """Whether something accepts TCP connections at "host:port" within `timeout_s`."""
  host, port = _split_address(address)
  try:
    with socket.create_connection((host, port), timeout=timeout_s):
      return True
  except OSError:
    return False


def _wait_for_port(address: str, timeout_s: float) -> bool:
  """Polls "host:port" until it accepts a TCP connection; False after `timeout_s`."""
  deadline = time.monotonic() + timeout_s
  while True:
    if _port_open(address, timeout_s=min(1.0, max(0.05, deadline - time.monotonic()))):
      return True
    if time.monotonic() >= deadline:
      return False
    time.sleep(0.2)


# ----------------------------------------------------------------------------- TPU


def _tpu_strategy(tpu: Optional[str], timeout_s: float) -> tf.distribute.Strategy:
  """Resolves, connects to and initializes the TPU system, then builds `TPUStrategy`."""
  address = tpu or "local"
  if address.startswith("grpc://") and not _wait_for_port(address, timeout_s):
    raise RuntimeError(f"tpu: nothing answers at {address} within {timeout_s:g} s; check the "
                       "address and that the TPU worker is running")
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
    if address != "local":
      tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  except Exception as e:  # pylint: disable=broad-except
    # Each step fails its own way without a TPU (NotFoundError, IndexError, ValueError, a
    # metadata-server URLError for names): all mean the same to the user.
    reason = (getattr(e, "message", None) or str(e)).strip() or type(e).__name__
    reason = reason.splitlines()[0].split(". ")[0][:160]
    raise RuntimeError(f"tpu: no usable TPU at tpu={address!r} ({reason}); run on a Cloud TPU "
                       "VM with --tpu=local, pass a TPU name or grpc://host:8470, or choose "
                       f"another strategy: {', '.join(s for s in STRATEGIES if s != 'tpu')}"
                       ) from None


def split_cpu(count: int) -> None:
  """Splits the first CPU into `count` logical devices (tensor parallelism and mirrored runs
  without GPUs). Call before anything initializes the TF runtime (docs/stack.md).

  Raises:
    ConfigError: `count` < 1, or the runtime is already initialized.
  """
  if count < 1:
    raise ConfigError(f"cpu_devices={count} must be >= 1")
  cpu = tf.config.list_physical_devices("CPU")[0]
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
  except RuntimeError as error:
    raise ConfigError(f"cpu_devices={count}: the TF runtime is already initialized ({error}); "
                      "split the CPU first thing in the program") from error
