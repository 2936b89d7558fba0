"""Fine-tuning strategies: top-N freezing, LoRA (train, save, load, merge), int8 quantization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.models.test_convert import minilm_dir
from tfllm import finetune
from tfllm.models import SequenceClassifier, TokenClassifier, TransformerBackbone
from tfllm.models.convert import load_hf_bert

NUM_CLASSES = 3


def tiny_backbone(seed=0):
  keras.utils.set_random_seed(seed)
  backbone = TransformerBackbone(vocab_size=50, num_layers=3, hidden_dim=16, num_heads=2,
                                 intermediate_dim=32, num_token_types=2, norm_epsilon=1e-12,
                                 norm_first=False, activation="gelu", causal=False,
                                 name="backbone")
  backbone.build()
  return backbone


def tiny_classifier(seed=0, model_class=SequenceClassifier):
  model = model_class(tiny_backbone(seed), num_classes=NUM_CLASSES, dropout=0.0)
  model(features())
  return model


def features(batch=4, length=6, seed=1):
  rng = np.random.default_rng(seed)
  return {"token_ids": rng.integers(1, 50, (batch, length)).astype("int32"),
          "padding_mask": np.ones((batch, length), bool)}


def train_steps(model, steps=3, seed=2):
  """A few SGD steps on random labels; returns nothing, changes trainable variables."""
  x = features(seed=seed)
  shape = (4,) if isinstance(model, SequenceClassifier) else (4, 6)
  y = np.random.default_rng(seed).integers(0, NUM_CLASSES, shape)
  optimizer = keras.optimizers.SGD(0.5)
  for _ in range(steps):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
          y, model(x, training=True), from_logits=True))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)


def snapshot(model):
  keys = finetune.lora.variable_keys(model)
  return {keys[id(v)]: v.numpy().copy() for v in model.weights}


def test_trainable_parameter_counts_on_minilm():
  minilm_dir()
  counts = {}
  for strategy in ("full", "top_layers", "lora"):
    backbone, _ = load_hf_bert(minilm_dir())
    model = SequenceClassifier(backbone, num_classes=2)
    model(features())
    if strategy == "top_layers":
      finetune.freeze_all_but_top(model, 2)
    elif strategy == "lora":
      finetune.enable_lora(model, 8)
    counts[strategy] = finetune.trainable_parameter_count(model)
  hidden, inner, layers, head = 384, 1536, 6, 384 * 2 + 2
  block = (hidden * 3 * hidden + 3 * hidden + hidden * hidden + hidden + 2 * hidden * inner
           + inner + hidden + 4 * hidden)
  lora_block = 8 * ((hidden + 3 * hidden) + 2 * hidden + 2 * (hidden + inner))
  assert counts == {"full": 22_565_376 + head, "top_layers": 2 * block + head,
                    "lora": layers * lora_block + head}


def test_top_layers_training_changes_only_top_blocks_and_head():
  model = tiny_classifier()
  finetune.freeze_all_but_top(model, 1)
  before = snapshot(model)
  train_steps(model)
  after = snapshot(model)
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  assert changed, "nothing trained"
  assert all(k.startswith(("backbone/block_2/", "classification_head/")) for k in changed), changed
  assert any(k.startswith("backbone/block_2/") for k in changed)
  with pytest.raises(ValueError, match="num_layers=4 is out of range; accepted: 0 to 3"):
    finetune.freeze_all_but_top(tiny_classifier(), 4)


@pytest.mark.parametrize("rank", [0, -1, 2.5])
def test_lora_rank_must_be_a_positive_integer(rank):
  with pytest.raises(ValueError, match=f"LoRA rank={rank!r} is not accepted"):
    finetune.enable_lora(tiny_classifier(), rank)


def test_lora_trains_adapters_saves_loads_and_merges(tmp_path):
  model = tiny_classifier(model_class=TokenClassifier)
  x = features()
  original = np.asarray(model(x))
  finetune.enable_lora(model, 2)
  # B starts at zero: the adapted model is the pretrained one until it trains.
  np.testing.assert_allclose(np.asarray(model(x)), original, atol=1e-6)
  with pytest.raises(ValueError, match="already enabled"):
    finetune.enable_lora(model, 2)
  before = snapshot(model)
  train_steps(model)
  after = snapshot(model)
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  assert all(k.endswith(("lora_kernel_a", "lora_kernel_b")) or k.startswith("tagging_head/")
             for k in changed), changed
  assert any(k.endswith("lora_kernel_b") for k in changed)
  tuned = np.asarray(model(x))
  assert not np.allclose(tuned, original, atol=1e-4)

  path = finetune.save_lora_weights(model, str(tmp_path / "adapter.npz"))
  # A fresh model from the same pretrained weights, adapters loaded: the tuned outputs.
  fresh = tiny_classifier(model_class=TokenClassifier)
  finetune.enable_lora(fresh, 2)
  finetune.load_lora_weights(fresh, path)
  np.testing.assert_allclose(np.asarray(fresh(x)), tuned, atol=1e-6)
  other_rank = tiny_classifier(model_class=TokenClassifier)
  finetune.enable_lora(other_rank, 4)
  with pytest.raises(ValueError, match=r"lora_kernel_a' has shape \(16, 2\); the model expects"):
    finetune.load_lora_weights(other_rank, path)

  merged = finetune.merge_lora(model)
  assert not any("lora" in v.path for v in merged.weights)
  assert not finetune.strategies.lora_enabled(merged)
  np.testing.assert_allclose(np.asarray(merged(x)), tuned, atol=1e-5)
  assert finetune.strategies.lora_enabled(model)   # the LoRA model is left as it was


def test_int8_quantization(tmp_path):
  model = tiny_classifier()
  x = features()
  reference = np.asarray(model(x))
  finetune.quantize_int8(model)
  assert finetune.quantization_mode(model) == "int8"
  quantized = np.asarray(model(x))
  assert not np.array_equal(quantized, reference)
  np.testing.assert_allclose(quantized, reference, atol=0.05 * np.abs(reference).max())
  with pytest.raises(ValueError, match="is already quantized \\(int8\\); quantize a float "
                                       "model once"):
    finetune.quantize_int8(model)
  path = finetune.save_quantized_weights(model, str(tmp_path / "int8.weights.h5"))
  # Reload as docs/stack.md says works: rebuild the float model, quantize, load.
  rebuilt = finetune.load_quantized_weights(tiny_classifier(seed=7), path)
  np.testing.assert_array_equal(np.asarray(rebuilt(x)), quantized)

  lora = tiny_classifier()
  finetune.enable_lora(lora, 2)
  with pytest.raises(ValueError, match="has LoRA adapters; merge them first"):
    finetune.quantize_int8(lora)
