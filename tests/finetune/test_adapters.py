"""Bottleneck adapters as a fine-tuning strategy: what trains, parameter counts on MiniLM,
save/load alone, no merge, config errors, and (slow) a MiniLM run trained, exported and
served in a TensorFlow-only process."""

import numpy as np
import pytest
from ml_collections import ConfigDict

from tests.finetune.test_job import short_config
from tests.finetune.test_recipes import load_recipe
from tests.finetune.test_strategies import features, snapshot, tiny_classifier, train_steps
from tests.models.test_convert import minilm_dir
from tfllm import config as config_lib
from tfllm import export, finetune, training
from tfllm.export import latency
from tfllm.config import ConfigError
from tfllm.finetune.config import SCHEMAS
from tfllm.models import SequenceClassifier, TokenClassifier
from tfllm.models.convert import load_hf_bert

ADAPTER_PARTS = ("/attention_adapter/", "/feed_forward_adapter/")
NORMS = ("/attention_norm/", "/feed_forward_norm/", "backbone/embedding_norm/")


def adapters_section(**overrides):
  section = ConfigDict(SCHEMAS["finetune"].defaults())
  section.update(strategy="adapters", **overrides)
  return section


def test_trainable_parameters_on_minilm_houlsby_and_pfeiffer():
  """MiniLM-L6 (384 wide, 6 blocks) at the default reduction factor 16: bottleneck 24,
  18,840 parameters an adapter; plus 13 layer norms (768 each) and the 2-class head."""
  x = features()
  counts = {}
  for placement in ("houlsby", "pfeiffer"):
    backbone, _ = load_hf_bert(minilm_dir())
    model = SequenceClassifier(backbone, num_classes=2)
    before = np.asarray(model(x))
    finetune.apply_strategy(model, adapters_section(adapter_placement=placement))
    # Fresh adapters leave the pretrained model's output exactly as it was.
    np.testing.assert_array_equal(np.asarray(model(x)), before)
    counts[placement] = finetune.trainable_parameter_count(model)
  per_adapter, norms, head = 384 * 24 + 24 + 24 * 384 + 384, 13 * 2 * 384, 384 * 2 + 2
  assert per_adapter == 18_840
  assert counts == {"houlsby": 12 * per_adapter + norms + head,     # 236,834
                    "pfeiffer": 6 * per_adapter + norms + head}     # 123,794


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_training_changes_only_adapters_norms_and_head(placement):
  model = tiny_classifier(model_class=TokenClassifier)
  finetune.enable_adapters(model, 4, placement=placement)
  keys = finetune.lora.variable_keys(model)
  kernels = {keys[id(v)] for v in model.trainable_variables if v.path.endswith("/kernel")}
  # The only trainable kernels are the adapters' and the head's: nothing pretrained moves.
  assert all(k.startswith("tagging_head/") or any(p in k for p in ADAPTER_PARTS)
             for k in kernels), kernels
  before = snapshot(model)
  train_steps(model)
  after = snapshot(model)
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  assert all(k.startswith("tagging_head/") or any(p in k for p in ADAPTER_PARTS + NORMS)
             for k in changed), changed
  ups = {k for k in before if k.endswith("adapter/up/kernel")}
  assert len(ups) == 3 * (2 if placement == "houlsby" else 1)
  assert ups <= changed, "an adapter did not train"
  assert any("_norm/" in k for k in changed)


def test_adapter_weights_save_and_load_alone(tmp_path):
  x = features()
  model = tiny_classifier()
  finetune.enable_adapters(model, 4)
  with pytest.raises(ValueError, match="already enabled"):
    finetune.enable_adapters(model, 4)
  train_steps(model)
  tuned = np.asarray(model(x))
  path = finetune.save_adapter_weights(model, str(tmp_path / "adapters.npz"))
  assert set(np.load(path).files) == set(finetune.adapter_weights(model))

  fresh = tiny_classifier()          # the same "pretrained" weights, adapters from the file
  finetune.enable_adapters(fresh, 4)
  finetune.load_adapter_weights(fresh, path)
  np.testing.assert_array_equal(np.asarray(fresh(x)), tuned)

  other_size = tiny_classifier()
  finetune.enable_adapters(other_size, 8)
  with pytest.raises(ValueError, match=r"attention_adapter/down/kernel' has shape \(16, 4\); "
                                       r"the model expects \(16, 8\)"):
    finetune.load_adapter_weights(other_size, path)
  pfeiffer = tiny_classifier()
  finetune.enable_adapters(pfeiffer, 4, placement="pfeiffer")
  with pytest.raises(ValueError, match="unexpected weights 'backbone/block_0/attention_adapter"):
    finetune.load_adapter_weights(pfeiffer, path)
  with pytest.raises(ValueError, match="has no bottleneck adapters; call enable_adapters"):
    finetune.save_adapter_weights(tiny_classifier(), str(tmp_path / "none.npz"))
  with pytest.raises(ValueError, match="cannot be merged into the base weights"):
    finetune.merge_lora(model)


