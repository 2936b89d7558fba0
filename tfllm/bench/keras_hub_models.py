"""KerasHub models of the same shape as a tfllm `model` config section, for comparisons.

A decoder is KerasHub's `GPT2Backbone` (its logits are the tied token embedding's reverse
projection, as in `GPT2CausalLM`), an encoder is `BertBackbone`. Only configs KerasHub can
express are accepted: the differences are named in the error.
"""

from __future__ import annotations

from typing import List

import keras_hub

from tfllm.config import ConfigError

# model key -> value KerasHub's architecture has.
_GPT2_STYLE = dict(position_embedding="learned", normalization="layer_norm", norm_epsilon=1e-5,
                   norm_first=True, activation="gelu_approximate", causal=True, use_bias=True,
                   tie_embeddings=True, num_token_types=0)
_BERT_STYLE = dict(position_embedding="learned", normalization="layer_norm",
                   norm_epsilon=1e-12, norm_first=False, activation="gelu", causal=False,
                   use_bias=True, num_token_types=2)


def _differences(model, style) -> List[str]:
  found = [f"model.{key}={model[key]!r} (KerasHub: {value!r})" for key, value in style.items()
           if model[key] != value]
  if model.num_kv_heads not in (0, model.num_heads):
    found.append(f"model.num_kv_heads={model.num_kv_heads} (KerasHub: all heads)")
  if model.head_dim not in (0, model.hidden_dim // model.num_heads):
    found.append(f"model.head_dim={model.head_dim} (KerasHub: hidden_dim // num_heads)")
  if model.dropout != model.attention_dropout:
    found.append(f"model.attention_dropout={model.attention_dropout} != model.dropout="
                 f"{model.dropout} (KerasHub has one dropout rate)")
  return found


def comparison_kind(model) -> str:
  """"gpt2" for a causal config, "bert" for an encoder, or ConfigError naming the mismatch."""
  style, kind = (_GPT2_STYLE, "gpt2") if model.causal else (_BERT_STYLE, "bert")
  found = _differences(model, style)
  if found:
    raise ConfigError(f"--compare=keras_hub needs a {kind.upper()}-shaped config; this one has "
                      + "; ".join(found))
  return kind


def gpt2_backbone(model) -> keras_hub.models.GPT2Backbone:
  """`GPT2Backbone` of `model`'s shape."""
  return keras_hub.models.GPT2Backbone(
      vocabulary_size=model.vocab_size, num_layers=model.num_layers, num_heads=model.num_heads,
      hidden_dim=model.hidden_dim, intermediate_dim=model.intermediate_dim,
      dropout=model.dropout, max_sequence_length=model.max_sequence_length)


def bert_backbone(model) -> keras_hub.models.BertBackbone:
  """`BertBackbone` of `model`'s shape (its pooler is extra: tfllm's encoder has none)."""
  return keras_hub.models.BertBackbone(
      vocabulary_size=model.vocab_size, num_layers=model.num_layers, num_heads=model.num_heads,
      hidden_dim=model.hidden_dim, intermediate_dim=model.intermediate_dim,
      dropout=model.dropout, max_sequence_length=model.max_sequence_length,
      num_segments=model.num_token_types)


def gpt2_causal_lm(model, jit_compile: bool = True) -> keras_hub.models.GPT2CausalLM:
  """`GPT2CausalLM` of `model`'s shape without a preprocessor, greedy sampler.

  Its `generate` takes `{"token_ids", "padding_mask"}` of the full length (prompt marked in
  the mask) and `stop_token_ids=None`.
  """
  causal_lm = keras_hub.models.GPT2CausalLM(backbone=gpt2_backbone(model), preprocessor=None)
  causal_lm.compile(sampler="greedy", jit_compile=jit_compile)
  return causal_lm
