"""`tfllm-export` of a tensor-parallel run: the model dir of an `N=2` run exports the
ordinary unsharded SavedModel, and it serves what the `N=1` run's export serves."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from tests.export.conftest import strings
from tests.training.tensor_parallel_runs import tp_config, tp_trainer
from tfllm import config as config_lib
from tfllm import export
from tfllm.data import tokenizers

PROMPTS = ["To be, or", "ROMEO:", "a"]


def _trained_model_dir(path, degree: int, start=None):
  """A model dir as `tfllm-train` leaves it, trained at `degree` from checkpoint `start`
  (None: the run's own initial weights); `(model_dir, its initial checkpoint)`."""
  config = tp_config("gpt2", degree)
  config.model.vocab_size = tokenizers.ByteLevelTokenizer().vocabulary_size()   # 260
  config.tokenizer.type = "byte"
  config.export.update(max_new_tokens=6, temperature=0.0)
  trainer = tp_trainer(config, path)
  initial = trainer.save() if start is None else None
  if start is not None:
    trainer.restore(start)
  trainer.train()
  trainer.save()
  with tf.io.gfile.GFile(os.path.join(path, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))
  tokenizers.save_tokenizer(tokenizers.ByteLevelTokenizer(), os.path.join(path, "tokenizer"))
  return str(path), initial


def _saved_variable_shapes(path):
  prefix = os.path.join(path, "variables", "variables")
  reader = tf.train.load_checkpoint(prefix)
  return [tuple(shape) for name, shape in tf.train.list_variables(prefix)
          if "OBJECT_GRAPH" not in name]


@pytest.mark.slow
def test_an_export_of_a_two_device_run_serves_what_the_one_device_run_serves(tmp_path):
  one, start = _trained_model_dir(tmp_path / "one", 1)
  two, _ = _trained_model_dir(tmp_path / "two", 2, start=start)
  served, variables = {}, {}
  for name, model_dir in (("one", one), ("two", two)):
    path = export.export_model_dir(model_dir, str(tmp_path / "exports" / name))
    variables[name] = _saved_variable_shapes(path)
    loaded = tf.saved_model.load(path)
    served[name] = loaded.signatures["serving_default"](prompt=tf.constant(strings(PROMPTS)))
  # The sharded run's export is the plain causal LM: the same variables, unsharded (the
  # SavedModel numbers its variables in no fixed order, so their shapes are compared as a
  # list), made from the values of the run it matched step for step.
  assert sorted(variables["two"]) == sorted(variables["one"])
  trained = {name: export.load_trained(model_dir)[0] for name, model_dir in (("one", one),
                                                                           ("two", two))}
  for a, b in zip(trained["one"].weights, trained["two"].weights, strict=True):
    assert a.path.split("/", 1)[1] == b.path.split("/", 1)[1]
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=1e-5, err_msg=a.path)
  np.testing.assert_array_equal(served["two"]["token_ids"].numpy(),
                                served["one"]["token_ids"].numpy())
  assert [t.decode() for t in served["two"]["text"].numpy()] == [
      t.decode() for t in served["one"]["text"].numpy()]
  np.testing.assert_array_equal(served["two"]["num_tokens"].numpy(),
                                served["one"]["num_tokens"].numpy())
  assert served["one"]["num_tokens"].numpy().max() > 0
