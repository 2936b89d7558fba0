"""Task heads: layers that turn backbone hidden states into float32 logits.

Every head is called as `head(hidden, features, training=...)`, where `features` is the
model's input dict (heads read `padding_mask` or `mask_positions` from it), so one model
class can carry any head and a multi-task model can carry several.
"""

from __future__ import annotations

import keras
from keras import ops

from tfllm.layers.normalization import make_norm


@keras.saving.register_keras_serializable(package="tfllm")
class CausalLMHead(keras.layers.Layer):
  """Next-token logits: the tied token embedding's reverse projection, or its own matrix.

  Args:
    vocab_size: output vocabulary.
    token_embedding: the backbone's `TokenEmbedding` to tie to, or None for an untied,
      bias-free projection (Llama).

  Call: hidden `[batch, seq, hidden]` -> logits `[batch, seq, vocab]` float32.

  Example:

  ```python
  import numpy as np
  from tfllm.models import CausalLMHead

  head = CausalLMHead(vocab_size=50)                # untied: its own projection
  assert head(np.zeros((2, 5, 8), "float32")).shape == (2, 5, 50)
  ```
  """

  def __init__(self, vocab_size, token_embedding=None, **kwargs):
    super().__init__(**kwargs)
    self.vocab_size = int(vocab_size)
    self.token_embedding = token_embedding
    self.projection = None
    if token_embedding is None:
      self.projection = keras.layers.Dense(vocab_size, use_bias=False, name="projection")

  def build(self, input_shape):
    if self.projection is not None:
      self.projection.build(input_shape)
    self.built = True

  def call(self, hidden, features=None, training=None):
    if self.projection is None:
      return self.token_embedding(hidden, reverse=True)
    return ops.cast(self.projection(hidden), "float32")

  def get_config(self):
    config = super().get_config()
    config.update(vocab_size=self.vocab_size)
    return config


@keras.saving.register_keras_serializable(package="tfllm")
class MaskedLMHead(keras.layers.Layer):
  """BERT's masked-token head: gather masked positions, dense + activation + norm, then the
  tied token-embedding projection plus an output bias.

  Args:
    vocab_size: output vocabulary.
    token_embedding: the backbone's `TokenEmbedding` (its table is the decoder).
    activation: activation of the transform (`gelu` for BERT).
    normalization: `layer_norm` or `rms_norm`.
    norm_epsilon: the norm's epsilon.

  Call: hidden `[batch, seq, hidden]`, `features["mask_positions"]` int `[batch, P]` ->
  logits `[batch, P, vocab]` float32.

  Example:

  ```python
  import numpy as np
  from tfllm.layers import TokenEmbedding
  from tfllm.models import MaskedLMHead

  embedding = TokenEmbedding(50, 8)
  embedding.build((None, None))
  head = MaskedLMHead(50, embedding)
  features = {"mask_positions": np.array([[0, 3], [1, 2]])}
  assert head(np.zeros((2, 5, 8), "float32"), features).shape == (2, 2, 50)
  ```
  """

  def __init__(self, vocab_size, token_embedding, activation="gelu", normalization="layer_norm",
               norm_epsilon=1e-12, **kwargs):
    super().__init__(**kwargs)
    self.vocab_size = int(vocab_size)
    self.token_embedding = token_embedding
    self.activation = activation
    self.normalization = normalization
    self.norm_epsilon = float(norm_epsilon)

  def build(self, input_shape):
    hidden = input_shape[-1]
    activation = {"gelu_approximate": lambda x: ops.gelu(x, approximate=True),
                  "swiglu": "silu"}.get(self.activation, self.activation)
    self.transform = keras.layers.Dense(hidden, activation=activation, name="transform")
    self.transform.build(input_shape)
    self.norm = make_norm(self.normalization, self.norm_epsilon, "norm")
    self.norm.build(input_shape)
    self.output_bias = self.add_weight(name="output_bias", shape=(self.vocab_size,),
                                       initializer="zeros", autocast=False)
    self.built = True

  def call(self, hidden, features=None, training=None):
    positions = ops.cast(features["mask_positions"], "int32")
    gathered = ops.take_along_axis(hidden, positions[:, :, None], axis=1)
    x = self.norm(self.transform(gathered))
    return self.token_embedding(x, reverse=True) + self.output_bias

  def get_config(self):
    config = super().get_config()
    config.update(vocab_size=self.vocab_size, activation=self.activation,
                  normalization=self.normalization, norm_epsilon=self.norm_epsilon)
    return config


