"""tfllm-predict: batch inference as a user runs it, per task, and its library parts.

The end-to-end tests run the CLI as a subprocess on tiny untrained models (2 layers, width
32): what they check is the plumbing (inputs, skips, order, the served outputs, exit codes),
not the quality of the answers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tests.export.conftest import NER_TAGS, make_model_dir
from tfllm import config as config_lib
from tfllm import export
from tfllm.export import predict as predict_lib
from tfllm.export import predict_inputs, predictor as predictor_lib

PROGRAM = "tfllm.cli.predict"


def run_predict(*args, timeout=300):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", PROGRAM, *args], capture_output=True,
                        text=True, timeout=timeout, env=env, check=False)


def error_line(process):
  lines = [line for line in process.stderr.strip().splitlines()
           if line.startswith("tfllm-predict:")]
  assert len(lines) == 1, process.stderr
  assert "Traceback" not in process.stderr, process.stderr
  return lines[0]


def read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def write_bytes(path, data: bytes) -> str:
  with open(path, "wb") as f:
    f.write(data)
  return str(path)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
  """task -> a tiny model directory, each written once for this module when first used."""
  root = tmp_path_factory.mktemp("predict_models")
  made = {}

  def get(task):
    if task not in made:
      made[task] = str(root / task)
      make_model_dir(made[task], task)
    return made[task]

  return get


# The library, in process (no model: a fake signature) ----------------------------------------

def fake_predictor(fail_on_call=None):
  """A predictor whose `serving_default` tags each word `W` and pads like a served tagger."""
  calls = []

  def serving_default(text):
    calls.append(len(text))
    if fail_on_call is not None and len(calls) == fail_on_call:
      raise tf.errors.InternalError(None, None, "the model broke")
    words = [t.decode().split() for t in text.numpy()]
    width = max([len(w) for w in words] + [0])
    padded = [w + [""] * (width - len(w)) for w in words]
    return {"words": tf.constant(np.array(padded, object).reshape(len(words), width)),
            "tags": tf.constant(np.array([["W" if w else "" for w in row] for row in padded],
                                         object).reshape(len(words), width)),
            "num_words": tf.constant([len(w) for w in words], tf.int32),
            "entity_types": tf.constant(np.array([["W"]] * len(words), object)),
            "entity_starts": tf.constant([[0]] * len(words), tf.int32),
            "entity_ends": tf.constant([[1]] * len(words), tf.int32),
            "num_entities": tf.constant([min(len(w), 1) for w in words], tf.int32)}

  serving_default.specs = {"text": tf.TensorSpec([None], tf.string, name="text")}
  return predictor_lib.Predictor({"serving_default": serving_default}, {}, "fake"), calls


LINES = (b"one\n\nthree words here\n   \n\xff\xfe bad\nsix six\r\nseven")


def test_rows_do_not_depend_on_the_batch_and_skips_are_counted(tmp_path):
  path = write_bytes(tmp_path / "in.txt", LINES)
  outputs = []
  for batch_size in (1, 3):
    predictor, calls = fake_predictor()
    inputs = predict_inputs.open_inputs(path)
    output = str(tmp_path / f"out{batch_size}.jsonl")
    summary = predict_lib.predict(predictor, inputs, output, batch_size=batch_size)
    assert summary.line() == (f"4 predictions written to {output}; 3 lines skipped "
                              "(empty: 2, invalid UTF-8: 1)")
    assert calls == ([1, 1, 1, 1] if batch_size == 1 else [3, 1])
    outputs.append(read_jsonl(output))
  assert outputs[0] == outputs[1]
  assert [row["line"] for row in outputs[0]] == [1, 3, 6, 7]
  three = outputs[0][1]
  assert three["input"] == "three words here"
  assert three["words"] == ["three", "words", "here"] and three["tags"] == ["W"] * 3
  assert three["entities"] == [{"type": "W", "start": 0, "end": 1, "text": "three"}]
  assert outputs[0][0]["words"] == ["one"]  # trimmed to num_words in a batch of 3 too


def test_a_failed_run_leaves_the_previous_output_in_place(tmp_path):
  path = write_bytes(tmp_path / "in.txt", b"a\nb\nc\n")
  output = tmp_path / "out.jsonl"
  output.write_text("the good run\n")
  predictor, _ = fake_predictor(fail_on_call=2)
  with pytest.raises(tf.errors.InternalError):
    predict_lib.predict(predictor, predict_inputs.open_inputs(path), str(output), batch_size=1)
  assert output.read_text() == "the good run\n"
  assert sorted(os.listdir(tmp_path)) == ["in.txt", "out.jsonl"]


def test_jsonl_errors_name_the_line_and_the_field(tmp_path):
  good = '{"id": 1, "text": "fine"}\n'
  cases = {
      "field": (good + '{"body": "x"}\n', "line 2 has no field 'text' (it has: body)"),
      "json": (good + "{oops\n", "line 2 is not JSON"),
      "object": (good + '["text"]\n', "line 2 is a JSON list, not an object"),
      "string": (good + '{"text": 3}\n', "line 2: field 'text' holds a JSON int"),
  }
  for name, (text, message) in cases.items():
    path = str(tmp_path / f"{name}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
      predict_inputs.open_inputs(path)
  path = write_bytes(tmp_path / "ok.jsonl", b'{"id": "a", "body": "x"}\n\n{"body": "\\udc80"}\n'
                     b'{"body": "  "}\n')
  items = list(predict_inputs.open_inputs(path, text_field="body").items())
  assert items == [predict_inputs.Item({"line": 1}, "x", "a"), predict_inputs.Skip("empty"),
                   predict_inputs.Skip("invalid UTF-8"), predict_inputs.Skip("empty")]


def test_formats_and_sources_are_checked_before_any_model_work(tmp_path):
  assert predict_inputs.resolve_format("x.JSONL") == "jsonl"
  assert predict_inputs.resolve_format("tfds:a/b") == "tfds"
  assert predict_inputs.resolve_format("x.jsonl", "text") == "text"
  assert predict_inputs.parse_tfds_input("tfds:glue/sst2:2.0.0/test[:10]") == (
      "glue/sst2:2.0.0", "test[:10]")
  with pytest.raises(config_lib.ConfigError, match="input_format='csv' is not accepted"):
    predict_inputs.resolve_format("x", "csv")
  with pytest.raises(config_lib.ConfigError, match="write tfds:NAME/SPLIT"):
    predict_inputs.parse_tfds_input("tfds:movies")
  with pytest.raises(config_lib.ConfigError, match="no such file"):
    predict_inputs.open_inputs(str(tmp_path / "missing.txt"))
  with pytest.raises(config_lib.ConfigError, match="got neither"):
    predictor_lib.model_config()
  (tmp_path / "serving" / "3").mkdir(parents=True)
  (tmp_path / "serving" / "3" / "saved_model.pb").write_bytes(b"")
  with pytest.raises(config_lib.ConfigError, match="pass .*serving/3"):
    predictor_lib.model_config(saved_model=str(tmp_path / "serving"))


def test_generation_settings_need_a_generate_signature():
  predictor, _ = fake_predictor()
  assert predictor_lib.choose_signature(predictor, {"top_k": None}) == (
      "serving_default", "text", {})
  with pytest.raises(config_lib.ConfigError, match="--max_new_tokens, --seed need a causal "
                     "LM .* has signatures: serving_default"):
    predictor_lib.choose_signature(predictor, {"seed": 1, "max_new_tokens": 3})


def test_progress_bar_only_when_asked_on_a_terminal(tmp_path, capsys):
  class Terminal:
    def isatty(self):
      return True

  assert predict_lib.progress_wanted(True, Terminal())
  assert not predict_lib.progress_wanted(False, Terminal())
  assert not predict_lib.progress_wanted(True, open(os.devnull, "w"))
  path = write_bytes(tmp_path / "in.txt", b"a\nb\n")
  for progress in (False, True):
    predict_lib.predict(fake_predictor()[0], predict_inputs.open_inputs(path),
                        str(tmp_path / "out.jsonl"), progress=progress)
    bar = capsys.readouterr().err
    assert ("2/2" in bar) == progress, bar


# End to end, per task, through the CLI ----------------------------------------------------------

# Each test below starts tfllm-predict processes.


@pytest.mark.slow
def test_causal_lm_text_file_with_generation_flags(model_dirs, tmp_path):
  path = write_bytes(tmp_path / "prompts.txt", b"hello world\n\n  \nthe film\xff\nto be\n")
  output = str(tmp_path / "out" / "lm.jsonl")
  done = run_predict(f"--model_dir={model_dirs('causal_lm')}", f"--input={path}",
                     f"--output={output}", "--max_new_tokens=2", "--temperature=0",
                     "--batch_size=2")
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip().splitlines()[-1] == (
      f"2 predictions written to {output}; 3 lines skipped (empty: 2, invalid UTF-8: 1)")
  rows = read_jsonl(output)
  assert [(row["line"], row["input"]) for row in rows] == [(1, "hello world"), (5, "to be")]
  for row in rows:
    assert isinstance(row["text"], str) and 0 < row["num_tokens"] <= 2
    assert len(row["token_ids"]) == row["num_tokens"]


@pytest.fixture(scope="module")
def classifier_export(model_dirs, tmp_path_factory):
  model_dir = model_dirs("sequence_classification")
  export_dir = str(tmp_path_factory.mktemp("predict_serving") / "sentiment")
  return model_dir, export.export_model_dir(model_dir, export_dir)


@pytest.mark.slow
def test_sequence_classifier_saved_model_answers_as_the_model_dir(classifier_export, tmp_path):
  model_dir, version_dir = classifier_export
  path = write_bytes(tmp_path / "reviews.jsonl",
                     b'{"id": "r1", "review": "a good film"}\n\n{"review": "an awful movie"}\n')
  answers = {}
  for flag in (f"--saved_model={version_dir}", f"--model_dir={model_dir}"):
    output = str(tmp_path / f"{len(answers)}.jsonl")
    done = run_predict(flag, f"--input={path}", f"--output={output}", "--text_field=review")
    assert done.returncode == 0, done.stderr
    answers[flag] = read_jsonl(output)
  served, in_memory = answers.values()
  assert [(row["line"], row.get("id")) for row in served] == [(1, "r1"), (3, None)]
  for a, b in zip(served, in_memory):
    assert a["label"] in ("negative", "positive") and a["label"] == b["label"]
    assert sum(a["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-6)


class PredictTestSentences(tfds.core.GeneratorBasedBuilder):
  """Four tokenized sentences (one empty, one not UTF-8), like tfllm_conll2003's `tokens`."""

  VERSION = tfds.core.Version("1.0.0")
  SENTENCES = (["john", "lives", "in", "paris"], [], [b"bad\xff"], ["mary", "is", "good"])

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Scalar(dtype=np.int32),
            "tokens": tfds.features.Sequence(tfds.features.Text()),
        }))

  def _split_generators(self, dl_manager):
    return {"test": self._generate_examples()}

  def _generate_examples(self):
    for index, tokens in enumerate(self.SENTENCES):
      yield index, {"id": 100 + index, "tokens": tokens}


