"""`tfllm_movie_sentiment`: VADER's movie-review snippets with a binary sentiment label.

Source: the `vaderSentiment==3.3.2` source distribution (MIT; the wheel lacks the data):
`vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz` holds
`hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt`, 10,605 lines
`id<TAB>mean_rating<TAB>sentence`, ratings -3.9..3.9. Both tarballs are read in memory.

Label: the sign of the mean rating (`negative` < 0 < `positive`); the 37 rows rated exactly 0
have no sign and are left out (10,568 examples). Split by id, fixed: id % 10 == 9 is
validation, id % 10 == 0 is test, the rest train (about 80/10/10).
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import tensorflow_datasets as tfds

from tfllm.data.datasets import fetch

REQUIREMENT = "vaderSentiment==3.3.2"
ARCHIVE = "vaderSentiment-3.3.2.tar.gz"
INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
SNIPPETS = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
NUM_ROWS = 10605
LABELS = ("negative", "positive")


def split_of(row_id: int) -> str:
  if row_id % 10 == 9:
    return "validation"
  if row_id % 10 == 0:
    return "test"
  return "train"


def read_rows(archive: str):
  """Returns [(id, rating, sentence)] of every snippet line; bad bytes become U+FFFD."""
  with fetch.open_archive(archive) as f, tarfile.open(fileobj=f) as outer:
    inner_bytes = outer.extractfile(INNER_ARCHIVE).read()
  with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
    data = inner.extractfile(SNIPPETS).read()
  rows = []
  for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) != 3:
      raise ValueError(f"{SNIPPETS} line {number}: expected id<TAB>rating<TAB>sentence, got "
                       f"{line[:80]!r}")
    rows.append((int(fields[0]), float(fields[1]), fields[2]))
  return rows


class TfllmMovieSentiment(tfds.core.GeneratorBasedBuilder):
  """Movie-review snippets (VADER ground truth), label = sign of the mean rating."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "10,568 signed snippets of vaderSentiment 3.3.2; split by id."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Put the vaderSentiment 3.3.2 source tarball in the manual directory:
  `python -m pip download --no-deps --no-binary :all: {REQUIREMENT} -d <manual_dir>`
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        disable_shuffling=True,     # examples stay in source order; pipelines shuffle
        description="Movie-review snippets with their mean human sentiment rating (VADER).",
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Scalar(dtype=np.int32),
            "text": tfds.features.Text(),
            "rating": tfds.features.Scalar(dtype=np.float32),
            "label": tfds.features.ClassLabel(names=LABELS),
        }),
        supervised_keys=("text", "label"),
        license="MIT (vaderSentiment)",
    )

  def _split_generators(self, dl_manager):
    archive = fetch.fetch_archive(dl_manager, REQUIREMENT, ARCHIVE,
                                  self.MANUAL_DOWNLOAD_INSTRUCTIONS, sdist=True)
    rows = read_rows(archive)
    if len(rows) != NUM_ROWS:
      raise ValueError(f"{SNIPPETS} in {archive} holds {len(rows)} rows; expected {NUM_ROWS}")
    return {split: self._generate_examples(rows, split)
            for split in ("train", "validation", "test")}

  def _generate_examples(self, rows, split):
    for row_id, rating, text in rows:
      if rating == 0 or split_of(row_id) != split:
        continue
      yield row_id, {"id": row_id, "text": text, "rating": rating,
                     "label": LABELS[int(rating > 0)]}
