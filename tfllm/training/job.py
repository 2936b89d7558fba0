"""`run(config, ...)`: one training/evaluation job, from a config to a trained model_dir.

The model_dir it writes holds what a run needs to resume and what export needs
(`tfllm.model_dir` names its files).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional

import keras
import ml_collections
import tensorflow as tf

from tfllm import config as config_lib
from tfllm import distribute, precision, runtime
from tfllm.model_dir import (EVAL_FILE, INT8_EVAL_FILE, INT8_WEIGHTS_FILE, config_path,
                             write_atomically)
from tfllm.training import checkpointing, flops
from tfllm.training import metrics as metrics_lib
from tfllm.training import optimizer as optimizer_lib
from tfllm.training.loop import Trainer, jit_compile_setting
from tfllm.training.sampling import sample_continuation

MODES = ("train", "eval", "train_and_eval")
# Sections whose values shape the variables a checkpoint holds (and their meaning).
_SHAPE_SECTIONS = ("model", "task", "tokenizer")


def _differences(old: Any, new: Any, path: str):
  if isinstance(old, dict) and isinstance(new, dict):
    for key in sorted(set(old) | set(new)):
      yield from _differences(old.get(key), new.get(key), f"{path}.{key}")
  elif old != new and not (isinstance(old, (list, tuple)) and isinstance(new, (list, tuple))
                           and list(old) == list(new)):
    yield f"{path}={new!r} (model_dir has {old!r})"


def _is_decoding(diff: str) -> bool:
  # How tags are decoded is chosen at evaluation and export; the weights do not depend on it.
  return diff.split("=", 1)[0].endswith(".decoding")


def compare_with_model_dir(config: ml_collections.ConfigDict, model_dir: str,
                           ignore=("model.vocab_size",)) -> Optional[List[str]]:
  """Compares `config` with the config saved in `model_dir`.

  Args:
    ignore: shape settings not compared (the vocabulary size before the tokenizer is built).

  Returns:
    None when `model_dir` has no config; else the settings outside the model's shape (train,
    data, export, ...) that differ: a resumed run uses the new ones, so it says which.

  Raises:
    ConfigError: `model_dir` holds a run of a different model shape.
  """
  path = config_path(model_dir)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    saved = json.load(f)
  new = json.loads(config_lib.to_json(config))
  shape_diffs, other_diffs = [], []
  for section in sorted(set(saved) | set(new)):
    for diff in _differences(saved.get(section), new.get(section), f"config.{section}"):
      if section not in _SHAPE_SECTIONS or _is_decoding(diff):
        other_diffs.append(diff)
      elif not any(diff.startswith(f"config.{key}=") for key in ignore):
        shape_diffs.append(diff)
  if shape_diffs:
    more = f" (and {len(shape_diffs) - 1} more)" if len(shape_diffs) > 1 else ""
    raise config_lib.ConfigError(
        f"model_dir {model_dir} holds a different model: {shape_diffs[0]}{more}; use a new "
        "--model_dir or the saved config")
  return other_diffs


def _flops_per_token(config, model) -> float:
  m = config.model
  head_dim = m.head_dim or m.hidden_dim // m.num_heads
  return flops.training_flops_per_token(flops.flops_parameter_count(model), m.num_layers,
                                        m.num_heads, head_dim, config.data.sequence_length)


def _peak(config, strategy, policy: str) -> flops.Peak:
  """The per-device peak MFU divides by: the override, else the table for the device and the
  policy's compute dtype (float32, bfloat16 or float16)."""
  compute_dtype = keras.DTypePolicy(policy).compute_dtype
  return flops.device_peak(compute_dtype, strategy,
                           override=config.train.peak_flops_per_device or None)


