"""Config schema: every tfllm job is described by one `ml_collections.ConfigDict`.

The schema is data too: `default_config()` holds every accepted key with its default value
(and so its type), and each section module declares the values a key may take. A config
file in `configs/` starts from `default_config()` and changes values; `validate` rejects
unknown keys, wrong types and values outside the accepted set with one line naming the key.

Sections and the modules that own them:
  model      tfllm.models.config      backbone shape and style
  task       tfllm.models.config      task head(s)
  data       tfllm.data.config        corpus and pipeline
  tokenizer  tfllm.data.config        vocabulary
  train      tfllm.training.config    optimizer, schedule, loop, checkpoints
  export     tfllm.export.config      SavedModel export and generation defaults
  finetune   tfllm.finetune.config    pretrained init, full/top-layers/LoRA, quantize, distill
  runtime    tfllm.runtime            thread pools sized from the cores the process may use
"""

from __future__ import annotations

import importlib
import json
from typing import Any, Callable, Dict, Mapping

import ml_collections


class ConfigError(ValueError):
  """A config key is unknown or holds a value that is not accepted."""


# (section name, module that defines `defaults()`, `CHOICES`, `RANGES` and `check(section)`).
_SECTIONS = (
    ("model", "tfllm.models.config", "model"),
    ("task", "tfllm.models.config", "task"),
    ("data", "tfllm.data.config", "data"),
    ("tokenizer", "tfllm.data.config", "tokenizer"),
    ("train", "tfllm.training.config", "train"),
    ("export", "tfllm.export.config", "export"),
    ("finetune", "tfllm.finetune.config", "finetune"),
    ("runtime", "tfllm.runtime", "runtime"),
)


def _section_schema(module_name: str, section: str):
  module = importlib.import_module(module_name)
  return module.SCHEMAS[section]


def default_config() -> ml_collections.ConfigDict:
  """Returns the full default config: every accepted key, with its default value."""
  config = ml_collections.ConfigDict()
  for name, module_name, section in _SECTIONS:
    schema = _section_schema(module_name, section)
    config[name] = ml_collections.ConfigDict(schema.defaults())
  return config


class SectionSchema:
  """Accepted keys, types and values of one config section.

  Args:
    defaults: callable returning a dict of every key and its default value. The default's
      type is the key's type (ints are accepted where floats are expected). A nested dict is
      a sub-section validated the same way, unless its key is in `entry_schemas`: then it
      holds user-named entries (for example multi-task heads), each checked by that schema.
    choices: key path (dotted) -> accepted values.
    ranges: key path -> (low, high) inclusive bounds; None for an open end.
    check: optional callable(section ConfigDict) -> None raising ConfigError for rules
      that involve several keys.
    entry_schemas: key path of an open dict -> SectionSchema of its entries.
    config_check: optional callable(whole config) -> None raising ConfigError for rules
      that involve other sections too; runs after every section passed its own checks.
  """

  def __init__(self, defaults: Callable[[], Dict[str, Any]], choices=None, ranges=None,
               check=None, entry_schemas=None, config_check=None):
    self.defaults = defaults
    self.choices = dict(choices or {})
    self.ranges = dict(ranges or {})
    self.check = check
    self.entry_schemas = dict(entry_schemas or {})
    self.config_check = config_check


def _is_mapping(value):
  return isinstance(value, (Mapping, ml_collections.ConfigDict))


def _type_name(value):
  return type(value).__name__


def _check_value(path: str, value, default, schema: SectionSchema, key: str):
  if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if default is not None and not isinstance(value, type(default)):
    if not (isinstance(default, (list, tuple)) and isinstance(value, (list, tuple))):
      raise ConfigError(
          f"config.{path}={value!r} has type {_type_name(value)}; expected {_type_name(default)} "
          f"(default {default!r})")
  if key in schema.choices and value not in schema.choices[key]:
    accepted = ", ".join(repr(c) for c in schema.choices[key])
    raise ConfigError(f"config.{path}={value!r} is not accepted; use one of: {accepted}")
  if key in schema.ranges:
    low, high = schema.ranges[key]
    if (low is not None and value < low) or (high is not None and value > high):
      bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
      raise ConfigError(f"config.{path}={value!r} is out of range; accepted: {bounds}")
  return value


def _validate_section(prefix: str, section: Mapping, defaults: Mapping, schema: SectionSchema,
                      key_prefix: str = ""):
  for key in section.keys():
    if key not in defaults:
      accepted = ", ".join(sorted(defaults.keys()))
      raise ConfigError(f"config.{prefix}{key} is not a known key; accepted keys of "
                        f"config.{prefix.rstrip('.') or '<root>'}: {accepted}")
  for key, default in defaults.items():
    path = f"{prefix}{key}"
    rel = f"{key_prefix}{key}"
    value = section[key] if key in section else default
    if rel in schema.entry_schemas:
      entry_schema = schema.entry_schemas[rel]
      if not _is_mapping(value):
        raise ConfigError(f"config.{path} must be a dict of named entries, got {value!r}")
      for name, entry in value.items():
        if not _is_mapping(entry):
          raise ConfigError(f"config.{path}.{name} must be a dict, got {entry!r}")
        entry_defaults = entry_schema.defaults()
        for entry_key, entry_default in entry_defaults.items():
          if entry_key not in entry:  # entries are user-named: fill what they leave out
            entry[entry_key] = entry_default
        _validate_section(f"{path}.{name}.", entry, entry_defaults, entry_schema)
        if entry_schema.check:
          entry_schema.check(entry)
    elif _is_mapping(default):
      if not _is_mapping(value):
        raise ConfigError(f"config.{path} must be a section (dict), got {value!r}")
      _validate_section(f"{path}.", value, default, schema, key_prefix=f"{rel}.")
    else:
      _check_value(path, value, default, schema, rel)


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks `config` against the schema and returns it, or raises `ConfigError`.

  Keys left out of user-named entries (multi-task heads) are filled with their defaults.
  """
  names = [name for name, _, _ in _SECTIONS]
  for key in config.keys():
    if key not in names:
      raise ConfigError(f"config.{key} is not a known section; accepted: {', '.join(names)}")
  for name, module_name, section in _SECTIONS:
    if name not in config:
      continue
    schema = _section_schema(module_name, section)
    _validate_section(f"{name}.", config[name], schema.defaults(), schema)
    if schema.check:
      schema.check(config[name])
  for name, module_name, section in _SECTIONS:
    schema = _section_schema(module_name, section)
    if name in config and schema.config_check:
      schema.config_check(config)
  return config


def to_json(config: ml_collections.ConfigDict) -> str:
  """The resolved config as JSON (written to `model_dir/config.json`)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def _fill_missing(values: dict, defaults: Mapping[str, Any]) -> None:
  for key, default in defaults.items():
    if key not in values:
      values[key] = default
    elif isinstance(default, Mapping) and default and isinstance(values[key], dict):
      _fill_missing(values[key], default)


def from_json(text: str) -> ml_collections.ConfigDict:
  """Inverse of `to_json`: a ConfigDict validated against the schema.

  Keys that the schema gained after the JSON was written (a model dir of an older tfllm) take
  their defaults, which keep what such a model dir did: every new option is off by default.
  """
  values = json.loads(text)
  for name, module_name, section in _SECTIONS:
    _fill_missing(values.setdefault(name, {}), _section_schema(module_name, section).defaults())
  return validate(ml_collections.ConfigDict(values))
