"""Two MultiWorkerMirroredStrategy workers on localhost (processes of tests/training/worker.py)."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.training.helpers import finite_dataset_fn, make_trainer, trainer_config

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "launch"))
import local_multiworker  # noqa: E402  pylint: disable=g-import-not-at-top

pytestmark = pytest.mark.slow


def _worker_command(model_dir, *flags):
  return [sys.executable, "-m", "tests.training.worker", "--strategy=multi_worker_mirrored",
          f"--model_dir={model_dir}", *flags]


def _env(tmp_path):
  scratch = tmp_path / "scratch"
  scratch.mkdir(exist_ok=True)
  return dict(TMPDIR=str(scratch), TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))


def test_two_workers_match_one_device_and_only_the_chief_writes(tmp_path):
  # One device (this process) and 2 workers x 1 CPU replica, same global batch of 8 and seed:
  # each worker reads every other example (its shard), so the global batches are the same
  # examples; only the all-reduce's summation order differs (float32 rounding, ~1e-7 per
  # step): 1e-4 on a loss of ~4 over 20 steps catches any real difference (data, scaling).
  config = trainer_config(steps=20, steps_per_loop=5, checkpoint_every_steps=10, eval_steps=0)
  trainer = make_trainer(config, tmp_path / "one",
                         eval_fn=finite_dataset_fn(config, [20], per_replica_batch=4))
  one = trainer.train()
  one_eval = trainer.evaluate(num_steps=1000)

  model_dir = tmp_path / "mwms"
  out = tmp_path / "mwms.npz"
  lines = []
  code = local_multiworker.launch_local(
      _worker_command(model_dir, "--steps=20", f"--out={out}", "--eval_shards=12,8"),
      num_workers=2,
      env=_env(tmp_path), timeout=300, write=lines.append)
  assert code == 0, "\n".join(lines)
  mwms = np.load(out)
  np.testing.assert_allclose(one.losses, mwms["losses"], atol=1e-4, rtol=0)
  # The eval split's 20 examples, 12 on one worker (3 batches of 4) and 8 on the other (2):
  # all 5 batches count, none twice (the worker that runs out first steps on weight 0).
  np.testing.assert_allclose(one_eval["loss"], mwms["eval_loss"], atol=1e-4, rtol=0)
  # Only the chief printed progress and wrote files; the other worker's copy was removed.
  assert any(line.startswith("[worker 0] step 20/20") for line in lines)
  assert not any(line.startswith("[worker 1] step") for line in lines)
  assert sorted(os.listdir(model_dir)) == ["checkpoints", "eval", "train"]
  assert sorted(os.listdir(model_dir / "checkpoints")) == [
      "checkpoint", "ckpt-10.data-00000-of-00001", "ckpt-10.index",
      "ckpt-20.data-00000-of-00001", "ckpt-20.index"]
  # (AutoGraph also writes its generated sources to the temp dir: not ours.)
  assert [n for n in os.listdir(tmp_path / "scratch") if n.startswith("tfllm-")] == []


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_two_workers_of_two_devices_tensor_parallel_match_one_device(tmp_path, style):
  """2 workers on loopback, each splitting its CPU into 2 logical devices for one
  tensor-parallel group (N=2), one replica a worker: from the one-device run's step-0
  checkpoint, at the same global batch of 8, the 20 losses and the final weights are the
  one-device run's within float32 rounding of the differently ordered sums."""
  from tests.training.tensor_parallel_runs import tp_config, tp_trainer  # pylint: disable=g-import-not-at-top
  trainer = tp_trainer(tp_config(style, 1, steps=20), tmp_path / "one")
  start = trainer.save()
  one = trainer.train()

  out = tmp_path / "tp.npz"
  lines = []
  code = local_multiworker.launch_local(
      _worker_command(tmp_path / "tp", f"--tensor_parallel={style}", "--cpu_devices=2",
                      f"--start={start}", "--steps=20", f"--out={out}"),
      num_workers=2, env=_env(tmp_path), timeout=300, write=lines.append)
  assert code == 0, "\n".join(lines[-40:])
  assert any("[worker 0]   /job:worker/replica:0/task:0/device:CPU:1: parameters" in line
             for line in lines), "\n".join(lines)
  assert any("[worker 1]   /job:worker/replica:0/task:1/device:CPU:1: parameters" in line
             for line in lines), "\n".join(lines)
  grouped = np.load(out)
  assert int(grouped["step"]) == 20
  np.testing.assert_allclose(grouped["losses"], one.losses, atol=1e-5, rtol=0)
  for i, weight in enumerate(trainer.model.weights):
    np.testing.assert_allclose(grouped[f"w{i}"], weight.numpy(), atol=1e-5, rtol=0,
                               err_msg=weight.path)


