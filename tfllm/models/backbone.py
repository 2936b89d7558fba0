"""`TransformerBackbone`: embeddings, a stack of `TransformerBlock`s and a final norm."""

from __future__ import annotations

import keras
from keras import ops

from tfllm.layers import PositionEmbedding, SinusoidalPositionEncoding, TokenEmbedding
from tfllm.layers import TransformerBlock, clone_initializer, empty_kv_cache
from tfllm.layers.normalization import make_norm


@keras.saving.register_keras_serializable(package="tfllm")
class TransformerBackbone(keras.Model):
  """A GPT-2, BERT or Llama style Transformer stack, chosen by arguments.

  - GPT-2: learned positions, LayerNorm, tanh-GELU, pre-norm, causal, final norm.
  - BERT: learned positions + token types, LayerNorm after the embeddings, exact GELU,
    post-norm, bidirectional.
  - Llama: rotary positions inside attention, RMSNorm, SwiGLU, pre-norm, causal, no biases,
    grouped KV heads.
  Pre-norm stacks end with a norm (their residual stream is never normalized otherwise);
  post-norm stacks normalize the embeddings instead, as BERT does.

  Args:
    vocab_size: token vocabulary size.
    num_layers: number of blocks.
    hidden_dim: width of the residual stream.
    num_heads: attention heads.
    intermediate_dim: feed-forward width.
    num_kv_heads: key/value heads (grouped-query attention); None or 0 means `num_heads`.
    head_dim: per-head width; None or 0 means `hidden_dim // num_heads`.
    max_sequence_length: longest sequence (and KV cache) the model accepts.
    position_embedding: `learned`, `sinusoidal`, `rotary` or `none`.
    rope_max_wavelength: base of the rotary frequencies.
    num_token_types: > 0 adds a token-type (segment) embedding.
    normalization: `layer_norm` or `rms_norm`.
    norm_epsilon: epsilon of every norm.
    norm_first: pre-norm (True) or post-norm (False) blocks.
    activation: `gelu`, `gelu_approximate`, `relu` or `swiglu`.
    causal: decoder (True) or encoder (False).
    use_bias: biases in attention and feed-forward projections.
    dropout: dropout on embeddings and on each sublayer's output.
    attention_dropout: dropout on attention probabilities.
    initializer_range: standard deviation of the truncated-normal kernel initializer.
    attention_block_size: > 0 computes attention over key/value blocks of this size with an
      online softmax (memory linear in the sequence length); 0 = standard attention.

  Call arguments:
    inputs: dict with `token_ids` int `[batch, seq]`, optional `padding_mask` `[batch, seq]`
      (true at real tokens) and `token_type_ids` `[batch, seq]`.
    training: enables dropout.
    word_embeddings_delta: optional float `[batch, seq, hidden_dim]` added to the word (token)
      embeddings before positions, token types and the embedding norm (adversarial training
      perturbs the input there); None (the default) runs the plain path.

  Returns:
    The final hidden states `[batch, seq, hidden_dim]` in the compute dtype.

  Example:

  ```python
  import numpy as np
  from tfllm.models import TransformerBackbone

  backbone = TransformerBackbone(vocab_size=50, num_layers=1, hidden_dim=8, num_heads=2,
                                 intermediate_dim=16, causal=True)
  features = {"token_ids": np.array([[5, 6, 7, 0]]),
              "padding_mask": np.array([[True, True, True, False]])}
  assert backbone(features).shape == (1, 4, 8)    # [batch, seq, hidden_dim]
  ```
  """

  def __init__(self, vocab_size, num_layers, hidden_dim, num_heads, intermediate_dim,
               num_kv_heads=None, head_dim=None, max_sequence_length=512,
               position_embedding="learned", rope_max_wavelength=10000.0, num_token_types=0,
               normalization="layer_norm", norm_epsilon=1e-5, norm_first=True,
               activation="gelu_approximate", causal=True, use_bias=True, dropout=0.0,
               attention_dropout=0.0, initializer_range=0.02, attention_block_size=0,
               **kwargs):
    super().__init__(**kwargs)
    self.vocab_size = int(vocab_size)
    self.num_layers = int(num_layers)
    self.hidden_dim = int(hidden_dim)
    self.num_heads = int(num_heads)
    self.intermediate_dim = int(intermediate_dim)
    self.num_kv_heads = int(num_kv_heads or num_heads)
    self.head_dim = int(head_dim or hidden_dim // num_heads)
    self.max_sequence_length = int(max_sequence_length)
    self.position_embedding = position_embedding
    self.rope_max_wavelength = float(rope_max_wavelength)
    self.num_token_types = int(num_token_types)
    self.normalization = normalization
    self.norm_epsilon = float(norm_epsilon)
    self.norm_first = bool(norm_first)
    self.activation = activation
    self.causal = bool(causal)
    self.use_bias = bool(use_bias)
    self.dropout = float(dropout)
    self.attention_dropout = float(attention_dropout)
    self.initializer_range = float(initializer_range)
    self.attention_block_size = int(attention_block_size)

    # One template, a clone for each layer: a shared unseeded instance would give every
    # block (and every table of one shape) the same initial values.
    initializer = keras.initializers.TruncatedNormal(stddev=self.initializer_range)
    self.token_embedding = self.make_token_embedding(
        vocab_size, hidden_dim, embeddings_initializer=clone_initializer(initializer),
        name="token_embedding")
    if position_embedding == "learned":
      self.position_encoding = PositionEmbedding(max_sequence_length,
                                                 initializer=clone_initializer(initializer),
                                                 name="position_embedding")
    elif position_embedding == "sinusoidal":
      self.position_encoding = SinusoidalPositionEncoding(name="position_encoding")
    elif position_embedding in ("rotary", "none"):
      self.position_encoding = None
    else:
      raise ValueError(f"position_embedding={position_embedding!r} is not known; use one of: "
                       "learned, sinusoidal, rotary, none")
    self.token_type_embedding = None
    if num_token_types:
      self.token_type_embedding = keras.layers.Embedding(
          num_token_types, hidden_dim, embeddings_initializer=clone_initializer(initializer),
          name="token_type_embedding")
    self.embedding_norm = None if norm_first else make_norm(normalization, norm_epsilon,
                                                            "embedding_norm")
    self.embedding_dropout = keras.layers.Dropout(dropout)
    self.blocks = [
        self.make_block(
            num_heads, intermediate_dim, head_dim=self.head_dim, num_kv_heads=self.num_kv_heads,
            activation=activation, normalization=normalization, norm_epsilon=norm_epsilon,
            norm_first=norm_first, causal=causal, use_bias=use_bias, dropout=dropout,
            attention_dropout=attention_dropout,
            rotary_max_wavelength=(rope_max_wavelength if position_embedding == "rotary"
                                   else None),
            kernel_initializer=clone_initializer(initializer),
            attention_block_size=self.attention_block_size,
            name=f"block_{i}")
        for i in range(num_layers)
    ]
    self.final_norm = make_norm(normalization, norm_epsilon, "final_norm") if norm_first else None

  def make_token_embedding(self, *args, **kwargs):
    """The token embedding (a tensor-parallel backbone returns a vocabulary-sharded one)."""
    return TokenEmbedding(*args, **kwargs)

  def make_block(self, *args, **kwargs):
    """One Transformer block (a tensor-parallel backbone returns a sharded one)."""
    return TransformerBlock(*args, **kwargs)

  def build(self, input_shape=None):
    shape = (None, None, self.hidden_dim)
    sublayers = [(self.token_embedding, (None, None)), (self.position_encoding, shape),
                 (self.token_type_embedding, (None, None)), (self.embedding_norm, shape),
                 *[(block, shape) for block in self.blocks], (self.final_norm, shape)]
    for layer, layer_shape in sublayers:
      # `embed` and `encode` called before the model build their sublayers on first use;
      # building those again would add their weights twice.
      if layer is not None and not layer.built:
        layer.build(layer_shape)
    self.built = True

  def _trackable_children(self, save_type="checkpoint", **kwargs):
    # Keras 3.15 leaves layers held in lists out of tf.train.Checkpoint (its TrackedList is
    # converted for SavedModel only): name each block so that checkpoints hold them.
    children = super()._trackable_children(save_type, **kwargs)
    children.update({block.name: block for block in self.blocks})
    return children

  def embed(self, token_ids, token_type_ids=None, start_index=0, training=None,
            word_embeddings_delta=None):
    """Token (+ position, + token type) embeddings of `token_ids` `[batch, seq]`.

    `call` is `encode(embed(...))`: the two halves let a caller change the embeddings
    between them. `word_embeddings_delta` (float `[batch, seq, hidden_dim]`, cast to the
    compute dtype) is added to the word embeddings only, before positions and token types.

    Returns:
      `[batch, seq, hidden_dim]` in the compute dtype.
    """
    x = self.token_embedding(token_ids)
    if word_embeddings_delta is not None:
      x = x + ops.cast(word_embeddings_delta, x.dtype)
    if self.position_encoding is not None:
      x = x + self.position_encoding(x, start_index=start_index)
    if self.token_type_embedding is not None:
      if token_type_ids is None:
        token_type_ids = ops.zeros_like(token_ids)
      x = x + self.token_type_embedding(token_type_ids)
    if self.embedding_norm is not None:
      x = self.embedding_norm(x)
    return self.embedding_dropout(x, training=training)

  def encode(self, embeddings, padding_mask=None, training=None):
    """The blocks (and final norm) over `embeddings` `[batch, seq, hidden_dim]` from `embed`.

    Args:
      embeddings: the output of `embed`.
      padding_mask: `[batch, seq]`, true at real tokens; None = every position is real.
      training: enables dropout.

    Returns:
      The final hidden states `[batch, seq, hidden_dim]` in the compute dtype.

    Example:

    ```python
    import numpy as np
    from tfllm.models import TransformerBackbone

    backbone = TransformerBackbone(vocab_size=50, num_layers=1, hidden_dim=8, num_heads=2,
                                   intermediate_dim=16, causal=False)
    ids = np.array([[5, 6, 7, 0]])
    mask = np.array([[True, True, True, False]])
    hidden = backbone.encode(backbone.embed(ids), padding_mask=mask)   # [1, 4, 8]
    whole = backbone({"token_ids": ids, "padding_mask": mask})
    np.testing.assert_allclose(hidden, whole, atol=1e-6)
    ```
    """
    x = embeddings
    for block in self.blocks:
      x = block(x, padding_mask=padding_mask, training=training)
    return self.final_norm(x) if self.final_norm is not None else x

  def call(self, inputs, training=None, word_embeddings_delta=None):
    inputs = as_features(inputs)
    x = self.embed(inputs["token_ids"], inputs.get("token_type_ids"), training=training,
                   word_embeddings_delta=word_embeddings_delta)
    return self.encode(x, inputs.get("padding_mask"), training=training)

  def init_cache(self, batch_size, max_length=None, dtype=None):
    """A zero KV cache: a list with one `(keys, values)` a layer, each
    `[batch, num_kv_heads, max_length, head_dim]` (`tfllm.layers.empty_kv_cache`).

    One tensor pair a layer (not one stacked tensor) so that a decoding step updates each
    in place instead of slicing and re-stacking the whole cache (docs/benchmarks.md).
    """
    # `or` would turn a tensor max_length into a Python bool under XLA.
    max_length = self.max_sequence_length if max_length is None else max_length
    return [empty_kv_cache(batch_size, self.num_kv_heads, max_length, self.head_dim,
                           dtype or self.compute_dtype) for _ in range(self.num_layers)]

  def call_with_cache(self, token_ids, cache, cache_update_index, padding_mask=None):
    """Runs `token_ids` `[batch, seq]` at positions `cache_update_index ...` against `cache`.

    Args:
      token_ids: the new tokens (the prompt on the first call, one token per step after).
      cache: from `init_cache`, holding keys and values of earlier positions.
      cache_update_index: scalar position of `token_ids[:, 0]`.
      padding_mask: `[batch, max_length]` over the whole cache, true at real tokens (for
        left-padded prompts); None means every position is real.

    Returns:
      `(hidden [batch, seq, hidden_dim], updated cache)`.
    """
    if not self.causal:
      raise ValueError("call_with_cache needs a causal backbone (causal=True)")
    x = self.embed(token_ids, start_index=cache_update_index)
    layer_caches = []
    for block, layer_cache in zip(self.blocks, cache):
      x, layer_cache = block(x, padding_mask=padding_mask, cache=layer_cache,
                             cache_update_index=cache_update_index)
      layer_caches.append(layer_cache)
    x = self.final_norm(x) if self.final_norm is not None else x
    return x, layer_caches

  def get_config(self):
    return dict(
        name=self.name, vocab_size=self.vocab_size, num_layers=self.num_layers,
        hidden_dim=self.hidden_dim, num_heads=self.num_heads,
        intermediate_dim=self.intermediate_dim, num_kv_heads=self.num_kv_heads,
        head_dim=self.head_dim, max_sequence_length=self.max_sequence_length,
        position_embedding=self.position_embedding,
        rope_max_wavelength=self.rope_max_wavelength, num_token_types=self.num_token_types,
        normalization=self.normalization, norm_epsilon=self.norm_epsilon,
        norm_first=self.norm_first, activation=self.activation, causal=self.causal,
        use_bias=self.use_bias, dropout=self.dropout, attention_dropout=self.attention_dropout,
        initializer_range=self.initializer_range,
        attention_block_size=self.attention_block_size)


def as_features(inputs):
  """The features dict of a model input: `inputs` itself, or `{"token_ids": inputs}`.

  Backbones and task models accept either a features dict or a bare `[batch, seq]`
  `token_ids` tensor; this turns both into the dict.
  """
  return inputs if isinstance(inputs, dict) else {"token_ids": inputs}
