"""The named actions the training controller runs between host calls (`controller.py`).

An action is one behaviour between steps, testable alone with a fake trainer and a
`LoopState`. Each may say which step a host call must end at for it (`boundary`), and has
hooks: `begin` (before the first call), `after_call` (after each call, in the list's order),
`after_evaluation` (after any evaluation, the final one included) and `end` (after the loop,
before the final evaluation); while the loop runs it is also a context manager
(`tfllm.training.controller.Action`).

`default_actions(trainer)` is the list the trainer runs, in this order: startup times, NaN
guard, progress (line, TensorBoard scalars, throughput windows), time budget, evaluate every,
early stopping, checkpoint every, stop on SIGTERM. The order matters: progress reports the
call before the budget may end the run; an evaluation is counted by early stopping before
the checkpoint that saves its count; a stop request is honoured after that checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Dict, List, Optional

import numpy as np

from tfllm.config import ConfigError
from tfllm.model_dir import checkpoint_dir
from tfllm.training.controller import Action, next_boundary
from tfllm.training.errors import DivergedError, StopRequested
from tfllm.training.progress import Progress


class StartupTimes(Action):
  """Marks the dataset and the first (compiling) host call on the trainer's `startup` timer,
  and logs its line after that call."""

  def __init__(self, trainer):
    self.trainer = trainer

  def begin(self, state):
    if self.trainer.startup is not None:
      self.trainer.startup.mark("dataset")

  def after_call(self, state):
    call = state.call
    if self.trainer.startup is not None and call.first_step == state.start_step:
      self.trainer.startup.mark(f"first call (compile + {call.step - call.first_step} steps)")
      self.trainer.log(self.trainer.startup.line())


class NaNGuard(Action):
  """Raises `DivergedError` at the first non-finite training loss, before anything is saved."""

  def __init__(self, trainer):
    self.trainer = trainer

  def after_call(self, state):
    losses = state.call.losses
    if np.all(np.isfinite(losses)):
      return
    index = int(np.argmin(np.isfinite(losses)))
    raise DivergedError(
        f"the training loss became {losses[index]} at step {state.call.first_step + index + 1};"
        f" stopped without saving; last good checkpoint: "
        f"{self.trainer.checkpointer.latest or 'none'} "
        "(lower config.train.optimizer.learning_rate or check the data)")


class TimeBudget(Action):
  """`train.time_budget_minutes`: wall-clock seconds spent (compilation included, resumed runs
  continuing the same budget through the trainer's `budget_seconds`), the learning-rate
  schedule's budget progress, and the stop when the budget is spent."""

  def __init__(self, trainer):
    self.trainer = trainer
    self.seconds = trainer.train_config.time_budget_minutes * 60.0
    self.spent_before = 0.0
    self.started = 0.0

  def spent(self) -> float:
    """Seconds of training, compilation included, over this run and the resumed ones."""
    return self.spent_before + self.trainer.clock() - self.started

  def fraction(self) -> float:
    # One collective a call: the mean fraction over workers (their clocks differ by their
    # start-up skew), so that every worker sets the same learning rate and stops together.
    if not self.seconds:
      return 0.0
    fraction = self.trainer.mean_over_workers(self.spent() / self.seconds)
    if self.trainer.budget_progress is not None:
      self.trainer.budget_progress.assign(min(1.0, fraction))
    return fraction

  def begin(self, state):
    self.spent_before = float(self.trainer.budget_seconds.numpy())
    self.started = self.trainer.clock()
    if self.fraction() >= 1.0:
      state.stop("time_budget")
      self.trainer.log(
          f"the {self.seconds / 60:g}-minute time budget of {self.trainer.model_dir} was "
          "already spent: evaluating only (train again with a new --model_dir, or a "
          "larger config.train.time_budget_minutes)")

  def after_call(self, state):
    self.trainer.budget_seconds.assign(self.spent())
    if self.fraction() >= 1.0:
      state.stop("time_budget")


class EvaluateEvery(Action):
  """`train.eval_every_steps`: evaluates (and logs it) on its boundaries before the last step
  (the controller evaluates at the end), unless the run is stopping."""

  def __init__(self, trainer):
    self.trainer = trainer
    tc = trainer.train_config
    self.every = tc.eval_every_steps if tc.eval_steps else 0

  def boundary(self, step, total):
    return next_boundary(step, self.every, total)

  def after_call(self, state):
    if not self.every or state.step % self.every or state.step >= state.total \
        or state.stopping:
      return
    metrics = self.trainer.evaluate()
    self.trainer.log(format_metrics(state.step, metrics))
    state.record_evaluation(metrics)


class EarlyStopping(Action):
  """`train.early_stopping`: counts each evaluation in; a new best is kept as the best
  checkpoint; `patience` evaluations in a row without one stop the run. The count lives in
  the trainer's `best_metric` and `evaluations_without_improvement` (saved with checkpoints,
  so a resumed run keeps it)."""

  def __init__(self, trainer):
    self.trainer = trainer
    self.spec = trainer.train_config.early_stopping

  def after_evaluation(self, state):
    if self.improvement_stalled(state.eval_metrics, state.step):
      state.stop("early_stopping")

  def improvement_stalled(self, metrics: Dict[str, float], step: int) -> bool:
    """Counts `metrics` of `step` in; True when `patience` evaluations brought no improvement."""
    spec, trainer = self.spec, self.trainer
    if spec.metric not in metrics:
      raise ConfigError(f"config.train.early_stopping.metric={spec.metric!r} is not an eval "
                        f"metric; evaluation reports: {', '.join(sorted(metrics))}")
    value = metrics[spec.metric]
    best = float(trainer.best_metric.numpy())
    sign = 1.0 if spec.mode == "min" else -1.0
    if np.isnan(best) or sign * (best - value) > spec.min_delta:
      trainer.best_metric.assign(value)
      trainer.evaluations_without_improvement.assign(0)
      path = trainer.checkpointer.save_best(step, spec.metric, spec.mode, value)
      trainer.log(f"best {spec.metric} so far: {value:.4f} at step {step}; kept in {path}")
      return False
    trainer.evaluations_without_improvement.assign_add(1)
    return int(trainer.evaluations_without_improvement.numpy()) >= spec.patience


class CheckpointEvery(Action):
  """`train.checkpoint_every_steps`: saves on its boundaries, at the last step and when the run
  stops; at the end, the step reached if no call saved it (a run of no steps)."""

  def __init__(self, trainer):
    self.trainer = trainer
    self.every = trainer.train_config.checkpoint_every_steps

  def boundary(self, step, total):
    return next_boundary(step, self.every, total)

  def after_call(self, state):
    step = state.step
    if state.stopping or step == state.total or (self.every and step % self.every == 0):
      self.trainer.save()
      state.last_saved = step

  def end(self, state):
    if state.step > state.last_saved:
      self.trainer.save()
      state.last_saved = state.step


class StopOnSignal(Action):
  """SIGTERM (a preemption notice) on any worker: every worker saves the step reached and
  raises `StopRequested` after the same host call. The handler is installed while the loop
  runs (main thread only: Python delivers signals there)."""

  def __init__(self, trainer):
    self.trainer = trainer
    self.received: Optional[str] = None
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
    return False

  def after_call(self, state):
    if state.stopping or not self.trainer.any_worker(self.received is not None):
      return
    step = state.step
    if state.last_saved != step:
      self.trainer.save()
    saved = os.path.join(checkpoint_dir(self.trainer.model_dir), f"ckpt-{step}")
    raise StopRequested(f"stopped by {self.received or 'a peer worker'} at step {step}; saved "
                        f"{saved}; rerun with the same model_dir to resume")


def format_metrics(step: int, metrics: Dict[str, float]) -> str:
  """The log line of an evaluation during training."""
  parts = "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
  return f"eval at step {step}: {parts}"


def default_actions(trainer) -> List[Action]:
  """The actions `Trainer.train` runs, in their order (see the module docstring)."""
  budget = TimeBudget(trainer)
  actions = [StartupTimes(trainer), NaNGuard(trainer),
             Progress(trainer, budget if budget.seconds else None), budget,
             EvaluateEvery(trainer)]
  if trainer.train_config.early_stopping.metric:
    actions.append(EarlyStopping(trainer))
  return actions + [CheckpointEvery(trainer), StopOnSignal(trainer)]
