"""Test session set-up: runs before TensorFlow initializes its runtime.

The CPU is split into two logical devices so that `MirroredStrategy` tests run on a machine
without GPUs; this must happen before anything touches the runtime (docs/stack.md).

It also loads the reference-test plugin (`tests/reference_check.py`): skipped reference tests
are listed at the end of a run, and `--require-reference=NAME,...` fails a run that skipped
them.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tests.reference_check import pytest_addoption, pytest_configure  # noqa: E402,F401

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


@pytest.fixture(autouse=True)
def _float32_policy_and_clean_session():
  """Each test starts from float32 and a fresh Keras name scope, whatever the last one set."""
  keras.mixed_precision.set_global_policy("float32")
  keras.utils.clear_session()
  yield
  keras.mixed_precision.set_global_policy("float32")