def run(config: ml_collections.ConfigDict, model_dir: str, mode: str = "train_and_eval",
        strategy_name: str = "mirrored", tpu: Optional[str] = None,
        num_gpus: Optional[int] = None, mixed_precision: str = "float32",
        log: Callable[[str], None] = print,
        startup: Optional[runtime.StartupTimer] = None) -> Dict[str, Any]:
  """Trains and/or evaluates the model `config` describes, in `model_dir`.

  A `model_dir` holding a checkpoint resumes from it exactly (model, optimizer, step, data
  position); one holding a different model shape is refused before anything is written.

  Args:
    config: full tfllm config (validated here).
    model_dir: directory of the run (created; see the module docstring for its contents).
    mode: "train", "eval" (the newest checkpoint) or "train_and_eval".
    strategy_name: see `tfllm.distribute.get_strategy`.
    tpu: TPU name or address for `strategy_name="tpu"`.
    num_gpus: GPUs for `mirrored` (None = all).
    mixed_precision: see `tfllm.precision.set_policy`.
    log: where the chief's progress and results go.
    startup: times the phases up to the first training step (a command-line app passes
      the one it started at launch); None: a new one, from this call. The chief logs them
      after the first step (`time to first step ...`).

  Returns:
    dict with `step`, `eval_metrics`, `stop_reason`, `tokens_per_second`, `train_seconds`,
    `sample` (causal LMs with `train.sample_new_tokens`), `checkpoint`.
  """
  if mode not in MODES:
    raise config_lib.ConfigError(f"mode={mode!r} is not known; use one of: {', '.join(MODES)}")
  if not model_dir:
    raise config_lib.ConfigError("model_dir is empty; give the directory to train in")
  startup = startup or runtime.StartupTimer(since_process_start=False)
  config = config_lib.validate(ml_collections.ConfigDict(config.to_dict()))
  if config.train.model_parallel > 1:  # the sharded model is not wired into the loop yet
    raise config_lib.ConfigError(
        f"config.train.model_parallel={config.train.model_parallel}: tfllm-train does not "
        "train tensor-parallel models yet (tfllm-summary and tfllm.models.tensor_parallel "
        "build them); use config.train.model_parallel=1")
  # Thread pools are fixed when the runtime initializes, which the strategy does.
  threads = runtime.plan_threads(config.runtime)
  threads_note = runtime.configure_threads(threads)
  if mode == "train" and config.train.early_stopping.metric:
    raise config_lib.ConfigError(
        f"config.train.early_stopping.metric={config.train.early_stopping.metric!r} needs "
        "evaluations, which mode=train does not run; use mode=train_and_eval or set "
        "config.train.early_stopping.metric=''")
  strategy = distribute.get_strategy(strategy_name, tpu=tpu, num_gpus=num_gpus)
  startup.mark("strategy")
  from tfllm.data import augmented_source, pipelines, tokenizers  # pylint: disable=g-import-not-at-top
  pipelines.check_bucket_lengths(config)
  pipelines.check_context_tokens(config)
  augmented_source.check_task(config)
  from tfllm.finetune import adversarial  # pylint: disable=g-import-not-at-top
  gradients = adversarial.gradients_fn(config, config.model.hidden_dim)
  if config.data.bucket_lengths and isinstance(strategy, tf.distribute.TPUStrategy):
    raise config_lib.ConfigError(
        f"config.data.bucket_lengths={tuple(config.data.bucket_lengths)} gives "
        "batches of varying length, which TPUStrategy cannot compile; set it to () on TPUs")
  policy = precision.set_policy(mixed_precision, strategy=strategy)
  chief = distribute.is_chief(strategy)
  worker_dir = None if chief else distribute.worker_temp_dir(model_dir, strategy)
  log = log if chief else (lambda line: None)

  compare_with_model_dir(config, model_dir)   # refuse a different model before any work
  if mode == "eval" and checkpointing.latest_checkpoint(model_dir) is None:
    raise config_lib.ConfigError(f"mode=eval needs a checkpoint; "
                                 f"{checkpointing.checkpoint_dir(model_dir)} has none")

  from tfllm import models  # pylint: disable=g-import-not-at-top
  from tfllm.finetune.multitask_data import multitask_dataset  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizers.get_tokenizer(config, model_dir if chief else worker_dir)
  config.model.vocab_size = int(tokenizer.vocabulary_size())
  startup.mark("tokenizer")
  changed = compare_with_model_dir(config, model_dir, ignore=())
  if chief:
    write_atomically(config_path(model_dir), config_lib.to_json(config))
    if config.data.get("train_examples", 0):   # the low-resource subset's positions
      from tfllm.data import train_subset  # pylint: disable=g-import-not-at-top
      write_atomically(os.path.join(model_dir, train_subset.INDICES_FILE),
                       train_subset.describe(config.data))

  from tfllm import finetune  # pylint: disable=g-import-not-at-top
  finetune.register_eval_metrics()
  keras.utils.set_random_seed(config.train.seed)
  with strategy.scope():
    model = models.build(config)
    prepared = finetune.prepare_model(model, config)  # pretrained init, frozen layers, LoRA
    if config.finetune.init_checkpoint or config.finetune.strategy != "full":
      log(f"fine-tuning ({config.finetune.strategy}) from "
          f"{config.finetune.init_checkpoint or 'scratch'}: "
          f"{prepared['trainable_parameters']:,} trainable parameters")
    trained_model, objective = model, None
    pruning = finetune.build_pruning(model, config)  # None unless finetune.pruning is on
    if pruning:
      log(pruning.describe())
    if config.finetune.distill.teacher_model_dir:
      # The loss needs the teacher's logits; checkpoints and evaluation keep to the student.
      model, objective = finetune.teacher_student(trained_model, config)
      log(f"distilling from the teacher in {config.finetune.distill.teacher_model_dir} "
          f"(temperature {config.finetune.distill.temperature}, "
          f"alpha {config.finetune.distill.alpha})")
    if gradients is not None:
      log(f"adversarial training: {adversarial.describe(config.finetune.adversarial)}")
    # With a time budget the schedule decays over the budget as well as over the steps.
    budget_progress = (optimizer_lib.time_budget_progress()
                       if config.train.time_budget_minutes else None)
    optimizer = optimizer_lib.build_optimizer(config.train, model.trainable_variables,
                                              budget_progress=budget_progress)
    optimizer = precision.wrap_optimizer(optimizer, policy)
    optimizer.build(model.trainable_variables)
  startup.mark("model")

  data_options = runtime.dataset_options(threads)

  def data(context, which: str, training: bool):
    if config.task.name == "multi_task":
      dataset = multitask_dataset(config, which, tokenizer, context, training)
    else:
      split = config.data.train_split if training else config.data.eval_split
      dataset = pipelines.make_dataset(config, split, tokenizer, input_context=context,
                                       training=training)
    return dataset.with_options(data_options)

  train_data = lambda context: data(context, "train", True)
  eval_data = lambda context: data(context, "eval", False)

  peak = _peak(config, strategy, policy)
  trainer = Trainer(
      config, strategy, model, optimizer, model_dir, train_data, eval_data,
      metrics=metrics_lib.eval_metrics(config, tokenizer), is_chief=chief,
      worker_dir=worker_dir, jit_compile=jit_compile_setting(config.train),
      flops_per_token=_flops_per_token(config, trained_model),
      peak_flops_per_device=peak.flops_per_second, budget_progress=budget_progress,
      objective=objective, trained_model=trained_model, gradients=gradients,
      step_hooks=[pruning] if pruning else [], log=log, startup=startup)
  # Evaluation alone reads the model training produced: early stopping's best checkpoint
  # when it kept one; resuming reads the newest.
  to_evaluate, which = checkpointing.checkpoint_to_use(model_dir)
  restored = trainer.restore(to_evaluate if mode == "eval" else None)
  if mode == "eval":
    log(f"evaluating {which}: {restored}")
  elif restored:
    log(f"resumed from {restored} (step {int(trainer.step.numpy())})")
    if changed:
      more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
      log(f"resuming with changed settings: {'; '.join(changed[:3])}{more}")
  log(f"model: {trained_model.count_params():,} parameters; strategy: {type(strategy).__name__} "
      f"({strategy.num_replicas_in_sync} replicas); precision: {policy}; "
      f"XLA: {'on' if trainer.jit_compile else 'off'}")
  log(threads_note or threads.describe())
  log(f"MFU peak: {peak.flops_per_second / 1e12:g} TFLOP/s per device ({peak.source})"
      if peak.flops_per_second else
      f"MFU: not reported ({peak.source}; set config.train.peak_flops_per_device)")

  summary: Dict[str, Any] = dict(step=int(trainer.step.numpy()), eval_metrics={},
                                 stop_reason="", tokens_per_second=0.0, train_seconds=0.0)
  if mode == "eval":
    summary["eval_metrics"] = trainer.evaluate()
  else:
    if mode == "train":
      trainer.train_config.eval_steps = 0
    result = trainer.train()
    summary.update(step=result.step, eval_metrics=result.eval_metrics,
                   stop_reason=result.stop_reason, tokens_per_second=result.tokens_per_second,
                   train_seconds=result.train_seconds)
    log(f"trained to step {result.step} ({result.stop_reason}) in {result.train_seconds:.1f} s "
        f"of steps, {result.tokens_per_second:,.0f} tokens/s")
    log(runtime.describe_thread_cpu(runtime.thread_cpu_seconds()))
  summary["checkpoint"] = trainer.checkpointer.latest
  best = checkpointing.best_checkpoint(model_dir) if mode != "eval" else None
  if best is not None:
    summary["best_checkpoint"] = best["path"]
    log(f"early stopping kept {checkpointing.describe_best(best)}: {best['path']} (export and "
        "--mode=eval use it)")
  if pruning and summary["eval_metrics"]:   # the zeros the evaluated kernels hold
    summary["eval_metrics"]["sparsity"] = finetune.weight_sparsity(trained_model,
                                                                   config.finetune.pruning)
  if summary["eval_metrics"]:
    metrics_text = "  ".join(f"{k} {v:.4f}" for k, v in sorted(summary["eval_metrics"].items()))
    log(f"{_eval_label(config)} at step {summary['step']}: {metrics_text}")
    for head, table in finetune.entity_reports_from_results(summary["eval_metrics"]).items():
      log(f"entity report{f' ({head})' if head else ''}:\n{table}")
    if chief:
      write_atomically(os.path.join(model_dir, EVAL_FILE), json.dumps(
          dict(step=summary["step"], split=_eval_split(config), **summary["eval_metrics"]),
          indent=2, sort_keys=True))
  if config.finetune.quantize and summary["eval_metrics"]:
    summary["eval_metrics_int8"] = _evaluate_quantized(trainer, config, model_dir, chief, log)
  if config.task.name == "causal_lm" and config.train.sample_new_tokens and chief:
    summary["sample"] = _sample(config, trained_model, tokenizer, eval_data)
    log(f"sample: {summary['sample']}")
  return summary


