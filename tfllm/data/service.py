"""Training input on the tf.data service: the pipeline runs on other hosts' CPUs.

With `config.data.service_address = "grpc://HOST:PORT"` the training pipeline that
`tfllm.data.pipelines.make_dataset` builds (tokenization, packing, masking, bucketing) is
not run by the trainer: its graph is sent to a tf.data service dispatcher, whose workers
(`launch/data_service.py`) run it and stream the batches back. Evaluation stays local.

Sharding: `ShardingPolicy.DYNAMIC`. The dispatcher splits the pipeline's source (its files,
or TFDS's file instructions) and hands the splits to the workers as they ask; TF documents
at-most-once visitation per pass ("No examples will be repeated, but some may be missed if a
tf.data service worker gets restarted while processing a file"), and a pass with no worker
restart yields every example once (tested in `tests/data/test_service.py`). The static
policies (FILE, DATA, FILE_OR_DATA) need a fixed worker list in the dispatcher and a
service worker on each trainer host, and DATA makes every worker run the whole pipeline and
drop all but its share: none of them moves work off the trainer's host
(docs/distributed.md).

Every consumer of one training job (each `multi_worker_mirrored` worker) reads one shared
service job, named after the model dir: the pipeline is built unsharded (the service shares
it out) with the per-replica batch.

Resume: the order of the batches depends on which service worker answers first, so skipping
the consumed batches (how a local pipeline resumes exactly) would not find the place. A run
that resumes at step k instead reads a fresh pass seeded by `resumed_seed(data.seed, k)` in
a new service job (`<job>-from-<k>`): model, optimizer and step resume exactly; the input
does not replay the interrupted order.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from typing import Callable, Optional

import ml_collections
import tensorflow as tf

SHARDING = tf.data.experimental.service.ShardingPolicy.DYNAMIC
_JOB_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]+")


def job_name(model_dir: str) -> str:
  """The service job every consumer of the run in `model_dir` shares: the directory's name
  and a digest of its full path (two runs never share a job, a run's workers always do)."""
  path = model_dir.rstrip("/")
  digest = hashlib.sha256(path.encode("utf-8")).hexdigest()[:12]
  base = _JOB_NAME_CHARACTERS.sub("_", os.path.basename(path) or "run")[:40]
  return f"tfllm-{base}-{digest}"


def resumed_seed(seed: int, step: int) -> int:
  """`data.seed` of the pass a run resuming at `step` reads: a function of both, so that two
  resumptions at different steps do not read the same shuffle order."""
  if step == 0:
    return seed
  digest = hashlib.sha256(f"{seed}:{step}".encode("utf-8")).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def with_data_seed(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """A copy of `config` whose `data.seed` is `seed` (the caller's config is left as it is)."""
  if seed == config.data.seed:
    return config
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.data.seed = seed
  return copy


def wait_for_dispatcher(address: str, timeout_s: float = 30.0) -> None:
  """Returns once the dispatcher at `address` ("grpc://HOST:PORT") accepts connections.

  Raises:
    RuntimeError: nothing answered within `timeout_s` (TF's service client would wait
      forever: docs/stack.md).
  """
  host, port = address[len("grpc://"):].rsplit(":", 1)
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=1.0):
        return
    except OSError:
      if time.monotonic() >= deadline:
        raise RuntimeError(  # pylint: disable=raise-missing-from
            f"no tf.data service dispatcher answers at {address} within {timeout_s:g} s; "
            "start one (launch/data_service.py --role=dispatcher) or fix "
            "config.data.service_address")
      time.sleep(0.5)


def distribute(dataset: tf.data.Dataset, address: str, name: str) -> tf.data.Dataset:
  """`dataset` run by the tf.data service at `address` in the job `name` (DYNAMIC sharding)."""
  return dataset.apply(tf.data.experimental.service.distribute(
      processing_mode=SHARDING, service=address, job_name=name))


class ServiceInput:
  """`InputContext -> tf.data.Dataset` of training batches served by the tf.data service.

  Args:
    build: `(input_context, seed) -> tf.data.Dataset`: the local training pipeline, built
      with `data.seed = seed` (called with an unsharded context: the service shares it out).
    address: `grpc://HOST:PORT` of the dispatcher.
    name: the service job's name (`job_name(model_dir)`).
    seed: `data.seed`.
    start_step: the step this input starts at (0, or the step a run resumed at).

  Example:

    train_data = ServiceInput(
        lambda context, seed: pipelines.make_dataset(
            with_data_seed(config, seed), "train", tokenizer, input_context=context),
        "grpc://localhost:5050", job_name("/tmp/run"), seed=config.data.seed)
    dataset = train_data(None)              # served batches of the whole pipeline
    resumed = train_data.resumed_at(1000)   # a fresh pass in job ...-from-1000
  """

  def __init__(self, build: Callable[[Optional[tf.distribute.InputContext], int],
                                     tf.data.Dataset],
               address: str, name: str, seed: int, start_step: int = 0):
    self.build = build
    self.address = address
    self.name = name
    self.seed = seed
    self.start_step = start_step

  def resumed_at(self, step: int) -> "ServiceInput":
    """The input of a run resuming at `step`: a fresh pass, differently seeded, in a new
    service job (module docstring)."""
    if step == 0:
      return self
    return ServiceInput(self.build, self.address, f"{self.name}-from-{step}",
                        self.seed, start_step=step)

  def describe(self) -> str:
    """One line for the log: where the training input runs."""
    return (f"training input: tf.data service at {self.address}, job {self.name} (dynamic "
            f"sharding; a run resuming at step k reads job {self.name}-from-k, a fresh pass; "
            "evaluation reads locally)")

  def __call__(self, context: Optional[tf.distribute.InputContext]) -> tf.data.Dataset:
    # One shared job for every consumer: the pipeline is whole, batched per replica.
    whole = (None if context is None else tf.distribute.InputContext(
        num_input_pipelines=1, input_pipeline_id=0,
        num_replicas_in_sync=context.num_replicas_in_sync))
    wait_for_dispatcher(self.address)
    dataset = self.build(whole, resumed_seed(self.seed, self.start_step))
    return distribute(dataset, self.address, self.name)
