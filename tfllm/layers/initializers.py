"""A fresh initializer for every weight: `clone_initializer`."""

from __future__ import annotations

import keras


def clone_initializer(initializer):
  """A new initializer of the same kind and arguments as `initializer`.

  An unseeded Keras initializer draws its seed once, when it is constructed, and returns the
  same values on every later call: handing one instance to several layers makes all their
  weights of one shape equal (every block of a stack starting identical). Each layer that
  passes an initializer on to a sublayer therefore passes a clone; each clone draws its own
  seed from Keras' global generator, so `keras.utils.set_random_seed` still fixes them all.
  An initializer given an explicit integer seed keeps it (its clones repeat its values, as
  asked); strings and config dicts are resolved first, and non-random initializers
  (`zeros`, `ones`) come back as they are equivalent.

  Args:
    initializer: a `keras.initializers.Initializer`, its name or its serialized config.

  Returns:
    A new `keras.initializers.Initializer`.

  Example:

  ```python
  import keras
  import numpy as np
  from tfllm.layers import clone_initializer

  template = keras.initializers.TruncatedNormal(stddev=0.02)
  a, b = clone_initializer(template), clone_initializer(template)
  assert not np.array_equal(a((4, 4)), b((4, 4)))   # two kernels never start equal
  ```
  """
  initializer = keras.initializers.get(initializer)
  return initializer.__class__.from_config(initializer.get_config())
