"""Task models: a `TransformerBackbone` plus one head (or several, `MultiTaskModel`).

Every model takes the features dict that `tfllm.data.pipelines` produces (`token_ids`,
`padding_mask`, and per task `token_type_ids` or `mask_positions`) and returns float32
logits, under any mixed-precision policy. The single-task models also take
`word_embeddings_delta`, float `[batch, seq, hidden_dim]`, added to the backbone's word
embeddings (adversarial training, `tfllm.finetune.adversarial`); None = the plain path.
"""

from __future__ import annotations

import keras

from tfllm.models.backbone import TransformerBackbone, as_features
from tfllm.models.heads import make_head


class _TaskModel(keras.Model):
  """Backbone + one head built by `make_head(self.task, ...)`; serializes as both."""

  task = None

  def __init__(self, backbone: TransformerBackbone, **head_args):
    name = head_args.pop("name", None)
    super().__init__(name=name)
    self.backbone = backbone
    self.head_args = head_args
    self.head = make_head(self.task, backbone, **head_args)

  def call(self, inputs, training=None, word_embeddings_delta=None):
    # word_embeddings_delta: see TransformerBackbone (adversarial training's perturbation).
    features = as_features(inputs)
    hidden = self.backbone(features, training=training,
                           word_embeddings_delta=word_embeddings_delta)
    return self.head(hidden, features, training=training)

  def get_config(self):
    return dict(name=self.name, backbone=keras.saving.serialize_keras_object(self.backbone),
                **self.head_args)

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    backbone = keras.saving.deserialize_keras_object(config.pop("backbone"))
    return cls(backbone, **config)


@keras.saving.register_keras_serializable(package="tfllm")
class CausalLM(_TaskModel):
  """Next-token prediction on a causal backbone; logits `[batch, seq, vocab]` float32.

  Args:
    backbone: a causal `TransformerBackbone`.
    tie_embeddings: project with the token embedding's transpose (GPT-2) or a separate
      matrix (Llama).

  Example:

  ```python
  import numpy as np
  from tfllm.models import CausalLM, TransformerBackbone

  backbone = TransformerBackbone(vocab_size=50, num_layers=1, hidden_dim=8, num_heads=2,
                                 intermediate_dim=16, causal=True)
  model = CausalLM(backbone)                         # tied to the token embedding
  assert model(np.array([[5, 6, 7]])).shape == (1, 3, 50)
  ```
  """

  task = "causal_lm"

  def __init__(self, backbone, tie_embeddings=True, **kwargs):
    if not backbone.causal:
      raise ValueError("CausalLM needs a causal backbone (config.model.causal=True)")
    super().__init__(backbone, tie_embeddings=tie_embeddings, **kwargs)

  def call_with_cache(self, token_ids, cache, cache_update_index, padding_mask=None):
    """One incremental decoding step; see `TransformerBackbone.call_with_cache`.

    Returns:
      `(logits [batch, seq, vocab] float32, hidden [batch, seq, hidden], updated cache)`.
    """
    hidden, cache = self.backbone.call_with_cache(token_ids, cache, cache_update_index,
                                                  padding_mask=padding_mask)
    return self.head(hidden), hidden, cache

  def generate(self, prompts, tokenizer=None, **kwargs):
    """Continues `prompts` (strings or token-id lists); see `tfllm.models.generation.generate`."""
    # The task models import without TensorFlow under Keras' JAX backend (docs/jax.md).
    from tfllm.models import generation  # TF ops: imported on use, not with the models
    return generation.generate(self, prompts, tokenizer=tokenizer, **kwargs)


@keras.saving.register_keras_serializable(package="tfllm")
class MaskedLM(_TaskModel):
  """Masked-token prediction (BERT); logits `[batch, num_predictions, vocab]` float32 at
  `features["mask_positions"]` only, so the vocabulary projection runs on P, not seq, rows.

  Example:

  ```python
  import numpy as np
  from tfllm.models import MaskedLM, TransformerBackbone

  backbone = TransformerBackbone(vocab_size=50, num_layers=1, hidden_dim=8, num_heads=2,
                                 intermediate_dim=16, causal=False)
  model = MaskedLM(backbone)
  features = {"token_ids": np.array([[5, 1, 7, 1]]), "mask_positions": np.array([[1, 3]])}
  assert model(features).shape == (1, 2, 50)         # logits at the 2 masked positions
  ```
  """

  task = "masked_lm"


