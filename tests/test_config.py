"""Config schema: unknown keys and bad values fail with the key's name and what is accepted."""

import json

import ml_collections
import pytest

from tfllm import config as config_lib


def test_default_config_is_valid_and_round_trips_through_json():
  config = config_lib.default_config()
  config_lib.validate(config)
  restored = config_lib.from_json(config_lib.to_json(config))
  assert json.loads(config_lib.to_json(restored)) == json.loads(config_lib.to_json(config))



def test_a_config_json_without_newer_keys_loads_with_their_defaults():
  """A model dir written before a key existed (adapters, pruning, adversarial training,
  augmentation, LiteRT export) loads with the key's default rather than failing on it."""
  written = json.loads(config_lib.to_json(config_lib.default_config()))
  for section, key in (("finetune", "adversarial"), ("finetune", "adapter_size"),
                       ("data", "augment"), ("data", "seed"), ("export", "format")):
    del written[section][key]
  written["finetune"]["distill"].pop("alpha")
  restored = config_lib.from_json(json.dumps(written))
  assert json.loads(config_lib.to_json(restored)) == json.loads(
      config_lib.to_json(config_lib.default_config()))

@pytest.mark.parametrize("mutate,message", [
    (lambda c: c.model.__setattr__("num_layer", 2), "config.model.num_layer is not a known key"),
    (lambda c: c.model.__setitem__("activation", "tanh"),
     "config.model.activation='tanh' is not accepted; use one of: 'gelu'"),
    (lambda c: c.model.__setitem__("num_layers", 0), "config.model.num_layers=0 is out of range"),
    (lambda c: c.task.__setitem__("name", "translation"), "config.task.name='translation'"),
    (lambda c: c.model.update(num_heads=4, num_kv_heads=3),
     "num_kv_heads=3 must divide config.model.num_heads=4"),
    (lambda c: c.tokenizer.__setitem__("type", "bpe"), "config.tokenizer.type='bpe'"),
])
def test_bad_config_fails_with_the_key_name(mutate, message):
  config = config_lib.default_config()
  mutate(config)
  with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(")):
    config_lib.validate(config)


def test_unknown_section_and_type_mismatch():
  config = config_lib.default_config()
  config.optimiser = ml_collections.ConfigDict({"lr": 1.0})
  with pytest.raises(config_lib.ConfigError, match="config.optimiser is not a known section"):
    config_lib.validate(config)
  raw = config_lib.default_config().to_dict()
  raw["model"]["hidden_dim"] = "wide"
  with pytest.raises(config_lib.ConfigError, match="config.model.hidden_dim='wide' has type str"):
    config_lib.validate(ml_collections.ConfigDict(raw))


def test_multi_task_heads_are_checked_by_their_own_schema():
  config = config_lib.default_config()
  config.task.name = "multi_task"
  config.task.heads = {"ner": {"task": "token_classification", "labelz": ["O"]}}
  with pytest.raises(config_lib.ConfigError, match="config.task.heads.ner.labelz"):
    config_lib.validate(config)
