"""The distributed loop in one process: strategies agree, resume is exact, failures are safe."""

from __future__ import annotations

import errno
import os
import re
import signal
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.training.helpers import finite_dataset_fn, make_trainer, trainer_config, two_cpu_mirrored
from tfllm import config as config_lib
from tfllm.config import ConfigError
from tfllm.artifacts import checkpoints
from tfllm.model_dir import checkpoint_dir
from tfllm.training import checkpointing, optimizer as optimizer_lib
from tfllm.training import devices as devices_lib
from tfllm.training.errors import DivergedError, StopRequested


def _weights(trainer):
  return [v.numpy() for v in trainer.model.weights]


def _max_weight_diff(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def test_one_device_and_mirrored_give_the_same_loss_trajectory(tmp_path):
  # Same global batch (8), same seed: 1 replica of 8 vs 2 replicas of 4 on 2 logical CPUs.
  # Without XLA both run the same kernels; the only difference is summing two per-replica
  # partial gradients instead of one, i.e. float32 rounding (~1e-7 relative per step, growing
  # slowly through Adam): 1e-4 absolute on a loss of ~4 over 20 steps leaves a wide margin
  # while any data-order, normalization or double-reduction bug moves the loss by > 1e-2.
  config = trainer_config(steps=20)
  one = make_trainer(config, tmp_path / "one").train()
  mirrored = make_trainer(config, tmp_path / "mirrored", strategy=two_cpu_mirrored()).train()
  assert len(one.losses) == len(mirrored.losses) == 20
  np.testing.assert_allclose(one.losses, mirrored.losses, atol=1e-4, rtol=0)
  assert one.losses[-1] < one.losses[0] - 0.1  # it learns
  np.testing.assert_allclose(one.eval_metrics["loss"], mirrored.eval_metrics["loss"], atol=1e-4)


def test_mirrored_evaluation_counts_every_batch_of_an_uneven_split(tmp_path):
  # 20 examples in per-replica batches of 4: 5 batches over 2 replicas leave the last step
  # with one replica's batch only, which tf.distribute would drop (4 examples unevaluated).
  results = []
  for name, strategy, batch in (("one", None, 4), ("mirrored", two_cpu_mirrored(), 8)):
    config = trainer_config("token_classification", global_batch_size=batch)
    trainer = make_trainer(config, tmp_path / name, strategy=strategy,
                           eval_fn=finite_dataset_fn(config, [20]))
    results.append(trainer.evaluate(num_steps=1000))
  np.testing.assert_allclose(results[0]["loss"], results[1]["loss"], atol=1e-5, rtol=0)
  assert results[0]["accuracy"] == pytest.approx(results[1]["accuracy"])


def test_jit_compiled_steps_match_the_graph_steps_on_one_device(tmp_path):
  config = trainer_config(steps=10)
  graph = make_trainer(config, tmp_path / "graph", jit_compile=False).train()
  xla = make_trainer(config, tmp_path / "xla", jit_compile=True).train()
  # XLA fuses and reorders float32 arithmetic; the trajectories agree to rounding.
  np.testing.assert_allclose(graph.losses, xla.losses, atol=1e-3, rtol=0)


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
  big = make_trainer(trainer_config(steps=6, global_batch_size=8), tmp_path / "big").train()
  accumulated = make_trainer(trainer_config(steps=6, global_batch_size=4, grad_accum_steps=2),
                             tmp_path / "acc").train()
  # The weighted mean over two micro-batches of 4 is the mean over the batch of 8 (the
  # examples carry different numbers of weighted tokens, so a mean of means would differ).
  np.testing.assert_allclose(big.losses, accumulated.losses, atol=1e-5, rtol=0)


def test_resume_after_interruption_is_exact(tmp_path):
  config = trainer_config(steps=12, steps_per_loop=3, checkpoint_every_steps=6)
  straight = make_trainer(config, tmp_path / "straight")
  straight.train()

  # Interrupted after 7 steps (the schedule still decays over 12).
  interrupted = trainer_config(steps=7, steps_per_loop=3, checkpoint_every_steps=6)
  interrupted.train.optimizer.decay_steps = 12
  first = make_trainer(interrupted, tmp_path / "resumed")
  first.train()
  # A fresh process would rebuild everything: a different seed proves the restore matters.
  second = make_trainer(config, tmp_path / "resumed", seed=123)
  assert second.restore().endswith("ckpt-7")
  assert int(second.step.numpy()) == 7
  second.train()
  assert int(second.step.numpy()) == 12
  assert _max_weight_diff(_weights(straight), _weights(second)) == 0.0


def test_checkpoints_are_kept_and_rotated(tmp_path):
  trainer = make_trainer(trainer_config(steps=20, checkpoint_every_steps=5, keep_checkpoints=2),
                         tmp_path)
  trainer.train()
  names = sorted(os.listdir(checkpoint_dir(str(tmp_path))))
  assert [n for n in names if n.endswith(".index")] == ["ckpt-15.index", "ckpt-20.index"]


def _nan_after(config, nan_step):
  """The synthetic stream, with NaN sample weights from the `nan_step`-th step on."""
  from tests.training.helpers import synthetic_dataset_fn
  base = synthetic_dataset_fn(config)

  def dataset_fn(context):
    dataset = base(context).enumerate()
    return dataset.map(lambda i, b: (b[0], b[1], tf.where(
        i >= nan_step, tf.fill(tf.shape(b[2]), np.nan), b[2])))

  return dataset_fn


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
  config = trainer_config(steps=20, checkpoint_every_steps=5)
  trainer = make_trainer(config, tmp_path, train_fn=_nan_after(config, 7))
  with pytest.raises(DivergedError, match=r"loss became nan at step 8.*ckpt-5"):
    trainer.train()
  latest = checkpoints.latest_checkpoint(str(tmp_path))
  assert latest.endswith("ckpt-5")
  restored = make_trainer(config, tmp_path, seed=1)
  restored.restore()
  assert all(np.all(np.isfinite(w)) for w in _weights(restored))


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  config = trainer_config(steps=10, checkpoint_every_steps=5)
  trainer = make_trainer(config, tmp_path)
  # CheckpointManager.save writes through Checkpoint._write: fail there, as a full disk would.
  original = tf.train.Checkpoint._write  # pylint: disable=protected-access
  def write(self, file_prefix, options=None):
    if file_prefix.endswith("ckpt-10"):
      # Leave a partial file behind, as a full disk would, then fail.
      with open(file_prefix + ".data-00000-of-00001", "wb") as f:
        f.write(b"partial")
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return original(self, file_prefix, options=options)
  monkeypatch.setattr(tf.train.Checkpoint, "_write", write)
  with pytest.raises(checkpointing.CheckpointWriteError,
                     match=r"step 10 .*No space left on device; last good checkpoint: .*ckpt-5"):
    trainer.train()
  directory = checkpoint_dir(str(tmp_path))
  assert checkpoints.latest_checkpoint(str(tmp_path)).endswith("ckpt-5")
  assert not [n for n in os.listdir(directory) if n.startswith("ckpt-10")]


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path):
  config = trainer_config(steps=100000, steps_per_loop=2, checkpoint_every_steps=0)
  trainer = make_trainer(config, tmp_path)
  timer = threading.Timer(3.0, os.kill, args=(os.getpid(), signal.SIGTERM))
  timer.start()
  try:
    with pytest.raises(StopRequested, match=r"SIGTERM at step (\d+); saved .*ckpt-\1"):
      trainer.train()
  finally:
    timer.cancel()
  step = int(trainer.step.numpy())
  assert 0 < step < 100000
  assert checkpoints.latest_checkpoint(str(tmp_path)).endswith(f"ckpt-{step}")


