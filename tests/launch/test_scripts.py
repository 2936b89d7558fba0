"""Tests of launch/tpu_vm.sh (with a stand-in gcloud), launch/tf_config.py and the k8s Job."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.launch.helpers import ROOT

TPU_VM = str(ROOT / "launch" / "tpu_vm.sh")


@pytest.fixture
def fake_gcloud(tmp_path):
  """A `gcloud` on PATH that logs its arguments and fails the tfllm-train step."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "gcloud.log"
  script = bin_dir / "gcloud"
  script.write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$*" in *tfllm-train*) exit 7 ;; esac
""")
  script.chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TMPDIR=str(tmp_path))
  return env, log


def _tpu_vm(env, *args):
  return subprocess.run(["bash", TPU_VM, *args], env=env, capture_output=True, text=True,
                        timeout=60)


def test_tpu_vm_dry_run_prints_every_gcloud_step_and_runs_none(fake_gcloud, tmp_path):
  env, log = fake_gcloud
  result = _tpu_vm(env, "--dry_run", "--name=vm1", "--zone=us-central2-b",
                   "--accelerator_type=v5litepod-8", "--project=proj", "--",
                   "--config=configs/shakespeare_lm.py", "--config.train.steps=5")
  assert result.returncode == 0, result.stderr
  gcloud = [line for line in result.stdout.splitlines() if line.startswith("gcloud ")]
  steps = [line.split()[4] for line in gcloud]
  assert steps == ["create", "scp", "ssh", "ssh", "scp", "delete"]
  assert "--accelerator-type=v5litepod-8" in gcloud[0] and "--project=proj" in gcloud[0]
  assert all("--zone=us-central2-b" in line for line in gcloud)
  train = gcloud[3]
  for flag in ("tfllm-train", "--distribution_strategy=tpu", "--tpu=local",
               "--config.train.steps=5", "--model_dir=tfllm_run"):
    assert flag in train
  assert "vm1:tfllm/tfllm_run" in gcloud[4]
  assert not log.exists()  # Nothing was run.
  assert not (tmp_path / "tfllm-src-vm1.tgz").exists()


def test_tpu_vm_deletes_the_vm_when_training_fails(fake_gcloud, tmp_path):
  env, log = fake_gcloud
  result = _tpu_vm(env, "--name=vm2", "--zone=z1", f"--results={tmp_path / 'out'}")
  assert result.returncode == 7
  calls = log.read_text().splitlines()
  assert [c.split()[3] for c in calls] == ["create", "scp", "ssh", "ssh", "delete"]
  assert calls[-1].startswith("compute tpus tpu-vm delete vm2 --zone=z1 --quiet")
  assert (tmp_path / "tfllm-src-vm2.tgz").stat().st_size > 0


@pytest.mark.parametrize("args,message", [
    (["--zone=z"], "--name is required"),
    (["--name=n"], "--zone is required"),
    (["--name=n", "--zone=z", "--colour=blue"], "unknown argument '--colour=blue'"),
])
def test_tpu_vm_bad_arguments(fake_gcloud, args, message):
  env, log = fake_gcloud
  result = _tpu_vm(env, *args)
  assert result.returncode == 2 and message in result.stderr
  assert not log.exists()


@pytest.mark.slow
def test_tf_config_cli_prints_each_tasks_config():
  result = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "tf_config.py"), "--hosts=node-a,node-b:3000",
       "--port=4000"], capture_output=True, text=True, timeout=120, check=True)
  configs = [json.loads(line) for line in result.stdout.splitlines()]
  assert [c["task"] for c in configs] == [{"type": "worker", "index": 0},
                                          {"type": "worker", "index": 1}]
  assert all(c["cluster"] == {"worker": ["node-a:4000", "node-b:3000"]} for c in configs)


def test_k8s_job_runs_one_worker_per_host_with_tf_config_from_the_pod_index():
  service, job = yaml.safe_load_all((ROOT / "launch" / "k8s" / "multiworker_job.yaml").read_text())
  assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
  spec = job["spec"]
  assert job["kind"] == "Job" and spec["completionMode"] == "Indexed"
  pod = spec["template"]["spec"]
  assert pod["subdomain"] == service["metadata"]["name"]
  script = pod["containers"][0]["args"][0]
  hosts = script.split("--hosts=")[1].split()[0].split(",")
  assert spec["completions"] == spec["parallelism"] == len(hosts)
  for index, host in enumerate(hosts):
    assert host == f"{job['metadata']['name']}-{index}.{pod['subdomain']}"
  assert '--index="${JOB_COMPLETION_INDEX}"' in script
  assert "--distribution_strategy=multi_worker_mirrored" in script