def _evaluate_quantized(trainer, config, model_dir, chief, log) -> Dict[str, float]:
  """Post-training int8 (`config.finetune.quantize`): the saved model, LoRA merged, quantized
  and evaluated on the same batches; metrics in `eval_metrics_int8.json`, weights in
  `model.int8.weights.h5` (Keras 3.15 cannot reload quantized attention from `.keras`)."""
  from tfllm import finetune  # pylint: disable=g-import-not-at-top
  with trainer.strategy.scope():
    quantized, _ = finetune.load_trained_model(model_dir)
    finetune.quantize_int8(quantized)
  metrics = trainer.evaluate(model=quantized, summary_prefix="int8/")
  step = int(trainer.step.numpy())
  log(f"int8 {_eval_label(config)} at step {step}: "
      + "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
  if chief:
    write_atomically(os.path.join(model_dir, INT8_EVAL_FILE),
                     json.dumps(dict(step=step, split=_eval_split(config), **metrics), indent=2,
                                sort_keys=True))
    finetune.save_quantized_weights(quantized, os.path.join(model_dir, INT8_WEIGHTS_FILE))
  return metrics


def _eval_split(config):
  """The split an evaluation read (per head for a multi-task model), for the eval JSON files:
  `--mode=eval --config.data.eval_split=test` replaces the validation figures."""
  if config.task.name == "multi_task":
    from tfllm.finetune.multitask_data import head_config  # pylint: disable=g-import-not-at-top
    return {name: head_config(config, name).data.eval_split for name in config.task.heads}
  return config.data.eval_split


def _eval_label(config) -> str:
  """What the results lines call the evaluation: "validation", or the split(s) it read."""
  split = _eval_split(config)
  names = sorted(set(split.values()) if isinstance(split, dict) else {split})
  return "validation" if names == ["validation"] else f"evaluation on {', '.join(names)}"


def _sample(config, model, tokenizer, eval_data) -> str:
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
