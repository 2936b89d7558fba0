#!/usr/bin/env python3
"""Prints the TF_CONFIG of each task of a MultiWorkerMirroredStrategy cluster.

    # On each machine, its own (index = its position in --hosts; worker 0 is the chief):
    export TF_CONFIG="$(python launch/tf_config.py --hosts=node-a,node-b --index=1)"
    tfllm-train --distribution_strategy=multi_worker_mirrored --model_dir=...

Without --index, prints one line per task. Hosts without ":port" get --port.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's start-up log quiet.
from tfllm import distribute  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--hosts", required=True,
                      help="comma-separated host or host:port of every worker, in task order")
  parser.add_argument("--index", type=int, default=None,
                      help="print only this task's TF_CONFIG (default: every task's, one a line)")
  parser.add_argument("--port", type=int, default=distribute.DEFAULT_PORT,
                      help="port of the hosts given without one")
  args = parser.parse_args(argv)
  hosts = [h for h in args.hosts.split(",") if h.strip()]
  if not hosts:
    parser.error(f"--hosts={args.hosts!r} names no host")
  indices = range(len(hosts)) if args.index is None else [args.index]
  try:
    for index in indices:
      print(distribute.tf_config_for(hosts, "worker", index, port=args.port))
  except ValueError as e:
    parser.error(str(e))
  return 0


if __name__ == "__main__":
  sys.exit(main())
