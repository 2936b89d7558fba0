"""The default job's CI version learns: validation nats/char below a bound taken from its curve.

CI runs `configs/shakespeare_lm.py` for a fixed number of steps, not minutes: a wall-clock
budget on a shared 2-core machine would make the assertion depend on the machine's load (a
timing assertion in disguise). `CI_STEPS` is about what the default job trains in 1-2 minutes
on that machine when idle (~100 CPU-seconds); the schedule (warmup, linear decay to 0) is laid over
those steps.
`BOUND` is the measured figure plus a margin; see docs/learning_quality.md for both.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from tfllm.training import job

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "shakespeare_lm.py")
CI_STEPS = 2000
# Measured at 2,000 steps (context 128, batch 6, linear decay to 0): 1.733 (seed 0, the
# config's) and 1.742 (seed 1); with each layer's own initializer (no identical blocks)
# 1.746 and 1.726; with cosine decay to 0.1x 1.762 and 1.722, and the earlier
# context-64 shape 1.726 and 1.823 (spread 0.10). The bound leaves 0.21 above the worse
# seed, about twice the largest seed spread seen, and is what the
# 10-minute context-64 run reached at about 1,000 steps: failing it means the job learned
# about half of what it should, or stayed on the early plateau.
BOUND = 1.95


def _default_config():
  spec = importlib.util.spec_from_file_location("shakespeare_lm", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.slow
def test_default_job_ci_version_reaches_the_bound(tmp_path):
  config = _default_config()
  config.data.data_dir = str(tmp_path / "tfds")
  config.train.update(steps=CI_STEPS, time_budget_minutes=0.0, sample_new_tokens=0,
                      checkpoint_every_steps=0)
  lines = []
  summary = job.run(config, model_dir=str(tmp_path / "run"), strategy_name="one_device",
                    log=lines.append)
  metrics = summary["eval_metrics"]
  assert summary["step"] == CI_STEPS and summary["stop_reason"] == "steps"
  # The whole validation split (3 plays, 369,508 characters) is evaluated, less the blocks'
  # first tokens (1 in 129) and the tail of the last batch.
  assert metrics["characters"] > 0.97 * 369_508
  assert metrics["nats_per_char"] < BOUND, "\n".join(lines[-5:])
