#!/usr/bin/env python3
"""Runs N copies of a command as a MultiWorkerMirroredStrategy cluster on this machine.

    python launch/local_multiworker.py --num_workers=2 -- \
        tfllm-train --distribution_strategy=multi_worker_mirrored --model_dir=/tmp/run

Each worker gets a `TF_CONFIG` naming every worker at 127.0.0.1 on a free port, and its
own index. Their output is streamed with a `[worker i]` prefix. When one worker fails, the
others are stopped (SIGTERM, then SIGKILL after `--grace` seconds: a TF worker whose peer
is gone may ignore SIGTERM) and the launcher exits with the first failure's code (128 +
signal for a worker killed by a signal, 124 when `--timeout` runs out). It never waits on a
worker forever. Standard library only: the launcher itself never starts TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, List, Mapping, Optional, Sequence

TIMEOUT_EXIT_CODE = 124


def free_ports(count: int, host: str = "127.0.0.1") -> List[int]:
  """`count` distinct TCP ports that are free now (held together while they are picked)."""
  sockets = []
  try:
    for _ in range(count):
      s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      s.bind((host, 0))
      sockets.append(s)
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def local_tf_configs(num_workers: int, host: str = "127.0.0.1") -> List[str]:
  """The `TF_CONFIG` JSON of each of `num_workers` workers on `host`, on free ports."""
  cluster = {"worker": [f"{host}:{port}" for port in free_ports(num_workers, host)]}
  return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
          for i in range(num_workers)]


def exit_code(returncode: int) -> int:
  """A shell-style exit code: 128 + N for a process killed by signal N."""
  return 128 - returncode if returncode < 0 else returncode


def _describe(returncode: int) -> str:
  if returncode < 0:
    try:
      return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
      return f"was killed by signal {-returncode}"
  return f"exited with code {returncode}"


class _Worker:
  """One worker process, its address, and the threads that stream its output and wait on it."""

  def __init__(self, index: int, command: Sequence[str], env: Mapping[str, str],
               write: Callable[[str], None]):
    self.index = index
    self.address = json.loads(env["TF_CONFIG"])["cluster"]["worker"][index]
    # A session of its own: signals reach the worker and its children, never the launcher.
    self.process = subprocess.Popen(
        list(command), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True)
    self.ended: Optional[float] = None  # When it exited: tells the first failure apart.
    self.reader = threading.Thread(target=self._stream, args=(write,), daemon=True)
    self.reader.start()
    threading.Thread(target=self._wait, daemon=True).start()

  def __str__(self):
    return f"worker {self.index} ({self.address}, pid {self.process.pid})"

  def _stream(self, write):
    for raw in iter(self.process.stdout.readline, b""):
      write(f"[worker {self.index}] {raw.decode('utf-8', errors='replace').rstrip()}")
    self.process.stdout.close()

  def _wait(self):
    self.process.wait()
    self.ended = time.monotonic()

  def signal(self, signum: int) -> None:
    try:
      os.killpg(self.process.pid, signum)
    except (ProcessLookupError, PermissionError):
      pass


def _stop(workers: Sequence[_Worker], grace_s: float, log: Callable[[str], None]) -> None:
  """SIGTERM to every running worker; SIGKILL to those still running after `grace_s`."""
  running = [w for w in workers if w.ended is None]
  for w in running:
    w.signal(signal.SIGTERM)
  deadline = time.monotonic() + grace_s
  while any(w.ended is None for w in running) and time.monotonic() < deadline:
    time.sleep(0.1)
  for w in running:
    if w.ended is None:
      log(f"{w} did not stop within {grace_s:g} s of SIGTERM; sending SIGKILL")
    w.signal(signal.SIGKILL)  # Also reaps children left behind by a worker that did exit.
  for w in workers:
    w.process.wait()
    w.reader.join(timeout=5)


def launch_local(command: Sequence[str], num_workers: int,
                 env: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None,
                 grace_s: float = 10.0, write: Optional[Callable[[str], None]] = None) -> int:
  """Runs `num_workers` copies of `command` as a local MWMS cluster; returns the exit code.

  Args:
    command: the program and its arguments, the same for every worker.
    num_workers: how many workers (each gets `TF_CONFIG` with its index).
    env: extra environment variables for the workers (added to this process's).
    timeout: seconds before every worker is stopped and 124 returned; None: no limit.
    grace_s: seconds between SIGTERM and SIGKILL when stopping workers.
    write: where prefixed output lines go (default: stdout).

  Returns:
    0 when every worker exited 0; else the first failure's exit code (128 + signal number
    for a worker killed by a signal), or 124 on timeout.
  """
  if num_workers < 1:
    raise ValueError(f"num_workers={num_workers}; it must be at least 1")
  if not command:
    raise ValueError("no command to run; put it after `--`")
  lock = threading.Lock()

  def emit(line: str) -> None:
    with lock:
      if write is None:
        print(line, flush=True)
      else:
        write(line)

  log = lambda message: emit(f"[launcher] {message}")
  base_env = dict(os.environ, **(env or {}), PYTHONUNBUFFERED="1")
  configs = local_tf_configs(num_workers)
  log(f"starting {num_workers} workers: {' '.join(command)}")
  workers = []
  try:
    for i in range(num_workers):
      workers.append(_Worker(i, command, dict(base_env, TF_CONFIG=configs[i]), emit))
  except OSError as e:  # The command does not exist or cannot run: 127, as in a shell.
    log(f"cannot start worker {len(workers)}: {e}")
    _stop(workers, grace_s, log)
    return 127
  deadline = None if timeout is None else time.monotonic() + timeout
  result = None
  try:
    while result is None:
      ended = [w for w in workers if w.ended is not None]
      failed = sorted((w for w in ended if w.process.returncode != 0), key=lambda w: w.ended)
      if failed:
        lost = failed[0]
        result = exit_code(lost.process.returncode)
        log(f"{lost} {_describe(lost.process.returncode)}; stopping the other workers")
      elif len(ended) == len(workers):
        result = 0
      elif deadline is not None and time.monotonic() > deadline:
        result = TIMEOUT_EXIT_CODE
        log(f"timeout: workers still running after {timeout:g} s; stopping them")
      else:
        time.sleep(0.1)
  except KeyboardInterrupt as e:
    result = e.args[0] if e.args and isinstance(e.args[0], int) else 130
    log("interrupted; stopping the workers")
  finally:
    _stop(workers, grace_s, log)
  log("all workers finished" if result == 0 else f"exit code {result}")
  return result


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      description="Run a command as N MultiWorkerMirroredStrategy workers on 127.0.0.1.",
      usage="%(prog)s [--num_workers=N] [--timeout=S] [--grace=S] -- COMMAND [ARGS...]")
  parser.add_argument("--num_workers", type=int, default=2, help="workers to start (>= 1)")
  parser.add_argument("--timeout", type=float, default=None,
                      help="stop every worker and exit 124 after this many seconds")
  parser.add_argument("--grace", type=float, default=10.0,
                      help="seconds from SIGTERM to SIGKILL when stopping workers")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="the worker command after --")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if args.num_workers < 1:
    parser.error(f"--num_workers={args.num_workers}; it must be at least 1")
  if not command:
    parser.error("no command given; put it after `--`")

  # SIGTERM to the launcher (a scheduler stopping it) stops the workers too.
  def on_sigterm(signum, frame):
    raise KeyboardInterrupt(128 + signum)
  signal.signal(signal.SIGTERM, on_sigterm)
  return launch_local(command, args.num_workers, timeout=args.timeout, grace_s=args.grace)


if __name__ == "__main__":
  sys.exit(main())
