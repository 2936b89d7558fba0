"""Text generation with a KV cache: the whole decoding loop is one TF graph (XLA-compilable).

Layout: prompts are **right**-padded into a fixed-length buffer `[batch, max_length]`
(KerasHub's scheme), so every token sits at its true position and a prompt's output does not
depend on the other prompts of its batch. The loop

  1. prefills the KV cache in one backbone call over the buffer's first `L` positions, `L`
     the smallest of a few static lengths (`prefill_lengths`) that covers the shortest
     prompt (one XLA program holds a branch a length; a 16-token prompt in a buffer of 1,024
     does not pay for 1,024 positions);
  2. from the shortest prompt's end, runs one token a step: the model reads the token at
     `index - 1` against the cache and proposes the token at `index`; rows whose prompt is
     longer than `index` keep their prompt token (their cache entry is recomputed from the
     same token), rows that finished write the pad token;
  3. stops when every row has emitted a stop token or `max_new_tokens`, or the buffer is full.

Positions not yet written hold pads, but the causal mask hides them from every query before
them, so no padding mask is needed.

Sampling (`sample_next_token`) takes its parameters per row as tensors (temperature,
top-k, top-p, seed), so one compiled graph serves every request. Random draws are a
counter-based hash of `(seed, position, token id)` turned into Gumbel noise
(argmax(logits + Gumbel) is a draw from softmax(logits)): a seed reproduces the same tokens in
any batch, with or without XLA, in any process, and no random-state variable is mutated while
serving. This is why `keras_hub.samplers` are not used here: their temperature, `k` and `p`
are Python constants fixed at construction (one sampler, one trace per value), their
randomness comes from a stateful `SeedGenerator` variable (no per-request seed; concurrent
served requests would race on it), and `TopKSampler` needs a static `k` under XLA. The
filtering follows `keras_hub.samplers.TopPSampler(p, k)`: top-p is taken on the full
distribution's cumulative probabilities, then cut to the top `k`.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfllm.data.tokenizers import special_token_ids

_MASK32 = 0xFFFFFFFF
_HASH_MULTIPLIER = 0x45D9F3B  # < 2**27: products of 32-bit values stay inside int64.


def _hash32(x):
  """A bijective 32-bit integer mix, computed in int64 (values in [0, 2**32))."""
  x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
  x = tf.bitwise.bitwise_and(x * _HASH_MULTIPLIER, _MASK32)
  x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
  x = tf.bitwise.bitwise_and(x * _HASH_MULTIPLIER, _MASK32)
  return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def gumbel_noise(seed, step, vocab_size):
  """Gumbel(0, 1) noise `[batch, vocab_size]` float32, a pure function of its arguments.

  Args:
    seed: int `[batch]`, one seed per row.
    step: int scalar, the position being sampled (different noise at every position).
    vocab_size: static or scalar int.
  """
  seed = tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), _MASK32)
  row = _hash32(tf.bitwise.bitwise_xor(_hash32(seed), tf.cast(step, tf.int64)))
  bits = _hash32(tf.bitwise.bitwise_xor(_hash32(row)[:, None],
                                        tf.range(vocab_size, dtype=tf.int64)[None, :]))
  # The top 24 bits make a float32 exactly; the half-step offset keeps u inside (0, 1).
  uniform = (tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) + 0.5) / float(1 << 24)
  return -tf.math.log(-tf.math.log(uniform))


def sample_next_token(logits, temperature, top_k, top_p, seed, step):
  """The next token of each row: greedy where `temperature <= 0`, else sampled.

  Args:
    logits: `[batch, vocab]` float.
    temperature: `[batch]` float; `<= 0` means greedy (argmax).
    top_k: `[batch]` int; keep the `k` most likely tokens, `<= 0` keeps all.
    top_p: `[batch]` float; keep the most likely tokens whose cumulative probability before
      them is below `p` (at least one); `>= 1` keeps all.
    seed: `[batch]` int, the random stream of each row.
    step: int scalar, the position being sampled.

  Returns:
    `[batch]` int32 token ids.
  """
  logits = tf.cast(logits, tf.float32)
  greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)

  def sampled():
    vocab_size = tf.shape(logits)[-1]
    scaled = logits / tf.maximum(tf.cast(temperature, tf.float32), 1e-6)[:, None]
    ordered = tf.sort(scaled, axis=-1, direction="DESCENDING")
    top_k_ = tf.cast(top_k, tf.int32)
    keep_k = tf.where(top_k_ > 0, tf.minimum(top_k_, vocab_size), vocab_size)
    probability_before = tf.math.cumsum(tf.nn.softmax(ordered, axis=-1), axis=-1, exclusive=True)
    within_p = probability_before < tf.cast(top_p, tf.float32)[:, None]
    keep_p = tf.where(tf.cast(top_p, tf.float32) >= 1.0, vocab_size,
                      tf.maximum(tf.reduce_sum(tf.cast(within_p, tf.int32), axis=-1), 1))
    keep = tf.minimum(keep_k, keep_p)
    threshold = tf.gather(ordered, keep - 1, axis=1, batch_dims=1)
    filtered = tf.where(scaled >= threshold[:, None], scaled, -np.inf)
    drawn = tf.argmax(filtered + gumbel_noise(seed, step, vocab_size), axis=-1,
                      output_type=tf.int32)
    return tf.where(tf.cast(temperature, tf.float32) > 0.0, drawn, greedy)

  # A batch of greedy rows skips the sort over the vocabulary.
  return tf.cond(tf.reduce_any(tf.cast(temperature, tf.float32) > 0.0), sampled, lambda: greedy)


def prefill_lengths(max_length: int) -> List[int]:
  """The static prefill lengths of a buffer: powers of two from 16 below `max_length`, and
  `max_length` itself."""
  lengths, length = [], 16
  while length < max_length:
    lengths.append(length)
    length *= 2
  return lengths + [int(max_length)]


def prefill_cache(model, token_ids, cache, start):
  """The cache with positions `[0, L)` of `token_ids` written, `L` the first of
  `prefill_lengths` that is `>= start` (scalar int32). Positions from `start - 1` on are
  rewritten by the decoding loop before any query attends to them."""
  lengths = prefill_lengths(token_ids.shape[1])
  branch = tf.reduce_sum(tf.cast(tf.constant(lengths[:-1], tf.int32) < start, tf.int32))

  def prefill(length):
    return lambda: model.backbone.call_with_cache(token_ids[:, :length], cache, 0)[1]

  return tf.switch_case(branch, [prefill(length) for length in lengths])


def generate_tokens(model, token_ids, prompt_lengths, max_new_tokens, temperature, top_k,
                    top_p, seed, stop_token_ids: Sequence[int] = (), pad_token_id: int = 0):
  """Continues right-padded prompts in place; graph code (call inside a `tf.function`).

  Args:
    model: a `CausalLM` (anything with `call_with_cache` and `backbone.call_with_cache`,
      `backbone.init_cache`).
    token_ids: int `[batch, max_length]` (`max_length` static), row `i` holds its prompt in
      `[:prompt_lengths[i]]` and pads after; `max_length` is the buffer (and KV cache) length.
    prompt_lengths: int `[batch]`, each `>= 1`.
    max_new_tokens: int `[batch]`; clamped to `[0, max_length - prompt_length]`.
    temperature, top_k, top_p, seed: `[batch]` sampling parameters (`sample_next_token`).
    stop_token_ids: ids that end a row (the stop token is kept in the output).
    pad_token_id: written after a row's end.

  Returns:
    `(token_ids [batch, max_length] int32, num_generated [batch] int32)`: row `i`'s new
    tokens are `token_ids[i, prompt_lengths[i]:prompt_lengths[i] + num_generated[i]]`.
  """
  token_ids = tf.cast(token_ids, tf.int32)
  batch_size, max_length = tf.shape(token_ids)[0], token_ids.shape[1]
  if max_length is None:
    raise ValueError("generate_tokens needs a static buffer length: token_ids of shape "
                     f"[batch, max_length], got {token_ids.shape}")
  prompt_lengths = tf.cast(prompt_lengths, tf.int32)
  max_new_tokens = tf.clip_by_value(tf.cast(max_new_tokens, tf.int32), 0,
                                    max_length - prompt_lengths)
  end = prompt_lengths + max_new_tokens
  stop_token_ids = tf.constant(list(stop_token_ids) or [-1], tf.int32)
  positions = tf.range(max_length)[None, :]

  # An empty batch has no shortest prompt: start past the end so the loop never runs.
  start = tf.cond(batch_size > 0, lambda: tf.reduce_min(prompt_lengths), lambda: max_length)
  cache = prefill_cache(model, token_ids, model.backbone.init_cache(batch_size, max_length),
                        start)
  done = max_new_tokens <= 0
  num_generated = tf.zeros_like(prompt_lengths)

  def cond(index, token_ids, cache, done, num_generated):
    return tf.logical_and(index < max_length, tf.logical_not(tf.reduce_all(done)))

  def body(index, token_ids, cache, done, num_generated):
    previous = tf.gather(token_ids, tf.reshape(index - 1, [1]), axis=1)
    logits, _, cache = model.call_with_cache(previous, cache, index - 1)
    proposed = sample_next_token(logits[:, 0, :], temperature, top_k, top_p, seed, index)
    in_prompt = index < prompt_lengths
    active = tf.logical_and(tf.logical_not(in_prompt), tf.logical_not(done))
    written = tf.where(in_prompt, tf.gather(token_ids, index, axis=1),
                       tf.where(active, proposed, pad_token_id))
    token_ids = tf.where(positions == index, written[:, None], token_ids)
    stopped = tf.reduce_any(proposed[:, None] == stop_token_ids[None, :], axis=-1)
    done = tf.logical_or(done, tf.logical_and(active, tf.logical_or(stopped, index + 1 >= end)))
    num_generated += tf.cast(active, tf.int32)
    return index + 1, token_ids, cache, done, num_generated

  _, token_ids, _, _, num_generated = tf.while_loop(
      cond, body, (start, token_ids, cache, done, num_generated))
  return token_ids, num_generated


def prompt_budget(max_length, max_new_tokens):
  """Tokens a prompt keeps (start token included) so that `max_new_tokens` fit after it.

  A prompt longer than this keeps its last tokens; a shorter one is kept whole (and then
  `generate_tokens` clamps `max_new_tokens` to the room left). At least 2 (the start token
  and the prompt's last token), so a request for more tokens than the buffer holds still
  continues the prompt.

  Args:
    max_length: the buffer length (int).
    max_new_tokens: int or int `[batch]` (values below 0 count as 0).

  Returns:
    int32, the shape of `max_new_tokens`.
  """
  reserved = tf.clip_by_value(tf.cast(max_new_tokens, tf.int32), 0, max(int(max_length) - 2, 0))
  return int(max_length) - reserved


def prompt_token_ids(tokenizer, prompts, max_prompt_length, start_token_id=None):
  """Tokenized prompts as a ragged `[batch, None]` int32, ready for `pack_prompts`.

  Keeps each prompt's **last** tokens when it is too long (what a continuation depends on)
  and puts `start_token_id` first, so an empty prompt still has one token.

  Args:
    tokenizer: a keras-hub tokenizer (runs as TF / TF-Text ops, inside a graph too).
    prompts: string `[batch]`. Invalid UTF-8 bytes are replaced (U+FFFD) before tokenizing.
    max_prompt_length: the longest result, start token included: an int, or int `[batch]`
      (one a prompt, e.g. `prompt_budget`).
    start_token_id: int or None.
  """
  prompts = tf.strings.unicode_transcode(prompts, "UTF-8", "UTF-8", errors="replace")
  pieces = tokenizer(prompts)
  if not isinstance(pieces, tf.RaggedTensor):
    pieces = tf.RaggedTensor.from_tensor(pieces)
  pieces = tf.cast(pieces, tf.int32)
  keep = tf.cast(max_prompt_length, tf.int32) - (0 if start_token_id is None else 1)
  lengths = tf.cast(pieces.row_lengths(), tf.int32)
  first = tf.maximum(lengths - tf.maximum(keep, 0), 0)
  pieces = tf.gather(pieces, tf.ragged.range(first, lengths), batch_dims=1)
  if start_token_id is not None:
    start = tf.fill([pieces.nrows(), 1], tf.constant(start_token_id, tf.int32))
    pieces = tf.concat([tf.RaggedTensor.from_tensor(start), pieces], axis=1)
  return pieces


def pack_prompts(prompt_ids, max_length, pad_token_id=0):
  """Right-pads ragged prompts into `([batch, max_length] int32, lengths [batch] int32)`."""
  prompt_ids = tf.cast(prompt_ids, tf.int32)
  token_ids = prompt_ids.to_tensor(default_value=pad_token_id, shape=[None, max_length])
  return token_ids, tf.cast(prompt_ids.row_lengths(), tf.int32)


def generated_ids(token_ids, prompt_lengths, num_generated):
  """The new tokens of each row as a ragged `[batch, None]` int32."""
  offsets = tf.ragged.range(prompt_lengths, prompt_lengths + num_generated)
  return tf.gather(token_ids, offsets, batch_dims=1)


def continuation_text(tokenizer, new_ids, drop_token_ids: Sequence[int] = ()):
  """Detokenized continuations `[batch]` string, without `drop_token_ids` (stop tokens)."""
  if drop_token_ids:
    drop = tf.constant(list(drop_token_ids), tf.int32)
    keep = tf.logical_not(tf.reduce_any(new_ids[..., None] == drop, axis=-1))
    new_ids = tf.ragged.boolean_mask(new_ids, keep)
  text = tokenizer.detokenize(new_ids)
  # An empty batch can come back without its batch dimension.
  return tf.reshape(text, [new_ids.nrows()])


@dataclasses.dataclass
class GenerationOutput:
  """What `generate` returns.

  Attributes:
    token_ids: per prompt, the new token ids (a stop token, when one ended it, is last).
    text: per prompt, the detokenized continuation without stop tokens (None without a
      tokenizer).
  """
  token_ids: List[List[int]]
  text: Optional[List[str]] = None


class Generator:
  """A causal LM's generation loop compiled once, called with any prompts and parameters.

  Args:
    model: a built `CausalLM`.
    tokenizer: keras-hub tokenizer for string prompts and text output; optional.
    stop_token_ids: ids that end a continuation; by default the tokenizer's eos, if any.
    pad_token_id: by default the tokenizer's pad, else 0.
    start_token_id: put before every string prompt; by default the tokenizer's eos (training
      packs documents each followed by eos, so a document starts after one), else its bos.
    max_length: buffer and KV-cache length, prompt + continuation (static: one XLA program);
      default `model.backbone.max_sequence_length`.
    jit_compile: compile the loop with XLA.
  """

  def __init__(self, model, tokenizer=None, stop_token_ids=None, pad_token_id=None,
               start_token_id=None, max_length=None, jit_compile=True):
    specials = {}
    if tokenizer is not None:
      specials = special_token_ids(tokenizer)
    self.model = model
    self.tokenizer = tokenizer
    self.stop_token_ids = tuple(int(i) for i in (
        stop_token_ids if stop_token_ids is not None else
        ([specials["eos"]] if "eos" in specials else [])))
    self.pad_token_id = int(pad_token_id if pad_token_id is not None else specials.get("pad", 0))
    if start_token_id is None:
      start_token_id = specials.get("eos", specials.get("bos"))
    self.start_token_id = start_token_id
    limit = model.backbone.max_sequence_length
    self.max_length = int(max_length or limit)
    if not 2 <= self.max_length <= limit:
      raise ValueError(f"max_length={self.max_length} is not accepted; use 2 ... {limit} "
                       "(the model's max_sequence_length)")
    rows = lambda dtype: tf.TensorSpec([None], dtype)  # noqa: E731
    self._loop = tf.function(
        self._generate_tokens, jit_compile=jit_compile,
        input_signature=[tf.TensorSpec([None, self.max_length], tf.int32), rows(tf.int32),
                         rows(tf.int32), rows(tf.float32), rows(tf.int32), rows(tf.float32),
                         rows(tf.int64)])
    # In a graph: eager keras-hub tokenizers return Python lists for ragged results.
    self._tokenize = tf.function(lambda prompts, max_prompt_length: prompt_token_ids(
        self.tokenizer, prompts, max_prompt_length, self.start_token_id))
    self._detokenize = tf.function(lambda new_ids: continuation_text(
        self.tokenizer, new_ids, self.stop_token_ids))

  def _generate_tokens(self, token_ids, prompt_lengths, max_new_tokens, temperature, top_k,
                       top_p, seed):
    return generate_tokens(self.model, token_ids, prompt_lengths, max_new_tokens, temperature,
                           top_k, top_p, seed, self.stop_token_ids, self.pad_token_id)

  def _prompt_ids(self, prompts, max_new_tokens):
    if isinstance(prompts, (str, bytes)) or (
        prompts and isinstance(prompts[0], int) and not isinstance(prompts[0], bool)):
      raise ValueError("prompts must be a list (a batch): of strings, or of token-id lists; "
                       f"got {type(prompts).__name__} {prompts!r:.60}")
    if prompts and all(isinstance(p, (str, bytes)) for p in prompts):
      if self.tokenizer is None:
        raise ValueError("string prompts need a tokenizer; pass tokenizer= or token-id lists")
      return self._tokenize(tf.constant(prompts, tf.string),
                            prompt_budget(self.max_length, max_new_tokens))
    rows = [list(p) for p in prompts]
    if any(not row for row in rows):
      raise ValueError("a token-id prompt is empty; give at least one token id")
    if any(len(row) >= self.max_length for row in rows):
      raise ValueError(f"a token-id prompt has {max(len(r) for r in rows)} tokens; accepted: "
                       f"< max_length={self.max_length}")
    vocab_size = self.model.backbone.vocab_size
    if any(not 0 <= t < vocab_size for row in rows for t in row):
      raise ValueError(f"token ids must lie in [0, {vocab_size})")
    return tf.ragged.constant(rows, dtype=tf.int32, ragged_rank=1) if rows else (
        tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int32), tf.zeros([0], tf.int64)))

  def generate(self, prompts, max_new_tokens=32, temperature=0.0, top_k=0, top_p=1.0,
               seed=0) -> GenerationOutput:
    """Continues `prompts`.

    Args:
      prompts: a list of strings (needs the tokenizer), or a list of token-id lists.
      max_new_tokens: tokens to add at most (clamped to what fits in `max_length`).
      temperature: 0 is greedy; > 0 samples from softmax(logits / temperature).
      top_k: sample among the `k` most likely tokens; 0 = all.
      top_p: sample among the most likely tokens covering probability `p`; 1 = all.
      seed: the same seed and prompt give the same sample.

    Returns:
      `GenerationOutput`.
    """
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    prompt_ids = self._prompt_ids(prompts, max_new_tokens)
    token_ids, lengths = pack_prompts(prompt_ids, self.max_length, self.pad_token_id)
    batch = int(token_ids.shape[0])
    per_row = lambda value, dtype: tf.fill([batch], tf.constant(value, dtype))  # noqa: E731
    token_ids, num_generated = self._loop(
        token_ids, lengths, per_row(max_new_tokens, tf.int32),
        per_row(temperature, tf.float32), per_row(top_k, tf.int32), per_row(top_p, tf.float32),
        per_row(seed, tf.int64))
    # The new ids as lists from one copy to the host: the eager ragged gather and its
    # `to_list` cost ~12 CPU-ms a call, the fixed per-call cost of docs/benchmarks.md.
    rows, starts, counts = token_ids.numpy(), lengths.numpy(), num_generated.numpy()
    new_lists = [row[start:start + count].tolist()
                 for row, start, count in zip(rows, starts, counts)]
    text = None
    if self.tokenizer is not None:
      new_ids = generated_ids(token_ids, lengths, num_generated)
      text = [t.decode("utf-8", errors="replace") for t in
              self._detokenize(new_ids).numpy()]
    return GenerationOutput(token_ids=new_lists, text=text)


def _check_sampling(max_new_tokens, temperature, top_k, top_p):
  if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
    raise ValueError(f"max_new_tokens={max_new_tokens!r} is not accepted; use an int >= 0")
  if temperature < 0:
    raise ValueError(f"temperature={temperature!r} is not accepted; use >= 0 (0 = greedy)")
  if not isinstance(top_k, int) or top_k < 0:
    raise ValueError(f"top_k={top_k!r} is not accepted; use an int >= 0 (0 = off)")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p={top_p!r} is not accepted; use 0 < top_p <= 1 (1 = off)")


_GENERATORS = weakref.WeakKeyDictionary()


def generate(model, prompts, tokenizer=None, max_new_tokens=32, temperature=0.0, top_k=0,
             top_p=1.0, seed=0, stop_token_ids=None, max_length=None,
             jit_compile=True) -> GenerationOutput:
  """Continues `prompts` with `model` (a `CausalLM`); see `Generator` and
  `Generator.generate` for the arguments. The compiled loop is cached per model and
  setting, so repeated calls do not retrace."""
  key = (id(tokenizer), None if stop_token_ids is None else tuple(stop_token_ids), max_length,
         bool(jit_compile))
  per_model = _GENERATORS.setdefault(model, {})
  if key not in per_model:
    per_model[key] = Generator(model, tokenizer, stop_token_ids=stop_token_ids,
                               max_length=max_length, jit_compile=jit_compile)
  return per_model[key].generate(prompts, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