@pytest.mark.slow
def test_token_classifier_reads_a_tfds_split(model_dirs, tmp_path):
  data_dir = str(tmp_path / "tfds")
  PredictTestSentences(data_dir=data_dir).download_and_prepare()
  output = str(tmp_path / "ner.jsonl")
  model_dir = model_dirs("token_classification")
  config = predictor_lib.model_config(model_dir)
  with pytest.raises(config_lib.ConfigError, match=re.escape(
      "text feature 'text' (the model's config.data.text_feature) is not a feature of "
      "'predict_test_sentences'; its features: id, tokens; choose one with --text_field")):
    predict_inputs.open_inputs("tfds:predict_test_sentences/test", data_dir=data_dir,
                            model_config=config)
  done = run_predict(f"--model_dir={model_dir}", "--input=tfds:predict_test_sentences/test",
                     f"--data_dir={data_dir}", f"--output={output}", "--text_field=tokens")
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip().splitlines()[-1].endswith(
      "2 examples skipped (empty: 1, invalid UTF-8: 1)")
  rows = read_jsonl(output)
  assert [(row["index"], row["id"]) for row in rows] == [(0, 100), (3, 103)]
  assert rows[1]["input"] == "mary is good" and rows[1]["words"] == ["mary", "is", "good"]
  for row in rows:
    assert len(row["tags"]) == row["num_words"] and set(row["tags"]) <= set(NER_TAGS)
    assert len(row["entities"]) == row["num_entities"]
    for entity in row["entities"]:
      assert entity["text"] == " ".join(row["words"][entity["start"]:entity["end"]])


