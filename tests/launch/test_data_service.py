"""launch/data_service.py: bad flags are one line and exit 2; a dispatcher and a worker
started with it serve a WordPiece pipeline (tensorflow-text ops) to this process."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from launch.local_multiworker import free_ports
from tests.launch.helpers import ROOT

SCRIPT = str(ROOT / "launch" / "data_service.py")


def _env():
  return dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))


@pytest.mark.parametrize("args,message", [
    ([], "--role is required"),
    (["--role=both"], "--role=both: value should be one of"),
    (["--role=worker"], "--dispatcher_address='' is not accepted"),
    (["--role=worker", "--dispatcher_address=host"], "--dispatcher_address='host' is not"),
    (["--role=dispatcher", "--port=70000"], "--port=70000 is out of range"),
    (["--role=worker", "--dispatcher_address=h:1", "--work_dir=/tmp/x"], "--work_dir='/tmp/x' "
     "applies to the dispatcher"),
    (["--role=dispatcher", "extra"], "unexpected arguments extra"),
])
def test_a_bad_flag_is_one_line_and_exit_2(args, message):
  result = subprocess.run([sys.executable, SCRIPT, *args], env=_env(), capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
  assert result.stderr.startswith("data_service.py: error: ")


@pytest.mark.slow  # two TensorFlow processes: 30 to 60 s on 2 busy cores
def test_a_dispatcher_and_a_worker_serve_a_word_piece_pipeline(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfllm.data import service, tokenizers  # pylint: disable=g-import-not-at-top

  dispatcher_port, worker_port = free_ports(2)
  started = [subprocess.Popen(
      [sys.executable, SCRIPT, *args], env=_env(), stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL, start_new_session=True) for args in (
          ["--role=dispatcher", f"--port={dispatcher_port}", f"--work_dir={tmp_path}"],
          ["--role=worker", f"--dispatcher_address=localhost:{dispatcher_port}",
           f"--port={worker_port}"])]
  try:
    word_piece = tokenizers.train_word_piece(
        tf.data.Dataset.from_tensor_slices(["the cat sat on the mat"] * 20), vocab_size=24)
    texts = tf.data.Dataset.from_tensor_slices(["the cat", "on the mat", "sat"])
    local = [ids.tolist() for ids in texts.map(word_piece).as_numpy_iterator()]
    deadline = time.time() + 120
    while True:   # until the worker has registered with the dispatcher
      try:
        served = [ids.tolist() for ids in service.distribute(
            texts.map(word_piece), f"grpc://localhost:{dispatcher_port}",
            "launch-test").as_numpy_iterator()]
        break
      except tf.errors.OpError:
        if time.time() > deadline:
          raise
        time.sleep(1)
    assert sorted(served) == sorted(local)
  finally:
    for process in started:
      process.terminate()
    for process in started:
      process.wait(timeout=30)
