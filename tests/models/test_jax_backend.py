"""tfllm's layers, backbones and task models under Keras 3's JAX backend, without TensorFlow.

Each backbone style (GPT-2, BERT, Llama with grouped KV heads, block-wise attention) and each
task head is built here under the TensorFlow backend; its weights, inputs, logits, loss and
gradients go to files, and one JAX process (`tests/models/backend_parity.py`, TensorFlow made
unimportable) rebuilds the models from the same configs, loads the weights and must give the
same logits (1e-5), loss and gradients, then takes one AdamW step that lowers the loss by as
much as the same step does under TF. The JAX process imports `tfllm.layers`, `tfllm.models`
and `tfllm.config` (every section's schema); see docs/jax.md.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.models import backend_parity
from tfllm import models

pytestmark = [
    pytest.mark.slow,
    pytest.mark.reference("jax"),
    pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                       reason="jax is not installed (pip install \"jax[cpu]\")"),
]


def _tf_case(case, case_dir: pathlib.Path):
  """Builds `case` under TF, saves its weights and inputs; returns the TF results."""
  config = backend_parity.case_config(case)
  keras.utils.set_random_seed(0)
  model = models.build(config)
  model.save_weights(str(case_dir / f"{case}.weights.h5"))
  features = backend_parity.case_features(config)
  with tf.GradientTape() as tape:
    outputs = model(features, training=False)
    labels = backend_parity.output_labels(outputs)
    loss = backend_parity.loss(outputs, labels)
  # Dense, as JAX's are: the embeddings' gradients are IndexedSlices here, and Keras' AdamW
  # takes another path for those (its second moment then differs where a row repeats:
  # docs/stack.md).
  grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]
  optimizer = backend_parity.make_optimizer()
  optimizer.apply(grads, model.trainable_variables)
  loss_after = backend_parity.loss(model(features, training=False), labels)
  saved = {f"feature/{key}": value for key, value in features.items()}
  saved.update({f"label/{key}": value for key, value in labels.items()})
  np.savez(case_dir / f"{case}.tf.npz", **saved)
  return dict(outputs=backend_parity.as_numpy(outputs), loss=float(loss),
              grads=[np.asarray(g) for g in grads], loss_after_step=float(loss_after))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """{case: (TF results, JAX results)}, the JAX ones from one subprocess for every case."""
  case_dir = tmp_path_factory.mktemp("jax_backend")
  tf_results = {case: _tf_case(case, case_dir) for case in backend_parity.CASES}
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
  process = subprocess.run(
      [sys.executable, str(pathlib.Path(backend_parity.__file__)), str(case_dir)],
      cwd=backend_parity.REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert process.returncode == 0, process.stdout + process.stderr
  return {case: (tf_results[case], dict(np.load(case_dir / f"{case}.jax.npz")))
          for case in backend_parity.CASES}


@pytest.mark.parametrize("case", list(backend_parity.CASES))
def test_jax_logits_loss_and_gradients_equal_tensorflow(results, case):
  tf_result, jax_result = results[case]
  assert str(jax_result["backend"]) == "jax"
  assert not jax_result["tf_imported"]
  for name, logits in tf_result["outputs"].items():
    np.testing.assert_allclose(jax_result[f"output/{name}"], logits, rtol=0, atol=1e-5,
                               err_msg=f"{case} {name}")
  np.testing.assert_allclose(jax_result["loss"], tf_result["loss"], rtol=1e-6, atol=1e-6)
  jax_grads = [jax_result[key] for key in sorted(k for k in jax_result if k.startswith("grad/"))]
  assert len(jax_grads) == len(tf_result["grads"])
  for index, (jax_grad, tf_grad) in enumerate(zip(jax_grads, tf_result["grads"])):
    np.testing.assert_allclose(jax_grad, tf_grad, rtol=1e-4, atol=1e-6,
                               err_msg=f"{case} gradient {index}")


@pytest.mark.parametrize("case", list(backend_parity.CASES))
def test_one_adamw_step_under_jax_matches_tensorflow(results, case):
  tf_result, jax_result = results[case]
  assert jax_result["loss_after_step"] < jax_result["loss"]
  np.testing.assert_allclose(jax_result["loss_after_step"], tf_result["loss_after_step"],
                             rtol=1e-5, atol=1e-5)
