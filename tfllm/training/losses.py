"""Transitional: the weighted cross-entropy sums live in `tfllm.metrics.losses` (the metrics,
the distillation loss and the train step share them).

`tfllm.training.loop` imports them from here until the house refactor's merge retargets that
import to `tfllm.metrics.losses`; this module then goes.
"""

from tfllm.metrics.losses import (SINGLE_HEAD, as_heads, cross_entropy_sums,  # noqa: F401
                                  head_loss_weights, head_weights, weight_sums)
