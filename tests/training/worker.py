"""One training process of the multi-process tests: the tiny model on synthetic data.

  python -m tests.training.worker --strategy=multi_worker_mirrored --model_dir=DIR \
      --steps=20 --out=result.npz [--eval_shards=12,8]
  python -m tests.training.worker --strategy=multi_worker_mirrored --model_dir=DIR \
      --tensor_parallel=gpt2 --cpu_devices=2 --start=CKPT --steps=20 --out=result.npz

Resumes from `model_dir`; the chief writes the step losses and final weights to `--out`.
With `--tensor_parallel=STYLE`: the tiny tensor-parallel causal LM of
`tests.training.tensor_parallel_runs` at degree 2 over each worker's `--cpu_devices`
logical CPUs, one replica a worker (as `tfllm-train` runs it), started from the unsharded
checkpoint `--start`; its final weights are the unsharded model's.
Errors are one line on stderr and exit code 1, as in `tfllm-train`.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--strategy", default="one_device")
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--steps_per_loop", type=int, default=5)
  parser.add_argument("--checkpoint_every_steps", type=int, default=10)
  parser.add_argument("--out", default="")
  parser.add_argument("--eval_shards", default="",
                      help="evaluate after training on a finite split: examples per worker")
  parser.add_argument("--tensor_parallel", default="", help="a style: gpt2 or llama")
  parser.add_argument("--cpu_devices", type=int, default=0)
  parser.add_argument("--start", default="", help="checkpoint to start from")
  args = parser.parse_args()

  from tfllm import distribute  # pylint: disable=g-import-not-at-top
  if args.cpu_devices:
    distribute.split_cpu(args.cpu_devices)
  if args.tensor_parallel:
    return _tensor_parallel(args, distribute.get_strategy(
        args.strategy, worker_timeout_s=60, one_replica_per_worker=True))
  strategy = distribute.get_strategy(args.strategy, num_gpus=1 if args.strategy in (
      "one_device", "mirrored") else None, worker_timeout_s=60)
  import numpy as np  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from tests.training.helpers import finite_dataset_fn, make_trainer, trainer_config
  chief = distribute.is_chief(strategy)
  config = trainer_config(steps=args.steps, steps_per_loop=args.steps_per_loop,
                       checkpoint_every_steps=args.checkpoint_every_steps, eval_steps=0)
  trainer = make_trainer(config, args.model_dir, strategy=strategy, is_chief=chief,
                         worker_dir=None if chief else distribute.worker_temp_dir(
                             args.model_dir, strategy),
                         log=lambda line: print(line, flush=True),
                         eval_fn=finite_dataset_fn(config, [int(n) for n in args.eval_shards.split(
                             ",")]) if args.eval_shards else None)
  restored = trainer.restore()
  print(f"restored {restored} at step {int(trainer.step.numpy())}", flush=True)
  result = trainer.train()
  evaluation = trainer.evaluate(num_steps=1000) if args.eval_shards else {}
  if chief and args.out:
    np.savez(args.out, losses=np.array(result.losses), step=result.step,
             eval_loss=evaluation.get("loss", np.nan),
             start_step=result.step - len(result.losses),
             **{f"w{i}": v.numpy() for i, v in enumerate(trainer.model.weights)})
  return 0


def _tensor_parallel(args, strategy) -> int:
  """The `--tensor_parallel` run (see the module docstring)."""
  # pylint: disable=g-import-not-at-top
  import keras
  import numpy as np
  from tests.training.helpers import synthetic_dataset_fn
  from tests.training.tensor_parallel_runs import tp_config
  from tfllm import distribute, metrics
  from tfllm.training import tensor_parallel
  from tfllm.training.loop import Trainer
  chief = distribute.is_chief(strategy)
  config = tp_config(args.tensor_parallel, 2, steps=args.steps)
  keras.utils.set_random_seed(0)
  model, optimizer, state = tensor_parallel.build_models(config, None, log=print)
  trainer = Trainer(config, strategy, model, optimizer, args.model_dir,
                    synthetic_dataset_fn(config), synthetic_dataset_fn(config, 10**7),
                    metrics=metrics.eval_metrics(config), is_chief=chief,
                    worker_dir=None if chief else distribute.worker_temp_dir(args.model_dir,
                                                                             strategy),
                    jit_compile=False, checkpoint_state=state,
                    log=lambda line: print(line, flush=True))
  trainer.restore(args.start or None)
  result = trainer.train()
  if chief and args.out:
    state.before_save()
    np.savez(args.out, losses=np.array(result.losses), step=result.step,
             **{f"w{i}": keras.ops.convert_to_numpy(v)
                for i, v in enumerate(state.model.weights)})
  return 0


if __name__ == "__main__":
  try:
    code = main()
  except Exception as error:  # pylint: disable=broad-except
    from tfllm.cli.flags import one_line  # pylint: disable=g-import-not-at-top
    print(f"worker: error: {one_line(error)}", file=sys.stderr, flush=True)
    code = 1
  sys.stdout.flush()
  os._exit(code)  # pylint: disable=protected-access
