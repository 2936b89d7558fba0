"""What a training job reports after its steps: results lines, eval files, the entity report,
the int8 evaluation and the sample (`report(...)`, called by `tfllm.training.job.run`)."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict

import tensorflow as tf

from tfllm import finetune
from tfllm.artifacts import checkpoints
from tfllm.artifacts.loader import load_trained_model
from tfllm.finetune.multitask_data import head_config
from tfllm.metrics.entity_f1 import entity_reports_from_results
from tfllm.model_dir import EVAL_FILE, INT8_EVAL_FILE, INT8_WEIGHTS_FILE, write_atomically
from tfllm.training.sampling import sample_continuation


def report(summary: Dict[str, Any], trainer, experiment, config, mode: str, chief: bool,
           log: Callable[[str], None]) -> Dict[str, Any]:
  """Completes `summary` (the job's result) after training or evaluation, and logs it.

  Adds `checkpoint`, `best_checkpoint` (early stopping kept one), the pruned kernels'
  `sparsity`, `eval_metrics_int8` (`config.finetune.quantize`) and `sample` (causal LMs with
  `train.sample_new_tokens`); the chief writes the eval JSON files.
  """
  model_dir = trainer.model_dir
  summary["checkpoint"] = trainer.checkpointer.latest
  best = checkpoints.best_checkpoint(model_dir) if mode != "eval" else None
  if best is not None:
    summary["best_checkpoint"] = best["path"]
    log(f"early stopping kept {checkpoints.describe_best(best)}: {best['path']} (export and "
        "--mode=eval use it)")
  metrics = summary["eval_metrics"]
  if experiment.pruning and metrics:   # the zeros the evaluated kernels hold
    metrics["sparsity"] = finetune.weight_sparsity(experiment.trained_model,
                                                   config.finetune.pruning)
  if metrics:
    log(f"{eval_label(config)} at step {summary['step']}: {_format(metrics)}")
    for head, table in entity_reports_from_results(metrics).items():
      log(f"entity report{f' ({head})' if head else ''}:\n{table}")
    if chief:
      _write_eval_file(os.path.join(model_dir, EVAL_FILE), summary["step"], config, metrics)
  if config.finetune.quantize and metrics:
    summary["eval_metrics_int8"] = evaluate_quantized(trainer, config, chief, log)
  if config.task.name == "causal_lm" and config.train.sample_new_tokens and chief:
    summary["sample"] = sample(config, experiment.trained_model, experiment.tokenizer,
                               experiment.eval_data)
    log(f"sample: {summary['sample']}")
  return summary


def evaluate_quantized(trainer, config, chief, log) -> Dict[str, float]:
  """Post-training int8 (`config.finetune.quantize`): the saved model, LoRA merged, quantized
  and evaluated on the same batches; metrics in `eval_metrics_int8.json`, weights in
  `model.int8.weights.h5` (Keras 3.15 cannot reload quantized attention from `.keras`)."""
  model_dir = trainer.model_dir
  with trainer.strategy.scope():
    quantized, _ = load_trained_model(model_dir)
    finetune.quantize_int8(quantized)
  metrics = trainer.evaluate(model=quantized, summary_prefix="int8/")
  step = int(trainer.step.numpy())
  log(f"int8 {eval_label(config)} at step {step}: {_format(metrics)}")
  if chief:
    _write_eval_file(os.path.join(model_dir, INT8_EVAL_FILE), step, config, metrics)
    finetune.save_quantized_weights(quantized, os.path.join(model_dir, INT8_WEIGHTS_FILE))
  return metrics


def _format(metrics: Dict[str, float]) -> str:
  return "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))


def _write_eval_file(path: str, step: int, config, metrics: Dict[str, float]):
  write_atomically(path, json.dumps(dict(step=step, split=eval_split(config), **metrics),
                                    indent=2, sort_keys=True))


def eval_split(config):
  """The split an evaluation read (per head for a multi-task model), for the eval JSON files:
  `--mode=eval --config.data.eval_split=test` replaces the validation figures."""
  if config.task.name == "multi_task":
    return {name: head_config(config, name).data.eval_split for name in config.task.heads}
  return config.data.eval_split


def eval_label(config) -> str:
  """What the results lines call the evaluation: "validation", or the split(s) it read."""
  split = eval_split(config)
  names = sorted(set(split.values()) if isinstance(split, dict) else {split})
  return "validation" if names == ["validation"] else f"evaluation on {', '.join(names)}"


def sample(config, model, tokenizer, eval_data) -> str:
  """Prompt (the configured text, or the first tokens of the eval split) + continuation."""
  tc = config.train
  if tc.sample_prompt:
    prompt = [int(t) for t in tokenizer(tc.sample_prompt).numpy().reshape(-1)]
  else:
    context = tf.distribute.InputContext(1, 0, 1)
    features, _, _ = next(iter(eval_data(context)))
    prompt = [int(t) for t in features["token_ids"][0, :16].numpy()]
  new = sample_continuation(model, prompt, tc.sample_new_tokens, config.data.sequence_length,
                            temperature=tc.sample_temperature, seed=tc.seed)
  detokenize = lambda ids: _as_text(tokenizer.detokenize(tf.constant([ids]))[0])
  return f"{detokenize(prompt)} >>> {detokenize(new)}"


def _as_text(value) -> str:
  value = value.numpy() if hasattr(value, "numpy") else value
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
