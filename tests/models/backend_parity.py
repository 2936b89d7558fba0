"""The cases of the JAX-backend parity test, and its JAX side (run as a script).

`tests/models/test_jax_backend.py` builds each case's model under the TensorFlow backend,
saves its weights, inputs, logits, loss and gradients, and runs this file as a script in a
fresh process with `KERAS_BACKEND=jax` and TensorFlow made unimportable (`block_imports`):

    python tests/models/backend_parity.py CASE_DIR

For each case it builds the same model, loads the TF weights, computes logits, the loss and its
gradients (`jax.value_and_grad` over `model.stateless_call`), applies one AdamW update
(`optimizer.stateless_apply`) and computes the loss again; it writes them to
`CASE_DIR/<case>.jax.npz` for the test to compare. Nothing here imports TensorFlow, so the
test module imports the case list from here.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs"
TF_MODULES = ("tensorflow", "tensorflow_text", "tensorflow_datasets", "tf_keras")

BATCH, LENGTH = 2, 16
# Narrow and shallow; each case keeps its config's style (positions, norms, activation,
# grouped KV heads, tying, pre/post-norm, causal or not, token types, its heads).
SMALL = dict(vocab_size=101, num_layers=2, hidden_dim=32, intermediate_dim=64,
             max_sequence_length=32, head_dim=0, dropout=0.0, attention_dropout=0.0)
# name -> (shipped config, model overrides, task overrides)
CASES = {
    "gpt2": ("gpt_tiny", dict(num_heads=4), {}),
    "bert": ("bert_tiny", dict(num_heads=4), {}),
    "llama": ("llama_tiny", dict(num_heads=4, num_kv_heads=2), {}),
    # Block-wise (online-softmax) attention: its own code path in tfllm.layers.
    "llama_blockwise": ("llama_tiny", dict(num_heads=4, num_kv_heads=2,
                                           attention_block_size=4), {}),
    # Both classifier heads on one encoder: the sequence and token classification models.
    "bert_multi_task": ("bert_tiny", dict(num_heads=4), dict(name="multi_task", heads={
        "tags": dict(task="token_classification", labels=["O", "B-X", "I-X"]),
        "sentiment": dict(task="sequence_classification", labels=["neg", "pos"],
                          pooling="mean")})),
}
LEARNING_RATE = 1e-3


def case_config(case: str):
  """The full config of `case`: its shipped config, made small."""
  name, model_overrides, task_overrides = CASES[case]
  spec = importlib.util.spec_from_file_location(f"configs_{name}", CONFIG_DIR / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.model.update(SMALL, **model_overrides)
  config.tokenizer.vocab_size = SMALL["vocab_size"]
  config.data.sequence_length = LENGTH
  config.task.update(task_overrides)
  return config


def case_features(config, seed: int = 0):
  """Inputs (the second example padded after 11 tokens) and integer labels per output."""
  rng = np.random.default_rng(seed)
  padding_mask = np.ones((BATCH, LENGTH), bool)
  padding_mask[1, 11:] = False
  features = {"token_ids": rng.integers(1, config.model.vocab_size, (BATCH, LENGTH), "int32"),
              "padding_mask": padding_mask}
  if config.model.num_token_types:
    features["token_type_ids"] = (np.arange(LENGTH)[None] >= LENGTH // 2).repeat(
        BATCH, 0).astype("int32")
  if config.task.name == "masked_lm":
    features["mask_positions"] = np.array([[1, 5, 9], [0, 3, 10]], "int32")
  return features


def output_labels(outputs, seed: int = 1):
  """Random class ids for each output (a dict for a multi-task model) of the shape of its
  logits without the class axis."""
  rng = np.random.default_rng(seed)
  named = outputs if isinstance(outputs, dict) else {"logits": outputs}
  return {name: rng.integers(0, value.shape[-1], tuple(value.shape[:-1]), "int32")
          for name, value in sorted(named.items())}


def loss(outputs, labels):
  """Mean token cross-entropy in float32, summed over outputs (`keras.ops`: any backend)."""
  import keras  # pylint: disable=import-outside-toplevel
  named = outputs if isinstance(outputs, dict) else {"logits": outputs}
  total = 0.0
  for name, target in labels.items():
    logits = keras.ops.cast(named[name], "float32")
    total = total + keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
        target, logits, from_logits=True))
  return total


def as_numpy(outputs):
  """{name: array} of a model's output (one tensor or a dict of them)."""
  named = outputs if isinstance(outputs, dict) else {"logits": outputs}
  return {name: np.asarray(value) for name, value in named.items()}


