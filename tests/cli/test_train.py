"""tfllm-train end to end: a tiny job trains, resumes, and every bad input is one line, exit != 0.

Each test runs the CLI as a subprocess (as users do) on `tests/training/tiny_gpt_config.py`:
a 2-layer GPT on CPython's pydoc topics with a byte tokenizer (seconds per run).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tfllm import distribute

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = str(REPO / "tests" / "training" / "tiny_gpt_config.py")
PROGRAM = "tfllm-train"


def _command(*flags):
  return [sys.executable, "-m", "tfllm.cli.train", f"--config={TINY}",
          "--distribution_strategy=one_device", *flags]


def _env(**extra):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", **extra)
  env.pop("TF_CONFIG", None)
  env.update(extra)
  return env


def run_cli(*flags, timeout=240, **env):
  return subprocess.run(_command(*flags), cwd=REPO, env=_env(**env), capture_output=True,
                        text=True, timeout=timeout)


def our_lines(stderr: str):
  """The lines tfllm-train itself wrote (TF's C++ runtime may add its own log lines)."""
  return [line for line in stderr.splitlines() if line.startswith(f"{PROGRAM}:")]


def assert_one_line_error(result, pattern, code=None):
  """Exactly one line of ours on stderr, matching `pattern`; exit code `code` (2: a bad flag
  or config value, 1: a runtime failure), any non-zero one when None."""
  assert result.returncode != 0, result.stdout + result.stderr
  if code is not None:
    assert result.returncode == code, result.stderr
  lines = our_lines(result.stderr)
  assert len(lines) == 1, result.stderr
  assert "Traceback" not in result.stderr
  assert __import__("re").search(pattern, lines[0]), lines[0]


def _checkpoint_tensors(model_dir):
  reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
  return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
          if "save_counter" not in key}


def _files(directory):
  return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flags, env, pattern, code", [
    (["--distribution_strategy=bogus"], {},
     r"'bogus' is not known; use one of: .*one_device.*mirrored.*multi_worker_mirrored.*tpu", 2),
    (["--config.train.stpes=5"], {}, r"unknown config key 'stpes'; did you mean 'steps'", 2),
    (["--config.train.steps=-1"], {}, r"config.train.steps=-1 is out of range", 2),
    (["--no_such_flag=1"], {}, r"no_such_flag", 2),
    (["--mixed_precision=float8"], {}, r"mixed precision policy 'float8' is not known", 2),
    (["--num_gpus=5"], {}, r"num_gpus=5", 2),
    # No TPU on this machine: the same flags work on a TPU VM, so a runtime failure.
    (["--distribution_strategy=tpu", "--tpu=local"], {}, r"tpu: no usable TPU", 1),
    (["--distribution_strategy=multi_worker_mirrored"], {"TF_CONFIG": "{not json"},
     r"TF_CONFIG is not valid JSON", 2),
    (["--mode=eval"], {}, r"mode=eval needs a checkpoint", 2),
    (["--config.data.bucket_lengths=(16,)"], {},
     r"bucket_lengths=\(16,\) applies to sequence_classification and token_classification", 2),
    (["--config.train.early_stopping.metric=loss", "--config.train.early_stopping.patience=1"],
     {}, r"early_stopping.metric='loss' needs evaluations during training", 2),
    (["--config.train.early_stopping.metric=loss", "--config.train.early_stopping.patience=1",
      "--config.train.eval_every_steps=5", "--mode=train"], {},
     r"needs evaluations, which mode=train does not run", 2),
    (["--config.train.model_parallel=2", "--cpu_devices=2"], {},
     r"model_parallel=2 trains tensor-parallel groups .*'one_device' is not supported", 2),
    (["--config.train.model_parallel=2", "--cpu_devices=3", "--distribution_strategy=mirrored"],
     {}, r"model_parallel=2 does not divide the 3 devices mirrored trains on into groups", 2),
    (["--config.train.model_parallel=2", "--cpu_devices=4", "--distribution_strategy=mirrored",
      "--config.train.global_batch_size=3"], {},
     r"global_batch_size=3 is split over 2 data-parallel groups of 2 devices; use a multiple "
     r"of 2", 2),
    (["--config.train.model_parallel=4", "--cpu_devices=2", "--distribution_strategy=off"],
     {}, r"model_parallel=4 does not divide config.model.num_heads=2; use one of: 1, 2", 2),
])
# (A global batch not divisible by the replicas, a disk full while checkpointing and a NaN
# loss from bad data are checked in-process in tests/training/test_loop.py.)
def test_bad_input_is_one_line_with_its_exit_code_and_writes_nothing(tmp_path, flags, env,
                                                                      pattern, code):
  model_dir = tmp_path / "run"
  result = run_cli(f"--model_dir={model_dir}", *flags, **env)
  assert_one_line_error(result, pattern, code)
  assert not (model_dir / "checkpoints").exists() and not (model_dir / "config.json").exists()


