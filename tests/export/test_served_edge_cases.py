"""Every served signature of every task, for each tokenizer kind, answers what a server meets
besides well-formed text: an empty string, whitespace only, a text far longer than the
context, invalid UTF-8, and a batch of none (docs/serving.md has the table of answers).

Each export is called in one fresh TensorFlow-only process (`tfllm/export/tf_only.py`, as TF
Serving would run it) with every case at once. Also here: a prompt longer than the context,
the multi-task export's signatures, and that no export needs XLA unless asked for it.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfllm import export
from tfllm.export import tf_only
from tfllm.export import signatures as signatures_lib
from tfllm.models import generation
from tests.export.conftest import (NER_TAGS, SENTIMENT_LABELS, served, strings,
                                   warmup_requests)

pytestmark = pytest.mark.slow  # every test exports a model and starts a TensorFlow process

LONG = ("the film was good " * 2800).encode()   # 50,400 characters
EDGE_CASES = {"empty": b"", "whitespace": b" \t\n  ", "long": LONG,
              "invalid_utf8": b"\xff\xfe the \xc3( film \xe2\x82"}
NORMAL = b"john lives in paris"
# The rows of the batch that holds every case at once.
BATCH = list(EDGE_CASES.values()) + [NORMAL]
GENERATE_NEW_TOKENS = 4  # max_new_tokens of the `generate` requests

# Export id -> `model_dirs` key: every task with WordPiece, and the other tokenizer kinds for
# the default job (byte level), a causal LM, a masked LM and multi-task models (whose heads
# tokenize as the classifiers and the tagger do).
EXPORTS = {
    "default_job": "default_job",
    "causal_lm-word_piece": "causal_lm",
    "causal_lm-sentence_piece": ("causal_lm", "sentence_piece"),
    "sequence_classification": "sequence_classification",
    "token_classification": "token_classification",
    "masked_lm-word_piece": "masked_lm",
    "masked_lm-byte": ("masked_lm", "byte"),
    "multi_task-word_piece": "multi_task",
    "multi_task-sentence_piece": ("multi_task", "sentence_piece"),
    "multi_task-byte": ("multi_task", "byte"),
}


def _text_input(inputs):
  """The name of a signature's string input (its other inputs are settings)."""
  (name,) = [name for name, value in inputs.items() if value.dtype == object]
  return name


def _requests(path, config):
  """`(signature, label, inputs)`: each case alone, all of them in one batch, and no text at
  all, for every signature (settings as in the export's warm-up request; `generate` asks for
  GENERATE_NEW_TOKENS tokens)."""
  requests = []
  for signature, warm in sorted(warmup_requests(path).items()):
    name = _text_input(warm)
    if signature == "generate":
      warm = dict(warm, max_new_tokens=np.array([GENERATE_NEW_TOKENS], np.int32))

    def with_texts(texts, name=name, warm=warm):
      if name == "inputs":  # serve_examples: tf.Example protos
        texts = [signatures_lib.serialized_example(config.data.text_feature, t)
                 for t in texts]
      return dict(warm, **{name: strings(texts)})

    requests.extend((signature, case, with_texts([text])) for case, text in EDGE_CASES.items())
    requests.append((signature, "batch", with_texts(BATCH)))
    requests.append((signature, "no_text", with_texts([])))
  return requests


def _named(outputs, key):
  """Outputs named `key`, or `<head>_key` (multi-task serving_default), as name -> value."""
  return {name: value for name, value in outputs.items()
          if name == key or name.endswith("_" + key)}


def _check_well_formed(outputs, rows, label):
  for name, value in outputs.items():
    assert value.shape[0] == rows, (label, name, value.shape)
    if value.dtype == object:  # a REST answer is JSON: every string must be UTF-8
      for text in value.ravel():
        text.decode("utf-8")
    elif value.dtype.kind == "f":
      assert np.isfinite(value).all(), (label, name)