def make_optimizer():
  import keras  # pylint: disable=import-outside-toplevel
  return keras.optimizers.AdamW(learning_rate=LEARNING_RATE, weight_decay=0.01)


class BlockImports(importlib.abc.MetaPathFinder):
  """Makes importing any of `TF_MODULES` raise ImportError, as if not installed."""

  def find_spec(self, fullname, path=None, target=None):  # pylint: disable=unused-argument
    if fullname.split(".")[0] in TF_MODULES:
      raise ImportError(f"{fullname} is blocked: the JAX backend must run without TensorFlow")
    return None


def block_imports() -> None:
  loaded = [name for name in sys.modules if name.split(".")[0] in TF_MODULES]
  if loaded:
    raise RuntimeError(f"already imported before the blocker: {loaded}")
  sys.meta_path.insert(0, BlockImports())


def run_jax_case(case: str, case_dir: pathlib.Path) -> None:
  """Builds `case` under JAX with the TF weights; writes logits, loss, grads, loss after a step."""
  import jax  # pylint: disable=import-outside-toplevel
  import keras  # pylint: disable=import-outside-toplevel
  from tfllm import models  # pylint: disable=import-outside-toplevel

  config = case_config(case)
  keras.utils.set_random_seed(0)
  model = models.build(config)
  model.load_weights(str(case_dir / f"{case}.weights.h5"))
  inputs = np.load(case_dir / f"{case}.tf.npz")
  features = {key.removeprefix("feature/"): inputs[key] for key in inputs.files
              if key.startswith("feature/")}
  labels = {key.removeprefix("label/"): inputs[key] for key in inputs.files
            if key.startswith("label/")}

  trainable = [v.value for v in model.trainable_variables]
  non_trainable = [v.value for v in model.non_trainable_variables]

  def loss_fn(trainable_values, non_trainable_values):
    outputs, non_trainable_values = model.stateless_call(
        trainable_values, non_trainable_values, features, training=False)
    return loss(outputs, labels), outputs

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (loss_value, outputs), grads = grad_fn(trainable, non_trainable)

  optimizer = make_optimizer()
  optimizer.build(model.trainable_variables)
  new_trainable, _ = jax.jit(optimizer.stateless_apply)(
      [v.value for v in optimizer.variables], grads, trainable)
  (loss_after, _), _ = grad_fn(new_trainable, non_trainable)

  results = {f"output/{name}": value for name, value in as_numpy(outputs).items()}
  results.update({f"grad/{i:03d}": np.asarray(g) for i, g in enumerate(grads)})
  results.update(loss=np.asarray(loss_value), loss_after_step=np.asarray(loss_after),
                 backend=np.asarray(keras.backend.backend()),
                 tf_imported=np.asarray(any(name.split(".")[0] in TF_MODULES
                                            for name in sys.modules)))
  np.savez(case_dir / f"{case}.jax.npz", **results)


def main(argv) -> None:
  block_imports()
  os.environ["KERAS_BACKEND"] = "jax"
  sys.path.insert(0, str(REPO))
  case_dir = pathlib.Path(argv[1])
  for case in CASES:
    print("case", case, flush=True)
    run_jax_case(case, case_dir)
  print("cases done:", ", ".join(CASES))


if __name__ == "__main__":
  main(sys.argv)