QUICK = ["--config.train.steps=2", "--config.train.steps_per_loop=2",
         "--config.train.eval_steps=1", "--config.train.sample_new_tokens=0"]


@pytest.mark.parametrize("strategy", distribute.STRATEGIES)
def test_every_strategy_name_trains_or_fails_in_one_line(tmp_path, strategy):
  # multi_worker_mirrored without TF_CONFIG is one worker (run_cli drops TF_CONFIG).
  result = run_cli(f"--model_dir={tmp_path / 'run'}", f"--distribution_strategy={strategy}",
                   *QUICK)
  if strategy == "tpu":
    assert_one_line_error(result, r"tpu: no usable TPU at tpu='local'", code=1)
    return
  assert result.returncode == 0, result.stderr
  assert "trained to step 2 (steps)" in result.stdout
  assert "validation at step 2: accuracy" in result.stdout
  # A fresh process sizes its pools itself and reports its start-up phases and CPU time.
  assert re.search(r"^threads: intra-op \d+, inter-op \d+, tf.data \d+ \(\d+ cores available\)$",
                   result.stdout, re.M), result.stdout
  assert re.search(r"^time to first step [\d.]+ s: launch [\d.]+, import [\d.]+, strategy "
                   r"[\d.]+, tokenizer [\d.]+, model [\d.]+, dataset [\d.]+, first call "
                   r"\(compile \+ 2 steps\) [\d.]+$", result.stdout, re.M), result.stdout
  assert re.search(r"^CPU time: user [\d.]+ s, kernel [\d.]+ s", result.stdout, re.M)


def test_four_cpu_devices_train_as_two_groups_of_two_and_evaluate_on_one(tmp_path):
  """`mirrored` over 4 logical CPUs at model_parallel=2: two data-parallel groups of two
  devices, each device holding its copy's shards; the checkpoint evaluates on one device
  with the same validation loss."""
  model_dir = tmp_path / "run"
  grouped = run_cli(f"--model_dir={model_dir}", "--distribution_strategy=mirrored",
                    "--cpu_devices=4", "--config.train.model_parallel=2", *QUICK)
  assert grouped.returncode == 0, grouped.stderr
  assert "tensor parallel over 2 data-parallel groups of 2 devices" in grouped.stdout
  assert re.findall(r"device:CPU:(\d): parameters", grouped.stdout) == ["0", "1", "2", "3"]
  assert "(1 replicas); tensor parallel: 2 groups of 2 devices a replica" in grouped.stdout
  loss = re.search(r"validation at step 2: .* loss ([\d.]+)", grouped.stdout).group(1)
  one = run_cli(f"--model_dir={model_dir}", "--mode=eval", *QUICK)
  assert one.returncode == 0, one.stderr
  assert re.search(r"validation at step 2: .* loss ([\d.]+)", one.stdout).group(1) == loss


def test_train_resume_and_refuse_a_different_model_shape(tmp_path):
  model_dir = tmp_path / "run"
  first = run_cli(f"--model_dir={model_dir}")
  assert first.returncode == 0, first.stderr
  assert "validation at step 20: accuracy" in first.stdout and "perplexity" in first.stdout
  assert "sample: " in first.stdout
  saved = json.loads((model_dir / "config.json").read_text())
  assert saved["model"]["vocab_size"] == 260 and saved["train"]["steps"] == 20
  metrics = json.loads((model_dir / "eval_metrics.json").read_text())
  assert metrics["step"] == 20 and metrics["perplexity"] == pytest.approx(
      np.exp(metrics["loss"]), rel=1e-6)

  before = _files(model_dir)
  wider = run_cli(f"--model_dir={model_dir}", "--config.model.hidden_dim=64")
  assert_one_line_error(wider, r"holds a different model: config.model.hidden_dim=64 "
                               r"\(model_dir has 32\)", code=2)
  assert _files(model_dir) == before  # nothing overwritten

  longer = run_cli(f"--model_dir={model_dir}", "--config.train.steps=30")
  assert longer.returncode == 0, longer.stderr
  assert "resumed from" in longer.stdout and "ckpt-20 (step 20)" in longer.stdout
  assert "trained to step 30" in longer.stdout
  assert "resuming with changed settings: config.train.steps=30 (model_dir has 20)" \
      in longer.stdout

  on_test = run_cli(f"--model_dir={model_dir}", "--config.train.steps=30", "--mode=eval",
                    "--config.data.eval_split=test")
  assert on_test.returncode == 0, on_test.stderr
  assert "evaluation on test at step 30: accuracy" in on_test.stdout
  assert json.loads((model_dir / "eval_metrics.json").read_text())["split"] == "test"


