"""A pruned run's export: masks folded into the kernels, no mask variable, zeros kept, the
served outputs those of the pruned model; the size report's gzip figure is real."""

from __future__ import annotations

import gzip
import os

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from tests.export.conftest import strings, export_config, tiny_tokenizer
from tfllm import config as config_lib
from tfllm import export
from tfllm.data import tokenizers
from tfllm.export import latency, sizes
from tfllm.finetune import pruning as pruning_lib
from tfllm.models import build
from tfllm.model_dir import checkpoint_dir

TEXTS = [b"the film was good", b"an awful movie , bad", b"hello"]


def _pruned_model_dir(path):
  """A classifier's model dir as a pruning run leaves it, except that the kernels are left
  dense: only folding the saved masks in at export zeroes them."""
  config = export_config("sequence_classification")
  config.finetune.pruning.update(target_sparsity=0.5, end_step=1)
  config_lib.validate(config)
  keras.utils.set_random_seed(3)
  model = build(config)
  pruning = pruning_lib.Pruning(model, config.finetune.pruning, total_steps=1)
  masks = pruning.new_masks(tf.constant(0.5, tf.float64))
  for key, value in zip([pruning_lib._key(p) for p in pruning.paths], masks):  # pylint: disable=protected-access
    pruning.state.masks[key].assign(value)
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    f.write(config_lib.to_json(config))
  tokenizers.save_tokenizer(tiny_tokenizer(), os.path.join(path, "tokenizer"))
  checkpoint = tf.train.Checkpoint(model=model, **pruning.checkpoint_items())
  tf.train.CheckpointManager(checkpoint, checkpoint_dir(path), 1).save(1)
  dense = {pruning_lib.relative_path(model, v): v.numpy() for v in model.weights}
  return dense, {p: m.numpy() for p, m in zip(pruning.paths, masks)}


def _probabilities(model, tokenizer):
  """The in-process pruned model on TEXTS, tokenized as the classifier's signature does."""
  vocabulary = tokenizer.get_vocabulary()
  packer = keras_hub.layers.StartEndPacker(
      16, start_value=vocabulary.index("[CLS]"), end_value=vocabulary.index("[SEP]"),
      pad_value=vocabulary.index("[PAD]"), return_padding_mask=True)
  token_ids, padding_mask = packer(tokenizer(tf.constant(TEXTS)))
  logits = model({"token_ids": token_ids, "padding_mask": padding_mask})
  return tf.nn.softmax(logits).numpy()


def test_export_folds_the_masks_and_keeps_every_zero(tmp_path):
  dense, masks = _pruned_model_dir(str(tmp_path / "run"))
  model, tokenizer, config = export.load_trained(str(tmp_path / "run"))
  weights = {pruning_lib.relative_path(model, v): v.numpy() for v in model.weights}
  for path, value in weights.items():
    expected = dense[path] * masks[path] if path in masks else dense[path]
    np.testing.assert_array_equal(value, expected, err_msg=path)
  assert pruning_lib.weight_sparsity(model, config.finetune.pruning) == pytest.approx(0.5)

  path = export.export_saved_model(model, tokenizer, config, str(tmp_path / "serving"))
  reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
  names = reader.get_variable_to_shape_map()
  assert not [n for n in names if "mask" in n.lower() or "pruning" in n.lower()]
  stored_zeros = sum(int(np.sum(reader.get_tensor(n) == 0)) for n in names
                     if not n.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")
                     and reader.get_tensor(n).dtype.kind == "f")
  assert stored_zeros >= sum(int(np.sum(m == 0)) for m in masks.values())

  served = tf.saved_model.load(path).signatures["serving_default"](text=tf.constant(TEXTS))
  np.testing.assert_allclose(served["probabilities"], _probabilities(model, tokenizer),
                             atol=1e-5)

  size = sizes.variables_size(path)
  directory = os.path.join(path, "variables")
  files = [os.path.join(directory, n) for n in os.listdir(directory)]
  assert size.plain_bytes == sum(os.path.getsize(f) for f in files)
  # The streamed figure equals what gzip writes, within its header (name, mtime).
  reference = sum(len(gzip.compress(open(f, "rb").read(), compresslevel=6)) for f in files)
  assert abs(size.gzip_bytes - reference) <= 16 * len(files)
  assert size.gzip_bytes < size.plain_bytes


@pytest.mark.slow
def test_pruned_export_serves_in_a_tf_only_process(tmp_path):
  _pruned_model_dir(str(tmp_path / "run"))
  model, tokenizer, config = export.load_trained(str(tmp_path / "run"))
  path = export.export_saved_model(model, tokenizer, config, str(tmp_path / "serving"))
  result = latency.run_tf_only(path, calls=[("serving_default", {"text": strings(TEXTS)})],
                               list_ops=True, timeout=300)
  assert result["ops"]["other"] == []
  np.testing.assert_allclose(result["outputs"][0]["probabilities"],
                             _probabilities(model, tokenizer), atol=1e-5)
