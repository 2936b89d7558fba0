"""Loading a trained model_dir for use: every weight restored, LoRA merged, mismatches refused."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfllm import config as config_lib
from tfllm import models
from tfllm.artifacts import checkpoints, load_trained_model, read_json
from tfllm.finetune.strategies import enable_lora

from tests.training.helpers import make_trainer, trainer_config


def _train(config, model_dir):
  """Trains `config` for its steps in `model_dir` and writes its config.json (as the job does)."""
  trainer = make_trainer(config, model_dir)
  trainer.train()
  with open(os.path.join(model_dir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config_lib.to_json(config))
  return trainer.model


def _assert_same_weights(expected, actual):
  assert len(expected.weights) == len(actual.weights)
  for a, b in zip(expected.weights, actual.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


@pytest.mark.parametrize("task", ["causal_lm", "multi_task"])
def test_restore_model_restores_every_weight(tmp_path, task):
  config = trainer_config(task, steps=4, steps_per_loop=2, checkpoint_every_steps=4)
  trained = _train(config, tmp_path)
  models.build(config)  # another model first: layer names must not depend on build order
  keras.utils.set_random_seed(99)
  fresh = models.build(config)
  checkpoints.restore_model(fresh, str(tmp_path))
  _assert_same_weights(trained, fresh)


def test_restore_model_refuses_a_model_the_checkpoint_does_not_hold(tmp_path):
  config = trainer_config("causal_lm", steps=2, steps_per_loop=2, checkpoint_every_steps=2)
  _train(config, tmp_path)
  other = models.build(config)
  enable_lora(other, rank=2)
  with pytest.raises(ValueError, match="does not hold every variable"):
    checkpoints.restore_model(other, str(tmp_path))


def test_load_trained_model_of_a_lora_run_merges_the_trained_adapters(tmp_path):
  config = trainer_config("sequence_classification", steps=4, steps_per_loop=2,
                       checkpoint_every_steps=4)
  config.finetune.update(strategy="lora", lora_rank=2)
  trained = _train(config, tmp_path)
  assert any("lora" in w.path for w in trained.weights)
  loaded, loaded_config = load_trained_model(str(tmp_path))
  assert loaded_config.finetune.strategy == "lora"
  assert not any("lora" in w.path for w in loaded.weights)  # merged into the kernels
  token_ids = np.arange(32).reshape(2, 16) % 60 + 3
  features = {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids, bool)}
  np.testing.assert_allclose(loaded(features), trained(features), atol=1e-5)


def test_load_trained_model_names_a_directory_without_a_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json is missing"):
    load_trained_model(str(tmp_path))
  (tmp_path / "config.json").write_text(config_lib.to_json(trainer_config()))
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    load_trained_model(str(tmp_path))


def test_mode_eval_reads_the_best_checkpoint_and_says_which(tmp_path):
  from tests.training import tiny_gpt_config  # pylint: disable=g-import-not-at-top
  from tfllm.training import job  # pylint: disable=g-import-not-at-top

  def config(steps, min_delta=0.0):
    c = tiny_gpt_config.get_config()
    c.train.update(steps=steps, steps_per_loop=2, eval_every_steps=2, eval_steps=1,
                   checkpoint_every_steps=2, keep_checkpoints=1, sample_new_tokens=0)
    c.train.early_stopping.update(metric="loss", patience=5, min_delta=min_delta)
    return c

  model_dir = str(tmp_path)
  job.run(config(4), model_dir, strategy_name="one_device", log=lambda line: None)
  best = checkpoints.best_checkpoint(model_dir)
  assert best["step"] in (2, 4) and best["metric"] == "loss"
  # Resumed to step 8 where no evaluation can beat the best (min_delta): it stays.
  lines = []
  job.run(config(8, min_delta=1e9), model_dir, strategy_name="one_device", log=lines.append)
  assert any(line.startswith("resumed from") and "ckpt-4" in line for line in lines), lines
  assert checkpoints.latest_checkpoint(model_dir).endswith("ckpt-8")
  assert checkpoints.best_checkpoint(model_dir)["step"] == best["step"]
  assert any(f"early stopping kept the best checkpoint by loss (step {best['step']}" in line
             for line in lines), lines

  lines = []
  summary = job.run(config(8), model_dir, mode="eval", strategy_name="one_device",
                    log=lines.append)
  assert summary["step"] == best["step"]
  assert any(line.startswith(f"evaluating the best checkpoint by loss (step {best['step']}, ")
             and line.endswith(best["path"]) for line in lines), lines
  with open(os.path.join(model_dir, "eval_metrics.json"), encoding="utf-8") as f:
    assert json.load(f)["step"] == best["step"]
  # Export's loader reads the best weights too, not the newest.
  model, saved_config = load_trained_model(model_dir)
  for path, same in ((best["path"], True), (checkpoints.latest_checkpoint(model_dir), False)):
    other = models.build(saved_config)
    tf.train.Checkpoint(model=other).restore(path).expect_partial()
    equal = all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(other.weights, model.weights))
    assert equal is same, path


def test_read_json_reads_an_object_or_nothing(tmp_path):
  path = tmp_path / "tfllm_config.json"
  assert read_json(str(path)) == {}
  path.write_text('{"task": {"name": "causal_lm"}}')
  assert read_json(str(path)) == {"task": {"name": "causal_lm"}}
