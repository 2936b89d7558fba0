"""The host loop of training: host calls of compiled steps, and named actions between them.

Modelled on Orbit's `Controller` (tensorflow/models, `orbit/controller.py`): the trainer
owns the compiled steps (`tfllm.training.loop.Trainer.run_steps`); the controller only
decides how many steps the next host call runs and hands what it gave to the actions
(`tfllm.training.actions`), in order. Each action says which step a host call must end at
for it (`boundary`), and does its part after every call (`after_call`): a new behaviour
between steps is a new action, not a new branch here.

After the loop the actions' `end` hooks run (the checkpoint of the last step), then the
final evaluation, which the actions hear through `after_evaluation` like any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Dict, List, Optional, Sequence

import numpy as np


class Action:
  """One named behaviour between host calls; does nothing: subclasses override the hooks they
  need (`tfllm.training.actions` has the trainer's)."""

  def boundary(self, step: int, total: int) -> Optional[int]:
    """The step the host call starting at `step` must end at for this action (None: any)."""
    del step, total
    return None

  def begin(self, state: LoopState):
    """Before the first host call (the run may stop here: `state.stop`)."""

  def after_call(self, state: LoopState):
    """After each host call (`state.call`), in the actions' order."""

  def after_evaluation(self, state: LoopState):
    """After each evaluation (`state.eval_metrics`), the controller's final one included."""

  def end(self, state: LoopState):
    """After the loop, before the final evaluation (not after an error)."""

  def __enter__(self):
    """While the loop runs (e.g. a signal handler installed)."""
    return self

  def __exit__(self, *exc):
    return False


@dataclasses.dataclass
class TrainResult:
  """What a `Trainer.train` call did."""
  step: int
  losses: List[float]            # training loss of every step run in this call
  eval_metrics: Dict[str, float]
  stop_reason: str               # "steps", "time_budget", "early_stopping"
  train_seconds: float
  tokens_per_second: float


@dataclasses.dataclass
class HostCall:
  """What one host call of `first_step..step` gave (`losses`, `norms`: one per step)."""
  first_step: int
  step: int
  losses: np.ndarray
  norms: np.ndarray
  tokens: int
  seconds: float
  # Whether it counts in throughput: the first call traces and compiles, so it is left out,
  # unless it is the whole run.
  timed: bool


@dataclasses.dataclass
class LoopState:
  """What the actions share: the trainer, where the loop is, and why it stops.

  `trainer` needs only what the actions read of it (tests pass a fake): see
  `tfllm.training.actions`.
  """
  trainer: Any
  start_step: int
  total: int
  step: int
  last_saved: int                      # the step of the newest checkpoint this run wrote
  stop_reason: str = "steps"
  finished: bool = False               # the loop is over: no new stop reason is taken
  eval_metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
  call: Optional[HostCall] = None      # the latest host call
  losses: List[float] = dataclasses.field(default_factory=list)
  train_seconds: float = 0.0
  timed_tokens: int = 0
  listeners: Sequence[Any] = ()        # the actions, told of each evaluation

  @property
  def stopping(self) -> bool:
    return self.stop_reason != "steps"

  def stop(self, reason: str):
    """Ends training after this host call (the first reason given wins)."""
    if not self.finished and not self.stopping:
      self.stop_reason = reason

  def record_evaluation(self, metrics: Dict[str, float]):
    """Keeps `metrics` as the latest evaluation and tells every listener."""
    self.eval_metrics = metrics
    for listener in self.listeners:
      listener.after_evaluation(self)

  def record_call(self, call: HostCall):
    self.call = call
    self.step = call.step
    self.losses.extend(float(x) for x in call.losses)
    if call.timed:
      self.train_seconds += call.seconds
      self.timed_tokens += call.tokens


class Controller:
  """Runs `trainer` from its current step to `train.steps`, `actions` between host calls.

  Args:
    trainer: a `tfllm.training.loop.Trainer` (or anything with its `train_config`, `step`,
      `clock`, `checkpointer`, `train_iterator`, `run_steps` and `evaluate`).
    actions: `tfllm.training.actions.Action`s, run in this order after each host call.
  """

  def __init__(self, trainer, actions: Sequence[Any]):
    self.trainer = trainer
    self.actions = list(actions)

  def run(self) -> TrainResult:
    trainer, tc = self.trainer, self.trainer.train_config
    start = int(trainer.step.numpy())
    state = LoopState(trainer, start_step=start, total=tc.steps, step=start,
                      last_saved=start if trainer.checkpointer.latest else -1,
                      listeners=self.actions)
    iterator = trainer.train_iterator(start)
    for action in self.actions:
      action.begin(state)
    with contextlib.ExitStack() as stack:
      for action in self.actions:
        stack.enter_context(action)
      while state.step < state.total and not state.stopping:
        state.record_call(self._host_call(iterator, state))
        for action in self.actions:
          action.after_call(state)
    state.finished = True
    for action in self.actions:
      action.end(state)
    if tc.eval_steps and (not state.eval_metrics or state.stop_reason != "early_stopping"):
      state.record_evaluation(trainer.evaluate())
    seconds = state.train_seconds
    return TrainResult(step=state.step, losses=state.losses, eval_metrics=state.eval_metrics,
                       stop_reason=state.stop_reason, train_seconds=seconds,
                       tokens_per_second=state.timed_tokens / seconds if seconds else 0.0)

  def _host_call(self, iterator, state: LoopState) -> HostCall:
    """One host call: up to `steps_per_loop` steps, ending where an action needs it to."""
    step, total = state.step, state.total
    ends = [step + self.trainer.train_config.steps_per_loop, total]
    ends += [action.boundary(step, total) for action in self.actions]
    end = min(e for e in ends if e is not None)
    started = self.trainer.clock()
    losses, norms, tokens = self.trainer.run_steps(iterator, end - step)
    seconds = self.trainer.clock() - started
    return HostCall(first_step=step, step=end, losses=losses, norms=norms, tokens=tokens,
                    seconds=seconds,
                    timed=step > state.start_step or end - step == total - state.start_step)


def next_boundary(step: int, every: int, total: int) -> int:
  """The first multiple of `every` after `step` (capped at `total`); `total` if `every` is 0."""
  return total if not every else min(total, (step // every + 1) * every)