def test_global_batch_not_divisible_by_replicas_is_refused(tmp_path):
  with pytest.raises(ValueError, match=r"global_batch_size=7 is not divisible by the 2 replicas"):
    make_trainer(trainer_config(global_batch_size=7), tmp_path, strategy=two_cpu_mirrored())


def test_time_budget_stops_early_with_a_checkpoint_and_an_evaluation(tmp_path):
  config = trainer_config(steps=100000, steps_per_loop=2, time_budget_minutes=0.02)
  result = make_trainer(config, tmp_path).train()
  assert result.stop_reason == "time_budget"
  assert result.step < 100000
  assert checkpoints.latest_checkpoint(str(tmp_path)).endswith(f"ckpt-{result.step}")
  assert "loss" in result.eval_metrics


def _budget_config(steps):
  config = trainer_config(steps=steps, steps_per_loop=2, time_budget_minutes=1.0, eval_steps=0,
                       checkpoint_every_steps=0)
  config.train.optimizer.update(learning_rate=1e-2, warmup_steps=0, decay="cosine",
                                min_learning_rate_ratio=0.1)
  return config


def _cosine(progress, peak=1e-2, floor=0.1):
  return peak * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * progress)))


def _with_fake_clock(config, model_dir, seconds_per_call):
  """A trainer whose clock advances `seconds_per_call` in each host call of training steps;
  returns it and the learning rates the calls started with."""
  now, rates = [0.0], []
  trainer = make_trainer(config, model_dir, clock=lambda: now[0])
  real_loop = trainer._build_train_loop()  # pylint: disable=protected-access

  def timed_loop(iterator, num_steps):
    rates.append(float(trainer.optimizer.learning_rate))
    now[0] += seconds_per_call
    return real_loop(iterator, num_steps)

  trainer._train_loop_fn = timed_loop  # pylint: disable=protected-access
  return trainer, rates


