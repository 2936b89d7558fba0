"""A tiny custom-loop training run under any strategy (a worker program for launcher tests).

Run as a script it builds the strategy `--strategy` names (multi_worker_mirrored by default,
from the `TF_CONFIG` the launcher sets), trains a small dense classifier with `strategy.run`
(not `fit`, which fails under MWMS: docs/stack.md) and writes its losses and final weights to
`--out/<task index>.json`. Every step's global batch is the same whatever the number of
workers and replicas, so runs under different strategies can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Dict, List

GLOBAL_BATCH = 8
FEATURES = 6
CLASSES = 3


def global_batch(step: int):
  """The step's (x [GLOBAL_BATCH, FEATURES] float32, y [GLOBAL_BATCH] int32)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(step)
  x = rng.normal(size=(GLOBAL_BATCH, FEATURES)).astype("float32")
  y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32")
  return x, y


def train(strategy, steps: int, die_at_step: int = -1) -> Dict[str, List[float]]:
  """Trains `steps` SGD steps; returns {"losses": [...], "weights": [flattened weights]}."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  with strategy.scope():
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(8, "tanh"),
                              keras.layers.Dense(CLASSES)])
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
  per_replica = GLOBAL_BATCH // strategy.num_replicas_in_sync
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

  @tf.function
  def replica_step(x, y):
    with tf.GradientTape() as tape:
      loss = loss_fn(y, model(x, training=True)) / GLOBAL_BATCH
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    return loss

  losses = []
  for step in range(steps):
    x, y = global_batch(step)

    def replica_slice(context, array):
      start = context.replica_id_in_sync_group * per_replica
      return array[start:start + per_replica]

    xs = strategy.experimental_distribute_values_from_function(lambda c: replica_slice(c, x))
    ys = strategy.experimental_distribute_values_from_function(lambda c: replica_slice(c, y))
    loss = strategy.reduce("SUM", strategy.run(replica_step, args=(xs, ys)), axis=None)
    losses.append(float(loss))
    if step == die_at_step:
      os.kill(os.getpid(), signal.SIGKILL)
  weights = [float(w) for v in model.trainable_variables for w in v.numpy().reshape(-1)]
  return {"losses": losses, "weights": weights}


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--strategy", default="multi_worker_mirrored")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--out", required=True)
  parser.add_argument("--die_worker", type=int, default=-1, help="this worker SIGKILLs itself")
  parser.add_argument("--die_at_step", type=int, default=-1)
  parser.add_argument("--worker_timeout_s", type=float, default=30.0)
  args = parser.parse_args(argv)
  from tfllm import distribute  # pylint: disable=g-import-not-at-top
  strategy = distribute.get_strategy(args.strategy, worker_timeout_s=args.worker_timeout_s)
  _, index = distribute.task_type_and_id(strategy)
  index = index or 0
  with open(os.path.join(args.out, f"pid{index}"), "w") as f:
    f.write(str(os.getpid()))
  print(f"task {index}: {strategy.num_replicas_in_sync} replicas, chief="
        f"{distribute.is_chief(strategy)}", flush=True)
  result = train(strategy, args.steps,
                 die_at_step=args.die_at_step if index == args.die_worker else -1)
  result["num_replicas"] = strategy.num_replicas_in_sync
  result["is_chief"] = distribute.is_chief(strategy)
  with open(os.path.join(args.out, f"{index}.json"), "w") as f:
    json.dump(result, f)
  print(f"task {index}: final loss {result['losses'][-1]:.6f}", flush=True)


if __name__ == "__main__":
  sys.exit(main())
