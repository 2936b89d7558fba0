"""tfllm-export and tfllm-generate as a user runs them: exit codes, one-line errors, output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tensorflow.core.protobuf import saved_model_pb2

from tests.export.conftest import make_model_dir

pytestmark = pytest.mark.slow  # every test starts tfllm-export / tfllm-generate processes


def run_cli(module, *args, timeout=300):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        timeout=timeout, env=env, check=False)


def error_line(process):
  lines = [l for l in process.stderr.strip().splitlines() if l.startswith("tfllm-")]
  assert len(lines) == 1, process.stderr
  return lines[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("cli") / "gpt")
  make_model_dir(path, "causal_lm")
  return path


def test_export_writes_versions_and_refuses_an_existing_one(model_dir, tmp_path):
  export_dir = str(tmp_path / "serving")
  done = run_cli("tfllm.cli.export", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
                 "--max_new_tokens=4")
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip().splitlines()[-1] == os.path.join(export_dir, "1")
  assert os.path.isfile(os.path.join(export_dir, "1", "saved_model.pb"))
  again = run_cli("tfllm.cli.export", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
                  "--version=1")
  assert again.returncode == 2  # a usage error: the version is there
  assert "already exists" in error_line(again)
  assert sorted(os.listdir(export_dir)) == ["1"]


def test_export_errors_are_one_line(model_dir, tmp_path):
  missing = run_cli("tfllm.cli.export", f"--model_dir={tmp_path / 'nope'}",
                    f"--export_dir={tmp_path / 'out'}")
  assert missing.returncode == 2 and "does not exist" in error_line(missing)
  no_tokenizer = tmp_path / "no_tokenizer"
  no_tokenizer.mkdir()
  (no_tokenizer / "config.json").write_text(open(os.path.join(model_dir, "config.json")).read())
  bad = run_cli("tfllm.cli.export", f"--model_dir={no_tokenizer}",
                f"--export_dir={tmp_path / 'out'}")
  assert bad.returncode == 2 and "no saved tokenizer" in error_line(bad)
  assert not os.path.exists(tmp_path / "out")
  flags = run_cli("tfllm.cli.export", f"--model_dir={model_dir}")
  assert flags.returncode == 2 and "--export_dir is required" in error_line(flags)


def test_generate_prints_one_continuation_per_prompt(model_dir):
  done = run_cli("tfllm.cli.generate", f"--model_dir={model_dir}", "--prompt=hello world",
                 "--prompt=the film", "--max_new_tokens=3", "--nojit_compile")
  assert done.returncode == 0, done.stderr
  assert len(done.stdout.rstrip("\n").split("\n\n")) == 2


def test_generate_tensor_parallel_prints_the_one_device_continuations(model_dir):
  """`--model_parallel=2` over the CPU split in 2: the model sharded (KV cache with the
  heads) decodes greedily to the one-device text; a degree the heads refuse is one line,
  exit 2."""
  prompts = ["--prompt=hello world", "--prompt=the film"]
  one = run_cli("tfllm.cli.generate", f"--model_dir={model_dir}", *prompts,
                "--max_new_tokens=6", "--nojit_compile")
  two = run_cli("tfllm.cli.generate", f"--model_dir={model_dir}", *prompts,
                "--max_new_tokens=6", "--model_parallel=2", "--cpu_devices=2")
  assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
  assert two.stdout == one.stdout and one.stdout.strip()
  bad = run_cli("tfllm.cli.generate", f"--model_dir={model_dir}", *prompts,
                "--model_parallel=3", "--cpu_devices=3")
  assert bad.returncode == 2 and "--model_parallel=3 does not divide" in error_line(bad)


def test_export_of_a_multi_task_model_dir_serves_every_head(tmp_path):
  model_dir = str(tmp_path / "multi")
  make_model_dir(model_dir, "multi_task")
  export_dir = str(tmp_path / "serving")
  done = run_cli("tfllm.cli.export", f"--model_dir={model_dir}", f"--export_dir={export_dir}")
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip().splitlines()[-1] == os.path.join(export_dir, "1")
  saved_model = saved_model_pb2.SavedModel()
  with open(os.path.join(export_dir, "1", "saved_model.pb"), "rb") as f:
    saved_model.ParseFromString(f.read())
  (meta_graph,) = saved_model.meta_graphs
  assert set(meta_graph.signature_def) >= {"serving_default", "ner", "sentiment"}
  outputs = meta_graph.signature_def["serving_default"].outputs
  assert {"ner_tags", "ner_entity_types", "sentiment_label", "sentiment_probabilities"} <= set(
      outputs)
  # tfllm-predict serves the export's serving_default: every head's answer on each line.
  inputs, predictions = tmp_path / "in.txt", tmp_path / "out.jsonl"
  inputs.write_text("john lives in paris\n\na fine film\n")
  done = run_cli("tfllm.cli.predict", f"--saved_model={os.path.join(export_dir, '1')}",
                 f"--input={inputs}", f"--output={predictions}")
  assert done.returncode == 0, done.stderr
  rows = [json.loads(line) for line in predictions.read_text().splitlines()]
  assert [row["input"] for row in rows] == ["john lives in paris", "a fine film"]
  for row in rows:
    assert row["sentiment_label"] in ("negative", "positive")
    assert len(row["sentiment_probabilities"]) == 2
    assert len(row["ner_tags"]) >= len(row["input"].split())