def test_learning_rate_decay_is_laid_over_the_time_budget(tmp_path):
  # 4 host calls of 15 s fill the 1-minute budget; the 1,000,000 steps are only a cap.
  trainer, rates = _with_fake_clock(_budget_config(1_000_000), tmp_path, 15.0)
  result = trainer.train()
  assert result.stop_reason == "time_budget" and result.step == 8
  np.testing.assert_allclose(rates, [_cosine(p) for p in (0, 0.25, 0.5, 0.75)], rtol=1e-5)
  trainer.budget_progress.assign(1.0)
  np.testing.assert_allclose(float(trainer.optimizer.learning_rate), 1e-3, rtol=1e-5)
  assert float(trainer.budget_seconds.numpy()) == 60.0


def test_a_resumed_run_continues_the_same_budget(tmp_path):
  first, _ = _with_fake_clock(_budget_config(4), tmp_path, 15.0)
  assert first.train().stop_reason == "steps"  # 2 calls: half the budget spent
  resumed, rates = _with_fake_clock(_budget_config(1_000_000), tmp_path, 15.0)
  resumed.restore()
  result = resumed.train()
  assert result.stop_reason == "time_budget" and result.step == 8
  np.testing.assert_allclose(rates, [_cosine(0.5), _cosine(0.75)], rtol=1e-5)


def test_a_run_resumed_after_its_budget_ended_only_evaluates_and_says_so(tmp_path):
  first, _ = _with_fake_clock(_budget_config(1_000_000), tmp_path, 15.0)
  assert first.train().stop_reason == "time_budget"
  lines = []
  resumed = make_trainer(_budget_config(1_000_000), tmp_path, log=lines.append)
  resumed.restore()
  resumed._train_loop_fn = lambda *args: pytest.fail("trained after the budget")  # pylint: disable=protected-access
  result = resumed.train()
  assert (result.stop_reason, result.step, result.train_seconds) == ("time_budget", 8, 0.0)
  assert any("1-minute time budget" in line and "already spent" in line and "--model_dir" in line
             for line in lines), lines


