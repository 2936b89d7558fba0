"""Exports of every task, loaded in a fresh TensorFlow-only process (no tfllm, keras,
keras-hub or tensorflow_text importable), compared with the in-process Keras model.

The fresh-process tests are marked slow (each starts a TensorFlow process); CI runs them."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from tfllm import export
from tfllm.export import latency, tf_only, warmup
from tfllm.export import signatures as signatures_lib
from tfllm.tagging import spans as spans_lib
from tfllm.models import generation
from tests.export.conftest import NER_TAGS, VOCABULARY, served, strings
from tests.tagging.test_decoding import reference_viterbi

CLS, SEP, PAD, MASK = (VOCABULARY.index(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]"))
SEQUENCE_LENGTH = 16
LONG = ("the film was good " * 12500).encode()   # 50,000 characters
BAD_TEXTS = [b"", b"   \t\n", LONG, b"\xff\xfe the \xc3( film", "paris ?".encode()]
TEXTS = [b"the film was good", b"an awful movie , bad", b"hello"]
SENTENCES = [b"john lives in paris", b"mary and john to london", b"the film"]
MASKED = [b"the [MASK] was good", b"[MASK] lives in [MASK] !", b"no masks here"]


def pieces(tokenizer, text):
  """Token ids of one string, as a list (eager keras-hub tokenizers return arrays)."""
  return np.asarray(tokenizer.tokenize(text)).tolist()


def assert_tf_only(result, signatures):
  assert result["signatures"] == sorted(signatures)
  ops = result["ops"]
  assert ops["other"] == [], f"ops outside core TF and TF-Text: {ops['other']}"
  assert not set(ops["core"]) & set(tf_only.PYTHON_OPS)
  assert "FastWordpieceTokenizeWithOffsets" in ops["text"]  # tokenization is in the graph
  for module in tf_only.BLOCKED_MODULES:
    assert module not in result["modules"]


# ----------------------------------------------------------------------------- causal LM


@pytest.mark.slow
def test_causal_lm_served_equals_in_process(exports):
  path, model, tokenizer, config = exports["causal_lm"]
  prompts = [b"hello world", b"the film", b"to be or not"]
  n = len(prompts)
  sampled = {"prompt": strings(prompts), "max_new_tokens": np.full([n], 6, np.int32),
             "temperature": np.full([n], 1.3, np.float32), "top_k": np.full([n], 8, np.int32),
             "top_p": np.full([n], 0.95, np.float32), "seed": np.arange(n, dtype=np.int64)}
  result = served(exports, "causal_lm", [("serving_default", {"prompt": strings(prompts)}),
                                         ("generate", sampled)])
  assert_tf_only(result, ["serving_default", "generate"])
  greedy_out, sampled_out = result["outputs"]

  texts = [p.decode() for p in prompts]
  greedy = generation.generate(model, texts, tokenizer=tokenizer,
                               max_new_tokens=config.export.max_new_tokens, jit_compile=True)
  for row, (ids, count) in enumerate(zip(greedy_out["token_ids"], greedy_out["num_tokens"])):
    assert list(ids[:count]) == greedy.token_ids[row]
  assert [t.decode() for t in greedy_out["text"]] == greedy.text

  # Sampling: per-row seeds; each row computed alone in process gives the same tokens.
  for row in range(n):
    alone = generation.generate(model, [texts[row]], tokenizer=tokenizer, max_new_tokens=6,
                                temperature=1.3, top_k=8, top_p=0.95, seed=row,
                                jit_compile=False)
    count = sampled_out["num_tokens"][row]
    assert list(sampled_out["token_ids"][row][:count]) == alone.token_ids[0]


@pytest.mark.slow
def test_causal_lm_bad_inputs_are_bounded(exports):
  _, model, _, config = exports["causal_lm"]
  max_length = model.backbone.max_sequence_length
  n = len(BAD_TEXTS)
  huge = {"prompt": strings(BAD_TEXTS), "max_new_tokens": np.full([n], 10**6, np.int32),
          "temperature": np.array([0.0, -1.0, np.nan, 5.0, 1.0], np.float32),
          "top_k": np.array([0, -3, 10**6, 1, 2], np.int32),
          "top_p": np.array([1.0, 0.0, -2.0, 7.0, np.nan], np.float32),
          "seed": np.array([0, -1, 2**62, 3, 4], np.int64)}
  broadcast = {"prompt": strings([b"hello", b"the"]), "max_new_tokens": np.array([2], np.int32),
               "temperature": np.array([0.0], np.float32), "top_k": np.array([0], np.int32),
               "top_p": np.array([1.0], np.float32), "seed": np.array([0], np.int64)}
  result = served(exports, "causal_lm", [
      ("serving_default", {"prompt": strings(BAD_TEXTS)}),
      ("generate", huge),
      ("serving_default", {"prompt": strings([])}),
      ("serving_default", {"prompt": strings([b"hello world"] * 256)}),
      ("generate", broadcast)])
  defaults, clamped, empty, big, broadcasted = result["outputs"]
  assert defaults["text"].shape == (n,)
  assert (defaults["num_tokens"] <= config.export.max_new_tokens).all()
  # max_new_tokens beyond the context is clamped to what fits; the long prompt keeps its last
  # token after the start token, so up to max_length - 2 new tokens follow it.
  assert clamped["num_tokens"][2] <= max_length - 2
  assert (clamped["num_tokens"] >= 1).all() and (clamped["num_tokens"] < max_length).all()
  assert empty["text"].shape == (0,) and empty["num_tokens"].shape == (0,)
  assert big["text"].shape == (256,) and len(set(big["text"].tolist())) == 1
  assert broadcasted["num_tokens"].tolist() == [2, 2]


@pytest.mark.slow
def test_causal_lm_xla_export_is_marked_and_matches(exports, tmp_path):
  _, model, tokenizer, config = exports["causal_lm"]
  config = config.copy_and_resolve_references()
  config.export.jit_compile = True
  path = export.export_saved_model(model, tokenizer, config, str(tmp_path / "xla"))
  with open(os.path.join(path, "saved_model.pb"), "rb") as f:
    assert b"_XlaMustCompile" in f.read()
  prompts = [b"hello world", b""]
  result = latency.run_tf_only(path, calls=[("serving_default", {"prompt": strings(prompts)})],
                               timeout=300)
  outputs = result["outputs"][0]
  assert not isinstance(outputs, str), outputs
  expected = generation.generate(model, [p.decode() for p in prompts], tokenizer=tokenizer,
                                 max_new_tokens=config.export.max_new_tokens)
  assert [t.decode() for t in outputs["text"]] == expected.text


# ------------------------------------------------------------------ sequence classification


def _classifier_expected(model, tokenizer, texts):
  packer = keras_hub.layers.StartEndPacker(SEQUENCE_LENGTH, start_value=CLS, end_value=SEP,
                                           pad_value=PAD, return_padding_mask=True)
  token_ids, padding_mask = packer(tf.ragged.constant(
      [pieces(tokenizer, t.decode("utf-8", "replace")) for t in texts],
      dtype=tf.int32, ragged_rank=1))
  logits = model({"token_ids": token_ids, "padding_mask": padding_mask})
  return tf.nn.softmax(logits).numpy()


def _examples(texts):
  return strings([signatures_lib.serialized_example("text", t) for t in texts])


@pytest.mark.slow
def test_sequence_classifier_served_equals_in_process(exports):
  _, model, tokenizer, config = exports["sequence_classification"]
  result = served(exports, "sequence_classification", [
      ("serving_default", {"text": strings(TEXTS)}),
      ("serve_examples", {"inputs": _examples(TEXTS)}),
      ("serving_default", {"text": strings(BAD_TEXTS)}),
      ("serving_default", {"text": strings([])}),
      ("serving_default", {"text": strings([b"a good film"] * 256)})])
  assert_tf_only(result, ["serving_default", "serve_examples"])
  default, examples, bad, empty, big = result["outputs"]
  expected = _classifier_expected(model, tokenizer, TEXTS)
  np.testing.assert_allclose(default["probabilities"], expected, atol=1e-5)
  np.testing.assert_array_equal(default["label_id"], expected.argmax(-1))
  assert [l.decode() for l in default["label"]] == [
      config.task.labels[i] for i in expected.argmax(-1)]
  np.testing.assert_allclose(examples["scores"], expected, atol=1e-5)
  assert examples["classes"].tolist() == [[b"negative", b"positive"]] * len(TEXTS)
  np.testing.assert_allclose(bad["probabilities"].sum(-1), 1.0, atol=1e-5)
  # The 50,000-character text is truncated to the sequence length: same as its first words.
  np.testing.assert_allclose(bad["probabilities"][2],
                             _classifier_expected(model, tokenizer, [LONG[:200]])[0], atol=1e-5)
  assert empty["probabilities"].shape == (0, 2)
  assert big["label"].shape == (256,)


@pytest.mark.slow
def test_saved_model_cli_show_and_run(exports):
  path = exports["sequence_classification"][0]
  show = subprocess.run([os.path.join(os.path.dirname(sys.executable), "saved_model_cli"),
                         "show", "--all", "--dir", path], capture_output=True, text=True,
                        timeout=120, check=True)
  assert "signature_def['serving_default']" in show.stdout
  assert "signature_def['serve_examples']" in show.stdout
  assert "tensorflow/serving/classify" in show.stdout
  run = subprocess.run([sys.executable, tf_only.__file__, "saved_model_cli", "run", "--dir", path,
                        "--tag_set", "serve", "--signature_def", "serving_default",
                        "--input_exprs", 'text=["the film was good"]'],
                       capture_output=True, text=True, timeout=120, check=True)
  assert "Result for output key probabilities" in run.stdout


# ------------------------------------------------------------------- token classification


def _bio_entities(tags):
  entities, current = [], None
  for i, tag in enumerate(tags + ["O"]):
    prefix, _, kind = tag.partition("-")
    if current and (tag == "O" or prefix == "B" or kind != current[0]):
      entities.append((current[0], current[1], i))
      current = None
    if tag != "O" and current is None:
      current = (kind, i)
  return entities


def _tagger_expected(model, tokenizer, texts, decoding="argmax"):
  unk = VOCABULARY.index("[UNK]")
  rows, firsts, words_kept = [], [], []
  for text in texts:
    row_pieces, first = [], []
    for word in text.decode().split():
      word_pieces = pieces(tokenizer, word) or [unk]
      first.append(len(row_pieces))
      row_pieces.extend(word_pieces)
    row_pieces = row_pieces[:SEQUENCE_LENGTH - 2]
    first = [f for f in first if f < len(row_pieces)]
    rows.append([CLS] + row_pieces + [SEP] + [PAD] * (SEQUENCE_LENGTH - 2 - len(row_pieces)))
    firsts.append(first)
    words_kept.append(text.decode().split()[:len(first)])
  token_ids = np.array(rows, np.int32)
  logits = model({"token_ids": token_ids, "padding_mask": token_ids != PAD}).numpy()
  word_logits = [logits[r, [f + 1 for f in first]] for r, first in enumerate(firsts)]
  if decoding == "iob2_viterbi":
    tags = [[NER_TAGS[t] for t in reference_viterbi(tf.nn.log_softmax(w).numpy(), NER_TAGS)]
            if len(w) else [] for w in word_logits]
  else:
    tags = [[NER_TAGS[int(t)] for t in w.argmax(-1)] for w in word_logits]
  return words_kept, tags


@pytest.mark.slow
def test_token_classifier_served_equals_in_process(exports):
  _, model, tokenizer, _ = exports["token_classification"]
  long_sentence = b" ".join([b"john lives in paris"] * 10)
  texts = SENTENCES + [long_sentence]
  result = served(exports, "token_classification", [
      ("serving_default", {"text": strings(texts)}),
      ("serve_examples", {"inputs": _examples(texts)}),
      ("serving_default", {"text": strings(BAD_TEXTS)}),
      ("serving_default", {"text": strings([])}),
      ("serving_default", {"text": strings([b"john lives in paris"] * 256)})])
  assert_tf_only(result, ["serving_default", "serve_examples"])
  default, examples, bad, empty, big = result["outputs"]
  words, tags = _tagger_expected(model, tokenizer, texts)
  for row in range(len(texts)):
    n = default["num_words"][row]
    assert [w.decode() for w in default["words"][row][:n]] == words[row]
    assert [t.decode() for t in default["tags"][row][:n]] == tags[row]
    k = default["num_entities"][row]
    spans = list(zip([t.decode() for t in default["entity_types"][row][:k]],
                     default["entity_starts"][row][:k].tolist(),
                     default["entity_ends"][row][:k].tolist()))
    assert spans == _bio_entities(tags[row])
  assert default["num_words"][3] < 40  # truncated to the sequence length
  for key in default:
    np.testing.assert_array_equal(examples[key], default[key])
  assert bad["num_words"].tolist()[:2] == [0, 0]
  assert empty["num_words"].shape == (0,)
  assert big["tags"].shape[0] == 256


@pytest.mark.slow
def test_token_classifier_serves_iob2_viterbi_decoding(exports, tmp_path):
  _, model, tokenizer, config = exports["token_classification"]
  config = copy.deepcopy(config)
  config.task.decoding = "iob2_viterbi"
  path = export.export_saved_model(model, tokenizer, config, str(tmp_path / "viterbi"))
  texts = SENTENCES + [b"paris paris john and mary and london the film was good"]
  result = latency.run_tf_only(path, calls=[("serving_default", {"text": strings(texts)}),
                                            ("serving_default", {"text": strings(BAD_TEXTS)}),
                                            ("serving_default", {"text": strings([])})],
                               timeout=300)
  served_tags, bad, empty = result["outputs"]
  assert bad["num_words"].tolist()[:2] == [0, 0]
  assert not isinstance(empty, str), empty[-3000:]
  assert empty["num_words"].shape == (0,)
  _, tags = _tagger_expected(model, tokenizer, texts, "iob2_viterbi")
  _, argmax_tags = _tagger_expected(model, tokenizer, texts)
  assert tags != argmax_tags   # the little test model's argmax spells invalid IOB2 here
  for row in range(len(texts)):
    n = served_tags["num_words"][row]
    assert [t.decode() for t in served_tags["tags"][row][:n]] == tags[row]


def test_entity_spans_decode_bio():
  type_of, begins, types = spans_lib.tag_spans(NER_TAGS)
  tag_rows = [["B-PER", "I-PER", "O", "B-LOC"], ["I-LOC", "I-LOC", "B-LOC", "I-PER"],
              ["O", "O", "O", "O"]]
  ids = tf.constant([[NER_TAGS.index(t) for t in row] for row in tag_rows])
  kinds, starts, ends, counts = spans_lib.entity_spans(
      ids, tf.constant([4, 4, 2]), type_of, begins)
  for row, tags in enumerate(tag_rows):
    k = int(counts[row])
    got = [(types[t], s, e) for t, s, e in zip(kinds[row][:k].numpy(), starts[row][:k].numpy(),
                                               ends[row][:k].numpy())]
    assert got == _bio_entities(tags[:[4, 4, 2][row]])


# ----------------------------------------------------------------------------- masked LM


@pytest.mark.slow
def test_masked_lm_served_equals_in_process(exports):
  _, model, tokenizer, config = exports["masked_lm"]
  result = served(exports, "masked_lm", [
      ("serving_default", {"text": strings(MASKED)}),
      ("serving_default", {"text": strings(BAD_TEXTS)}),
      ("serving_default", {"text": strings([])})])
  assert_tf_only(result, ["serving_default"])
  default, bad, empty = result["outputs"]
  rows, positions = [], []
  for text in MASKED:
    ids = []
    for i, segment in enumerate(text.decode().split("[MASK]")):
      if i:
        ids.append(MASK)
      ids.extend(pieces(tokenizer, segment))
    row = [CLS] + ids[:SEQUENCE_LENGTH - 2] + [SEP]
    rows.append(row + [PAD] * (SEQUENCE_LENGTH - len(row)))
    positions.append([i for i, t in enumerate(row) if t == MASK])
  width = max(len(p) for p in positions)
  token_ids = np.array(rows, np.int32)
  features = {"token_ids": token_ids, "padding_mask": token_ids != PAD,
              "token_type_ids": np.zeros_like(token_ids),
              "mask_positions": np.array([p + [0] * (width - len(p)) for p in positions],
                                         np.int32)}
  probabilities = tf.nn.softmax(model(features)).numpy()
  k = config.export.top_predictions
  assert default["num_masks"].tolist() == [len(p) for p in positions]
  for row, row_positions in enumerate(positions):
    for slot in range(len(row_positions)):
      top = np.argsort(-probabilities[row, slot])[:k]
      assert default["token_ids"][row, slot].tolist() == top.tolist()
      np.testing.assert_allclose(default["scores"][row, slot], probabilities[row, slot][top],
                                 atol=1e-5)
      assert [t.decode() for t in default["tokens"][row, slot]] == [VOCABULARY[i] for i in top]
  assert default["token_ids"][2].max() == -1  # no mask: padded
  assert bad["num_masks"].tolist() == [0] * len(BAD_TEXTS)
  assert empty["num_masks"].shape == (0,)


# ---------------------------------------------------------------- layout and bad requests


@pytest.mark.parametrize("task", ["causal_lm", "sequence_classification",
                                  "token_classification", "masked_lm"])
def test_saved_model_stores_each_weight_once(exports, task):
  # keras-team/keras#23553: ExportArchive.track(model) stores every weight twice.
  path, model, _, _ = exports[task]
  reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
  stored = sum(int(np.prod(shape)) for name, shape in reader.get_variable_to_shape_map().items()
               if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"))
  assert model.count_params() <= stored <= model.count_params() + 16


def test_versions_are_atomic_and_never_overwritten_silently(exports, tmp_path):
  _, model, tokenizer, config = exports["sequence_classification"]
  base = str(tmp_path / "serving")
  first = export.export_saved_model(model, tokenizer, config, base)
  second = export.export_saved_model(model, tokenizer, config, base)
  assert [os.path.basename(first), os.path.basename(second)] == ["1", "2"]
  with pytest.raises(export.ExportError, match="already exists"):
    export.export_saved_model(model, tokenizer, config, base, version=1)
  before = os.stat(os.path.join(first, "saved_model.pb")).st_mtime_ns
  export.export_saved_model(model, tokenizer, config, base, version=1, overwrite=True)
  assert os.stat(os.path.join(first, "saved_model.pb")).st_mtime_ns != before
  assert sorted(os.listdir(base)) == ["1", "2"]  # no staging directories left
  assert os.path.isfile(os.path.join(first, "assets.extra", warmup.WARMUP_FILE))
  with pytest.raises(export.ExportError, match="version"):
    export.export_saved_model(model, tokenizer, config, base, version=-1)


def test_load_trained_errors_name_the_problem(model_dirs, tmp_path):
  with pytest.raises(export.ExportError, match="does not exist"):
    export.load_trained(str(tmp_path / "missing"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(export.ExportError, match="config.json is missing"):
    export.load_trained(str(empty))
  no_tokenizer = tmp_path / "no_tokenizer"
  no_tokenizer.mkdir()
  source = model_dirs["sequence_classification"]
  (no_tokenizer / "config.json").write_text(open(os.path.join(source, "config.json")).read())
  with pytest.raises(export.ExportError, match="no saved tokenizer"):
    export.load_trained(str(no_tokenizer))


@pytest.mark.slow
def test_int8_quantized_classifier_exports_through_the_same_path(model_dirs, tmp_path):
  model, tokenizer, config = export.load_trained(model_dirs["sequence_classification"])
  model.quantize("int8")
  path = export.export_saved_model(model, tokenizer, config, str(tmp_path / "int8"))
  result = latency.run_tf_only(path, calls=[("serving_default", {"text": strings(TEXTS)})],
                               list_ops=True, timeout=300)
  assert result["ops"]["other"] == []
  np.testing.assert_allclose(result["outputs"][0]["probabilities"],
                             _classifier_expected(model, tokenizer, TEXTS), atol=1e-5)
