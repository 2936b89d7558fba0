"""The training controller and each of its actions alone, with a fake trainer (no model, fast).

The same behaviours run end to end with a real trainer in tests/training/test_loop.py.
"""

import os
import signal
import types

import numpy as np
import pytest
import tensorflow as tf

from tfllm import config as config_lib
from tfllm.config import ConfigError
from tfllm.training import actions as actions_lib
from tfllm.training.controller import Action, Controller, HostCall, LoopState
from tfllm.training.errors import DivergedError, StopRequested


def _train_config(**overrides):
  config = config_lib.default_config()
  config.train.update(overrides)
  return config_lib.validate(config).train


class FakeTrainer:
  """What the controller and the actions read of a `Trainer`; its steps are scripted: each
  step's loss is `losses[step]` (default 1.0) and a host call takes `seconds_per_call`."""

  def __init__(self, train_config, losses=None, seconds_per_call=1.0, metrics=None):
    self.train_config = train_config
    self.step = tf.Variable(0, dtype=tf.int64)
    self.now = 0.0
    self.clock = lambda: self.now
    self.seconds_per_call = seconds_per_call
    self.step_losses = losses or {}
    self.metrics = list(metrics or [])   # what each evaluation returns, in turn
    self.lines, self.saved, self.best_saved, self.calls, self.evaluations = [], [], [], [], 0
    self.log = self.lines.append
    self.checkpointer = types.SimpleNamespace(latest=None, save_best=self._save_best)
    self.model_dir = "/fake/model_dir"
    self.startup = None
    self.budget_progress = tf.Variable(0.0)
    self.budget_seconds = tf.Variable(0.0, dtype=tf.float64)
    self.best_metric = tf.Variable(float("nan"), dtype=tf.float64)
    self.evaluations_without_improvement = tf.Variable(0, dtype=tf.int64)
    self.peer_stop = False

  def _save_best(self, step, metric, mode, value):
    self.best_saved.append((step, value))
    return f"best/ckpt-{step}"

  def train_iterator(self, start_step):
    return iter(())

  def run_steps(self, iterator, num_steps):
    first = int(self.step.numpy())
    self.calls.append((first, first + num_steps))
    self.now += self.seconds_per_call
    self.step.assign_add(num_steps)
    losses = np.array([self.step_losses.get(s + 1, 1.0) for s in range(first, first + num_steps)])
    return losses, np.ones(num_steps), 10 * num_steps

  def evaluate(self):
    self.evaluations += 1
    return dict(self.metrics.pop(0)) if self.metrics else {"loss": 1.0}

  def save(self):
    self.saved.append(int(self.step.numpy()))

  def mean_over_workers(self, value):
    return value

  def any_worker(self, flag):
    return flag or self.peer_stop


def _state(trainer, step=0, total=10, **kwargs):
  return LoopState(trainer, start_step=0, total=total, step=step, last_saved=-1, **kwargs)


def _call(first, last, losses=None, seconds=1.0):
  losses = np.ones(last - first) if losses is None else np.array(losses)
  return HostCall(first_step=first, step=last, losses=losses, norms=np.ones(last - first),
                  tokens=10 * (last - first), seconds=seconds, timed=first > 0)


# ---------------------------------------------------------------- the controller


class _StopAt(Action):
  """A new behaviour between steps: stop after the host call that reaches `step`."""

  def __init__(self, step):
    self.step = step

  def boundary(self, step, total):
    return self.step if step < self.step else None

  def after_call(self, state):
    if state.step >= self.step:
      state.stop("custom")


def test_host_calls_end_where_an_action_needs_them():
  trainer = FakeTrainer(_train_config(steps=10, steps_per_loop=4, eval_steps=0))
  result = Controller(trainer, [_StopAt(6)]).run()
  assert trainer.calls == [(0, 4), (4, 6)]
  assert (result.step, result.stop_reason, result.losses) == (6, "custom", [1.0] * 6)
  # The first call compiles: it is left out of the throughput.
  assert (result.train_seconds, result.tokens_per_second) == (1.0, 20.0)


def test_the_controller_evaluates_at_the_end_and_the_actions_hear_it():
  heard = []

  class Listener(Action):
    def after_evaluation(self, state):
      heard.append((state.step, dict(state.eval_metrics)))

  trainer = FakeTrainer(_train_config(steps=5, steps_per_loop=5, eval_steps=3),
                        metrics=[{"loss": 0.5}])
  result = Controller(trainer, [Listener()]).run()
  assert result.eval_metrics == {"loss": 0.5} and heard == [(5, {"loss": 0.5})]


def test_the_default_actions_and_their_order():
  trainer = FakeTrainer(_train_config(eval_every_steps=10,
                                     early_stopping=dict(metric="loss", patience=1)))
  names = [type(a).__name__ for a in actions_lib.default_actions(trainer)]
  assert names == ["StartupTimes", "NaNGuard", "Progress", "TimeBudget", "EvaluateEvery",
                   "EarlyStopping", "CheckpointEvery", "StopOnSignal"]
  trainer = FakeTrainer(_train_config())
  assert "EarlyStopping" not in [type(a).__name__ for a in actions_lib.default_actions(trainer)]


# ---------------------------------------------------------------- each action alone


def test_nan_guard():
  trainer = FakeTrainer(_train_config())
  guard, state = actions_lib.NaNGuard(trainer), _state(trainer, step=8)
  state.call = _call(4, 8)
  guard.after_call(state)   # finite: nothing happens
  state.call = _call(4, 8, losses=[1.0, 1.0, np.nan, 1.0])
  with pytest.raises(DivergedError, match="became nan at step 7.*last good checkpoint: none"):
    guard.after_call(state)


