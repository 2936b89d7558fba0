"""Generation: KV-cached XLA loop vs full forward passes, sampling, batching, stopping."""

from __future__ import annotations

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from tfllm import config as config_lib
from tfllm.models import build, generation
from tfllm.models.config import model_preset

VOCAB = 61
MAX_LENGTH = 20
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [3]]


@pytest.fixture(scope="module")
def model():
  config = config_lib.default_config()
  config.model.update(model_preset("gpt2"))
  config.model.update(vocab_size=VOCAB, num_layers=2, hidden_dim=32, num_heads=2,
                      intermediate_dim=64, max_sequence_length=MAX_LENGTH)
  keras.utils.set_random_seed(3)
  return build(config)


@pytest.fixture(scope="module")
def generator(model):
  return generation.Generator(model, stop_token_ids=(), jit_compile=True)


def uncached_greedy(model, prompt, max_new_tokens):
  """Reference: one full forward pass over the whole sequence per new token."""
  tokens = list(prompt)
  for _ in range(max_new_tokens):
    logits = model({"token_ids": np.array([tokens], np.int32),
                    "padding_mask": np.ones((1, len(tokens)), bool)})
    tokens.append(int(np.argmax(logits[0, -1])))
  return tokens[len(prompt):]


def test_cached_greedy_equals_uncached_greedy(model, generator):
  output = generator.generate(PROMPTS, max_new_tokens=8)
  for prompt, new in zip(PROMPTS, output.token_ids):
    assert new == uncached_greedy(model, prompt, 8)


@pytest.mark.parametrize("prompt_lengths", [(3, 20, 45), (40, 70)])
def test_prefill_of_a_static_length_then_prompts_longer_than_it(prompt_lengths):
  """Buffer 80: the prefill covers the first 16 (or 64) positions, the shortest prompt's;
  the longer prompts' remaining tokens go through the decoding loop."""
  config = config_lib.default_config()
  config.model.update(model_preset("gpt2"))
  config.model.update(vocab_size=VOCAB, num_layers=2, hidden_dim=32, num_heads=2,
                      intermediate_dim=64, max_sequence_length=80)
  keras.utils.set_random_seed(4)
  long_model = build(config)
  assert generation.prefill_lengths(80) == [16, 32, 64, 80]
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, VOCAB, size=n).tolist() for n in prompt_lengths]
  output = generation.Generator(long_model, stop_token_ids=()).generate(prompts,
                                                                        max_new_tokens=6)
  for prompt, new in zip(prompts, output.token_ids):
    assert new == uncached_greedy(long_model, prompt, 6)
  # The prefilled keys and values: those the loop reads before rewriting (positions before
  # the shortest prompt's last token) equal a prefill of the whole buffer.
  token_ids, lengths = generation.pack_prompts(tf.ragged.constant(prompts), 80)
  start = int(min(prompt_lengths))
  empty = lambda: long_model.backbone.init_cache(len(prompts), 80)  # noqa: E731
  prefilled = generation.prefill_cache(long_model, token_ids, empty(), tf.constant(start))
  _, whole = long_model.backbone.call_with_cache(token_ids, empty(), 0)
  for got, want in zip(tf.nest.flatten(prefilled), tf.nest.flatten(whole)):
    np.testing.assert_allclose(got[:, :, :start - 1], want[:, :, :start - 1], atol=1e-5)


def test_batch_equals_one_by_one_greedy_and_sampled(generator):
  for kwargs in (dict(), dict(temperature=1.0, top_p=0.9, seed=11)):
    batch = generator.generate(PROMPTS, max_new_tokens=7, **kwargs).token_ids
    alone = [generator.generate([p], max_new_tokens=7, **kwargs).token_ids[0] for p in PROMPTS]
    assert batch == alone


def test_seed_reproduces_sampling_and_seeds_differ(generator):
  first = generator.generate(PROMPTS, max_new_tokens=10, temperature=1.5, seed=5).token_ids
  again = generator.generate(PROMPTS, max_new_tokens=10, temperature=1.5, seed=5).token_ids
  other = generator.generate(PROMPTS, max_new_tokens=10, temperature=1.5, seed=6).token_ids
  assert first == again
  assert first != other


