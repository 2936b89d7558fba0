"""The progress action: the progress line, the train TensorBoard scalars, throughput windows.

Every `train.log_every_steps` (0: every host call) and at the last step it reports the steps
since its last report: mean loss and gradient norm, the learning rate, tokens/s and MFU of
the timed calls (the compiling first call is left out), the ETA, and the step hooks' scalars.
"""

from __future__ import annotations

from typing import List

import numpy as np
import tensorflow as tf

from tfllm.training import flops
from tfllm.training.controller import Action, next_boundary


class Progress(Action):
  """Reports training progress (an action of `tfllm.training.actions`).

  Args:
    trainer: reads its `train_config`, `optimizer` (the learning rate), `strategy` (replicas,
      for MFU), `flops_per_token`, `peak_flops`, `step_hooks`, `train_writer` and `log`.
    budget: the `TimeBudget` action of a time-budgeted run, whose line shows the time against
      the budget (its `steps` is only a cap); None: the line shows `step/total`.
  """

  def __init__(self, trainer, budget=None):
    self.trainer = trainer
    self.budget = budget
    self.every = trainer.train_config.log_every_steps or trainer.train_config.steps_per_loop
    self._reset()

  def _reset(self):
    self.tokens, self.steps, self.seconds = 0, 0, 0.0
    self.losses: List[float] = []
    self.norms: List[float] = []

  def boundary(self, step, total):
    return next_boundary(step, self.every, total)

  def after_call(self, state):
    call = state.call
    if call.timed:
      self.seconds += call.seconds
      self.tokens += call.tokens
      self.steps += call.step - call.first_step
    self.losses.extend(float(x) for x in call.losses)
    self.norms.extend(float(x) for x in call.norms)
    if state.step % self.every == 0 or state.step == state.total:
      self.report(state.step, state.total)
      self._reset()

  def report(self, step: int, total: int):
    """Logs the progress line and writes the train scalars of the steps since the last one."""
    trainer = self.trainer
    loss = float(np.mean(self.losses))
    lr = float(trainer.optimizer.learning_rate)  # the schedule's value at the current step
    scalars = {"loss": loss, "learning_rate": lr, "grad_norm": float(np.mean(self.norms))}
    if self.budget is None:
      line = f"step {step}/{total}"
    else:
      spent = self.budget.spent()
      line = (f"time {format_seconds(spent)}/{format_seconds(self.budget.seconds)}  "
              f"step {step}")
    line += f"  loss {loss:.4f}  lr {lr:.2e}"
    if self.seconds > 0:
      tps = self.tokens / self.seconds
      steps_per_s = self.steps / self.seconds
      scalars["tokens_per_second"] = tps
      eta = (total - step) / steps_per_s if steps_per_s else 0.0
      if self.budget is not None:  # the budget's end, or the step cap if that comes first
        eta = max(0.0, min(eta, self.budget.seconds - spent))
      line += f"  tokens/s {tps:,.0f}  ETA {format_seconds(eta)}"
      if trainer.flops_per_token and trainer.peak_flops:
        mfu = flops.model_flops_utilization(tps, trainer.flops_per_token, trainer.peak_flops,
                                            trainer.strategy.num_replicas_in_sync)
        scalars["mfu"] = mfu
        line += f"  MFU {100 * mfu:.1f}%"
    for hook in trainer.step_hooks:
      scalars.update(hook.summary_scalars())
    with trainer.train_writer.as_default(step=step):
      for key, value in scalars.items():
        tf.summary.scalar(key, value)
    trainer.log(line)


def format_seconds(seconds: float) -> str:
  """`1h05m` or `4m07s`."""
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s"