@pytest.mark.parametrize("overrides,message", [
    (dict(adapter_placement="middle"), "config.finetune.adapter_placement='middle' is not "
                                       "accepted; use one of: 'houlsby', 'pfeiffer'"),
    (dict(adapter_size=-1), r"config.finetune.adapter_size=-1 is out of range; accepted: "
                            r"\[0, inf\]"),
    (dict(adapter_reduction_factor=0), "config.finetune.adapter_reduction_factor=0 is out of "
                                       "range"),
    (dict(adapter_activation="tanh"), "config.finetune.adapter_activation='tanh' is not "
                                      "accepted; use one of: 'relu', 'gelu', 'swish'"),
])
def test_bad_adapter_settings_are_one_line_config_errors(overrides, message, finetune_section):
  config = config_lib.default_config()
  config.finetune.update(strategy="adapters", **overrides)
  with pytest.raises(ConfigError, match=message) as error:
    config_lib.validate(config)
  assert "\n" not in str(error.value)


def test_a_reduction_factor_wider_than_the_model_is_refused():
  with pytest.raises(ConfigError, match="adapter_reduction_factor=32 leaves no bottleneck of a "
                                        "16-wide model; accepted: 1 to 16"):
    finetune.apply_strategy(tiny_classifier(), adapters_section(adapter_reduction_factor=32))
  model = tiny_classifier()
  finetune.apply_strategy(model, adapters_section(adapter_size=5, adapter_reduction_factor=32))
  assert model.backbone.blocks[0].feed_forward_adapter.bottleneck_dim == 5   # size wins


@pytest.mark.slow
def test_minilm_adapter_run_trains_exports_and_serves_tf_only(tfds_dir, tmp_path,
                                                              finetune_section):
  """config -> training.run (train + eval) -> export -> served in a TF-only process."""
  model_dir, export_dir = str(tmp_path / "run"), str(tmp_path / "export")
  config = short_config(load_recipe("minilm_movie_sentiment"), tfds_dir, steps=4)
  config.finetune.update(strategy="adapters", adapter_placement="pfeiffer", adapter_size=8)
  summary = training.run(config, model_dir, strategy_name="one_device", log=lambda line: None)
  assert summary["step"] == 4 and "accuracy" in summary["eval_metrics"]

  model, tokenizer, trained_config = export.load_trained(model_dir)  # what tfllm-export serves
  assert trained_config.finetune.adapter_placement == "pfeiffer"
  blocks = model.backbone.blocks
  assert all(b.attention_adapter is None and b.feed_forward_adapter.bottleneck_dim == 8
             for b in blocks)
  assert all(np.any(np.asarray(b.feed_forward_adapter.up.kernel)) for b in blocks)
  # Only adapters, norms and the head moved away from the pretrained checkpoint.
  pretrained, _ = load_hf_bert(minilm_dir())
  reference = {v.path: np.asarray(v) for v in pretrained.weights}
  keys = finetune.lora.variable_keys(model.backbone)
  moved = {keys[id(v)] for v in model.backbone.weights
           if f"backbone/{keys[id(v)]}" in reference
           and not np.array_equal(np.asarray(v), reference[f"backbone/{keys[id(v)]}"])}
  assert moved and all("_norm/" in k for k in moved), moved

  path = export.export_model_dir(model_dir, export_dir)
  texts = np.array([b"a wonderful , moving film", b"dull and far too long"], object)
  result = latency.run_tf_only(path, calls=[("serving_default", {"text": texts})], timeout=300)
  served = result["outputs"][0]
  in_process = export.signatures_for(model, tokenizer, trained_config).functions()[
      "serving_default"](texts)
  np.testing.assert_allclose(served["probabilities"], in_process["probabilities"].numpy(),
                             atol=1e-5)


def test_an_adapter_model_quantizes_to_int8_and_reloads(tmp_path):
  """`finetune.quantize=int8` with adapters: their Dense kernels quantize with the rest, and
  the rebuild-quantize-load path gives the same model."""
  x = features()
  model = tiny_classifier()
  finetune.enable_adapters(model, 4)
  train_steps(model)
  reference = np.asarray(model(x))
  finetune.quantize_int8(model)
  assert model.backbone.blocks[0].feed_forward_adapter.up.quantization_mode == "int8"
  quantized = np.asarray(model(x))
  np.testing.assert_allclose(quantized, reference, atol=0.05 * np.abs(reference).max())
  path = finetune.save_quantized_weights(model, str(tmp_path / "int8.weights.h5"))
  rebuilt = tiny_classifier(seed=7)
  finetune.enable_adapters(rebuilt, 4)
  finetune.load_quantized_weights(rebuilt, path)
  np.testing.assert_array_equal(np.asarray(rebuilt(x)), quantized)