def test_top_k_one_equals_greedy(generator):
  greedy = generator.generate(PROMPTS, max_new_tokens=8).token_ids
  top1 = generator.generate(PROMPTS, max_new_tokens=8, temperature=2.0, top_k=1, seed=9)
  assert top1.token_ids == greedy


def test_xla_and_graph_loops_agree(model, generator):
  graph = generation.Generator(model, stop_token_ids=(), jit_compile=False)
  for kwargs in (dict(), dict(temperature=1.0, top_k=5, seed=2)):
    assert (graph.generate(PROMPTS, max_new_tokens=6, **kwargs).token_ids ==
            generator.generate(PROMPTS, max_new_tokens=6, **kwargs).token_ids)


def test_stop_token_ends_only_its_row(model):
  free = generation.Generator(model, stop_token_ids=(), jit_compile=False)
  runs = free.generate(PROMPTS, max_new_tokens=6).token_ids
  stop = runs[0][2]  # the third token of the first row stops it there
  stopped = generation.Generator(model, stop_token_ids=(stop,), jit_compile=False)
  outputs = stopped.generate(PROMPTS, max_new_tokens=6).token_ids
  assert outputs[0] == runs[0][:runs[0].index(stop) + 1]
  for full, cut in zip(runs[1:], outputs[1:]):
    expected = full[:full.index(stop) + 1] if stop in full else full
    assert cut == expected


def test_max_new_tokens_clamped_to_buffer_and_zero(generator):
  long_prompt = list(range(1, MAX_LENGTH - 2))  # leaves room for 3 tokens
  output = generator.generate([long_prompt, [4]], max_new_tokens=50).token_ids
  assert len(output[0]) == 3
  assert len(output[1]) == MAX_LENGTH - 1
  assert generator.generate(PROMPTS, max_new_tokens=0).token_ids == [[], [], []]


def test_sampling_filters_follow_top_k_and_top_p():
  rows = 4000
  logits = tf.tile(tf.math.log([[0.5, 0.3, 0.15, 0.05]]), [rows, 1])
  ones = lambda v, d: tf.fill([rows], tf.constant(v, d))  # noqa: E731
  seeds = tf.range(rows, dtype=tf.int64)

  def draw(top_k=0, top_p=1.0):
    return generation.sample_next_token(logits, ones(1.0, tf.float32), ones(top_k, tf.int32),
                                        ones(top_p, tf.float32), seeds, 7).numpy()

  frequencies = np.bincount(draw(), minlength=4) / rows
  np.testing.assert_allclose(frequencies, [0.5, 0.3, 0.15, 0.05], atol=0.03)
  assert set(draw(top_k=2)) == {0, 1}
  # Cumulative probability before token 2 is 0.8 < 0.85: tokens 0, 1, 2 are kept.
  assert set(draw(top_p=0.85)) == {0, 1, 2}
  assert set(draw(top_p=0.3)) == {0}


def test_string_prompts_with_tokenizer(model):
  vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]
  tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocabulary, oov_token="[UNK]")
  output = generation.generate(model, ["w1 w2 w3", ""], tokenizer=tokenizer, max_new_tokens=4,
                               jit_compile=False)
  eos = 3
  ids = generation.generate(model, [[eos, 6, 7, 8], [eos]], max_new_tokens=4,
                            stop_token_ids=[eos], jit_compile=False).token_ids
  assert output.token_ids == ids
  expected = [" ".join(vocabulary[t] for t in row if t != eos) for row in ids]
  assert output.text == expected


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompts="just a string"), "must be a list"),
    (dict(prompts=[[]]), "empty"),
    (dict(prompts=[[VOCAB]]), "token ids must lie"),
    (dict(prompts=[list(range(MAX_LENGTH))]), "max_length"),
    (dict(prompts=["text"]), "need a tokenizer"),
    (dict(prompts=[[1]], temperature=-1.0), "temperature"),
    (dict(prompts=[[1]], top_p=0.0), "top_p"),
    (dict(prompts=[[1]], top_k=-2), "top_k"),
    (dict(prompts=[[1]], max_new_tokens=-1), "max_new_tokens"),
])
def test_bad_arguments_raise_one_line_errors(generator, kwargs, match):
  with pytest.raises(ValueError, match=match):
    generator.generate(**kwargs)
