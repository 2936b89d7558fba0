"""Evaluating a model that is not being trained, through the trainer's own evaluation.

`evaluator(config, tokenizer)` returns `evaluate(model) -> metrics`: the same eval split,
batches, compiled step and metric table (`tfllm.metrics.eval_metrics`) as
`tfllm-train --mode=eval`, for any model of the config's task (a greedy weight soup's
candidates: `tfllm.export.ensemble`).
"""

from __future__ import annotations

import tempfile
from typing import Callable, Dict

import keras
import ml_collections

from tfllm import distribute
from tfllm.data import pipelines
from tfllm.metrics.tables import eval_metrics
from tfllm.training.devices import jit_compile_setting
from tfllm.training.loop import Trainer


def evaluator(config: ml_collections.ConfigDict, tokenizer,
              strategy_name: str = "off") -> Callable[[keras.Model], Dict[str, float]]:
  """`evaluate(model) -> {metric: value}` over `config.data.eval_split` (`config.train`'s
  `eval_steps` batches of `global_batch_size`; the last partial one filled with weight-0
  examples, as in training).

  The trainer's summaries go to a scratch directory that lives as long as the evaluator.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  strategy = distribute.get_strategy(strategy_name)
  scratch = tempfile.TemporaryDirectory(prefix="tfllm-eval-")
  trainer = None

  def eval_data(context):
    return pipelines.make_dataset(config, config.data.eval_split, tokenizer,
                                  input_context=context, training=False)

  def evaluate(model):
    nonlocal trainer
    if trainer is None:
      with strategy.scope():
        optimizer = keras.optimizers.SGD()   # never applied: the trainer's checkpoint needs one
      trainer = Trainer(config, strategy, model, optimizer, scratch.name, lambda context: None,
                        eval_data, metrics=eval_metrics(config, tokenizer),
                        jit_compile=jit_compile_setting(config.train),
                        log=lambda line: None)
    return trainer.evaluate(model=model)

  evaluate.scratch = scratch   # removed with the evaluator
  return evaluate
