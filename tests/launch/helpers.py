"""Imports the scripts of launch/ (a folder of scripts, not a package) for tests."""

from __future__ import annotations

import importlib.util
import pathlib
import types

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_script(name: str) -> types.ModuleType:
  """The module of `launch/<name>.py`."""
  spec = importlib.util.spec_from_file_location(name, ROOT / "launch" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
