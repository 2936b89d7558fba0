"""Fixtures of the fine-tuning tests."""

import pytest

from tfllm import config as config_lib

FINETUNE_SECTION = ("finetune", "tfllm.finetune.config", "finetune")


@pytest.fixture
def finetune_section(monkeypatch):
  """Makes `config.finetune` a known section for the test, if `tfllm.config` does not list it
  yet (it does once the section is registered; then this changes nothing)."""
  if FINETUNE_SECTION not in config_lib._SECTIONS:  # pylint: disable=protected-access
    monkeypatch.setattr(config_lib, "_SECTIONS", config_lib._SECTIONS + (FINETUNE_SECTION,))  # pylint: disable=protected-access


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """A TFDS data dir shared by the session's fine-tuning tests (each builder prepared once)."""
  return str(tmp_path_factory.mktemp("finetune_tfds"))
