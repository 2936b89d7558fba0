"""`tools/jax_train_bench.py --quick` runs under the JAX backend with TensorFlow unimportable,
so that the H200 script (docs/benchmarks.md) cannot rot between the runs that need a GPU."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.models import backend_parity

pytestmark = [
    pytest.mark.slow,
    pytest.mark.reference("jax"),
    pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                       reason="jax is not installed (pip install \"jax[cpu]\")"),
]

# Blocks TensorFlow, then runs the script as `python tools/jax_train_bench.py ARGS` would.
LAUNCH = """import runpy, sys
sys.path.insert(0, ".")
from tests.models.backend_parity import block_imports
block_imports()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_quick_run_reports_both_models_without_tensorflow(tmp_path):
  output = tmp_path / "bench.json"
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
  process = subprocess.run(
      [sys.executable, "-c", LAUNCH, "tools/jax_train_bench.py", "--quick",
       f"--output={output}"],
      cwd=backend_parity.REPO, env=env, capture_output=True, text=True, timeout=600,
      check=False)
  assert process.returncode == 0, process.stdout + process.stderr
  result = json.loads(output.read_text())
  assert [(row["model"], row["batch"], row["sequence_length"]) for row in result["rows"]] == [
      ("tfllm", 2, 64), ("keras_hub", 2, 64)]
  for row in result["rows"]:
    assert row["tokens_per_second"] > 0 and len(row["rounds_seconds"]) == 2
  # The same GPT-2 shape: one parameter count, so one FLOPs-per-token figure.
  assert result["flops_per_token"]["tfllm"] == result["flops_per_token"]["keras_hub"] > 0
  assert result["matmul_flops"] > 0
  # The table is the last thing printed.
  assert process.stdout.rstrip().splitlines()[-1].startswith("keras_hub ")