@pytest.mark.slow
def test_masked_lm_fills_each_mask(model_dirs, tmp_path):
  path = write_bytes(tmp_path / "masked.txt",
                     b"the [MASK] is good\nno mask here\n[MASK] lives in [MASK] .\n")
  output = str(tmp_path / "mlm.jsonl")
  done = run_predict(f"--model_dir={model_dirs('masked_lm')}", f"--input={path}",
                     f"--output={output}", "--batch_size=2", "--noprogress")
  assert done.returncode == 0, done.stderr
  rows = read_jsonl(output)
  assert [row["num_masks"] for row in rows] == [1, 0, 2]
  for row in rows:
    assert len(row["tokens"]) == len(row["scores"]) == row["num_masks"]
    assert all(isinstance(token, str) for tokens in row["tokens"] for token in tokens)


@pytest.mark.slow
def test_bad_invocations_are_one_line_and_keep_the_output(model_dirs, tmp_path):
  model_dir = model_dirs("sequence_classification")
  output = tmp_path / "out.jsonl"
  output.write_text("kept\n")
  prompts = write_bytes(tmp_path / "in.txt", b"a film\n")
  empty_dir = tmp_path / "empty_run"
  empty_dir.mkdir()
  cases = [  # the library's other checks are tested in process above
      ((f"--model_dir={model_dir}", f"--input={tmp_path / 'missing.txt'}"), 2, "no such file"),
      ((f"--model_dir={model_dir}", f"--saved_model={tmp_path}", f"--input={prompts}"), 2,
       "give exactly one of --model_dir"),
      ((f"--model_dir={empty_dir}", f"--input={prompts}"), 2, str(empty_dir)),  # not a model dir
  ]
  for args, code, message in cases:
    done = run_predict(*args, f"--output={output}")
    assert done.returncode == code, (args, done.stderr)
    assert message in error_line(done), args
  assert output.read_text() == "kept\n"
  assert sorted(os.listdir(tmp_path)) == ["empty_run", "in.txt", "out.jsonl"]