@keras.saving.register_keras_serializable(package="tfllm")
class SequenceClassifier(_TaskModel):
  """One label per sequence; logits `[batch, num_classes]` float32.

  Args:
    backbone: a `TransformerBackbone`.
    num_classes: number of labels.
    pooling: `first` token or `mean` over real tokens.
    dropout: dropout before the classifier.

  Example:

  ```python
  import numpy as np
  from tfllm.models import SequenceClassifier, TransformerBackbone

  backbone = TransformerBackbone(vocab_size=50, num_layers=1, hidden_dim=8, num_heads=2,
                                 intermediate_dim=16, causal=False)
  model = SequenceClassifier(backbone, num_classes=2)
  features = {"token_ids": np.array([[5, 6, 7, 0]]),
              "padding_mask": np.array([[True, True, True, False]])}
  assert model(features).shape == (1, 2)                     # [batch, num_classes]
  delta = np.zeros((1, 4, 8), "float32")                     # [batch, seq, hidden_dim]
  assert model(features, word_embeddings_delta=delta).shape == (1, 2)   # perturbed words
  ```
  """

  task = "sequence_classification"


@keras.saving.register_keras_serializable(package="tfllm")
class TokenClassifier(_TaskModel):
  """One tag per token (NER); logits `[batch, seq, num_classes]` float32, or with `crf` a
  `TagScores` (those logits as `emissions` and the learned transition scores).

  Args:
    backbone: a `TransformerBackbone`.
    num_classes: number of tags.
    dropout: dropout before the classifier.
    crf: learn a linear-chain CRF's transitions (`TokenClassificationHead`).

  Example:

  ```python
  import numpy as np
  from tfllm.models import TokenClassifier, TransformerBackbone

  backbone = TransformerBackbone(vocab_size=50, num_layers=1, hidden_dim=8, num_heads=2,
                                 intermediate_dim=16, causal=False)
  model = TokenClassifier(backbone, num_classes=3)
  assert model(np.array([[5, 6, 7, 8]])).shape == (1, 4, 3)
  ```
  """

  task = "token_classification"


@keras.saving.register_keras_serializable(package="tfllm")
class MultiTaskModel(keras.Model):
  """One backbone, several named heads; returns `{head name: logits}`.

  Args:
    backbone: a `TransformerBackbone`, run once per batch for all heads.
    heads: head name -> dict of `make_head` arguments with `task` (`masked_lm`,
      `sequence_classification`, `token_classification`), `num_classes`, `pooling`, `dropout`.

  Example:

  ```python
  import numpy as np
  from tfllm.models import MultiTaskModel, TransformerBackbone

  backbone = TransformerBackbone(vocab_size=50, num_layers=1, hidden_dim=8, num_heads=2,
                                 intermediate_dim=16, causal=False)
  model = MultiTaskModel(backbone, heads={
      "sentiment": dict(task="sequence_classification", num_classes=2),
      "ner": dict(task="token_classification", num_classes=5)})
  outputs = model({"token_ids": np.array([[5, 6, 7, 8]])})
  assert outputs["sentiment"].shape == (1, 2) and outputs["ner"].shape == (1, 4, 5)
  ```
  """

  def __init__(self, backbone, heads, name=None):
    super().__init__(name=name)
    if not heads:
      raise ValueError("MultiTaskModel needs at least one head")
    self.backbone = backbone
    self.head_specs = {head_name: dict(spec) for head_name, spec in heads.items()}
    self.heads = {head_name: make_head(spec["task"], backbone, name=head_name,
                                       **{k: v for k, v in spec.items() if k != "task"})
                  for head_name, spec in self.head_specs.items()}

  def _trackable_children(self, save_type="checkpoint", **kwargs):
    # As TransformerBackbone.blocks: Keras 3.15 leaves dict-held layers out of checkpoints.
    children = super()._trackable_children(save_type, **kwargs)
    children.update({f"head_{name}": head for name, head in self.heads.items()})
    return children

  def call(self, inputs, training=None):
    features = as_features(inputs)
    hidden = self.backbone(features, training=training)
    return {head_name: head(hidden, features, training=training)
            for head_name, head in self.heads.items()}

  def get_config(self):
    return dict(name=self.name, backbone=keras.saving.serialize_keras_object(self.backbone),
                heads=self.head_specs)

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    backbone = keras.saving.deserialize_keras_object(config.pop("backbone"))
    return cls(backbone, **config)