def test_early_stopping_on_an_eval_metric(tmp_path):
  # A zero learning rate never improves the eval loss: stop after `patience` evaluations.
  config = trainer_config(steps=1000, steps_per_loop=2, eval_every_steps=2)
  config.train.optimizer.learning_rate = 0.0
  config.train.early_stopping.update(metric="loss", patience=2)
  result = make_trainer(config, tmp_path).train()
  assert result.stop_reason == "early_stopping"
  assert result.step == 6  # evals at 2 (best), 4 and 6 (no improvement twice)


def test_early_stopping_on_a_missing_metric_names_the_reported_ones(tmp_path):
  config = trainer_config(steps=10, steps_per_loop=2, eval_every_steps=2)
  config.train.early_stopping.update(metric="f1", patience=1)
  with pytest.raises(ConfigError, match=r"'f1' is not an eval metric.*accuracy, loss"):
    make_trainer(config, tmp_path).train()


@pytest.mark.parametrize("task", ["causal_lm", "masked_lm", "sequence_classification",
                                  "token_classification", "multi_task"])
def test_every_task_trains_and_evaluates_with_xla_on_one_cpu(tmp_path, task):
  # jit_compile=True with static shapes (the TPU's rule): a step that does not compile fails.
  config = trainer_config(task, steps=2, steps_per_loop=2, eval_steps=1, jit_compile="on")
  trainer = make_trainer(config, tmp_path)
  assert trainer.jit_compile
  result = trainer.train()
  assert np.all(np.isfinite(result.losses))
  if task in ("causal_lm", "masked_lm"):
    assert result.eval_metrics["perplexity"] == pytest.approx(
        np.exp(result.eval_metrics["loss"]), rel=1e-6)
  if task == "multi_task":
    assert set(result.eval_metrics) >= {"loss", "sentiment/loss", "tags/accuracy"}


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_steps_keep_float32_variables_and_finite_loss(tmp_path, policy):
  keras.mixed_precision.set_global_policy(policy)
  # Without XLA: on this CPU, XLA's bf16/fp16 compile takes tens of seconds (no bf16 units);
  # the XLA path is covered in float32 above.
  trainer = make_trainer(trainer_config(steps=2, steps_per_loop=2, eval_steps=1), tmp_path)
  result = trainer.train()
  assert np.all(np.isfinite(result.losses))
  assert {v.dtype for v in trainer.model.trainable_variables} == {"float32"}
  if policy == "mixed_float16":
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)


# ---------------------------------------------------------------- early stopping keeps the best


def _scripted_evaluations(trainer, losses, weights_at):
  """Makes `trainer.evaluate` report `losses` in turn (then the last one again), recording the
  model's weights at each evaluation's step in `weights_at`."""
  values = iter(losses)
  last = [losses[-1]]

  def evaluate(*args, **kwargs):
    del args, kwargs
    weights_at[int(trainer.step.numpy())] = [w.numpy() for w in trainer.model.weights]
    last[0] = next(values, last[0])
    return {"loss": last[0], "accuracy": 0.0}

  trainer.evaluate = evaluate


def _early_stopping_config(**train):
  config = trainer_config(steps=1000, steps_per_loop=2, eval_every_steps=2,
                       checkpoint_every_steps=2, keep_checkpoints=1, **train)
  config.train.early_stopping.update(metric="loss", patience=2)
  return config


