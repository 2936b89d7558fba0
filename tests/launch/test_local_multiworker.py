"""Tests of launch/local_multiworker.py: TF_CONFIG per worker, failures, timeouts, MWMS runs."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import numpy as np
import pytest

from tests.launch import mwms_train
from tests.launch.helpers import ROOT, load_script

launcher = load_script("local_multiworker")


def _python(code: str):
  return [sys.executable, "-c", textwrap.dedent(code)]


def _run(command, num_workers=2, **kwargs):
  lines = []
  code = launcher.launch_local(command, num_workers, write=lines.append, **kwargs)
  return code, lines


@pytest.mark.timeout(60)
def test_each_worker_gets_its_own_tf_config_on_free_ports():
  code, lines = _run(_python("""
      import os
      print(os.environ["TF_CONFIG"])
  """), num_workers=3)
  assert code == 0
  configs = {int(line.split("]")[0].split()[-1]): json.loads(line.split("] ", 1)[1])
             for line in lines if line.startswith("[worker")}
  assert sorted(configs) == [0, 1, 2]
  addresses = configs[0]["cluster"]["worker"]
  assert len(set(addresses)) == 3 and all(a.startswith("127.0.0.1:") for a in addresses)
  for index, config in configs.items():
    assert config == {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}


@pytest.mark.timeout(60)
def test_first_failure_code_is_returned_and_a_worker_ignoring_sigterm_is_killed(tmp_path):
  # Worker 0 ignores SIGTERM (as a TF worker waiting on a lost peer does) and would sleep for
  # 10 minutes; worker 1 fails with code 3 once worker 0 is up.
  ready = tmp_path / "ready"
  code, lines = _run(_python(f"""
      import json, os, signal, sys, time
      index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
      if index == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(ready)!r}, "w").close()
        time.sleep(600)
      while not os.path.exists({str(ready)!r}):
        time.sleep(0.05)
      print("failing now")
      sys.exit(3)
  """), grace_s=1.0)
  assert code == 3
  assert "[worker 1] failing now" in lines
  assert any("worker 1" in line and "exited with code 3" in line for line in lines)
  assert any("worker 0" in line and "SIGKILL" in line for line in lines)


@pytest.mark.timeout(60)
def test_timeout_stops_every_worker_and_returns_124():
  code, lines = _run(_python("import time; time.sleep(600)"), timeout=1.0, grace_s=1.0)
  assert code == launcher.TIMEOUT_EXIT_CODE == 124
  assert any("timeout" in line for line in lines)


def test_a_command_that_cannot_start_returns_127():
  code, lines = _run(["/nonexistent/tfllm-train", "--flag"])
  assert code == 127
  assert any("cannot start worker 0" in line and "/nonexistent/tfllm-train" in line
             for line in lines)


def test_bad_arguments_are_refused(capsys):
  with pytest.raises(ValueError, match="num_workers=0"):
    launcher.launch_local(["true"], 0)
  with pytest.raises(SystemExit) as exit_info:
    launcher.main(["--num_workers=2"])
  assert exit_info.value.code == 2
  assert "no command given" in capsys.readouterr().err


def _worker_command(out_dir, *args):
  return [sys.executable, str(ROOT / "tests" / "launch" / "mwms_train.py"), f"--out={out_dir}",
          *args]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_worker_mwms_run_agrees_with_mirrored(tmp_path):
  code, lines = _run(_worker_command(tmp_path, "--steps=5"), timeout=90)
  assert code == 0, "\n".join(lines[-30:])
  results = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]
  assert [r["num_replicas"] for r in results] == [2, 2]
  assert [r["is_chief"] for r in results] == [True, False]
  assert results[0]["losses"] == results[1]["losses"]
  assert results[0]["weights"] == results[1]["weights"]
  # The same global batches on 2 logical CPUs in this process: the same trajectory up to
  # float32 summation order (a different all-reduce: ~1e-7 relative per step).
  from tfllm import distribute  # pylint: disable=g-import-not-at-top
  mirrored = mwms_train.train(distribute.get_strategy("mirrored"), steps=5)
  np.testing.assert_allclose(results[0]["losses"], mirrored["losses"], rtol=1e-5)
  np.testing.assert_allclose(results[0]["weights"], mirrored["weights"], rtol=1e-5, atol=1e-6)
  assert len(set(results[0]["losses"])) == 5  # It trained: the loss changed every step.


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_killed_worker_stops_the_run_with_an_error_naming_it(tmp_path):
  # Worker 1 SIGKILLs itself after 3 steps; worker 0 would train for 100k steps.
  code, lines = _run(_worker_command(tmp_path, "--steps=100000", "--die_worker=1",
                                     "--die_at_step=3"), timeout=90, grace_s=5.0)
  assert code == 128 + 9, "\n".join(lines[-30:])
  lost = [line for line in lines if line.startswith("[launcher]") and "SIGKILL" in line]
  assert lost and "worker 1 (127.0.0.1:" in lost[0] and "stopping the other workers" in lost[0]
  assert not any(line.startswith("[launcher] timeout") for line in lines)
  survivor = int((tmp_path / "pid0").read_text())
  with pytest.raises(ProcessLookupError):
    os.kill(survivor, 0)
  assert not (tmp_path / "0.json").exists()