class ScoreTestSentences(tfds.core.GeneratorBasedBuilder):
  """Tokenized sentences with IOB2 tags (a ClassLabel sequence, like tfllm_conll2003's)."""

  VERSION = tfds.core.Version("1.0.0")
  SENTENCES = ((["john", "lives", "in", "paris"], ["B-PER", "O", "O", "B-LOC"]),
               (["mary", "is", "good"], ["B-PER", "O", "O"]),
               (["hello", "world", "london"], ["O", "O", "B-LOC"]),
               (["to", "be", "or", "not"], ["O", "O", "O", "O"]))

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            "tokens": tfds.features.Sequence(tfds.features.Text()),
            "ner": tfds.features.Sequence(tfds.features.ClassLabel(names=NER_TAGS)),
        }))

  def _split_generators(self, dl_manager):
    return {"test": self._generate_examples()}

  def _generate_examples(self):
    for index, (tokens, tags) in enumerate(self.SENTENCES):
      yield index, {"tokens": tokens, "ner": tags}


@pytest.mark.slow
def test_score_of_a_tagger_equals_a_reference_over_its_own_predictions(model_dirs, tmp_path):
  from tests.export.test_score import reference_chunks
  data_dir = str(tmp_path / "tfds")
  ScoreTestSentences(data_dir=data_dir).download_and_prepare()
  output, metrics = str(tmp_path / "ner.jsonl"), str(tmp_path / "metrics.json")
  done = run_predict(f"--model_dir={model_dirs('token_classification')}",
                     "--input=tfds:score_test_sentences/test", f"--data_dir={data_dir}",
                     f"--output={output}", "--text_field=tokens", "--label_field=ner",
                     "--score", f"--metrics_output={metrics}")
  assert done.returncode == 0, done.stderr
  lines = done.stdout.strip().splitlines()
  assert lines[1].startswith("score of tfds:score_test_sentences/test (4 examples): ")
  assert "entity report:" in done.stdout
  with open(metrics, encoding="utf-8") as f:
    scored = json.load(f)
  rows = read_jsonl(output)
  tp = predicted = actual = 0
  for row, (_, gold) in zip(rows, ScoreTestSentences.SENTENCES):
    true_chunks, pred_chunks = reference_chunks(gold), reference_chunks(row["tags"])
    tp, predicted, actual = (tp + len(true_chunks & pred_chunks),
                             predicted + len(pred_chunks), actual + len(true_chunks))
  assert scored["examples"] == 4 and scored["entity/micro/support"] == actual == 4
  assert scored["entity/micro/precision"] == pytest.approx(tp / predicted if predicted else 0)
  assert scored["entity/micro/recall"] == pytest.approx(tp / actual)
  assert f"entity/micro/f1 {scored['entity/micro/f1']:.4f}" in lines[1]


@pytest.mark.slow
def test_scoring_refuses_what_it_cannot_score_in_one_line(model_dirs, tmp_path):
  prompts = write_bytes(tmp_path / "in.txt", b"a film\n")
  output = str(tmp_path / "out.jsonl")
  classifier = f"--model_dir={model_dirs('sequence_classification')}"
  cases = [
      ((classifier, f"--input={prompts}", "--score"), "carries no labels"),
      ((classifier, f"--input={prompts}", "--label_field=label"),
       "label_field='label' is for scoring; add --score"),
      ((f"--model_dir={model_dirs('causal_lm')}", "--input=tfds:tfllm_movie_sentiment/test",
        "--score"), "this is a causal_lm model"),
  ]
  for args, message in cases:
    done = run_predict(*args, f"--output={output}")
    assert done.returncode == 2, (args, done.stderr)
    assert message in error_line(done), args
  assert not os.path.exists(output)