def test_nan_loss_stops_with_one_line_and_keeps_the_checkpoints(tmp_path):
  model_dir = tmp_path / "run"
  # A learning rate of 1e30 overflows the weights within a few steps.
  result = run_cli(f"--model_dir={model_dir}", "--config.train.optimizer.learning_rate=1e30",
                   "--config.train.optimizer.warmup_steps=0", "--config.train.steps=200",
                   "--config.train.checkpoint_every_steps=5", "--config.train.steps_per_loop=5")
  assert_one_line_error(result, r"loss became (nan|inf) at step \d+; stopped without saving",
                        code=1)
  latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
  if latest is not None:  # a checkpoint before the divergence must hold finite weights
    assert all(np.all(np.isfinite(v)) for v in _checkpoint_tensors(model_dir).values()
               if np.issubdtype(np.asarray(v).dtype, np.floating))


def _start(model_dir, *flags):
  return subprocess.Popen(_command(f"--model_dir={model_dir}", *flags), cwd=REPO, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(model_dir, process, timeout=180):
  deadline = time.monotonic() + timeout
  while not (model_dir / "checkpoints" / "checkpoint").exists():
    assert process.poll() is None, process.communicate()
    assert time.monotonic() < deadline, "no checkpoint written"
    time.sleep(0.1)


LONG = ["--config.train.steps=400", "--config.train.steps_per_loop=10",
        "--config.train.checkpoint_every_steps=20", "--config.train.eval_steps=0",
        "--config.train.sample_new_tokens=0"]


def test_sigterm_saves_and_exits_with_one_line(tmp_path):
  model_dir = tmp_path / "run"
  process = _start(model_dir, *LONG)
  _wait_for_checkpoint(model_dir, process)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 143, stderr
  lines = our_lines(stderr)
  assert len(lines) == 1 and "stopped by SIGTERM at step" in lines[0], stderr
  step = int(lines[0].split("at step ")[1].split(";")[0])
  latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
  assert latest.endswith(f"ckpt-{step}")


@pytest.mark.slow
def test_sigkill_and_relaunch_ends_where_an_uninterrupted_run_ends(tmp_path):
  straight = tmp_path / "straight"
  assert run_cli(f"--model_dir={straight}", *LONG).returncode == 0

  killed = tmp_path / "killed"
  process = _start(killed, *LONG)
  _wait_for_checkpoint(killed, process)
  process.send_signal(signal.SIGKILL)
  process.communicate(timeout=60)
  assert process.returncode == -signal.SIGKILL
  interrupted_at = tf.train.latest_checkpoint(str(killed / "checkpoints"))
  assert not interrupted_at.endswith("ckpt-400")

  relaunch = run_cli(f"--model_dir={killed}", *LONG)
  assert relaunch.returncode == 0, relaunch.stderr
  assert f"resumed from {interrupted_at}" in relaunch.stdout
  final = tf.train.latest_checkpoint(str(killed / "checkpoints"))
  assert final.endswith("ckpt-400")
  a, b = _checkpoint_tensors(straight), _checkpoint_tensors(killed)
  assert a.keys() == b.keys()
  # Same ops, same data order (data.deterministic=True), same XLA program: bitwise equal.
  # (budget_seconds is the wall-clock time spent training: it is the one value that may not.)
  for key in a:
    if not key.startswith("budget_seconds/"):
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_an_error_inside_a_traced_function_is_named_in_its_one_line():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfllm.cli.flags import one_line  # pylint: disable=g-import-not-at-top

  @tf.function
  def step(x):
    return x + undefined_name  # noqa: F821  pylint: disable=undefined-variable

  with pytest.raises(NameError) as error:
    step(tf.constant(1.0))
  assert str(error.value).splitlines()[0] == "in user code:"
  assert one_line(error.value) == "NameError: name 'undefined_name' is not defined"