@keras.saving.register_keras_serializable(package="tfllm")
class SequenceClassificationHead(keras.layers.Layer):
  """Pools the sequence and classifies it.

  Args:
    num_classes: number of labels.
    pooling: `first` (the [CLS] token's state) or `mean` (over real tokens, by padding mask).
    dropout: dropout before the classifier.

  Call: hidden `[batch, seq, hidden]` (+ `features["padding_mask"]` for mean pooling) ->
  logits `[batch, num_classes]` float32.

  Example:

  ```python
  import numpy as np
  from tfllm.models import SequenceClassificationHead

  head = SequenceClassificationHead(num_classes=3, pooling="mean")
  features = {"padding_mask": np.array([[True] * 5, [True] * 3 + [False] * 2])}
  assert head(np.zeros((2, 5, 8), "float32"), features).shape == (2, 3)
  ```
  """

  def __init__(self, num_classes, pooling="first", dropout=0.1, **kwargs):
    super().__init__(**kwargs)
    if pooling not in ("first", "mean"):
      raise ValueError(f"pooling={pooling!r} is not known; use 'first' or 'mean'")
    self.num_classes = int(num_classes)
    self.pooling = pooling
    self.dropout = float(dropout)
    self.pooled_dropout = keras.layers.Dropout(dropout)
    self.classifier = keras.layers.Dense(num_classes, dtype="float32", name="classifier")

  def build(self, input_shape):
    self.classifier.build((input_shape[0], input_shape[-1]))
    self.built = True

  def call(self, hidden, features=None, training=None):
    if self.pooling == "first":
      pooled = hidden[:, 0, :]
    else:
      mask = features.get("padding_mask") if features else None
      mask = ops.ones(ops.shape(hidden)[:2]) if mask is None else mask
      mask = ops.cast(mask, "float32")[:, :, None]
      total = ops.sum(ops.cast(hidden, "float32") * mask, axis=1)
      pooled = total / ops.maximum(ops.sum(mask, axis=1), 1.0)
    return self.classifier(self.pooled_dropout(pooled, training=training))

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, pooling=self.pooling, dropout=self.dropout)
    return config


@keras.saving.register_keras_serializable(package="tfllm")
class TokenClassificationHead(keras.layers.Layer):
  """Classifies every token (NER tags), optionally with a CRF's learned tag transitions.

  Args:
    num_classes: number of tags.
    dropout: dropout before the classifier.
    crf: also learn a linear-chain CRF's `transitions` `[num_tags, num_tags]` and `start`
      `[num_tags]` scores (zeros at first), trained by the sentence likelihood and decoded by
      Viterbi (`tfllm.tagging.crf`; `config.task.decoding="crf"`).

  Call: hidden `[batch, seq, hidden]` -> logits `[batch, seq, num_classes]` float32; with
  `crf`, a `TagScores` of those logits (its `emissions`) and the transition scores.

  Example:

  ```python
  import numpy as np
  from tfllm.models import TokenClassificationHead

  head = TokenClassificationHead(num_classes=3)
  assert head(np.zeros((2, 5, 8), "float32")).shape == (2, 5, 3)
  crf_head = TokenClassificationHead(num_classes=3, crf=True)
  scores = crf_head(np.zeros((2, 5, 8), "float32"))
  assert scores.emissions.shape == (2, 5, 3) and scores.transitions.shape == (3, 3)
  ```
  """

  def __init__(self, num_classes, dropout=0.1, crf=False, **kwargs):
    super().__init__(**kwargs)
    self.num_classes = int(num_classes)
    self.dropout = float(dropout)
    self.crf = bool(crf)
    self.token_dropout = keras.layers.Dropout(dropout)
    self.classifier = keras.layers.Dense(num_classes, dtype="float32", name="classifier")

  def build(self, input_shape):
    self.classifier.build(input_shape)
    if self.crf:
      self.transitions = self.add_weight(shape=(self.num_classes, self.num_classes),
                                         initializer="zeros", dtype="float32",
                                         name="crf_transitions")
      self.start = self.add_weight(shape=(self.num_classes,), initializer="zeros",
                                   dtype="float32", name="crf_start")
    self.built = True

  def call(self, hidden, features=None, training=None):
    logits = self.classifier(self.token_dropout(hidden, training=training))
    if not self.crf:
      return logits
    # TensorFlow only here: models without a CRF also run on Keras' JAX backend without it.
    import tensorflow as tf  # only a CRF head needs TensorFlow here (see above)
    from tfllm.tagging.scores import TagScores  # a tf.experimental.ExtensionType
    return TagScores(logits, tf.convert_to_tensor(self.transitions),
                     tf.convert_to_tensor(self.start))

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, dropout=self.dropout)
    if self.crf:   # absent otherwise: older configs round-trip unchanged
      config.update(crf=True)
    return config


def make_head(task, backbone, num_classes=0, pooling="first", dropout=0.1, name=None,
              tie_embeddings=True, crf=False):
  """The head for `task` on `backbone`; one factory serves single- and multi-task models."""
  if task == "causal_lm":
    return CausalLMHead(backbone.vocab_size,
                        token_embedding=backbone.token_embedding if tie_embeddings else None,
                        name=name or "lm_head")
  if task == "masked_lm":
    return MaskedLMHead(backbone.vocab_size, backbone.token_embedding,
                        activation=backbone.activation, normalization=backbone.normalization,
                        norm_epsilon=backbone.norm_epsilon, name=name or "mlm_head")
  if task == "sequence_classification":
    return SequenceClassificationHead(num_classes, pooling=pooling, dropout=dropout,
                                      name=name or "classification_head")
  if task == "token_classification":
    return TokenClassificationHead(num_classes, dropout=dropout, crf=crf,
                                   name=name or "tagging_head")
  raise ValueError(f"task={task!r} has no head; use one of: causal_lm, masked_lm, "
                   "sequence_classification, token_classification")
