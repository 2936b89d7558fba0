"""Tiny tensor-parallel training runs for `test_tensor_parallel_train.py`, and as a program
in a subprocess that splits the CPU into 4 devices first (resume a run saved at `N=2` at
`N=4`):

  python -m tests.training.tensor_parallel_runs gpt2 llama

prints one JSON line per style: the largest differences of the `N=4` run's model and AdamW
values, restored from the `N=2` checkpoint, from the `N=2` run's, and of the next steps'
losses.
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


def tp_trainer(config, model_dir) -> Trainer:
  """The job's models at the config's degree, over synthetic data, under the default
  strategy (one tensor-parallel group); unsharded: the plain causal LM and its AdamW."""
  keras.utils.set_random_seed(0)
  state = None
  if config.train.model_parallel > 1:
    model, optimizer, state = tensor_parallel.build_models(config, None, log=lambda _: None)
  else:
    model = models.build(config)
    optimizer = build_optimizer(config.train, model.trainable_variables)
    optimizer.build(model.trainable_variables)
  return Trainer(config, tf.distribute.get_strategy(), model, optimizer, str(model_dir),
                 synthetic_dataset_fn(config), synthetic_dataset_fn(config, 10**7),
                 metrics=metrics_lib.eval_metrics(config), jit_compile=False,
                 checkpoint_state=state, log=lambda line: None)


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


def main(argv):
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(4)])
  for style in argv[1:]:
    with tempfile.TemporaryDirectory() as directory:
      print(json.dumps(resume_at_4(style, directory)), flush=True)


if __name__ == "__main__":
  main(sys.argv)