def _check_answers(outputs, cases, config, max_new_tokens, label):
  """What each kind of output must say about the edge cases (`cases`: one a row)."""
  blank = np.array([case in ("empty", "whitespace") for case in cases], bool)
  for probabilities in _named(outputs, "probabilities").values():
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5, err_msg=label)
  for name, num_words in _named(outputs, "num_words").items():
    assert (num_words[blank] == 0).all(), (label, name, num_words)
    assert (num_words[~blank] > 0).all(), (label, name, num_words)
    assert (num_words <= config.data.sequence_length - 2).all(), (label, name, num_words)
    entities = outputs[name.replace("num_words", "num_entities")]
    assert (entities <= num_words).all(), (label, name)
  for name, num_masks in _named(outputs, "num_masks").items():
    assert (num_masks == 0).all(), (label, name, num_masks)  # no case holds a [MASK]
  for name, num_tokens in _named(outputs, "num_tokens").items():
    assert ((1 <= num_tokens) & (num_tokens <= max_new_tokens)).all(), (label, num_tokens)


def _check_rows_answer_alone(batch, alone, label):
  """A row's answer does not depend on the rows beside it (outputs of one width per row)."""
  for name, value in batch.items():
    for row, single in enumerate(alone):
      if single[name].shape[1:] != value.shape[1:]:
        continue  # padded to the batch's longest row
      if value.dtype.kind == "f":
        np.testing.assert_allclose(value[row], single[name][0], atol=1e-5, err_msg=label)
      else:
        np.testing.assert_array_equal(value[row], single[name][0], err_msg=f"{label} {name}")


def _expected_long_continuation(model, tokenizer, config, signatures, max_new_tokens,
                                greedy):
  """In-process generation from what a long prompt must keep: the start token, then LONG's
  last tokens that leave room for `max_new_tokens` (at least one)."""
  keep = signatures.max_length - 1 - min(max_new_tokens, signatures.max_length - 2)
  tail = np.asarray(tokenizer.tokenize(LONG.decode())).tolist()[-keep:]
  settings = config.export
  expected = generation.generate(
      model, [[signatures.eos] + tail], max_new_tokens=max_new_tokens,
      temperature=0.0 if greedy else settings.temperature, top_k=0 if greedy else settings.top_k,
      top_p=1.0 if greedy else settings.top_p, seed=settings.seed,
      stop_token_ids=signatures.stop_token_ids, max_length=signatures.max_length,
      jit_compile=False)
  # A continuation of one token would not tell a kept tail from a prompt cut to one slot.
  assert len(expected.token_ids[0]) > 1, "pick another seed for this model"
  return expected.token_ids[0]


@pytest.mark.parametrize("export_id", sorted(EXPORTS))
def test_every_signature_answers_edge_cases(exports, export_id):
  key = EXPORTS[export_id]
  path, model, tokenizer, config = exports[key]
  assert tf_only.xla_must_compile(path) == []
  requests = _requests(path, config)
  result = served(exports, key, [(signature, inputs) for signature, _, inputs in requests])
  answers = {}
  for (signature, case, inputs), outputs in zip(requests, result["outputs"]):
    label = f"{export_id} {signature} {case}"
    rows = len(inputs[_text_input(inputs)])
    _check_well_formed(outputs, rows, label)
    cases = list(EDGE_CASES) + ["normal"] if case == "batch" else [case] * rows
    max_new_tokens = (GENERATE_NEW_TOKENS if signature == "generate"
                      else config.export.max_new_tokens)
    _check_answers(outputs, cases, config, max_new_tokens, label)
    answers[signature, case] = outputs
  signature_names = {signature for signature, _ in answers}
  for signature in signature_names:
    _check_rows_answer_alone(answers[signature, "batch"],
                             [answers[signature, case] for case in EDGE_CASES],
                             f"{export_id} {signature}")

  if config.task.name == "causal_lm":
    signatures = signatures_lib.signatures_for(model, tokenizer, config)
    for signature, new_tokens, greedy in (
        ("serving_default", config.export.max_new_tokens, config.export.temperature <= 0),
        ("generate", GENERATE_NEW_TOKENS, True)):
      long = answers[signature, "long"]
      expected = _expected_long_continuation(model, tokenizer, config, signatures, new_tokens,
                                             greedy)
      assert long["token_ids"][0][:long["num_tokens"][0]].tolist() == expected, signature

  if config.task.name == "multi_task":
    assert signature_names == {"serving_default", "sentiment", "ner"}
    for (signature, case), outputs in answers.items():
      if signature == "serving_default":
        continue
      everything = answers["serving_default", case]
      for name, value in outputs.items():
        np.testing.assert_array_equal(everything[f"{signature}_{name}"], value)