def test_early_stopping_keeps_the_best_checkpoint_past_the_rotation_and_resumes_the_newest(
    tmp_path):
  trainer = make_trainer(_early_stopping_config(), tmp_path)
  weights_at = {}
  _scripted_evaluations(trainer, [3.0, 1.0, 2.0, 2.5], weights_at)
  result = trainer.train()
  assert (result.stop_reason, result.step) == ("early_stopping", 8)
  # keep_checkpoints=1 deleted ckpt-4 from the rotation; the best one is kept apart.
  assert checkpoints.latest_checkpoint(str(tmp_path)).endswith("ckpt-8")
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "ckpt-4.index"))
  record = checkpoints.best_checkpoint(str(tmp_path))
  assert {k: record[k] for k in ("step", "metric", "mode", "value", "checkpoint")} == dict(
      step=4, metric="loss", mode="min", value=1.0, checkpoint="best_checkpoint/ckpt-4")
  assert sorted(os.listdir(tmp_path / "best_checkpoint")) == [
      "ckpt-4.data-00000-of-00001", "ckpt-4.index"]   # the step-2 best was replaced
  path, which = checkpoints.checkpoint_to_use(str(tmp_path))
  assert path == str(tmp_path / "best_checkpoint" / "ckpt-4")
  assert which == "the best checkpoint by loss (step 4, loss 1.0000)"

  # Export and generation load the best weights.
  fresh = make_trainer(_early_stopping_config(), tmp_path / "other", seed=7).model
  checkpoints.restore_model(fresh, str(tmp_path))
  for expected, actual in zip(weights_at[4], fresh.weights):
    np.testing.assert_array_equal(expected, actual.numpy())

  # Resuming reads the newest checkpoint, with the best value and the patience count so far.
  resumed = make_trainer(_early_stopping_config(), tmp_path)
  assert resumed.restore().endswith("ckpt-8")
  assert int(resumed.step.numpy()) == 8
  assert float(resumed.best_metric.numpy()) == 1.0
  assert int(resumed.evaluations_without_improvement.numpy()) == 2


def test_a_run_resumed_with_early_stopping_turned_on_restores(tmp_path):
  make_trainer(trainer_config(steps=2, steps_per_loop=2), tmp_path).train()
  resumed = make_trainer(_early_stopping_config(), tmp_path)
  assert resumed.restore().endswith("ckpt-2")
  assert np.isnan(float(resumed.best_metric.numpy()))


@pytest.mark.parametrize("train", [dict(eval_every_steps=0), dict(eval_steps=0)])
def test_early_stopping_without_evaluations_during_training_is_refused(train):
  config = trainer_config(steps=10, **train)
  config.train.early_stopping.update(metric="loss", patience=1)
  with pytest.raises(ConfigError, match=r"early_stopping.metric='loss' needs evaluations") as e:
    config_lib.validate(config)
  assert "\n" not in str(e.value)


def test_early_stopping_with_mode_train_is_refused(tmp_path):
  from tfllm.training import job  # pylint: disable=g-import-not-at-top
  config = trainer_config(steps=10, eval_every_steps=2)
  config.train.early_stopping.update(metric="loss", patience=1)
  with pytest.raises(ConfigError, match=r"needs evaluations, which mode=train does not run"):
    job.run(config, str(tmp_path), mode="train", strategy_name="one_device")
  assert not os.listdir(tmp_path)


# ---------------------------------------------------------------- progress line and summaries


def _scripted_loop(trainer, seconds_per_call, now, norms_per_call=None):
  """Replaces the trainer's host call: the clock advances `seconds_per_call` per call, and
  (if given) the gradient norms it reports are `norms_per_call[i]` for every step of call i."""
  real_loop = trainer._build_train_loop()  # pylint: disable=protected-access
  calls = [0]

  def timed_loop(iterator, num_steps):
    now[0] += seconds_per_call
    losses, norms, tokens = real_loop(iterator, num_steps)
    if norms_per_call is not None:
      norms = tf.fill(tf.shape(norms), norms_per_call[calls[0]])
    calls[0] += 1
    return losses, norms, tokens

  trainer._train_loop_fn = timed_loop  # pylint: disable=protected-access


