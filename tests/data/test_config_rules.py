"""The data section's cross-section rules (with `task`) fail at validation, one line each."""

from __future__ import annotations

import pytest

from tfllm import config as config_lib
from tfllm.config import ConfigError


@pytest.mark.parametrize("task, data, message", [
    ("causal_lm", {"bucket_lengths": (8,)},
     r"bucket_lengths=\(8,\) applies to sequence_classification and token_classification; "
     r"task causal_lm packs full-length blocks"),
    ("sequence_classification", {"bucket_lengths": (8, 4)},
     "give increasing lengths from 1 to below config.data.sequence_length=128"),
    ("sequence_classification", {"context_tokens": 32},
     "context_tokens=32 applies to token_classification, not task sequence_classification"),
    ("causal_lm", {"augment.methods": ("eda",)},
     "holds 'eda', which does not apply to task causal_lm; accepted: none"),
])
def test_cross_section_rules_fail_at_validation(task, data, message):
  config = config_lib.default_config()
  config.task.update(name=task, labels=["a", "b"])
  for key, value in data.items():
    section, _, name = key.rpartition(".")
    (config.data[section] if section else config.data)[name] = value
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config)


def test_the_rules_accept_what_fits():
  config = config_lib.default_config()
  config.task.update(name="token_classification", labels=["O", "B-X"])
  config.data.update(bucket_lengths=(16, 32), context_tokens=32)
  config.data.augment.methods = ("mention_replacement",)
  config_lib.validate(config)
