"""Where a job's replicas run: device types, workers, XLA by default, lost peers, and the
strategy's distributed datasets (what each replica reads).

Host-side facts about a `tf.distribute.Strategy` that the trainer and the job read; nothing
here builds a model or a step.
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence

import tensorflow as tf

from tfllm.data import service


def num_workers(strategy: tf.distribute.Strategy) -> int:
  """Workers of a `MultiWorkerMirroredStrategy` job (chief included); 1 otherwise."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return 1
  spec = resolver.cluster_spec().as_dict()
  return max(1, len(spec.get("worker", [])) + len(spec.get("chief", [])))


def strategy_device_types(strategy: tf.distribute.Strategy) -> List[str]:
  """The device types ("GPU", "TPU", "CPU") this worker's replicas run on."""
  if isinstance(strategy, tf.distribute.TPUStrategy):
    return ["TPU"]
  try:
    devices = list(strategy.extended.worker_devices)
  except RuntimeError:
    # The default strategy has no device list: ops go to the first GPU, else the CPU.
    devices = [d.name for d in tf.config.list_logical_devices("GPU")[:1]] or ["CPU:0"]
  return [tf.DeviceSpec.from_string(d if "/" in d else f"/device:{d}").device_type or "CPU"
          for d in devices]


def auto_jit_compile(device_types: Sequence[str], multi_worker: bool = False) -> bool:
  """`train.jit_compile="auto"`: XLA where it compiles and pays.

  GPUs and TPUs get XLA under every strategy (a lone GPU per `multi_worker_mirrored` worker,
  GPUs under `mirrored`, one replica or several). A single CPU replica of a one-machine job
  gets it too: the default job's steps run about twice as fast with it on CPU
  (docs/learning_quality.md). Several logical CPU replicas get none (XLA fails across the
  logical CPUs of one machine: docs/distributed.md), nor does a CPU worker of a multi-worker
  job. `jit_compile="on"` and `"off"` override.

  Args:
    device_types: the types ("GPU", "TPU", "CPU") of the devices this worker's replicas
      run on, one per replica.
    multi_worker: whether the job runs under `multi_worker_mirrored`.
  """
  if not device_types:
    return False
  if all(kind in ("GPU", "TPU") for kind in device_types):
    return True
  return list(device_types) == ["CPU"] and not multi_worker


def jit_compile_setting(train_config) -> Optional[bool]:
  """The `Trainer`'s `jit_compile` argument for `train.jit_compile` (None: "auto", decided
  from the devices by `default_jit_compile`)."""
  setting = train_config.jit_compile
  return None if setting == "auto" else setting == "on"


def default_jit_compile(strategy: tf.distribute.Strategy) -> bool:
  """`auto_jit_compile` of the devices `strategy` runs this worker's replicas on."""
  return auto_jit_compile(
      strategy_device_types(strategy),
      multi_worker=isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy))


def lost_peers(error: tf.errors.OpError, strategy: tf.distribute.Strategy) -> List[str]:
  """The other workers a multi-worker op error names, as "worker 1 (host:port)"."""
  if num_workers(strategy) == 1:
    return []
  spec = strategy.cluster_resolver.cluster_spec().as_dict()
  me = (strategy.cluster_resolver.task_type, strategy.cluster_resolver.task_id)
  found = []
  for job, task in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", str(error)):
    if (job, int(task)) == me:
      continue
    addresses = spec.get(job, [])
    address = addresses[int(task)] if int(task) < len(addresses) else "?"
    name = f"{job} {task} ({address})"
    if name not in found:
      found.append(name)
  if not found and isinstance(error, (tf.errors.UnavailableError,
                                      tf.errors.DeadlineExceededError)):
    found.append("a peer worker")
  return found


def distributed_dataset(strategy: tf.distribute.Strategy, dataset_fn, skip_steps: int = 0,
                        take_steps: Optional[int] = None, fill: bool = False,
                        batches_per_step: int = 1):
  """The strategy's distributed dataset of `dataset_fn`'s per-replica batches.

  Args:
    dataset_fn: `InputContext -> tf.data.Dataset` of `(features, labels, sample_weight)`.
    skip_steps, take_steps: steps to skip (resuming) and to take.
    fill: with several replicas, follow each pipeline's batches by endless weight-0 copies
      of its first batch. tf.distribute ends the iteration at the first step that some
      replica has no batch for, so a finite split whose batch count is not a multiple of
      the replicas (or that runs out on one worker first) would lose its last batches;
      `Trainer.evaluate` stops at the first step that carries no weight instead.
    batches_per_step: per-replica batches one step reads (`train.grad_accum_steps`), for
      `skip_steps`.
  """

  if skip_steps and isinstance(dataset_fn, service.ServiceInput):
    # Served batches come in no fixed order: a resumed run reads a fresh, differently seeded
    # pass instead of skipping (tfllm.data.service).
    dataset_fn, skip_steps = dataset_fn.resumed_at(skip_steps), 0

  def per_worker(context: tf.distribute.InputContext):
    dataset = dataset_fn(context)
    replicas_here = context.num_replicas_in_sync // context.num_input_pipelines
    if fill and context.num_replicas_in_sync > 1:
      weightless = dataset.take(1).map(
          lambda features, labels, weight: (features, labels, tf.nest.map_structure(
              tf.zeros_like, weight)))
      dataset = dataset.concatenate(weightless.cache().repeat())
    # The distributed iterator is not checkpointable (docs/stack.md): resume by skipping the
    # per-replica batches that this pipeline fed to the steps already taken.
    if skip_steps:
      dataset = dataset.skip(skip_steps * batches_per_step * replicas_here)
    if take_steps is not None:
      dataset = dataset.take(take_steps * replicas_here)
    return dataset

  options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
  return strategy.distribute_datasets_from_function(per_worker, options)
