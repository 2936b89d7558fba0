#!/usr/bin/env python3
"""Starts a tf.data service dispatcher or worker for tfllm's training input, and blocks.

    # one dispatcher (any host the trainers and workers reach):
    python launch/data_service.py --role=dispatcher --port=5050 --work_dir=/shared/ds
    # one worker per CPU host that runs the input pipeline:
    python launch/data_service.py --role=worker --dispatcher_address=HOST:5050 --port=5051
    # then train with the pipeline on the service:
    tfllm-train ... --config.data.service_address=grpc://HOST:5050

A worker imports `tensorflow_text` so that the ops of the pipelines it is sent (WordPiece,
SentencePiece tokenizers) are registered in its process. `--work_dir` makes the dispatcher
fault tolerant: it journals its state there and a restarted dispatcher resumes its jobs.
A bad flag is one line on stderr and exit code 2. docs/distributed.md, "Input on the tf.data
service".
"""

from __future__ import annotations

import re
import sys

from absl import app, flags

from tfllm.cli.flags import flags_parser

PROGRAM = "data_service.py"

FLAGS = flags.FLAGS
flags.DEFINE_enum("role", None, ["dispatcher", "worker"], "Which server to run.")
flags.DEFINE_integer("port", 0, "Port to serve on (0: a free one, printed at start).")
flags.DEFINE_string("work_dir", "", "Dispatcher: directory (local or gs://) for its journal "
                    "(fault tolerance); '' = none, a restarted dispatcher forgets its jobs.")
flags.DEFINE_string("dispatcher_address", "", "Worker: HOST:PORT of the dispatcher.")
flags.DEFINE_string("worker_address", "", "Worker: HOST:PORT the dispatcher and trainers reach "
                    "this worker at ('' = localhost:PORT, for a one-host test; set it on a "
                    "cluster). The port is filled in with the served one.")

_HOST_PORT = re.compile(r"[^\s/:]+:[0-9]{1,5}")


class UsageError(Exception):
  """A flag value that cannot work: one line, exit 2."""


def dispatcher_address() -> str:
  """`--dispatcher_address` as HOST:PORT (a `grpc://` prefix, as in the trainer's
  `config.data.service_address`, is accepted too)."""
  address = FLAGS.dispatcher_address
  return address[len("grpc://"):] if address.startswith("grpc://") else address


def check_flags() -> None:
  """Raises UsageError naming the flag, its value and what is accepted."""
  if FLAGS.role is None:
    raise UsageError("--role is required; accepted: dispatcher, worker")
  if not 0 <= FLAGS.port <= 65535:
    raise UsageError(f"--port={FLAGS.port} is out of range; accepted: 0 (a free port) to 65535")
  if FLAGS.role == "worker":
    if not _HOST_PORT.fullmatch(dispatcher_address()):
      raise UsageError(f"--dispatcher_address={FLAGS.dispatcher_address!r} is not accepted; "
                       "a worker needs the dispatcher's HOST:PORT (or grpc://HOST:PORT)")
    if FLAGS.work_dir:
      raise UsageError(f"--work_dir={FLAGS.work_dir!r} applies to the dispatcher, not a worker")
  elif FLAGS.dispatcher_address or FLAGS.worker_address:
    raise UsageError("--dispatcher_address and --worker_address apply to a worker, not the "
                     "dispatcher")


def serve():
  """Starts the server of `--role` and returns it."""
  # TensorFlow only after the flags are checked: a bad flag answers at once.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # Registers the ops of tfllm's tokenizers (the pipelines' graphs name them).
  import tensorflow_text  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  service = tf.data.experimental.service
  if FLAGS.role == "dispatcher":
    server = service.DispatchServer(service.DispatcherConfig(
        port=FLAGS.port, work_dir=FLAGS.work_dir or None,
        fault_tolerant_mode=bool(FLAGS.work_dir)))
    print(f"tf.data service dispatcher at {server.target}", flush=True)
    return server
  config = dict(dispatcher_address=dispatcher_address(), port=FLAGS.port)
  if FLAGS.worker_address:
    config["worker_address"] = FLAGS.worker_address.rsplit(":", 1)[0] + ":%port%"
  server = service.WorkerServer(service.WorkerConfig(**config))
  print(f"tf.data service worker of {dispatcher_address()} serving", flush=True)
  return server


def main(argv):
  if len(argv) > 1:
    print(f"{PROGRAM}: error: unexpected arguments {' '.join(argv[1:])}", file=sys.stderr)
    return 2
  try:
    check_flags()
  except UsageError as error:
    print(f"{PROGRAM}: error: {error}", file=sys.stderr)
    return 2
  serve().join()
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=flags_parser(PROGRAM))
