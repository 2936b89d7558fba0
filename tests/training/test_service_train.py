"""A training job whose input runs on the tf.data service (a dispatcher and two workers in
this process): it trains with finite losses, and resumes with model, optimizer and step exact
while its input starts a fresh pass in a new service job (`tfllm.data.service`)."""

from __future__ import annotations

import math
import re

import pytest

from tests.data.test_service import start_service
from tests.training import tiny_gpt_config
from tfllm.data import service
from tfllm.artifacts import checkpoints
from tfllm.training import job

_LOSS = re.compile(r"\bloss[ =:]+([-+0-9.eE]+|nan|inf)")


def _config(steps, address):
  config = tiny_gpt_config.get_config()
  config.train.update(steps=steps, steps_per_loop=2, checkpoint_every_steps=2, eval_steps=1,
                      sample_new_tokens=0, jit_compile="off")
  config.data.service_address = address
  return config


def _losses(lines):
  return [float(value) for line in lines for value in _LOSS.findall(line)]


# Two jobs with their first-call compiles: 60 to 90 s on 2 busy cores.
@pytest.mark.slow
def test_a_job_trains_on_the_service_and_resumes_on_a_fresh_pass(tmp_path, monkeypatch):
  servers, address = start_service()
  jobs = []
  distribute = service.distribute
  monkeypatch.setattr(service, "distribute",
                      lambda dataset, target, name: jobs.append(name) or distribute(
                          dataset, target, name))
  model_dir = str(tmp_path / "run")
  lines = []
  first = job.run(_config(2, address), model_dir, mode="train", strategy_name="one_device",
                  log=lines.append)
  assert first["step"] == 2
  losses = _losses(lines)
  assert losses and all(math.isfinite(loss) for loss in losses), lines

  lines = []
  resumed = job.run(_config(4, address), model_dir, mode="train", strategy_name="one_device",
                    log=lines.append)
  assert any(line.startswith("resumed from") and "ckpt-2" in line for line in lines), lines
  assert resumed["step"] == 4 and checkpoints.latest_checkpoint(model_dir).endswith("ckpt-4")
  assert all(math.isfinite(loss) for loss in _losses(lines)), lines
  base = service.job_name(model_dir)
  assert jobs == [base, f"{base}-from-2"]
  del servers