def test_progress_line_of_a_step_bounded_run(tmp_path):
  now, lines = [0.0], []
  trainer = make_trainer(trainer_config(steps=6, steps_per_loop=2, eval_steps=0), tmp_path,
                         clock=lambda: now[0], log=lines.append)
  _scripted_loop(trainer, 4.0, now)
  trainer.train()
  progress = [line for line in lines if line.startswith("step ")]
  assert len(progress) == 3
  assert re.fullmatch(r"step 2/6  loss \d+\.\d{4}  lr \S+", progress[0]), progress[0]
  # 2 steps x 8 examples x 16 positions in 4 s: 64 tokens/s; 2 steps left at 0.5 steps/s.
  assert re.fullmatch(r"step 4/6  loss \d+\.\d{4}  lr \S+  tokens/s 64  ETA 0m04s",
                      progress[1]), progress[1]
  assert progress[2].endswith("tokens/s 64  ETA 0m00s"), progress[2]


def test_progress_line_of_a_time_budgeted_run_shows_the_budget(tmp_path):
  now, lines = [0.0], []
  config = _budget_config(1_000_000)
  trainer = make_trainer(config, tmp_path, clock=lambda: now[0], log=lines.append)
  _scripted_loop(trainer, 15.0, now)
  trainer.train()
  progress = [line for line in lines if "loss" in line and "lr" in line]
  assert len(progress) == 4, lines
  assert "/1000000" not in "".join(progress)
  assert re.fullmatch(r"time 0m15s/1m00s  step 2  loss \d+\.\d{4}  lr \S+", progress[0]), \
      progress[0]
  # 2 steps x 8 x 16 positions in a call of 15 s; the budget ends 30 s after the second call.
  assert re.fullmatch(r"time 0m30s/1m00s  step 4  loss \d+\.\d{4}  lr \S+  tokens/s 17  "
                      r"ETA 0m30s", progress[1]), progress[1]
  assert progress[3].startswith("time 1m00s/1m00s  step 8") and progress[3].endswith(
      "ETA 0m00s"), progress[3]


