"""Tiny tensor-parallel training runs for `test_tensor_parallel_train.py`, and as a program
in a subprocess that splits the CPU into 4 devices first:

  python -m tests.training.tensor_parallel_runs gpt2 llama groups:gpt2

prints one JSON line per argument. A style: the largest differences of the `N=4` run's
model and AdamW values, restored from the `N=2` checkpoint, from the `N=2` run's, and of the
next steps' losses. `groups:STYLE`: the largest differences of 2 data-parallel groups of
`N=2` (the 4 devices as 2 x 2) from one device at the same global batch and start
(`groups_match_one_device`).
"""

from __future__ import annotations

import json
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tests import testing
from tests.training.helpers import SEQ, VOCAB, synthetic_dataset_fn
from tfllm import metrics as metrics_lib
from tfllm import models
from tfllm.training import tensor_parallel
from tfllm.training.loop import Trainer
from tfllm.training.optimizer import build_optimizer

STEPS = 12


def tp_config(style: str, degree: int, steps: int = STEPS):
  """A tiny causal LM (8 heads; Llama: 4 KV heads, grouped) at tensor-parallel degree
  `degree` (2 or 4)."""
  kv_heads = dict(num_kv_heads=4) if style == "llama" else {}
  return testing.tiny_config(
      style, "causal_lm", labels=None, task_options=dict(dropout=0.0),
      model=dict(vocab_size=VOCAB, num_heads=8, max_sequence_length=SEQ, dropout=0.0,
                 **kv_heads),
      data=dict(sequence_length=SEQ),
      train=dict(global_batch_size=8, steps=steps, steps_per_loop=4, eval_steps=2,
                 checkpoint_every_steps=0, sample_new_tokens=0, jit_compile="off",
                 model_parallel=degree),
      optimizer=dict(warmup_steps=2, learning_rate=1e-3), validate=True)


def tp_trainer(config, model_dir, groups: int = 1) -> Trainer:
  """The job's models at the config's degree (`groups` data-parallel groups of it), over
  synthetic data, under the default strategy; unsharded (degree 1, one group): the plain
  causal LM and its AdamW."""
  keras.utils.set_random_seed(0)
  state = None
  if config.train.model_parallel > 1 or groups > 1:
    model, optimizer, state = tensor_parallel.build_models(config, None, log=lambda _: None,
                                                           groups=groups)
  else:
    model = models.build(config)
    optimizer = build_optimizer(config.train, model.trainable_variables)
    optimizer.build(model.trainable_variables)
  return Trainer(config, tf.distribute.get_strategy(), model, optimizer, str(model_dir),
                 synthetic_dataset_fn(config), synthetic_dataset_fn(config, 10**7),
                 metrics=metrics_lib.eval_metrics(config), jit_compile=False,
                 checkpoint_state=state, data_parallel_groups=groups, log=lambda line: None)


def _max_difference(a, b) -> float:
  assert len(a) == len(b)
  return max(float(np.max(np.abs(keras.ops.convert_to_numpy(x) -
                                 keras.ops.convert_to_numpy(y)), initial=0.0))
             for x, y in zip(a, b))


def resume_at_4(style: str, directory: str) -> dict:
  """Trains 4 steps at N=2, saves, resumes at N=4; both train 4 more steps."""
  two = tp_trainer(tp_config(style, 2, steps=8), f"{directory}/two")
  two.run_steps(two.train_iterator(0), 4)   # the first 4 of 8 steps (the same schedule)
  saved = two.save()
  four = tp_trainer(tp_config(style, 4, steps=8), f"{directory}/four")
  four.restore(saved)
  four.checkpoint_state.before_save()   # the N=4 shards, gathered
  a, b = two.checkpoint_state, four.checkpoint_state
  restored = dict(weights=_max_difference(a.model.weights, b.model.weights),
                  adamw=_max_difference(a.optimizer.variables, b.optimizer.variables),
                  step=int(four.step.numpy()))
  losses = np.abs(np.array(two.train().losses) - np.array(four.train().losses))
  return dict(style=style, next_losses=float(losses.max()), **restored)


def groups_match_one_device(style: str, directory: str, degree: int = 2, groups: int = 2,
                            steps: int = 20) -> dict:
  """`groups` data-parallel groups of `degree` devices against one device, from the same
  start (the one-device run's step-0 checkpoint) at the same global batch: the largest
  differences of the losses over `steps` steps, of the final weights and AdamW state, of
  the groups' copies from each other, and of the evaluation."""
  one = tp_trainer(tp_config(style, 1, steps=steps), f"{directory}/one")
  start = one.save()
  grouped = tp_trainer(tp_config(style, degree, steps=steps), f"{directory}/grouped", groups)
  grouped.restore(start)
  first, second = one.train(), grouped.train()
  copies = grouped.model.models
  grouped.checkpoint_state.before_save()
  state = grouped.checkpoint_state
  return dict(
      style=style, steps=len(second.losses),
      losses=float(np.abs(np.array(first.losses) - np.array(second.losses)).max()),
      weights=_max_difference(one.model.weights, state.model.weights),
      adamw=_max_difference(one.optimizer.variables, state.optimizer.variables),
      copies=max(_max_difference(copies[0].weights, copy.weights) for copy in copies[1:]),
      eval=max(abs(first.eval_metrics[key] - second.eval_metrics[key])
               for key in first.eval_metrics))


def main(argv):
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(4)])
  for argument in argv[1:]:
    with tempfile.TemporaryDirectory() as directory:
      if argument.startswith("groups:"):
        result = groups_match_one_device(argument.split(":", 1)[1], directory)
      else:
        result = resume_at_4(argument, directory)
      print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main(sys.argv)