# ------------------------------------------------------------------------------ multi-task


def _head_config(config, head):
  """A single-task config of one head of the multi-task `config` (same model, same export)."""
  single = config.copy_and_resolve_references()
  section = config.task.heads[head]
  single.task.update(name=section.task, labels=list(section.labels),
                     decoding=section.decoding, heads={})
  return single


def test_multi_task_heads_serve_what_their_single_task_signatures_serve(exports):
  """Each head's signature (and its part of `serving_default`) equals what the single-task
  signature of that head computes, and the NER head decodes as configured (`iob2_viterbi`:
  no `I-X` after `O` or after another type)."""
  _, model, tokenizer, config = exports["multi_task"]
  assert config.task.heads.ner.decoding == "iob2_viterbi"
  texts = strings([b"john lives in paris", b"mary and john to london", b"the film was good",
                   b"paris paris john and mary and london the film was good"])
  result = served(exports, "multi_task", [("ner", {"text": texts}),
                                          ("sentiment", {"text": texts}),
                                          ("serving_default", {"text": texts})])
  assert result["signatures"] == ["ner", "sentiment", "serving_default"]
  ner, sentiment, everything = result["outputs"]
  assert sorted(everything) == sorted([f"ner_{k}" for k in ner] +
                                      [f"sentiment_{k}" for k in sentiment])
  for head, served_outputs in (("ner", ner), ("sentiment", sentiment)):
    head_signatures = signatures_lib.signatures_for(model, tokenizer, _head_config(config, head))
    # The single-task classes run `model(features)`: give them this head's logits.
    head_signatures._forward = lambda features, head=head: model(features)[head]  # pylint: disable=protected-access
    expected = head_signatures.functions()["serving_default"](tf.constant(texts))
    assert sorted(expected) == sorted(served_outputs)
    for name, value in expected.items():
      if value.dtype.is_floating:
        np.testing.assert_allclose(served_outputs[name], value.numpy(), atol=1e-5)
      else:
        np.testing.assert_array_equal(served_outputs[name], value.numpy())
      np.testing.assert_array_equal(everything[f"{head}_{name}"], served_outputs[name])
  assert set(sentiment["label"].tolist()) <= {l.encode() for l in SENTIMENT_LABELS}
  for row in range(len(texts)):
    tags = [t.decode() for t in ner["tags"][row][:ner["num_words"][row]]]
    assert set(tags) <= set(NER_TAGS)
    for previous, tag in zip(["O"] + tags, tags):
      if tag.startswith("I-"):
        assert previous[2:] == tag[2:], tags


def test_multi_task_export_refuses_a_head_without_a_served_signature(exports, tmp_path):
  _, model, tokenizer, config = exports["multi_task"]
  config = config.copy_and_resolve_references()
  config.task.heads.sentiment.task = "masked_lm"
  with pytest.raises(ValueError, match="config.task.heads.sentiment: a masked_lm head has no "
                                       "served signature"):
    export.export_saved_model(model, tokenizer, config, str(tmp_path / "out"))


# -------------------------------------------------------------------------------------- XLA


def test_default_export_has_no_xla_only_function_and_the_xla_option_has(exports, tmp_path):
  """The default job's export runs on any model server; `export.jit_compile=True` marks the
  generation loop and the forward pass `_XlaMustCompile` (which the check must see)."""
  path, model, tokenizer, config = exports["default_job"]
  assert not config.export.jit_compile
  assert tf_only.xla_must_compile(path) == []
  config = config.copy_and_resolve_references()
  config.export.jit_compile = True
  xla_path = export.export_saved_model(model, tokenizer, config, str(tmp_path / "xla"))
  assert tf_only.xla_must_compile(xla_path), "the XLA export carries no _XlaMustCompile=True"