def _scalars(directory):
  """{tag: [(step, value), ...]} of the TensorBoard event files in `directory`."""
  found = {}
  for path in sorted(tf.io.gfile.glob(os.path.join(directory, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        found.setdefault(value.tag, []).append(
            (event.step, float(tf.make_ndarray(value.tensor))))
  return found


def test_tensorboard_scalars_of_training_and_evaluation(tmp_path):
  config = trainer_config(steps=40, steps_per_loop=5, log_every_steps=10, eval_every_steps=20,
                       peak_flops_per_device=1e9)
  now, lines = [0.0], []
  flops_per_token = 1e6
  trainer = make_trainer(config, tmp_path, clock=lambda: now[0], log=lines.append,
                         flops_per_token=flops_per_token,
                         peak_flops_per_device=config.train.peak_flops_per_device)
  # Host calls of 5 steps, 2 s each; the norms of call i are i (a window's mean is checkable).
  _scripted_loop(trainer, 2.0, now, norms_per_call=[float(i) for i in range(8)])
  trainer.train()
  train, evaluation = _scalars(tmp_path / "train"), _scalars(tmp_path / "eval")
  assert {"loss", "learning_rate", "grad_norm", "tokens_per_second", "mfu"} <= set(train)
  assert [step for step, _ in train["loss"]] == [10, 20, 30, 40]
  losses = [value for _, value in train["loss"]]
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]   # a learnable toy
  schedule = optimizer_lib.learning_rate_schedule(config.train)
  for step, value in train["learning_rate"]:
    assert value == pytest.approx(float(schedule(step)), rel=1e-5), step
  # The mean over each 10-step window (2 calls), not over its last call only.
  assert [value for _, value in train["grad_norm"]] == [0.5, 2.5, 4.5, 6.5]
  # The first call compiles and is left out: the window of step 10 times 5 steps.
  tokens_per_second = 5 * 8 * 16 / 2.0
  assert dict(train["tokens_per_second"])[20] == pytest.approx(tokens_per_second)
  mfu = tokens_per_second * flops_per_token / (1e9 * 1)
  assert dict(train["mfu"])[20] == pytest.approx(mfu)
  assert any(line.startswith("step 20/40") and f"MFU {100 * mfu:.1f}%" in line
             for line in lines), lines
  assert {"loss", "accuracy", "perplexity"} <= set(evaluation)
  assert [step for step, _ in evaluation["loss"]] == [20, 40]
  eval_losses = [value for _, value in evaluation["loss"]]
  assert all(np.isfinite(eval_losses)) and eval_losses[1] < eval_losses[0]
  assert dict(evaluation["perplexity"])[40] == pytest.approx(np.exp(eval_losses[1]), rel=1e-5)


# ---------------------------------------------------------------- jit_compile="auto"


class _FakeExtended:
  def __init__(self, devices):
    self._devices = devices

  @property
  def worker_devices(self):
    if self._devices is None:
      raise RuntimeError("worker_devices() method unsupported by default tf.distribute.Strategy.")
    return self._devices


class _FakeResolver:
  task_type, task_id = "worker", 0

  def cluster_spec(self):
    return tf.train.ClusterSpec({"worker": ["127.0.0.1:1"]})


def _fake_strategy(base, devices):
  """An instance of strategy class `base` (never constructed: no runtime set-up) whose worker
  runs replicas on `devices` (None: a default strategy's "unsupported")."""
  fake_class = type(f"Fake{base.__name__}", (base,), dict(
      extended=property(lambda self: _FakeExtended(devices)),
      num_replicas_in_sync=property(lambda self: max(1, len(devices or [1]))),
      cluster_resolver=property(lambda self: _FakeResolver())))
  return object.__new__(fake_class)


@pytest.mark.parametrize("devices,multi_worker,expected", [
    (["GPU"], False, True), (["GPU", "GPU"], False, True), (["TPU"], False, True),
    (["GPU"], True, True), (["CPU"], False, True), (["CPU"], True, False),
    (["CPU", "CPU"], False, False), ([], False, False)])
def test_auto_jit_compile_by_device_type(devices, multi_worker, expected):
  assert devices_lib.auto_jit_compile(devices, multi_worker=multi_worker) is expected


@pytest.mark.parametrize("base,devices,expected", [
    # A multi_worker_mirrored worker with one GPU (it got no XLA before).
    (tf.distribute.MultiWorkerMirroredStrategy, ["/job:worker/replica:0/task:0/device:GPU:0"],
     True),
    (tf.distribute.MultiWorkerMirroredStrategy, ["/job:worker/replica:0/task:0/device:CPU:0"],
     False),
    (tf.distribute.MirroredStrategy, ["/job:localhost/replica:0/task:0/device:GPU:0",
                                      "/job:localhost/replica:0/task:0/device:GPU:1"], True),
    (tf.distribute.MirroredStrategy, ["/job:localhost/replica:0/task:0/device:CPU:0"], True),
    (tf.distribute.MirroredStrategy, ["/job:localhost/replica:0/task:0/device:CPU:0",
                                      "/job:localhost/replica:0/task:1/device:CPU:1"], False),
    (tf.distribute.OneDeviceStrategy, ["/job:localhost/replica:0/task:0/device:GPU:0"], True),
    (tf.distribute.OneDeviceStrategy, ["/job:localhost/replica:0/task:0/device:CPU:0"], True),
])
def test_default_jit_compile_follows_the_devices_under_every_strategy(base, devices, expected):
  assert devices_lib.default_jit_compile(_fake_strategy(base, devices)) is expected


def test_default_jit_compile_of_the_default_strategy(monkeypatch):
  default = tf.distribute.get_strategy()
  assert devices_lib.default_jit_compile(default) is True  # this machine: one CPU
  gpu = tf.config.LogicalDevice("/job:localhost/replica:0/task:0/device:GPU:0", "GPU")
  real = tf.config.list_logical_devices
  monkeypatch.setattr(tf.config, "list_logical_devices",
                      lambda kind=None: [gpu] if kind == "GPU" else real(kind))
  assert devices_lib.default_jit_compile(default) is True


def test_auto_jit_compile_on_a_tpu_strategy():
  assert devices_lib.default_jit_compile(_fake_strategy(tf.distribute.TPUStrategy, None)) is True