def _start_workers(model_dir, tmp_path, flags):
  env = dict(os.environ, **_env(tmp_path))
  configs = local_multiworker.local_tf_configs(2)
  workers = [subprocess.Popen(_worker_command(model_dir, *flags), cwd=REPO,
                              env=dict(env, TF_CONFIG=c), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in configs]
  return configs, workers


def _wait_for_checkpoint(model_dir, workers, timeout=240):
  deadline = time.monotonic() + timeout
  while not (model_dir / "checkpoints" / "checkpoint").exists():
    assert all(w.poll() is None for w in workers), [w.communicate() for w in workers]
    assert time.monotonic() < deadline, "no checkpoint written"
    time.sleep(0.1)


def _stop_all(workers):
  for w in workers:
    if w.poll() is None:
      w.kill()
      w.communicate()


def test_sigterm_to_one_worker_saves_the_same_step_on_both_and_stops_both(tmp_path):
  model_dir = tmp_path / "mwms"
  _, workers = _start_workers(model_dir, tmp_path, ["--steps=3000", "--steps_per_loop=10",
                                                    "--checkpoint_every_steps=20"])
  try:
    _wait_for_checkpoint(model_dir, workers)
    workers[1].send_signal(signal.SIGTERM)
    errors = [w.communicate(timeout=60)[1] for w in workers]
  finally:
    _stop_all(workers)
  lines = [[l for l in e.splitlines() if l.startswith("worker: error:")] for e in errors]
  assert "stopped by a peer worker at step" in lines[0][0], errors[0]
  assert "stopped by SIGTERM at step" in lines[1][0], errors[1]
  step = int(lines[0][0].split("at step ")[1].split(";")[0])
  assert f"at step {step};" in lines[1][0]  # both workers stopped after the same step
  assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith(f"ckpt-{step}")


def test_a_killed_worker_stops_the_other_with_its_name_and_the_relaunch_resumes(tmp_path):
  model_dir = tmp_path / "mwms"
  configs, workers = _start_workers(model_dir, tmp_path, [
      "--steps=3000", "--steps_per_loop=10", "--checkpoint_every_steps=20"])
  try:
    _wait_for_checkpoint(model_dir, workers)
    workers[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    _, stderr = workers[0].communicate(timeout=60)
    assert time.monotonic() - killed_at < 60
  finally:
    _stop_all(workers)
  assert workers[0].returncode == 1
  address = configs[1].split('"worker": [')[1].split(", ")[1].split('"')[1]
  error = [line for line in stderr.splitlines() if line.startswith("worker: error:")]
  assert len(error) == 1, stderr
  assert f"lost contact with worker 1 ({address})" in error[0]
  assert "relaunch every worker with the same model_dir" in error[0]

  latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
  step = int(latest.rsplit("-", 1)[1])
  lines = []
  code = local_multiworker.launch_local(
      _worker_command(model_dir, f"--steps={step + 10}", "--steps_per_loop=10",
                      "--checkpoint_every_steps=20"),
      num_workers=2, env=_env(tmp_path), timeout=300, write=lines.append)
  assert code == 0, "\n".join(lines)
  assert any(f"restored {latest} at step {step}" in line for line in lines), lines
  assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith(
      f"ckpt-{step + 10}")
