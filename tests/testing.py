"""The test toolkit: tiny configs, and the contract checks every layer and model keeps.

Modelled on KerasHub's `TestCase` (`keras_hub/src/tests/test_case.py`): one
`run_layer_test` / `run_model_test` call checks what each hand-written test used to repeat:
the config round trip, the `.keras` save/load round trip, XLA, the mixed-precision policies
and the expected weight counts. Numeric references stay in the tests that own them.
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfllm import config as config_lib
from tfllm.models.config import model_preset

# A 2-layer, width-32 Transformer: every test model starts here.
TINY_MODEL = dict(vocab_size=97, num_layers=2, hidden_dim=32, num_heads=4, intermediate_dim=64,
                  max_sequence_length=32)
CLASSIFICATION_TASKS = ("sequence_classification", "token_classification")
ENCODER_TASKS = ("masked_lm", "multi_task", *CLASSIFICATION_TASKS)
LABELS = ("a", "b", "c")
PRECISION_POLICIES = ("mixed_float16", "mixed_bfloat16")
STYLES = ("gpt2", "bert", "llama")


def tiny_config(style: str | None = "gpt2", task: str = "causal_lm", *, labels=LABELS,
                model=None, data=None, train=None, optimizer=None, tokenizer=None, export=None,
                task_options=None, validate: bool = False, **model_overrides):
  """A full config of a tiny model (`TINY_MODEL`) for `task`.

  Args:
    style: a `model_preset` name ("gpt2", "bert", "llama"), or None to keep the default
      config's model keys (then the encoder tasks, `ENCODER_TASKS`, turn `causal` off).
      Llama gets 2 KV heads (grouped-query attention).
    task: `config.task.name`.
    labels: `config.task.labels` of a classification task; None sets none (then give
      `task_options=dict(num_classes=...)`).
    model, data, train, optimizer, tokenizer, export, task_options: dicts of keys set on
      `config.model`, `config.data`, `config.train`, `config.train.optimizer`,
      `config.tokenizer`, `config.export` and `config.task`, after everything else.
    validate: return `tfllm.config.validate(config)` (a checked, filled-in config).
    **model_overrides: more `config.model` keys (applied last).

  Returns:
    The `ml_collections.ConfigDict`.

  Example:

  ```python
  from tests.testing import tiny_config

  config = tiny_config("llama", num_layers=1, train=dict(global_batch_size=2))
  assert config.model.num_kv_heads == 2 and config.model.num_layers == 1
  ```
  """
  config = config_lib.default_config()
  if style is not None:
    config.model.update(model_preset(style))
  config.model.update(TINY_MODEL)
  if style == "llama":
    config.model.num_kv_heads = 2
  config.task.name = task
  if style is None and task in ENCODER_TASKS:
    config.model.causal = False
  if task in CLASSIFICATION_TASKS and labels is not None:
    config.task.labels = list(labels)
  for section, values in ((config.model, model), (config.data, data), (config.train, train),
                          (config.train.optimizer, optimizer), (config.tokenizer, tokenizer),
                          (config.export, export), (config.task, task_options),
                          (config.model, model_overrides)):
    section.update(values or {})
  return config_lib.validate(config) if validate else config


def _outputs_numpy(outputs):
  """Outputs (a tensor, or a dict / list / tuple of them) as float64 arrays, flattened."""
  return [np.asarray(tf.cast(x, tf.float32), "float64") for x in tf.nest.flatten(outputs)]


def _assert_outputs_close(actual, expected, atol, message):
  for got, want in zip(_outputs_numpy(actual), _outputs_numpy(expected), strict=True):
    np.testing.assert_allclose(got, want, atol=atol, rtol=0, err_msg=message)


def _check_config_round_trip(instance, call, input_data):
  """`from_config(get_config())` gives the same config and, with the same weights, outputs."""
  config = instance.get_config()
  clone = instance.__class__.from_config(config)
  assert clone.get_config() == config, f"{type(instance).__name__}: config changed"
  call(clone, input_data)
  clone.set_weights(instance.get_weights())
  _assert_outputs_close(call(clone, input_data), call(instance, input_data), 1e-6,
                        "config round trip")


def _check_keras_file_round_trip(instance, call, input_data):
  """A `.keras` file saved and loaded gives bitwise the same outputs."""
  expected = call(instance, input_data)
  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, "model.keras")
    if isinstance(instance, keras.Model):
      instance.save(path)
      restored = keras.saving.load_model(path)
    else:
      # A bare layer is saved inside a Sequential model (the `.keras` format saves models).
      example = tf.nest.flatten(input_data)[0]
      model = keras.Sequential([keras.Input(example.shape[1:], dtype=example.dtype), instance])
      model.save(path)
      restored = keras.saving.load_model(path).layers[-1]
  for got, want in zip(_outputs_numpy(call(restored, input_data)), _outputs_numpy(expected),
                       strict=True):
    np.testing.assert_array_equal(got, want, err_msg=".keras round trip")


def _check_xla(instance, call, input_data, atol):
  eager = call(instance, input_data)
  compiled = tf.function(lambda x: call(instance, x), jit_compile=True)(
      tf.nest.map_structure(tf.constant, input_data))
  _assert_outputs_close(compiled, eager, atol, "XLA (jit_compile) vs eager")


def _check_precision(make, call, input_data, float32_output):
  """Under each mixed policy: float32 variables, outputs in the compute dtype (or float32
  where `float32_output`), all finite."""
  previous = keras.mixed_precision.global_policy()
  try:
    for policy in PRECISION_POLICIES:
      keras.mixed_precision.set_global_policy(policy)
      instance = make()
      outputs = call(instance, input_data)
      name = f"{type(instance).__name__} under {policy}"
      assert all(v.dtype == tf.float32 for v in instance.weights), f"{name}: variables"
      assert instance.compute_dtype == policy.split("_")[1], f"{name}: compute dtype"
      expected = "float32" if float32_output else instance.compute_dtype
      for output in tf.nest.flatten(outputs):
        assert output.dtype == expected, f"{name}: output {output.dtype}, not {expected}"
      for array in _outputs_numpy(outputs):
        assert np.all(np.isfinite(array)), f"{name}: non-finite outputs"
  finally:
    keras.mixed_precision.set_global_policy(previous)


def _check_weight_counts(instance, trainable, non_trainable):
  name = type(instance).__name__
  if trainable is not None:
    assert len(instance.trainable_weights) == trainable, (
        f"{name}: {len(instance.trainable_weights)} trainable weights, expected {trainable}")
  if non_trainable is not None:
    assert len(instance.non_trainable_weights) == non_trainable, (
        f"{name}: {len(instance.non_trainable_weights)} non-trainable weights, "
        f"expected {non_trainable}")


def _default_call(instance, input_data):
  return instance(input_data)


def run_layer_test(layer_cls, init_kwargs, input_data, expected_output_shape,
                   expected_num_trainable_weights=None, expected_num_non_trainable_weights=0,
                   expected_output_dtype="float32", call=None, run_precision_checks=True,
                   run_xla_check=True, xla_atol=1e-5, float32_output=False):
  """Checks a layer's contract; returns the built float32 layer and its outputs.

  Checks: output shape and dtype; trainable / non-trainable weight counts; the config round
  trip (`from_config(get_config())`: equal config, equal outputs with the same weights); a
  `.keras` save/load round trip (bitwise equal outputs); a `jit_compile=True` (XLA) call
  equal to the eager one; and under `mixed_float16` and `mixed_bfloat16`: float32
  variables, outputs in the compute dtype (float32 where `float32_output`), finite.

  Args:
    layer_cls: the layer class.
    init_kwargs: dict of constructor arguments.
    input_data: a NumPy array (or a dict / list of them) the layer is called on.
    expected_output_shape: the output's shape (tuple), or a structure of shapes.
    expected_num_trainable_weights, expected_num_non_trainable_weights: counts (None skips).
    expected_output_dtype: the output dtype under the float32 policy.
    call: `(layer, input_data) -> outputs`; default `layer(input_data)`.
    run_precision_checks, run_xla_check: whether to run those checks.
    xla_atol: tolerance of XLA against eager.
    float32_output: outputs stay float32 under mixed precision (logits, losses).

  Example:

  ```python
  from tests.testing import run_layer_test
  from tfllm.layers import RMSNorm
  import numpy as np

  run_layer_test(RMSNorm, {}, np.ones((2, 3, 4), "float32"), (2, 3, 4),
                 expected_num_trainable_weights=1)
  ```
  """
  return _run_contract(lambda: layer_cls(**init_kwargs), call or _default_call, input_data,
                       expected_output_shape, expected_output_dtype,
                       (expected_num_trainable_weights, expected_num_non_trainable_weights),
                       run_precision_checks, run_xla_check, xla_atol, float32_output)


def run_model_test(make_model, input_data, expected_output_shape,
                   expected_num_trainable_weights=None, expected_num_non_trainable_weights=0,
                   call=None, run_precision_checks=True, run_xla_check=True, xla_atol=1e-5,
                   float32_output=True):
  """`run_layer_test` for backbones and task models, built by `make_model()`.

  A model is built by a function (usually `lambda: models.build(tiny_config(...))`), so
  under each precision policy it is built anew. Task models' logits are float32 under any
  policy (`float32_output=True`); pass False for a backbone, whose hidden states are in the
  compute dtype.

  Returns:
    The float32 model and its outputs.

  Example:

  ```python
  import numpy as np
  from tests.testing import run_model_test, tiny_config
  from tfllm import models

  run_model_test(lambda: models.build(tiny_config("gpt2", num_layers=1)),
                 np.ones((1, 4), "int32"), (1, 4, 97), run_precision_checks=False)
  ```
  """
  return _run_contract(make_model, call or _default_call, input_data, expected_output_shape,
                       "float32" if float32_output else None,
                       (expected_num_trainable_weights, expected_num_non_trainable_weights),
                       run_precision_checks, run_xla_check, xla_atol, float32_output)


def _run_contract(make, call, input_data, expected_output_shape, expected_output_dtype,
                  weight_counts, run_precision_checks, run_xla_check, xla_atol, float32_output):
  """The checks of `run_layer_test` and `run_model_test` on the instance `make()` builds."""
  instance = make()
  name = type(instance).__name__
  outputs = call(instance, input_data)
  shapes = tf.nest.map_structure(lambda x: tuple(x.shape), outputs)
  assert shapes == expected_output_shape, f"{name}: output shapes {shapes}"
  if expected_output_dtype is not None:
    for output in tf.nest.flatten(outputs):
      assert output.dtype == expected_output_dtype, f"{name}: output dtype {output.dtype}"
  _check_weight_counts(instance, *weight_counts)
  _check_config_round_trip(instance, call, input_data)
  _check_keras_file_round_trip(instance, call, input_data)
  if run_xla_check:
    _check_xla(instance, call, input_data, xla_atol)
  if run_precision_checks:
    _check_precision(make, call, input_data, float32_output)
  return instance, outputs