def test_time_budget_stops_when_spent_and_sets_the_schedule_progress():
  trainer = FakeTrainer(_train_config(time_budget_minutes=1.0))
  budget, state = actions_lib.TimeBudget(trainer), _state(trainer)
  budget.begin(state)
  trainer.now = 30.0
  budget.after_call(state)
  assert float(trainer.budget_progress.numpy()) == 0.5 and not state.stopping
  assert float(trainer.budget_seconds.numpy()) == 30.0
  trainer.now = 60.0
  budget.after_call(state)
  assert state.stop_reason == "time_budget"


def test_time_budget_already_spent_stops_before_the_first_call():
  trainer = FakeTrainer(_train_config(time_budget_minutes=1.0))
  trainer.budget_seconds.assign(60.0)
  state = _state(trainer)
  actions_lib.TimeBudget(trainer).begin(state)
  assert state.stop_reason == "time_budget"
  assert "already spent" in trainer.lines[0]


def test_without_a_budget_the_seconds_are_still_counted():
  trainer = FakeTrainer(_train_config())
  budget, state = actions_lib.TimeBudget(trainer), _state(trainer)
  budget.begin(state)
  trainer.now = 1e6
  budget.after_call(state)
  assert not state.stopping and float(trainer.budget_seconds.numpy()) == 1e6


def test_evaluate_every():
  trainer = FakeTrainer(_train_config(eval_every_steps=4, eval_steps=2),
                        metrics=[{"loss": 2.0}])
  evaluate, state = actions_lib.EvaluateEvery(trainer), _state(trainer, total=10)
  assert [evaluate.boundary(s, 10) for s in (0, 4, 9)] == [4, 8, 10]
  for step in (3, 4):
    state.step = step
    evaluate.after_call(state)
  assert trainer.evaluations == 1 and state.eval_metrics == {"loss": 2.0}
  assert trainer.lines == ["eval at step 4: loss 2.0000"]
  for state.step, state.stop_reason in ((10, "steps"), (8, "time_budget")):
    evaluate.after_call(state)   # not at the last step (the controller's), nor when stopping
  assert trainer.evaluations == 1


def test_early_stopping_keeps_the_best_and_stops_after_patience():
  config = _train_config(eval_every_steps=1,
                         early_stopping=dict(metric="loss", patience=2, min_delta=0.1))
  trainer = FakeTrainer(config)
  stopping, state = actions_lib.EarlyStopping(trainer), _state(trainer)
  for step, loss in ((1, 3.0), (2, 2.5), (3, 2.45), (4, 2.5)):
    state.step, state.eval_metrics = step, {"loss": loss}
    stopping.after_evaluation(state)
  assert trainer.best_saved == [(1, 3.0), (2, 2.5)]
  assert state.stop_reason == "early_stopping"
  state.eval_metrics = {"accuracy": 1.0}
  with pytest.raises(ConfigError, match="early_stopping.metric='loss'.*accuracy"):
    stopping.after_evaluation(state)


def test_checkpoint_every():
  trainer = FakeTrainer(_train_config(checkpoint_every_steps=4))
  checkpoint, state = actions_lib.CheckpointEvery(trainer), _state(trainer, total=10)
  for step in (2, 4, 6, 10):
    state.step = step
    trainer.step.assign(step)
    checkpoint.after_call(state)
  assert trainer.saved == [4, 10] and state.last_saved == 10
  state.step, state.stop_reason = 5, "time_budget"
  trainer.step.assign(5)
  checkpoint.after_call(state)   # a stopping run saves where it stops
  checkpoint.end(state)          # ... once
  assert trainer.saved == [4, 10, 5]


def test_stop_on_sigterm_saves_and_raises_and_restores_the_handler():
  trainer = FakeTrainer(_train_config())
  previous = signal.getsignal(signal.SIGTERM)
  state = _state(trainer, step=3)
  with actions_lib.StopOnSignal(trainer) as stop:
    stop.after_call(state)   # no signal: nothing happens
    os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(StopRequested, match="stopped by SIGTERM at step 3"):
      stop.after_call(state)
  assert trainer.saved == [0] and signal.getsignal(signal.SIGTERM) is previous


def test_a_peer_workers_stop_stops_this_one_too():
  trainer = FakeTrainer(_train_config())
  trainer.peer_stop = True
  state = _state(trainer, step=3)
  state.last_saved = 3
  with pytest.raises(StopRequested, match="stopped by a peer worker"):
    actions_lib.StopOnSignal(trainer).after_call(state)
  assert trainer.saved == []   # the step was saved already


def test_progress_reports_each_window_without_the_compiling_call():
  trainer = FakeTrainer(_train_config(steps=8, steps_per_loop=2, log_every_steps=4))
  trainer.optimizer = types.SimpleNamespace(learning_rate=1e-3)
  trainer.strategy = types.SimpleNamespace(num_replicas_in_sync=1)
  trainer.flops_per_token, trainer.peak_flops, trainer.step_hooks = None, None, []
  trainer.train_writer = tf.summary.create_noop_writer()
  progress, state = actions_lib.Progress(trainer), _state(trainer, total=8)
  for first in (0, 2, 4, 6):
    state.call, state.step = _call(first, first + 2, seconds=2.0), first + 2
    progress.after_call(state)
  # Window 1 times only its second call (20 tokens in 2 s); window 2 both calls.
  assert trainer.lines == ["step 4/8  loss 1.0000  lr 1.00e-03  tokens/s 10  ETA 0m04s",
                           "step 8/8  loss 1.0000  lr 1.00e-03  tokens/s 10  ETA 0m00s"]
