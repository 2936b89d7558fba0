"""Why training stopped when it did not finish: the errors the trainer and its actions raise."""


class TrainingError(RuntimeError):
  """Training stopped on a condition the user must act on (the message says which)."""


class DivergedError(TrainingError):
  """The loss became NaN or Inf; nothing was saved after the last good checkpoint."""


class StopRequested(TrainingError):
  """A SIGTERM (or preemption notice) arrived; a checkpoint was saved before stopping."""
